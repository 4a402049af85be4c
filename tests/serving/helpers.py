"""What the serving tests share: a small exported model, and the encoded images they send (real ones, and
hostile ones made without decoding them)."""

import pathlib
import socket
import struct
import zlib

import cv2
import numpy as np

SPEC = pathlib.Path(__file__).resolve().parents[2] / "experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def export_small_model(root: pathlib.Path, num_classes: int, seed: int, onnx_path: str | None = None) -> str:
    """A MobileNet-v2 (x0.35) + the published DPC with random weights, exported by export_model's code
    into ``root/1`` (and ``onnx_path``); returns the SavedModel's folder."""
    import keras

    from deeplab_dpc.core.model import ModelConfig, build_deeplab
    from deeplab_dpc.core.spec import CellSpec
    from deeplab_dpc.export import export_lib
    from deeplab_dpc.runs import checkpoint_path

    config = ModelConfig(
        num_classes=num_classes,
        model_variant="mobilenet_v2",
        depth_multiplier=0.35,
        dense_prediction_cell=CellSpec.load(SPEC),
        decoder_output_stride=4,
    )
    keras.utils.set_random_seed(seed)
    model = build_deeplab(config)
    (root / "train").mkdir()
    config.save(root / "train" / "model_config.json")
    model.save_weights(checkpoint_path(str(root / "train"), 1))
    export_lib.run_export(
        export_lib.ExportConfig(checkpoint_path=str(root / "train"), export_path=str(root / "1"), onnx_path=onnx_path)
    )
    return str(root / "1")
