"""Example client for a DeepLab model served by TensorFlow Serving's REST API.

Sends each image to ``POST {server}/v1/models/{model_name}[/versions/{v}]:predict``
in TensorFlow Serving's row format and writes the predicted labels as colour
PNGs (``<output_dir>/<image name>_prediction.png``):

* ``--signature_name=serving_bytes`` (default): the encoded file as is,
  ``{"signature_name": "serving_bytes", "instances": [{"b64": "..."}]}``;
* ``--signature_name=serving_default``: the image decoded here, sent as a
  uint8 array ``{"instances": [[[[r, g, b], ...], ...]]}`` (larger requests).

One request per image, so images of different sizes are fine (a request's
images must share a size). Standard library HTTP (``urllib.request``) only.

Usage (one line; the server as started by e.g.
``docker run -p 8501:8501 -v /models/deeplab:/models/deeplab -e MODEL_NAME=deeplab tensorflow/serving``)::

    python -m tools.serving_client --server=http://localhost:8501 --model_name=deeplab
        --images=street1.jpg,street2.png --output_dir=/tmp/predictions --colormap=cityscapes
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
from typing import Sequence

import numpy as np
from absl import app, flags, logging

from deeplab_dpc.data.colormaps import COLORMAPS, label_to_color

PREDICTIONS = "semantic_predictions"
SIGNATURES = ("serving_bytes", "serving_default")


def predict_url(server: str, model_name: str, version: int | None = None) -> str:
    """TensorFlow Serving's REST predict URL."""
    if not server.startswith(("http://", "https://")):
        server = "http://" + server
    version_part = f"/versions/{int(version)}" if version is not None else ""
    return f"{server.rstrip('/')}/v1/models/{model_name}{version_part}:predict"


def build_bytes_request(encoded_images: Sequence[bytes], signature_name: str = "serving_bytes") -> dict:
    """Request body for encoded PNG/JPEG files (TensorFlow Serving's ``{"b64": ...}`` binary values)."""
    if not encoded_images:
        raise ValueError("no images to send")
    return {
        "signature_name": signature_name,
        "instances": [{"b64": base64.b64encode(bytes(data)).decode("ascii")} for data in encoded_images],
    }


def build_array_request(images: Sequence[np.ndarray], signature_name: str = "serving_default") -> dict:
    """Request body for uint8 RGB images ``[H, W, 3]`` of one size, sent as nested lists."""
    if not len(images):
        raise ValueError("no images to send")
    arrays = [np.asarray(image) for image in images]
    for array in arrays:
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"images must be uint8 [H, W, 3]; got {array.dtype} {array.shape}")
    if len({a.shape for a in arrays}) > 1:
        raise ValueError(f"images of one request must share a size; got {sorted({a.shape for a in arrays})}")
    return {"signature_name": signature_name, "instances": [a.tolist() for a in arrays]}


def parse_response(response: dict) -> list[dict[str, np.ndarray]]:
    """TensorFlow Serving's predict response -> one dict of named outputs per image.

    Handles the row format (``predictions``: a list of dicts when the
    signature has several outputs, of bare values when it has one) and the
    columnar format (``outputs``). ``semantic_predictions`` become int32 arrays.

    Raises:
        RuntimeError: the response reports an error.
        ValueError: the response has no predictions.
    """
    if "error" in response:
        raise RuntimeError(f"server error: {response['error']}")
    if "predictions" in response:
        rows = response["predictions"]
        results = [dict(row) if isinstance(row, dict) else {PREDICTIONS: row} for row in rows]
    elif "outputs" in response:
        outputs = response["outputs"]
        if not isinstance(outputs, dict):
            outputs = {PREDICTIONS: outputs}
        count = len(next(iter(outputs.values())))
        results = [{name: values[i] for name, values in outputs.items()} for i in range(count)]
    else:
        raise ValueError(f"response has neither 'predictions' nor 'outputs': keys {sorted(response)}")
    parsed = []
    for result in results:
        if PREDICTIONS not in result:
            raise ValueError(f"response lacks {PREDICTIONS!r}; outputs: {sorted(result)}")
        out = {name: np.asarray(value, dtype=np.float32) for name, value in result.items()}
        out[PREDICTIONS] = np.asarray(result[PREDICTIONS], dtype=np.int32)
        parsed.append(out)
    return parsed


