"""Visualisation: colour predictions (and raw label PNGs) for a split.

For every image: ``<vis_logdir>/segmentation_results/<name>_image.png``,
``<name>_prediction.png`` (colour), ``<name>_ground_truth.png`` when the split
has labels, and with ``also_save_raw_predictions``
``raw_segmentation_results/<name>.png`` with class ids; for Cityscapes the
raw ids are mapped from train ids back to label ids, as the benchmark server
expects.
"""

from __future__ import annotations

import dataclasses
import os

import cv2
import numpy as np

from deeplab_dpc.data.batches import DataConfig, make_batches
from deeplab_dpc.data.colormaps import label_to_color
from deeplab_dpc.data.preprocess import PreprocessConfig
from deeplab_dpc.evaluation.eval_lib import config_dict, make_predict_fn
from deeplab_dpc.fileio import atomic_path, write_json
from deeplab_dpc.runs import latest_checkpoint, load_model_for_inference, run_model_config_path

# Cityscapes train id -> label id (cityscapesscripts' table, for the 19 evaluated classes).
CITYSCAPES_TRAIN_ID_TO_LABEL_ID = np.array(
    [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33], np.uint8
)


@dataclasses.dataclass(frozen=True)
class VisConfig:
    """Visualisation settings (DeepLab's vis.py flags)."""

    checkpoint_dir: str
    vis_logdir: str
    data: DataConfig
    vis_split: str = "val"
    vis_crop_size: tuple[int, int] = (513, 513)
    eval_scales: tuple[float, ...] = (1.0,)
    add_flipped_images: bool = False
    colormap_type: str | None = None
    also_save_raw_predictions: bool = False
    max_number_of_images: int | None = None


def _write_png(path: str, array: np.ndarray) -> None:
    """Writes atomically; colour arrays are RGB."""
    image = array[:, :, ::-1] if array.ndim == 3 else array
    with atomic_path(path, suffix=".png") as tmp:  # OpenCV picks the format by the ending
        if not cv2.imwrite(tmp, image):
            raise OSError(f"cannot write {path}")


def visualize(config: VisConfig) -> list[str]:
    """Writes the PNGs for ``vis_split``; returns the image names."""
    run_model_config_path(config.checkpoint_dir)  # a clear error if this is not a training run
    checkpoint = latest_checkpoint(config.checkpoint_dir)
    if checkpoint is None:
        raise ValueError(f"checkpoint_dir={config.checkpoint_dir} holds no checkpoint")
    descriptor = config.data.descriptor
    colormap = config.colormap_type or descriptor.colormap
    model, _ = load_model_for_inference(checkpoint)
    predict = make_predict_fn(model, config.eval_scales, config.add_flipped_images)
    preprocess = PreprocessConfig(config.vis_crop_size, ignore_label=descriptor.ignore_label, is_training=False)
    batches = make_batches(config.data, config.vis_split, preprocess, 1, as_tuple=False)
    colour_dir = os.path.join(config.vis_logdir, "segmentation_results")
    raw_dir = os.path.join(config.vis_logdir, "raw_segmentation_results")
    os.makedirs(colour_dir, exist_ok=True)
    write_json(os.path.join(config.vis_logdir, "vis_config.json"), config_dict(config))
    if config.also_save_raw_predictions:
        os.makedirs(raw_dir, exist_ok=True)
    names = []
    for batch in batches:
        if config.max_number_of_images is not None and len(names) >= config.max_number_of_images:
            break
        prediction = np.asarray(predict(batch["image"]))[0]
        height, width = int(np.asarray(batch["height"])[0]), int(np.asarray(batch["width"])[0])
        prediction = prediction[:height, :width]
        name = np.asarray(batch["image_name"])[0]
        name = os.path.splitext(os.path.basename(name.decode() if isinstance(name, bytes) else str(name)))[0]
        image = np.asarray(batch["original_image"])[0][:height, :width]
        _write_png(os.path.join(colour_dir, f"{name}_image.png"), image.astype(np.uint8))
        _write_png(
            os.path.join(colour_dir, f"{name}_prediction.png"),
            label_to_color(prediction, colormap, ignore_label=descriptor.ignore_label),
        )
        if "label" in batch:
            label = np.asarray(batch["label"])[0, :height, :width, 0]
            _write_png(
                os.path.join(colour_dir, f"{name}_ground_truth.png"),
                label_to_color(label, colormap, ignore_label=descriptor.ignore_label),
            )
        if config.also_save_raw_predictions:
            raw = prediction.astype(np.uint8)
            if descriptor.name == "cityscapes":
                raw = CITYSCAPES_TRAIN_ID_TO_LABEL_ID[raw]
            _write_png(os.path.join(raw_dir, f"{name}.png"), raw)
        names.append(name)
    return names
