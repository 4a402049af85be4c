"""Checkpoint -> TensorFlow Serving SavedModel (and TFLite), with inference inside the graph.

The SavedModel has two signatures, both returning ``semantic_predictions``
(int32 ``[B, H, W]``, at the input size) and, when ``save_probabilities``,
``semantic_probabilities`` (float32 ``[B, H, W, num_classes]``):

* ``serving_default``: ``images``, uint8 ``[B, H, W, 3]`` RGB of any height and width;
* ``serving_bytes``: ``image_bytes``, string ``[B]`` of encoded PNG or JPEG (or
  BMP/GIF; first frame) images for REST clients. Images of one request must
  share a size (the outputs are batched tensors); send other sizes separately.

Inside the graph: the model's own 0..255 -> [-1, 1] normalisation, the
``inference_scales`` and the left-right flip of ``predict_probabilities``
(softmax averaged over every scale and flip), then argmax. No padding and no
resizing to a crop: the model takes any size, so the exported one does too.

The export is written to a temporary sibling folder and renamed, so an
interrupted export never leaves a partial SavedModel at ``export_path``;
``export_config.json`` inside it records the scales, the flip, the classes,
the model config and the source checkpoint.

TFLite (``tflite_path``): the same computation with a static input
``[1, crop_h, crop_w, 3]`` float32 (0..255), output ``semantic_predictions``
int32 ``[1, crop_h, crop_w]`` (plus probabilities when asked); TensorFlow
Lite builtin ops only (the align-corners resizes become GATHERs with
constant indices at a static size).

The checkpoint becomes a model through ``deeplab_dpc.runs.load_model_for_inference``,
as for evaluation and visualisation; TensorFlow is imported only by the
export functions, when called.

Example:
    >>> config = ExportConfig(checkpoint_path="/runs/camvid", export_path="/models/deeplab/1",
    ...                       inference_scales=(0.75, 1.0, 1.25), add_flipped_images=True)
    >>> info = run_export(config)
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Sequence

from absl import logging

from deeplab_dpc import console
from deeplab_dpc.core.model import ModelConfig
from deeplab_dpc.fileio import temporary_sibling, write_bytes_atomically
from deeplab_dpc.runs import checkpoint_model_config_path, load_model_config, load_model_for_inference

EXPORT_CONFIG_NAME = "export_config.json"
PREDICTIONS = "semantic_predictions"
PROBABILITIES = "semantic_probabilities"
IMAGES = "images"
IMAGE_BYTES = "image_bytes"
SIGNATURES = ("serving_default", "serving_bytes")
ONNX_OPSET = 17


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """What to export and how. Field names are ``export_model``'s flag names.

    Args:
        checkpoint_path: a ``ckpt-<step>.weights.h5`` file or a train_logdir
            (its newest checkpoint); ``model_config.json`` must sit beside it.
        export_path: the SavedModel folder to create (for TensorFlow Serving,
            a version folder: ``<model_base_path>/<version>``).
        num_classes: if given, must equal the checkpoint's model config (a guard).
        crop_size: (height, width) of the TFLite model's static input; the
            SavedModel takes any size and ignores it.
        inference_scales: image scales whose softmax is averaged.
        add_flipped_images: also average the left-right mirrored images.
        save_probabilities: also output ``semantic_probabilities``.
        tflite_path: also write a TFLite model there (needs ``crop_size``).
        onnx_path: also write the SavedModel's ``serving_default`` as an ONNX model there (tf2onnx,
            opset ``ONNX_OPSET``; ``serve --runtime=onnx`` serves it with ONNX Runtime).
        overwrite: replace an existing ``export_path`` (after the new export is complete).
    """

    checkpoint_path: str
    export_path: str
    num_classes: int | None = None
    crop_size: tuple[int, int] | None = None
    inference_scales: tuple[float, ...] = (1.0,)
    add_flipped_images: bool = False
    save_probabilities: bool = False
    tflite_path: str | None = None
    onnx_path: str | None = None
    overwrite: bool = False

    def __post_init__(self):
        if not self.checkpoint_path:
            raise ValueError("checkpoint_path is required (a checkpoint file or a train_logdir)")
        if not self.export_path:
            raise ValueError("export_path is required (the SavedModel folder to create)")
        if self.num_classes is not None and (not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"num_classes={self.num_classes!r} must be a positive integer")
        scales = tuple(float(s) for s in self.inference_scales)
        if not scales or any(not s > 0 for s in scales):
            raise ValueError(f"inference_scales={list(scales)} must hold one or more positive scales")
        object.__setattr__(self, "inference_scales", scales)
        if self.crop_size is not None:
            crop = tuple(int(s) for s in self.crop_size)
            if len(crop) != 2 or min(crop) < 1:
                raise ValueError(
                    f"crop_size={list(self.crop_size)} must be two positive integers (height, width)"
                )
            object.__setattr__(self, "crop_size", crop)
        if self.tflite_path is not None and self.crop_size is None:
            raise ValueError("tflite_path needs crop_size: a TFLite model has a static input shape")
        export = os.path.abspath(self.export_path)
        for name in ("tflite_path", "onnx_path"):
            path = getattr(self, name)
            if path is not None and os.path.abspath(path).startswith(export + os.sep):
                raise ValueError(f"{name}={path} must not be inside export_path={self.export_path}")


# ----------------------------------------------------------------------------------------------------------
# The graphs.


def _outputs(model, images, inference_scales, add_flipped_images, save_probabilities):
    import tensorflow as tf

    from deeplab_dpc.evaluation.inference import predict_probabilities

    probabilities = predict_probabilities(model, images, inference_scales, add_flipped_images)
    # tf.argmax, not keras.ops.argmax: Keras' version adds a bit test for -0.0 (tf.BitwiseAnd, which
    # TFLite lacks); probabilities are never negative, so both give the same labels.
    outputs = {PREDICTIONS: tf.math.argmax(probabilities, axis=-1, output_type=tf.int32)}
    if save_probabilities:
        outputs[PROBABILITIES] = probabilities
    return outputs


def decode_images(image_bytes):
    """String ``[B]`` of encoded images -> uint8 ``[B, H, W, 3]``; every image must have the same size."""
    import tensorflow as tf

    count = tf.shape(image_bytes)[0]
    images = tf.TensorArray(
        tf.uint8, size=count, element_shape=tf.TensorShape([None, None, 3]), infer_shape=False
    )
    sizes = tf.TensorArray(tf.int32, size=count, element_shape=tf.TensorShape([2]))
    for i in tf.range(count):
        image = tf.io.decode_image(image_bytes[i], channels=3, expand_animations=False)
        image = tf.ensure_shape(image, [None, None, 3])
        images = images.write(i, image)
        sizes = sizes.write(i, tf.shape(image)[:2])
    sizes = sizes.stack()
    same = tf.debugging.assert_equal(
        sizes,
        tf.broadcast_to(sizes[:1], tf.shape(sizes)),
        message="serving_bytes: every image of a request must have the same height and width "
        "(send images of other sizes in separate requests); sizes [height, width]:",
        summarize=16,
    )
    with tf.control_dependencies([same]):
        return tf.ensure_shape(images.stack(), [None, None, None, 3])


def _tf_variables(model):
    """The ``tf.Variable`` under each Keras variable, for a ``tf.Module`` to track.

    Not the Keras model itself: saving a tracked Keras model also traces a default signature for it
    and for every nested functional model (minutes on a CPU). Not the Keras variables either: the
    TFLite converter then keeps them as resource variables (VAR_HANDLE / READ_VARIABLE) that its
    interpreter never initialises (NaN outputs) instead of freezing them into constants.
    """
    return [v.value for v in model.variables]


def build_serving_module(model, inference_scales=(1.0,), add_flipped_images=False, save_probabilities=False):
    """A ``tf.Module`` holding ``model`` with the ``serving_default`` and ``serving_bytes`` functions."""
    import tensorflow as tf

    scales = tuple(float(s) for s in inference_scales)

    # One traced network shared by every scale, flip and signature: tracing the Keras model is the
    # slow part of an export (seconds per call site on a CPU), so it is traced once, not 2 x scales x flips.
    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)], autograph=False)
    def logits(images):
        return model(images, training=False)

    def network(images, training=False):
        del training  # Always inference.
        return logits(images)

    def outputs(images):
        return _outputs(network, images, scales, bool(add_flipped_images), bool(save_probabilities))

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name=IMAGES)])
    def serving_default(images):
        return outputs(images)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=IMAGE_BYTES)])
    def serving_bytes(image_bytes):
        return outputs(decode_images(image_bytes))

    module = tf.Module(name="deeplab_serving")
    module.model_variables = _tf_variables(model)
    module.serving_default = serving_default
    module.serving_bytes = serving_bytes
    return module


def _write_saved_model(module, directory: str) -> None:
    """``tf.saved_model.save`` with the two signatures (a seam the tests interrupt)."""
    import tensorflow as tf

    # The functions, not concrete functions traced beforehand: saving traces them again anyway
    # (in its own context), so tracing them first would double the time.
    signatures = {"serving_default": module.serving_default, "serving_bytes": module.serving_bytes}
    tf.saved_model.save(module, directory, signatures=signatures)


def convert_to_tflite(
    model,
    crop_size: Sequence[int],
    inference_scales=(1.0,),
    add_flipped_images=False,
    save_probabilities=False,
) -> bytes:
    """A TFLite flatbuffer: float32 ``images [1, crop_h, crop_w, 3]`` (0..255) -> ``semantic_predictions``.

    Builtin TFLite ops only; the signature ``serving_default`` names the input
    and outputs (``interpreter.get_signature_runner()``).
    """
    import tensorflow as tf

    height, width = (int(s) for s in crop_size)
    scales = tuple(float(s) for s in inference_scales)

    @tf.function(input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name=IMAGES)])
    def predict(images):
        return _outputs(model, images, scales, bool(add_flipped_images), bool(save_probabilities))

    module = tf.Module(name="deeplab_tflite")
    module.model_variables = _tf_variables(model)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([predict.get_concrete_function()], module)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    with console.without_stderr_lines(console.TFLITE_CONVERTER_NOTICES):
        return converter.convert()


def convert_to_onnx(saved_model_path: str, onnx_path: str, opset: int = ONNX_OPSET) -> None:
    """The SavedModel's ``serving_default`` as an ONNX model at ``onnx_path`` (tf2onnx), all or nothing.

    Same input (uint8 ``images`` ``[B, H, W, 3]``, any size) and outputs as the signature. Runs tf2onnx's
    converter in a child process (its graph rewriting logs pages and holds a second copy of the graph),
    into a temporary file renamed when complete; the SavedModel is left as it is if the conversion fails.
    """
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    onnx_path = os.path.abspath(onnx_path)
    os.makedirs(os.path.dirname(onnx_path), exist_ok=True)
    tmp = temporary_sibling(onnx_path, "tmp")
    command = [
        sys.executable, "-m", "tf2onnx.convert", "--saved-model", os.path.abspath(saved_model_path),
        "--signature_def", "serving_default", "--opset", str(opset), "--output", tmp,
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
        if done.returncode != 0 or not os.path.isfile(tmp):
            tail = "\n".join(done.stderr.strip().splitlines()[-5:])
            raise RuntimeError(
                f"onnx_path={onnx_path}: tf2onnx could not convert {saved_model_path} (the SavedModel is "
                f"complete; pip install -e .[serve] brings tf2onnx):\n{tail}"
            )
        os.replace(tmp, onnx_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def tflite_interpreter(model_path: str | None = None, model_content: bytes | None = None, num_threads=None):
    """An interpreter for a TFLite model (a file or the bytes ``convert_to_tflite`` returns).

    LiteRT's (``pip install ai-edge-litert``, pinned in requirements-dev.txt)
    where it is installed: TensorFlow deprecates ``tf.lite.Interpreter`` and
    has announced its removal in favour of LiteRT. Without it (LiteRT ships
    binary wheels only, e.g. none for musl Linux), TensorFlow's interpreter,
    which runs the same models. Both have ``get_signature_runner("serving_default")``.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter  # noqa: PLC0415
    except ImportError:
        import tensorflow as tf  # noqa: PLC0415

        Interpreter = tf.lite.Interpreter  # noqa: N806
    return Interpreter(model_path=model_path, model_content=model_content, num_threads=num_threads)