def labels_to_png(labels: np.ndarray, colormap: str) -> bytes:
    """Encodes a label map ``[H, W]`` as a colour PNG (RGB colours of ``colormap``)."""
    import cv2

    rgb = label_to_color(np.asarray(labels), colormap, ignore_label=None)
    ok, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # OpenCV writes BGR.
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return encoded.tobytes()


def write_predictions(
    predictions: Sequence[dict[str, np.ndarray]], names: Sequence[str], output_dir: str, colormap: str
) -> list[str]:
    """Writes ``<output_dir>/<name>_prediction.png`` for each prediction; returns the paths."""
    if len(predictions) != len(names):
        raise ValueError(f"{len(predictions)} predictions for {len(names)} images")
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    for prediction, name in zip(predictions, names):
        stem = os.path.splitext(os.path.basename(name))[0]
        path = os.path.join(output_dir, f"{stem}_prediction.png")
        with open(path, "wb") as f:
            f.write(labels_to_png(prediction[PREDICTIONS], colormap))
        paths.append(path)
    return paths


def post_json(url: str, body: dict, timeout: float = 60.0) -> dict:
    """POSTs ``body`` as JSON and returns the decoded JSON answer.

    Raises:
        RuntimeError: HTTP error (with the server's error message) or an unreachable server.
    """
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return json.loads(answer.read().decode("utf-8"))
    except urllib.error.HTTPError as e:
        detail = e.read().decode("utf-8", errors="replace")
        try:
            detail = json.loads(detail).get("error", detail)
        except (ValueError, AttributeError):
            pass
        raise RuntimeError(f"{url}: HTTP {e.code}: {detail}") from None
    except urllib.error.URLError as e:
        raise RuntimeError(f"{url}: {e.reason}") from None


def build_request(path: str, signature_name: str) -> dict:
    """The request body for one image file."""
    with open(path, "rb") as f:
        data = f.read()
    if signature_name == "serving_bytes":
        return build_bytes_request([data], signature_name)
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode {path}")
    return build_array_request([image[..., ::-1]], signature_name)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("server", "http://localhost:8501", "TensorFlow Serving REST address.", flag_values=fv)
    flags.DEFINE_string("model_name", "deeplab", "Served model name.", flag_values=fv)
    flags.DEFINE_integer("model_version", None, "Model version (default: the newest served).", flag_values=fv)
    flags.DEFINE_enum(
        "signature_name", "serving_bytes", list(SIGNATURES), "Signature to call.", flag_values=fv
    )
    flags.DEFINE_list("images", None, "Image files (PNG or JPEG), comma separated.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Folder for the colour prediction PNGs.", flag_values=fv)
    flags.DEFINE_enum("colormap", "pascal", sorted(COLORMAPS), "Colormap of the PNGs.", flag_values=fv)
    flags.DEFINE_float("timeout", 120.0, "Seconds to wait for each answer.", flag_values=fv)
    flags.mark_flags_as_required(["images", "output_dir"], flag_values=fv)


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    fv = flag_values
    for path in fv.images:
        if not os.path.isfile(path):
            raise app.UsageError(f"--images: {path} does not exist")
    url = predict_url(fv.server, fv.model_name, fv.model_version)
    for path in fv.images:
        response = post_json(url, build_request(path, fv.signature_name), timeout=fv.timeout)
        (written,) = write_predictions(parse_response(response), [path], fv.output_dir, fv.colormap)
        logging.info("%s -> %s", path, written)


if __name__ == "__main__":
    define_flags()
    app.run(main)
