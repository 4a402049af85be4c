"""Converts CamVid (SegNet's 11-class layout) to DeepLab TFRecord shards.

Expected layout (as in SegNet's release and ``shared/data/camvid``)::

    camvid_root/
      train/ trainannot/ train.txt     # 480x360 RGB PNGs, label PNGs, stems
      val/   valannot/   val.txt
      test/  testannot/  test.txt      # if present

Labels hold class ids 0..10 and 11 for "void"; void becomes the ignore label
255. Without ``<split>.txt`` every image of ``<split>/`` is taken. The split
``trainval`` is train followed by val.

Usage::

    python -m tools.build_camvid_data --camvid_root=../shared/data/camvid \\
        --output_dir=/tmp/camvid_tfrecord [--splits=train,val] [--num_shards=4]

Each split's ``<split>.manifest.json`` in ``output_dir`` records this config.
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from deeplab_dpc.data import conversion, datasets
from tools import conversion_cli

DATASET = datasets.DATASETS["camvid"]
VOID_ID = 11
# SegNet's void (11) -> ignore label; ids 0..10 are kept; anything else fails
# the range check, naming its file.
LABEL_FN = conversion.label_lut({VOID_ID: DATASET.ignore_label})
_COMBINED_SPLITS = {"trainval": ("train", "val")}


@dataclasses.dataclass(frozen=True)
class CamVidConfig:
    """What to convert and how.

    Args:
      camvid_root: folder holding ``<split>/``, ``<split>annot/``, ``<split>.txt``.
      output_dir: where the shards go.
      splits: splits to convert (``train``, ``val``, ``test``, ``trainval``).
      sharding: shard count, workers, shuffling.
    """

    camvid_root: str
    output_dir: str
    splits: tuple[str, ...] = ("train", "val")
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=4)


def list_examples(camvid_root: str, split: str) -> list[conversion.SourceExample]:
    """The image/label pairs of one split, in list-file order."""
    if split in _COMBINED_SPLITS:
        return [e for part in _COMBINED_SPLITS[split] for e in list_examples(camvid_root, part)]
    image_dir = os.path.join(camvid_root, split)
    label_dir = os.path.join(camvid_root, split + "annot")
    if not os.path.isdir(image_dir):
        raise conversion.ConversionError(f"CamVid split {split!r}: no folder {image_dir}")
    if not os.path.isdir(label_dir):
        raise conversion.ConversionError(f"CamVid split {split!r}: no label folder {label_dir}")
    list_file = os.path.join(camvid_root, split + ".txt")
    if os.path.isfile(list_file):
        return conversion.examples_from_list(list_file, image_dir, label_dir)
    return conversion.examples_from_dirs(image_dir, label_dir)


def convert(
    examples: list[conversion.SourceExample],
    output_dir: str,
    split: str,
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=4),
    config: dict | None = None,
) -> conversion.ConversionResult:
    """Converts CamVid examples (void 11 -> 255) to shards of ``split``."""
    return conversion.convert_split(
        examples,
        output_dir,
        split,
        num_classes=DATASET.num_classes,
        ignore_label=DATASET.ignore_label,
        label_fn=LABEL_FN,
        sharding=sharding,
        config=config,
    )


def build(config: CamVidConfig) -> dict[str, conversion.ConversionResult]:
    """Converts every split of ``config``; returns the result per split."""
    return conversion.convert_dataset_splits(
        config.splits, lambda split: list_examples(config.camvid_root, split), DATASET, config,
        title="CamVid", label_fn=LABEL_FN,
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("camvid_root", None, "CamVid root holding train/, trainannot/, train.txt, ...", flag_values=fv)
    flags.DEFINE_list("splits", ["train", "val"], "Splits to convert: train, val, test, trainval.", flag_values=fv)
    conversion_cli.define_sharding_flags(fv, num_shards=4)
    flags.mark_flags_as_required(["camvid_root", "output_dir"], flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> CamVidConfig:
    return CamVidConfig(
        camvid_root=fv.camvid_root,
        output_dir=fv.output_dir,
        splits=tuple(fv.splits),
        sharding=conversion_cli.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion_cli.run_tool(argv, flag_values, config_from_flags, build)


if __name__ == "__main__":
    define_flags()
    app.run(main)
