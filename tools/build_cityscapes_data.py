"""Converts Cityscapes (leftImg8bit + gtFine) to DeepLab TFRecord shards.

Expected layout (the official download)::

    cityscapes_root/
      leftImg8bit/{train,val,test}/<city>/<stem>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<stem>_gtFine_labelIds.png

Labels are turned from Cityscapes label ids into the 19 train ids (others ->
255) with the label table of the ``cityscapesscripts`` package
(``cityscapesscripts.helpers.labels``), so there is no need to run its
``createTrainIdLabelImgs.py`` first. The ``test`` split is converted without
labels (its gtFine images hold no annotation); ``trainval`` is train + val.
Shards are named ``train-*``, ``val-*``, ... (DeepLab's newest release calls
them ``train_fine``, ``val_fine``); names are the file stems
(``aachen_000000_000019``).

Usage::

    python -m tools.build_cityscapes_data --cityscapes_root=/data/cityscapes \\
        --output_dir=/data/cityscapes/tfrecord [--splits=train,val] [--num_shards=10]

Needs ``pip install cityscapesscripts``.
"""

from __future__ import annotations

import dataclasses
import glob
import os

from absl import app, flags

from deeplab_dpc.data import conversion, datasets
from tools import conversion_cli

DATASET = datasets.DATASETS["cityscapes"]
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelIds.png"
_COMBINED_SPLITS = {"trainval": ("train", "val")}
_UNLABELLED_SPLITS = ("test",)


@dataclasses.dataclass(frozen=True)
class CityscapesConfig:
    """What to convert and how.

    Args:
      cityscapes_root: folder holding ``leftImg8bit/`` and ``gtFine/``.
      output_dir: where the shards go.
      splits: ``train``, ``val``, ``test`` (no labels), ``trainval``.
      sharding: shard count, workers, shuffling.
    """

    cityscapes_root: str
    output_dir: str
    splits: tuple[str, ...] = ("train", "val")
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=10)


def train_id_table() -> dict[int, int]:
    """Cityscapes label id -> train id (255 for ignored classes), from ``cityscapesscripts``.

    Raises:
      ImportError: the package is not installed (with the command to install it).
    """
    try:
        from cityscapesscripts.helpers import labels as cs_labels  # noqa: PLC0415
    except ImportError as e:
        raise ImportError(
            "build_cityscapes_data needs the cityscapesscripts package for the Cityscapes "
            "label table (label ids -> train ids): pip install cityscapesscripts"
        ) from e
    table = {}
    for label in cs_labels.labels:
        if label.id < 0:  # "license plate": not a value of labelIds images
            continue
        table[label.id] = label.trainId if 0 <= label.trainId < 255 else DATASET.ignore_label
    return table


def list_examples(cityscapes_root: str, split: str) -> list[conversion.SourceExample]:
    """The image/label pairs of one split, sorted by path."""
    if split in _COMBINED_SPLITS:
        return [e for part in _COMBINED_SPLITS[split] for e in list_examples(cityscapes_root, part)]
    image_dir = os.path.join(cityscapes_root, "leftImg8bit", split)
    images = sorted(glob.glob(os.path.join(glob.escape(image_dir), "*", "*" + IMAGE_SUFFIX)))
    if not images:
        raise conversion.ConversionError(f"Cityscapes split {split!r}: no */*{IMAGE_SUFFIX} images in {image_dir}")
    examples = []
    for image in images:
        city = os.path.basename(os.path.dirname(image))
        stem = os.path.basename(image)[: -len(IMAGE_SUFFIX)]
        label = None
        if split not in _UNLABELLED_SPLITS:
            label = os.path.join(cityscapes_root, "gtFine", split, city, stem + LABEL_SUFFIX)
        examples.append(conversion.SourceExample(image, label, stem))
    return examples


def build(config: CityscapesConfig) -> dict[str, conversion.ConversionResult]:
    """Converts every split of ``config``; returns the result per split."""
    return conversion.convert_dataset_splits(
        config.splits, lambda split: list_examples(config.cityscapes_root, split), DATASET, config,
        title="Cityscapes", found="examples found", label_fn=conversion.label_lut(train_id_table()),
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("cityscapes_root", None, "Cityscapes root holding leftImg8bit/ and gtFine/.", flag_values=fv)
    flags.DEFINE_list("splits", ["train", "val"], "Splits to convert: train, val, test, trainval.", flag_values=fv)
    conversion_cli.define_sharding_flags(fv, num_shards=10)
    flags.mark_flags_as_required(["cityscapes_root", "output_dir"], flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> CityscapesConfig:
    return CityscapesConfig(
        cityscapes_root=fv.cityscapes_root,
        output_dir=fv.output_dir,
        splits=tuple(fv.splits),
        sharding=conversion_cli.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion_cli.run_tool(argv, flag_values, config_from_flags, build)


if __name__ == "__main__":
    define_flags()
    app.run(main)
