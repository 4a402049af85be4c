"""Converts ADE20K (SceneParsing, ADEChallengeData2016) to DeepLab TFRecord shards.

Flags follow DeepLab's ``build_ade20k_data.py``; ``--ade20k_root`` (the
``ADEChallengeData2016`` folder) fills in the four folders::

    python -m tools.build_ade20k_data --ade20k_root=ADEChallengeData2016 \\
        --output_dir=/data/ade20k/tfrecord

    python -m tools.build_ade20k_data \\
        --train_image_folder=ADEChallengeData2016/images/training \\
        --train_image_label_folder=ADEChallengeData2016/annotations/training \\
        --val_image_folder=ADEChallengeData2016/images/validation \\
        --val_image_label_folder=ADEChallengeData2016/annotations/validation \\
        --output_dir=/data/ade20k/tfrecord

Images are ``<name>.jpg``, labels ``<name>.png`` with values 0..150; 0
("other") is the ignore label, as in DeepLab (151 classes). DeepLab shuffles
the examples before sharding; here that is ``--shuffle_seed``. Names are the
file stems (DeepLab stored the image path).
"""

from __future__ import annotations

import dataclasses
import os

from absl import app, flags

from deeplab_dpc.data import conversion, datasets
from tools import conversion_cli

DATASET = datasets.DATASETS["ade20k"]


@dataclasses.dataclass(frozen=True)
class Ade20kConfig:
    """What to convert and how.

    Args:
      folders: split -> (image folder, label folder).
      output_dir: where the shards go.
      sharding: shard count, workers, shuffling.
    """

    folders: dict[str, tuple[str, str]]
    output_dir: str
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=4)


def resolve_folders(
    ade20k_root: str | None,
    train_image_folder: str | None = None,
    train_image_label_folder: str | None = None,
    val_image_folder: str | None = None,
    val_image_label_folder: str | None = None,
) -> dict[str, tuple[str, str]]:
    """split -> (images, labels): explicit folders win over those under ``ade20k_root``."""
    def pick(explicit, *parts):
        if explicit:
            return explicit
        return os.path.join(ade20k_root, *parts) if ade20k_root else None

    folders = {
        "train": (pick(train_image_folder, "images", "training"),
                  pick(train_image_label_folder, "annotations", "training")),
        "val": (pick(val_image_folder, "images", "validation"),
                pick(val_image_label_folder, "annotations", "validation")),
    }
    resolved = {split: pair for split, pair in folders.items() if pair[0] and pair[1]}
    if not resolved:
        raise ValueError("give --ade20k_root, or image and label folders of a split")
    return resolved


def build(config: Ade20kConfig) -> dict[str, conversion.ConversionResult]:
    """Converts every split of ``config``; returns the result per split."""
    return conversion.convert_dataset_splits(
        config.folders, lambda split: conversion.examples_from_dirs(*config.folders[split]), DATASET, config,
        title="ADE20K", found="images found",
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("ade20k_root", None, "ADEChallengeData2016 folder (images/, annotations/).", flag_values=fv)
    flags.DEFINE_string("train_image_folder", None, "Training images (default: <root>/images/training).",
                        flag_values=fv)
    flags.DEFINE_string("train_image_label_folder", None,
                        "Training labels (default: <root>/annotations/training).", flag_values=fv)
    flags.DEFINE_string("val_image_folder", None, "Validation images (default: <root>/images/validation).",
                        flag_values=fv)
    flags.DEFINE_string("val_image_label_folder", None,
                        "Validation labels (default: <root>/annotations/validation).", flag_values=fv)
    conversion_cli.define_sharding_flags(fv, num_shards=4)
    flags.mark_flag_as_required("output_dir", flag_values=fv)


def config_from_flags(fv: flags.FlagValues) -> Ade20kConfig:
    try:
        folders = resolve_folders(
            fv.ade20k_root, fv.train_image_folder, fv.train_image_label_folder,
            fv.val_image_folder, fv.val_image_label_folder,
        )
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    return Ade20kConfig(
        folders=folders,
        output_dir=fv.output_dir,
        sharding=conversion_cli.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion_cli.run_tool(argv, flag_values, config_from_flags, build)


if __name__ == "__main__":
    define_flags()
    app.run(main)
