"""Encoded images the serving tests send: real ones, and hostile ones made without decoding them."""

import struct
import zlib

import cv2
import numpy as np


def png(image: np.ndarray) -> bytes:
    """uint8 RGB [H, W, 3] -> PNG bytes."""
    return cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))[1].tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def huge_blank_png(width: int = 20000, height: int = 20000) -> bytes:
    """A valid 1-bit grey PNG of ``width x height`` zeros: a few KB that would decode to 400M pixels."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
