"""Requests to the model server, read and checked before any model runs; answers encoded.

TensorFlow Serving's REST predict API (``POST /v1/models/<name>:predict``):
``{"signature_name": ..., "instances": [...]}`` where an instance is
``{"b64": "<encoded PNG or JPEG>"}`` or a uint8 RGB image as nested lists
``[height][width][3]``; or the columnar ``{"inputs": ...}`` with the same
values. The answer is TensorFlow Serving's row format: ``{"predictions": [...]}``
with one label map (nested lists of class ids) per instance, or one dict of
named outputs per instance when the model also returns probabilities.

Everything a client can get wrong is a ``RequestError`` carrying an HTTP
status and a message that names the field and the problem, raised before any
pixel is decoded where it can be: an encoded image's size is read from its
header, and an image above ``max_image_pixels`` (a 20000x20000 PNG of zeros
compresses to a few KB) is refused without decoding it. Pure Python, NumPy
and Pillow: no model, no server, no TensorFlow.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import warnings
from typing import Any, Sequence

import numpy as np

PREDICTIONS = "semantic_predictions"
SIGNATURES = ("serving_default", "serving_bytes")


class RequestError(ValueError):
    """A request the server refuses: ``status`` (an HTTP 4xx) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = int(status)
        self.message = message


def image_size(data: bytes) -> tuple[str, int, int] | None:
    """(format, width, height) read from a PNG's or JPEG's header alone, or None if it is neither.

    PNG: the IHDR chunk that must follow the signature. JPEG: the first start-of-frame marker
    (SOF0..SOF15 but DHT, JPG and DAC), walking the segments before it by their lengths.
    """
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            return "PNG", -1, -1
        return "PNG", int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return "JPEG", -1, -1
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if i + 9 > len(data):
                break
            return "JPEG", int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
        i += 2 + length
    return "JPEG", -1, -1


def decode_image(data: bytes, max_image_pixels: int, where: str = "image") -> np.ndarray:
    """Encoded PNG or JPEG bytes -> uint8 RGB ``[height, width, 3]``; the size checked from the header.

    Raises ``RequestError``: empty bytes, not a PNG or JPEG, a header without a size, a zero-size image,
    more than ``max_image_pixels`` pixels (413, before any pixel is decoded), a truncated or corrupt file.
    """
    if not data:
        raise RequestError(400, f"{where}: empty image bytes")
    header = image_size(data)
    if header is None:
        raise RequestError(400, f"{where}: not a PNG or JPEG image ({len(data)} bytes)")
    kind, width, height = header
    if width < 0:
        raise RequestError(400, f"{where}: a {kind} without a readable size in its header (corrupt or truncated)")
    if width == 0 or height == 0:
        raise RequestError(400, f"{where}: the image has zero size ({width}x{height})")
    if width * height > max_image_pixels:
        raise RequestError(
            413, f"{where}: {width}x{height} = {width * height} pixels, above max_image_pixels={max_image_pixels}"
        )
    from PIL import Image  # noqa: PLC0415

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the size is checked above
            with Image.open(io.BytesIO(data)) as image:
                if image.size != (width, height):
                    raise ValueError(f"header says {width}x{height}, Pillow reads {image.size}")
                pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Exception as error:  # noqa: BLE001  (truncated or corrupt data: OSError, SyntaxError, ...)
        raise RequestError(400, f"{where}: corrupt or truncated {kind} ({error})") from None
    return pixels