# ----------------------------------------------------------------------------------------------------------
# Files.


def _check_destination(path: str, overwrite: bool, field: str) -> None:
    if os.path.exists(path) and not overwrite and not (os.path.isdir(path) and not os.listdir(path)):
        raise FileExistsError(
            f"{field}={path} already exists; remove it, choose another path or set overwrite"
        )


def export_config_dict(config: ExportConfig, model_config: ModelConfig, checkpoint_file: str) -> dict:
    import keras
    import tensorflow as tf

    outputs = {PREDICTIONS: "int32 [batch, height, width]"}
    if config.save_probabilities:
        outputs[PROBABILITIES] = f"float32 [batch, height, width, {model_config.num_classes}]"
    return {
        "source_checkpoint": os.path.abspath(checkpoint_file),
        "num_classes": model_config.num_classes,
        "inference_scales": list(config.inference_scales),
        "add_flipped_images": config.add_flipped_images,
        "save_probabilities": config.save_probabilities,
        "crop_size": list(config.crop_size) if config.crop_size else None,
        "tflite_path": os.path.abspath(config.tflite_path) if config.tflite_path else None,
        "signatures": {
            "serving_default": {
                "inputs": {IMAGES: "uint8 [batch, height, width, 3] RGB 0..255"},
                "outputs": outputs,
            },
            "serving_bytes": {
                "inputs": {IMAGE_BYTES: "string [batch] encoded PNG/JPEG"},
                "outputs": outputs,
            },
        },
        "model_config": model_config.to_dict(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }


def export_saved_model(model, model_config: ModelConfig, config: ExportConfig, checkpoint_file: str) -> None:
    """Writes the SavedModel and ``export_config.json`` to ``config.export_path``, all or nothing."""
    export_path = os.path.abspath(config.export_path)
    _check_destination(export_path, config.overwrite, "export_path")
    os.makedirs(os.path.dirname(export_path), exist_ok=True)
    tmp = temporary_sibling(export_path, "tmp")
    old = None
    try:
        module = build_serving_module(
            model, config.inference_scales, config.add_flipped_images, config.save_probabilities
        )
        _write_saved_model(module, tmp)
        with open(os.path.join(tmp, EXPORT_CONFIG_NAME), "w", encoding="utf-8") as f:
            json.dump(export_config_dict(config, model_config, checkpoint_file), f, indent=1)
        if os.path.exists(export_path):  # Empty, or overwrite: move aside only once the new one is whole.
            old = temporary_sibling(export_path, "old")
            os.replace(export_path, old)
        try:
            os.replace(tmp, export_path)
        except BaseException:
            if old is not None:  # Put the previous export back.
                os.replace(old, export_path)
                old = None
            raise
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def run_export(config: ExportConfig) -> dict:
    """Loads the checkpoint and writes the SavedModel (and the TFLite model).

    Returns:
        A summary: the checkpoint, the export paths and the seconds each step took.

    Raises:
        FileNotFoundError, FileExistsError, ValueError: messages start with the
        field (= flag) at fault.
    """
    times = {}
    start = time.perf_counter()
    model_config, checkpoint_file = load_model_config(config.checkpoint_path)
    if config.num_classes is not None and config.num_classes != model_config.num_classes:
        raise ValueError(
            f"num_classes={config.num_classes} contradicts the checkpoint's model config "
            f"({checkpoint_model_config_path(checkpoint_file)}: num_classes={model_config.num_classes})"
        )
    _check_destination(os.path.abspath(config.export_path), config.overwrite, "export_path")
    for name in ("tflite_path", "onnx_path"):
        if getattr(config, name) is not None:
            _check_destination(getattr(config, name), config.overwrite, name)
    model, _ = load_model_for_inference(checkpoint_file)
    times["load_s"] = time.perf_counter() - start

    if config.crop_size is not None and config.tflite_path is None:
        logging.info("crop_size is only used for the TFLite input; the SavedModel takes any image size")
    tflite = None
    if config.tflite_path is not None:  # Converted first: a failure leaves nothing behind.
        if model_config.model_variant != "mobilenet_v2":
            logging.warning(
                "TFLite export is meant and tested for mobilenet_v2, not %s", model_config.model_variant
            )
        start = time.perf_counter()
        tflite = convert_to_tflite(
            model,
            config.crop_size,
            config.inference_scales,
            config.add_flipped_images,
            config.save_probabilities,
        )
        times["tflite_s"] = time.perf_counter() - start

    start = time.perf_counter()
    export_saved_model(model, model_config, config, checkpoint_file)
    times["saved_model_s"] = time.perf_counter() - start
    if tflite is not None:
        write_bytes_atomically(config.tflite_path, tflite)
    if config.onnx_path is not None:
        start = time.perf_counter()
        convert_to_onnx(config.export_path, config.onnx_path)
        times["onnx_s"] = time.perf_counter() - start
    return {
        "checkpoint": checkpoint_file,
        "export_path": os.path.abspath(config.export_path),
        "tflite_path": os.path.abspath(config.tflite_path) if config.tflite_path else None,
        "onnx_path": os.path.abspath(config.onnx_path) if config.onnx_path else None,
        "num_classes": model_config.num_classes,
        **{k: round(v, 2) for k, v in times.items()},
    }
