"""Any folder of images (and class-id labels) -> DeepLab TFRecord shards.

For a user-defined dataset: images in one folder, class-id label PNGs (grey
or palette) in another, a list of names (or every image of the folder), and a
dataset descriptor (a built-in name or a JSON file, see ``datasets``) that
gives the number of classes and the ignore label every label is checked
against. ``tools/build_folder_data.py`` is its command line; the demo calls it
directly.

Example:
    >>> result = convert_folder(FolderConfig(image_dir="my/images", label_dir="my/labels",
    ...     list_file="my/train.txt", split="train", dataset="my/dataset.json",
    ...     output_dir="/data/my/tfrecord"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses

from deeplab_dpc.data import conversion, datasets


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """What to convert and how. Field names are ``tools/build_folder_data``'s flag names.

    Args:
      image_dir: folder of images.
      label_dir: folder of ``<name><label_suffix>`` labels; None for none.
      list_file: names to take; None for every image of ``image_dir``.
      split: split name of the shards.
      dataset: a built-in dataset name or a JSON descriptor path.
      output_dir: where the shards go.
      label_suffix: label file ending.
      label_map: raw label value -> class id, applied before the check.
      sharding: shard count, workers, shuffling.
    """

    image_dir: str
    label_dir: str | None
    list_file: str | None
    split: str
    dataset: str
    output_dir: str
    label_suffix: str = ".png"
    label_map: tuple[tuple[int, int], ...] = ()
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=4)


def list_examples(config: FolderConfig) -> list[conversion.SourceExample]:
    """The listed examples, or every image of ``image_dir`` without a list file."""
    if config.list_file:
        return conversion.examples_from_list(
            config.list_file, config.image_dir, config.label_dir, label_suffix=config.label_suffix
        )
    return conversion.examples_from_dirs(config.image_dir, config.label_dir, label_suffix=config.label_suffix)


def convert_folder(config: FolderConfig) -> conversion.ConversionResult:
    """Converts the listed examples to shards of ``config.split``."""
    descriptor = datasets.get_dataset(config.dataset)
    return conversion.convert_split(
        list_examples(config),
        config.output_dir,
        config.split,
        num_classes=descriptor.num_classes,
        ignore_label=descriptor.ignore_label,
        label_fn=conversion.label_lut(dict(config.label_map)) if config.label_map else None,
        sharding=config.sharding,
        config=dataclasses.asdict(config),
    )