def array_image(value: Any, max_image_pixels: int, where: str = "image") -> np.ndarray:
    """A uint8 RGB image sent as nested lists ``[height][width][3]`` -> ``np.uint8`` array, checked."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise RequestError(400, f"{where}: rows of different lengths (expected [height][width][3])") from None
    if array.dtype == object:
        raise RequestError(400, f"{where}: rows of different lengths (expected [height][width][3])")
    if array.ndim != 3 or array.shape[-1] != 3:
        raise RequestError(400, f"{where}: expected [height][width][3] RGB values, got shape {list(array.shape)}")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise RequestError(400, f"{where}: the image has zero size ({array.shape[1]}x{array.shape[0]})")
    if array.shape[0] * array.shape[1] > max_image_pixels:
        raise RequestError(
            413,
            f"{where}: {array.shape[1]}x{array.shape[0]} pixels, above max_image_pixels={max_image_pixels}",
        )
    if array.dtype.kind not in "iu" and not (
        array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
    ):
        raise RequestError(400, f"{where}: values must be integers 0..255 (uint8), got {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise RequestError(400, f"{where}: values must be 0..255 (uint8), got {array.min()}..{array.max()}")
    return array.astype(np.uint8)


def parse_predict(body: bytes, max_image_pixels: int) -> tuple[str, list[np.ndarray]]:
    """A predict request's body -> (signature name, uint8 RGB images), every problem a ``RequestError``."""
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"malformed JSON body: {error}") from None
    if not isinstance(request, dict):
        raise RequestError(400, f"the body must be a JSON object, got {type(request).__name__}")
    signature = request.get("signature_name", "serving_default")
    if signature not in SIGNATURES:
        raise RequestError(400, f"signature_name {signature!r} is unknown; valid: {list(SIGNATURES)}")
    if "instances" in request:
        field, values = "instances", request["instances"]
    elif "inputs" in request:
        field, values = "inputs", request["inputs"]
        if isinstance(values, dict):
            if len(values) != 1:
                raise RequestError(400, f"inputs: one named input expected, got {sorted(values)}")
            values = next(iter(values.values()))
    else:
        raise RequestError(400, f"missing field 'instances' (or 'inputs'); the body has {sorted(request)}")
    if not isinstance(values, list) or not values:
        raise RequestError(400, f"{field} must be a non-empty list of images")
    images = []
    for i, value in enumerate(values):
        where = f"{field}[{i}]"
        if isinstance(value, dict):
            if set(value) == {"b64"}:
                value = value["b64"]
            elif len(value) == 1:  # a named input holding {"b64": ...} or an array
                value = next(iter(value.values()))
                if isinstance(value, dict) and set(value) == {"b64"}:
                    value = value["b64"]
            else:
                raise RequestError(400, f"{where}: expected {{'b64': ...}} or an image array, got keys {sorted(value)}")
        if isinstance(value, str):
            try:
                data = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise RequestError(400, f"{where}: b64 is not valid base64") from None
            images.append(decode_image(data, max_image_pixels, where))
        elif isinstance(value, list):
            images.append(array_image(value, max_image_pixels, where))
        else:
            raise RequestError(400, f"{where}: expected {{'b64': ...}} or an image array, got {type(value).__name__}")
    return signature, images


def predict_response(outputs: Sequence[dict[str, np.ndarray]]) -> dict:
    """TensorFlow Serving's row format: bare label maps, or dicts when there are several outputs."""
    rows = []
    for output in outputs:
        if set(output) == {PREDICTIONS}:
            rows.append(np.asarray(output[PREDICTIONS]).tolist())
        else:
            rows.append({name: np.asarray(value).tolist() for name, value in output.items()})
    return {"predictions": rows}


def label_png(labels: np.ndarray, colormap: str | None = None) -> bytes:
    """Labels ``[H, W]`` as a PNG: class ids (8-bit grey, 16-bit above 255 classes) or colours."""
    import cv2  # noqa: PLC0415

    labels = np.asarray(labels)
    if colormap is not None:
        from deeplab_dpc.data.colormaps import label_to_color  # noqa: PLC0415

        image = cv2.cvtColor(label_to_color(labels, colormap), cv2.COLOR_RGB2BGR)
    else:
        image = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:  # pragma: no cover  (OpenCV encodes any uint8/uint16 array)
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()
