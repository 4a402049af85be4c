"""Converts any folder of images (and labels) to DeepLab TFRecord shards.

For a user-defined dataset: images in one folder, class-id label PNGs (grey
or palette) in another, a list of names (or every image of the folder), and a
dataset descriptor (a built-in name or a JSON file, see
``deeplab_dpc.data.datasets``) that gives the number of classes and the ignore
label every label is checked against.

Usage::

    python -m tools.build_folder_data --image_dir=my/images --label_dir=my/labels \\
        --list_file=my/train.txt --split=train --dataset=my/dataset.json \\
        --output_dir=/data/my/tfrecord [--label_map=11:255]

Without ``--label_dir`` the examples have no labels (a test split); without
``--list_file`` every image of ``--image_dir`` is taken, sorted by name.
``--label_map`` remaps raw label values (``src:dst`` pairs) before the check.
"""

from __future__ import annotations

import dataclasses

from absl import app, flags

from deeplab_dpc.data import conversion, datasets


@dataclasses.dataclass(frozen=True)
class FolderConfig:
    """What to convert and how.

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


def parse_label_map(items) -> tuple[tuple[int, int], ...]:
    """``["11:255", "12:0"]`` -> ``((11, 255), (12, 0))``; ValueError naming a bad item."""
    pairs = []
    for item in items:
        try:
            source, target = (int(part) for part in item.split(":"))
        except ValueError:
            raise ValueError(f"--label_map item {item!r} is not src:dst (two integers)") from None
        if not 0 <= target <= 255:
            raise ValueError(f"--label_map item {item!r}: target must be in 0..255")
        pairs.append((source, target))
    return tuple(pairs)


def list_examples(config: FolderConfig) -> list[conversion.SourceExample]:
    if config.list_file:
        return conversion.examples_from_list(
            config.list_file, config.image_dir, config.label_dir, label_suffix=config.label_suffix
        )
    return conversion.examples_from_dirs(config.image_dir, config.label_dir, label_suffix=config.label_suffix)


def build(config: FolderConfig) -> conversion.ConversionResult:
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


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("image_dir", None, "Folder of images.", flag_values=fv)
    flags.DEFINE_string("label_dir", None, "Folder of label PNGs (omit for unlabelled examples).", flag_values=fv)
    flags.DEFINE_string("list_file", None, "Names to convert, one a line (default: every image).", flag_values=fv)
    flags.DEFINE_string("split", None, "Split name of the shards.", flag_values=fv)
    flags.DEFINE_string("dataset", None, "Built-in dataset name or JSON descriptor (classes, ignore label).",
                        flag_values=fv)
    flags.DEFINE_string("label_suffix", ".png", "Label file ending after the name.", flag_values=fv)
    flags.DEFINE_list("label_map", [], "Raw label value remapping, src:dst pairs (e.g. 11:255).", flag_values=fv)
    conversion.define_sharding_flags(fv, num_shards=4, num_shards_help="Shards.")
    flags.mark_flags_as_required(["image_dir", "split", "dataset", "output_dir"], flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> FolderConfig:
    try:
        label_map = parse_label_map(fv.label_map)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return FolderConfig(
        image_dir=fv.image_dir,
        label_dir=fv.label_dir,
        list_file=fv.list_file,
        split=fv.split,
        dataset=fv.dataset,
        output_dir=fv.output_dir,
        label_suffix=fv.label_suffix,
        label_map=label_map,
        sharding=conversion.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion.run_tool(argv, flag_values, config_from_flags, build)


if __name__ == "__main__":
    define_flags()
    app.run(main)
