"""Converts PASCAL-Person-Part (7 part classes) to DeepLab TFRecord shards.

PASCAL-Person-Part (Chen et al., CVPR 2014) annotates VOC 2010 images with
six body parts plus background: 1,716 training and 1,817 validation images.
Expected inputs::

    --image_folder    VOC JPEGImages
    --semantic_segmentation_folder
                      <name>.png part labels, ids 0..6 (grey or palette PNGs;
                      255 is ignored)
    --list_folder     <split>.txt or <split>_id.txt per split, one name a line
                      (paths or "image label" pairs are accepted; the image
                      file's stem is the name)

Usage::

    python -m tools.build_person_part_data --image_folder=VOC2010/JPEGImages \\
        --semantic_segmentation_folder=pascal_person_part/pascal_person_part_gt \\
        --list_folder=pascal_person_part/list --output_dir=/data/person_part/tfrecord
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from deeplab_dpc.data import conversion, datasets
from tools import conversion_cli

DATASET = datasets.DATASETS["pascal_person_part"]


@dataclasses.dataclass(frozen=True)
class PersonPartConfig:
    """What to convert and how.

    Args:
      image_folder: folder of the VOC images.
      semantic_segmentation_folder: folder of ``<name>.png`` part labels.
      list_folder: folder of ``<split>.txt`` (or ``<split>_id.txt``) lists.
      output_dir: where the shards go.
      splits: splits to convert.
      sharding: shard count, workers, shuffling.
    """

    image_folder: str
    semantic_segmentation_folder: str
    list_folder: str
    output_dir: str
    splits: tuple[str, ...] = ("train", "val")
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=4)


def list_file_for(list_folder: str, split: str) -> str:
    """``<split>.txt`` or, failing that, ``<split>_id.txt`` in ``list_folder``."""
    for name in (f"{split}.txt", f"{split}_id.txt"):
        path = os.path.join(list_folder, name)
        if os.path.isfile(path):
            return path
    raise conversion.ConversionError(f"no list file {split}.txt or {split}_id.txt in {list_folder}")


def list_examples(config: PersonPartConfig, split: str) -> list[conversion.SourceExample]:
    return conversion.examples_from_list(
        list_file_for(config.list_folder, split), config.image_folder, config.semantic_segmentation_folder
    )


def build(config: PersonPartConfig) -> dict[str, conversion.ConversionResult]:
    """Converts every split of ``config``; returns the result per split."""
    return conversion.convert_dataset_splits(
        config.splits, lambda split: list_examples(config, split), DATASET, config, title="Person-Part"
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("image_folder", None, "Folder of the VOC images (JPEGImages).", flag_values=fv)
    flags.DEFINE_string("semantic_segmentation_folder", None, "Folder of <name>.png part labels (ids 0..6).",
                        flag_values=fv)
    flags.DEFINE_string("list_folder", None, "Folder of <split>.txt or <split>_id.txt lists.", flag_values=fv)
    flags.DEFINE_list("splits", ["train", "val"], "Splits to convert.", flag_values=fv)
    conversion_cli.define_sharding_flags(fv, num_shards=4)
    flags.mark_flags_as_required(
        ["image_folder", "semantic_segmentation_folder", "list_folder", "output_dir"], flag_values=fv
    )


def config_from_flags(fv: flags.FlagValues) -> PersonPartConfig:
    return PersonPartConfig(
        image_folder=fv.image_folder,
        semantic_segmentation_folder=fv.semantic_segmentation_folder,
        list_folder=fv.list_folder,
        output_dir=fv.output_dir,
        splits=tuple(fv.splits),
        sharding=conversion_cli.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion_cli.run_tool(argv, flag_values, config_from_flags, build)


if __name__ == "__main__":
    define_flags()
    app.run(main)
