"""Packs dataset splits into one ``<split>.npz`` each, for hosts without TensorFlow.

A GPU host that has JAX but no TensorFlow reads DeepLab TFRecords and image
folders directly (``numpy_loader``), but carrying CamVid's 125 MB of PNGs to
it may not fit; re-encoded as JPEG and packed, its train and val splits take
about 20 MB. The ``.npz`` holds encoded bytes + offsets (``write_npz``), is
read with ``allow_pickle=False`` and is written under a temporary name and
renamed, so a packed split is either whole or absent.

Labels are stored losslessly (PNG) after ``label_remap`` and are checked
against the dataset's classes and ignore label, naming the example that fails;
the packed split therefore needs no ``label_remap`` when read.

Example::

    python -m tools.build_npz_data --dataset=camvid --dataset_format=folder \\
        --dataset_dir=../shared/data/camvid --label_remap=11:255 --output_dir=/data/camvid_npz
    python -m deeplab_dpc.train ... --dataset_format=npz --dataset_dir=/data/camvid_npz
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os
import time

import cv2
import numpy as np

from deeplab_dpc.data.batches import DataConfig, open_source
from deeplab_dpc.data.conversion import check_label_values
from deeplab_dpc.data.numpy_loader import write_npz

IMAGE_FORMATS = ("jpeg", "png")

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PackConfig:
    """What to pack and how.

    Args:
      data: where the dataset is and how to read it (any format but ``npz``).
      splits: the splits to pack, each to ``<output_dir>/<split>.npz``.
      output_dir: folder of the packed splits.
      image_format: ``jpeg`` (small; lossy at ``jpeg_quality``) or ``png``
        (lossless).
      jpeg_quality: 1..100.

    Encoding runs on ``data.workers`` threads.
    """

    data: DataConfig
    splits: tuple[str, ...] = ("train", "val")
    output_dir: str = ""
    image_format: str = "jpeg"
    jpeg_quality: int = 95

    def __post_init__(self):
        if self.data.dataset_format == "npz":
            raise ValueError("dataset_format=npz: the dataset is packed already")
        if not self.splits:
            raise ValueError("splits is empty: name at least one split to pack")
        if not self.output_dir:
            raise ValueError("output_dir is required")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format={self.image_format!r} is unknown; valid: {list(IMAGE_FORMATS)}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality={self.jpeg_quality} must be in 1..100")


@dataclasses.dataclass(frozen=True)
class PackResult:
    split: str
    path: str
    num_examples: int
    num_bytes: int
    seconds: float

    def summary(self) -> str:
        return (
            f"{self.split}: {self.num_examples} examples -> {self.path} "
            f"({self.num_bytes / 2**20:.1f} MiB, {self.seconds:.1f} s)"
        )


def encode_image(image: np.ndarray, image_format: str, jpeg_quality: int = 95) -> bytes:
    """uint8 RGB ``[H, W, 3]`` -> JPEG or PNG bytes."""
    bgr = np.ascontiguousarray(image[..., ::-1])
    if image_format == "jpeg":
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)])
    else:
        ok, data = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"{image_format} encoding failed for an image of shape {image.shape}")
    return data.tobytes()


def encode_label(label: np.ndarray) -> bytes:
    """uint8 class ids ``[H, W(, 1)]`` -> single-channel PNG bytes."""
    ok, data = cv2.imencode(".png", np.ascontiguousarray(label.reshape(label.shape[:2])))
    if not ok:
        raise ValueError(f"PNG encoding failed for a label of shape {label.shape}")
    return data.tobytes()


def pack_split(config: PackConfig, split: str) -> PackResult:
    """Packs one split to ``<output_dir>/<split>.npz`` and returns what was written."""
    start = time.time()
    source = open_source(config.data, split)
    descriptor = config.data.descriptor
    where = f"{config.data.dataset_dir} ({config.data.dataset_format}) split {split!r}"

    def encode(index: int):
        sample = source[index]
        name = sample["image_name"]
        label = sample.get("label")
        if label is not None:
            check_label_values(label, descriptor.num_classes, descriptor.ignore_label, f"{where} example {name!r}")
        image = encode_image(sample["image"], config.image_format, config.jpeg_quality)
        return name, image, None if label is None else encode_label(label)

    with concurrent.futures.ThreadPoolExecutor(config.data.workers) as pool:  # OpenCV releases the GIL
        encoded = list(pool.map(encode, range(len(source))))
    labelled = [label is not None for _, _, label in encoded]
    if any(labelled) and not all(labelled):
        missing = [name for name, _, label in encoded if label is None][:5]
        raise ValueError(f"{where}: some examples have labels and some do not (unlabelled: {missing})")
    path = os.path.join(config.output_dir, f"{split}.npz")
    write_npz(
        path,
        [image for _, image, _ in encoded],
        [label for _, _, label in encoded] if all(labelled) and encoded else None,
        [name for name, _, _ in encoded],
    )
    return PackResult(split, path, len(encoded), os.path.getsize(path), time.time() - start)


def pack_dataset(config: PackConfig) -> dict[str, PackResult]:
    """Packs each split of ``config.splits`` in turn; a split already written stays if a later one fails."""
    results = {}
    for split in config.splits:
        results[split] = pack_split(config, split)
        _log.info(results[split].summary())
    return results
