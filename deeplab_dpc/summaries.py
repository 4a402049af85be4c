"""TensorBoard event files written without TensorFlow.

Training and evaluation log scalars and images on every backend, including a
JAX host that has no TensorFlow: the event file format is a TFRecord stream
of ``Event`` protocol buffers, which this module encodes itself (the few
fields TensorBoard reads for scalars and images) and frames with the CRC of
``data/tfrecord.py``. TensorBoard shows them as it shows ``tf.summary`` output.

One file per log folder and process: each call appends its events to the
file and closes it again, so a killed run loses nothing already logged and no
handle stays open.

Example:

>>> write_scalars("/tmp/run", 100, {"train/loss": 0.7})      # doctest: +SKIP
>>> write_images("/tmp/run", 100, {"images/input": batch})   # doctest: +SKIP
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Mapping

import cv2
import numpy as np

from deeplab_dpc.data.tfrecord import masked_crc

_lock = threading.Lock()
_files: dict[str, str] = {}


# --------------------------------------------------------------------------- protobuf encoding


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # negative int64 as protobuf does: ten bytes
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _int_field(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(int(value))


def _bytes_field(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _event(step: int, *, summary_values: list[bytes] = (), file_version: str | None = None) -> bytes:
    """``tensorflow.Event``: wall_time (1), step (2), file_version (3), summary (5)."""
    out = _key(1, 1) + struct.pack("<d", time.time()) + _int_field(2, step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if summary_values:
        out += _bytes_field(5, b"".join(_bytes_field(1, value) for value in summary_values))
    return out


def _scalar_value(tag: str, value: float) -> bytes:
    """``Summary.Value`` with tag (1) and simple_value (2, float32)."""
    return _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", float(value))


def _image_value(tag: str, image: np.ndarray) -> bytes:
    """``Summary.Value`` with tag (1) and image (4): height, width, colorspace, PNG bytes."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"summary image {tag!r}: expected [H, W, 1|3|4], got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"summary image {tag!r}: expected uint8, got {image.dtype}")
    channels = image.shape[-1]
    bgr = image if channels == 1 else image[..., [2, 1, 0, 3][:channels]]  # OpenCV writes BGR(A)
    ok, png = cv2.imencode(".png", np.ascontiguousarray(bgr))
    if not ok:
        raise ValueError(f"summary image {tag!r}: PNG encoding failed")
    encoded = (
        _int_field(1, image.shape[0]) + _int_field(2, image.shape[1]) + _int_field(3, channels)
        + _bytes_field(4, png.tobytes())
    )
    return _bytes_field(1, tag.encode()) + _bytes_field(4, encoded)


# --------------------------------------------------------------------------- files


def _record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def event_file(logdir: str | os.PathLike) -> str:
    """This process's event file in ``logdir`` (created, with its version header, on first use)."""
    logdir = os.path.abspath(os.fspath(logdir))
    with _lock:
        path = _files.get(logdir)
        if path is None or not os.path.exists(path):
            os.makedirs(logdir, exist_ok=True)
            name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}.{len(_files)}.v2"
            path = os.path.join(logdir, name)
            with open(path, "ab") as f:
                f.write(_record(_event(0, file_version="brain.Event:2")))
            _files[logdir] = path
        return path


def _append(logdir, step: int, values: list[bytes]) -> None:
    if not values:
        return
    data = _record(_event(int(step), summary_values=values))
    path = event_file(logdir)
    with _lock, open(path, "ab") as f:
        f.write(data)


def write_scalars(logdir: str | os.PathLike, step: int, scalars: Mapping[str, float]) -> None:
    """Scalars ``{tag: value}`` at ``step`` (TensorBoard's Scalars tab)."""
    _append(logdir, step, [_scalar_value(tag, value) for tag, value in scalars.items()])


def write_images(logdir: str | os.PathLike, step: int, images: Mapping[str, np.ndarray], max_outputs: int = 3) -> None:
    """uint8 images at ``step`` (the Images tab): ``{tag: [N, H, W, C] or [H, W, C]}``.

    A batch is written as ``tag/image/0``, ``tag/image/1``, ... (at most
    ``max_outputs``), as ``tf.compat.v1.summary.image`` names them.
    """
    values = []
    for tag, batch in images.items():
        batch = np.asarray(batch)
        if batch.ndim == 4:
            values += [_image_value(f"{tag}/image/{i}", image) for i, image in enumerate(batch[:max_outputs])]
        else:
            values.append(_image_value(tag, batch))
    _append(logdir, step, values)


def write_values(logdir: str | os.PathLike, step: int, values: list[bytes]) -> None:
    """Serialized ``Summary.Value`` messages at ``step``, for plugins whose protocol buffers the
    caller builds (TensorBoard's HParams: ``deeplab_dpc.nas.progress``)."""
    _append(logdir, step, list(values))
