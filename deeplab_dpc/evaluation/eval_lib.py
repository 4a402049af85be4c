"""Evaluate checkpoints: mIoU over a split, once or each new checkpoint.

The confusion matrix is accumulated over the whole split (as DeepLab), with
multi-scale and flipped inference. Results go to ``eval_logdir`` as
``eval-<step>.json`` (and ``latest.json``) and to TensorBoard when TensorFlow
is present.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Iterable

import keras
import numpy as np

from deeplab_dpc.data.batches import DataConfig, make_batches
from deeplab_dpc.data.preprocess import PreprocessConfig
from deeplab_dpc.evaluation.inference import predict_labels
from deeplab_dpc.evaluation.metrics import ConfusionMatrix
from deeplab_dpc.fileio import write_json
from deeplab_dpc.runs import latest_checkpoint, list_checkpoints, load_model_for_inference, run_model_config_path
from deeplab_dpc.summaries import write_scalars

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (DeepLab's eval.py flags).

    Args:
        checkpoint_dir: a train_logdir (its ``model_config.json`` defines the model).
        eval_logdir: where results are written.
        data: the dataset.
        eval_split: split to evaluate.
        eval_crop_size: images are padded to this (height, width) and must
            not be larger (DeepLab's whole-image evaluation).
        eval_scales: inference scales; probabilities are averaged.
        add_flipped_images: also average the mirrored images.
        eval_batch_size: images per batch.
        eval_interval_secs: poll interval for new checkpoints.
        max_number_of_evaluations: 1 for a single pass; 0 for forever.
        max_examples: evaluate only the first N examples (None: all).
    """

    checkpoint_dir: str
    eval_logdir: str
    data: DataConfig
    eval_split: str = "val"
    eval_crop_size: tuple[int, int] = (513, 513)
    eval_scales: tuple[float, ...] = (1.0,)
    add_flipped_images: bool = False
    eval_batch_size: int = 1
    eval_interval_secs: float = 300.0
    max_number_of_evaluations: int = 1
    max_examples: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "eval_crop_size", tuple(int(v) for v in self.eval_crop_size))
        object.__setattr__(self, "eval_scales", tuple(float(s) for s in self.eval_scales))
        if len(self.eval_crop_size) != 2 or min(self.eval_crop_size) < 1:
            raise ValueError(f"eval_crop_size must be two positive integers, got {self.eval_crop_size}")
        if not self.eval_scales or min(self.eval_scales) <= 0:
            raise ValueError(f"eval_scales must be positive, got {list(self.eval_scales)}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be positive, got {self.eval_batch_size}")
        if self.max_number_of_evaluations < 0:
            raise ValueError(f"max_number_of_evaluations must be >= 0, got {self.max_number_of_evaluations}")
        if not os.path.isdir(self.checkpoint_dir):
            raise ValueError(f"checkpoint_dir={self.checkpoint_dir} is not a directory")
        run_model_config_path(self.checkpoint_dir)


def make_predict_fn(model, scales, add_flipped_images):
    """``images -> labels``, compiled: a tf.function on TensorFlow, ``jax.jit`` on JAX.

    Either way the model's weights are read at each call, so one function
    serves every evaluation of a training run; it compiles once per input shape.
    """

    def predict(images):
        return predict_labels(model, images, scales, add_flipped_images)

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf  # noqa: PLC0415

        return tf.function(predict, reduce_retracing=True)
    if backend == "jax":
        return _jit_with_weights(model, predict)
    return predict


def _jit_with_weights(model, fn):
    """``fn(images)`` under ``jax.jit``, the weights passed in as arguments (never baked in as constants)."""
    import jax  # noqa: PLC0415

    variables = list(model.variables)

    def stateless(values, images):
        with keras.StatelessScope(state_mapping=list(zip(variables, values))):
            return fn(images)

    compiled = jax.jit(stateless)
    return lambda images: compiled([v.value for v in variables], images)


