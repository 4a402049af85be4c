"""What runs the model inside a server replica: a SavedModel from ``export_model`` (TensorFlow) or its
ONNX conversion (ONNX Runtime), behind one call on a list of images of any sizes."""

from __future__ import annotations

import json
import os
from typing import Callable, Mapping, Sequence

import numpy as np

RUNTIMES = ("savedmodel", "onnx")


class ModelError(RuntimeError):
    """The export cannot be served (missing, not a SavedModel, no ``serving_default``)."""


def group_by_size(images: Sequence[np.ndarray]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``images`` grouped by (height, width), in order: each group is one batched call."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault((int(image.shape[0]), int(image.shape[1])), []).append(i)
    return groups


def predict_by_size(
    images: Sequence[np.ndarray], run_batch: Callable[[np.ndarray], Mapping[str, np.ndarray]]
) -> list[dict[str, np.ndarray]]:
    """One dict of named outputs per image, in order; ``run_batch`` gets the images of one size stacked
    (uint8 ``[B, H, W, 3]``) and returns its outputs as arrays with the batch first."""
    results: list = [None] * len(images)
    for indices in group_by_size(images).values():
        outputs = run_batch(np.stack([images[i] for i in indices]))
        for row, i in enumerate(indices):
            results[i] = {name: value[row] for name, value in outputs.items()}
    return results


class SavedModelRuntime:
    """``serving_default`` of a SavedModel: uint8 ``[B, H, W, 3]`` -> ``semantic_predictions`` (+ others)."""

    name = "savedmodel"

    def __init__(self, export_path: str):
        if not os.path.isfile(os.path.join(export_path, "saved_model.pb")):
            raise ModelError(f"--export_path={export_path}: no saved_model.pb there (make one with export_model)")
        import tensorflow as tf  # noqa: PLC0415

        self._tf = tf
        loaded = tf.saved_model.load(export_path)
        if "serving_default" not in loaded.signatures:
            raise ModelError(f"--export_path={export_path}: the SavedModel has no serving_default signature")
        self._loaded = loaded  # the signature holds its variables through this object
        self._predict = loaded.signatures["serving_default"]
        self.metadata = _export_metadata(export_path)

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        """One dict of named outputs per image; images of one size go through the model as one batch."""

        def run_batch(batch):
            outputs = self._predict(images=self._tf.constant(batch, dtype=self._tf.uint8))
            return {name: value.numpy() for name, value in outputs.items()}

        return predict_by_size(images, run_batch)


class OnnxRuntime:
    """An ONNX model from ``export_model --onnx_path`` on ONNX Runtime's CPU provider: the same call.

    ``path`` is the ``.onnx`` file, or a folder holding ``model.onnx``. ``threads``: ONNX Runtime's
    intra-op threads (0: its default).
    """

    name = "onnx"

    def __init__(self, path: str, threads: int = 0):
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        if not os.path.isfile(path):
            raise ModelError(f"--export_path={path}: no ONNX model there (make one with export_model --onnx_path)")
        import onnxruntime  # noqa: PLC0415

        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        self._session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [o.name for o in self._session.get_outputs()]
        self.metadata = {"onnx_path": os.path.abspath(path)}

    def predict(self, images: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
        def run_batch(batch):
            return dict(zip(self._outputs, self._session.run(self._outputs, {self._input: batch})))

        return predict_by_size(images, run_batch)


def _export_metadata(export_path: str) -> dict:
    """What ``export_model`` recorded beside the model (classes, scales), for the status page."""
    path = os.path.join(export_path, "export_config.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        config = json.load(f)
    return {key: config[key] for key in ("num_classes", "inference_scales", "add_flipped_images") if key in config}


def load_runtime(runtime: str, export_path: str, threads: int = 0):
    """The runtime named ``runtime`` (``--runtime``) on ``export_path``."""
    if runtime == "savedmodel":
        return SavedModelRuntime(export_path)
    if runtime == "onnx":
        return OnnxRuntime(export_path, threads)
    raise ValueError(f"--runtime={runtime!r} is unknown; valid: {list(RUNTIMES)}")