def make_eval_batches(data: DataConfig, split: str, eval_crop_size, batch_size: int = 1):
    """One pass over ``split`` as sample dicts: whole images padded to ``eval_crop_size`` (DeepLab's eval).

    Training's in-loop evaluation uses this too, so its mIoU is the one this module reports.
    """
    preprocess = PreprocessConfig(
        crop_size=tuple(eval_crop_size), ignore_label=data.descriptor.ignore_label, is_training=False
    )
    return make_batches(data, split, preprocess, batch_size, as_tuple=False)


def confusion_over(
    predict_fn, batches: Iterable, num_classes: int, ignore_label: int, max_examples: int | None = None
) -> ConfusionMatrix:
    """Accumulates the confusion matrix of ``predict_fn`` over batches of sample dicts."""
    matrix = ConfusionMatrix(num_classes, ignore_label)
    seen = 0
    for batch in batches:
        images, labels = batch["image"], np.asarray(batch["label"])
        if max_examples is not None:
            keep = max_examples - seen
            if keep <= 0:
                break
            images, labels = images[:keep], labels[:keep]
        predictions = np.asarray(predict_fn(images))
        matrix.update(labels[..., 0], predictions)
        seen += len(labels)
    return matrix


def evaluate_checkpoint(config: EvalConfig, checkpoint: str) -> dict:
    """One pass over the split; returns and writes the results."""
    descriptor = config.data.descriptor
    model, _ = load_model_for_inference(checkpoint)
    batches = make_eval_batches(config.data, config.eval_split, config.eval_crop_size, config.eval_batch_size)
    start = time.time()
    predict_fn = make_predict_fn(model, config.eval_scales, config.add_flipped_images)
    matrix = confusion_over(predict_fn, batches, descriptor.num_classes, descriptor.ignore_label, config.max_examples)
    iou = matrix.per_class_iou()
    step = _step_of(checkpoint)
    results = {
        "checkpoint": checkpoint,
        "step": step,
        "eval_split": config.eval_split,
        "eval_scales": list(config.eval_scales),
        "add_flipped_images": config.add_flipped_images,
        "miou": matrix.mean_iou(),
        "pixel_accuracy": matrix.pixel_accuracy(),
        "per_class_iou": {
            name: (None if np.isnan(v) else float(v)) for name, v in zip(descriptor.class_names, iou)
        },
        "num_pixels": int(matrix.matrix.sum()),
        "seconds": time.time() - start,
    }
    write_results(config.eval_logdir, results)
    return results


def write_results(eval_logdir: str, results: dict) -> None:
    for name in (f"eval-{results['step']:08d}.json", "latest.json"):
        write_json(os.path.join(eval_logdir, name), results)
    write_scalars(eval_logdir, results["step"], {"eval/miou": results["miou"]} | {
        f"eval/iou/{name}": value for name, value in results["per_class_iou"].items() if value is not None
    })


def _step_of(checkpoint: str) -> int:
    name = os.path.basename(checkpoint)
    digits = "".join(ch for ch in name.split(".")[0] if ch.isdigit())
    return int(digits) if digits else 0


def config_dict(config) -> dict:
    """An eval/vis config as JSON-able data (written next to the outputs)."""
    out = dataclasses.asdict(config)
    out["data"] = config.data.to_dict()
    return out


def run_evaluation(config: EvalConfig) -> list[dict]:
    """Evaluates the latest checkpoint, then (if asked) each new one as it appears."""
    write_json(os.path.join(config.eval_logdir, "eval_config.json"), config_dict(config))
    done: set[str] = set()
    all_results = []
    while True:
        checkpoint = latest_checkpoint(config.checkpoint_dir)
        if checkpoint is not None and checkpoint not in done:
            results = evaluate_checkpoint(config, checkpoint)
            log.info("step %d: mIoU %.4f", results["step"], results["miou"])
            done.add(checkpoint)
            all_results.append(results)
            if config.max_number_of_evaluations and len(all_results) >= config.max_number_of_evaluations:
                return all_results
        elif checkpoint is None and not list_checkpoints(config.checkpoint_dir) and config.max_number_of_evaluations == 1:
            raise ValueError(f"checkpoint_dir={config.checkpoint_dir} holds no checkpoint")
        time.sleep(config.eval_interval_secs)
