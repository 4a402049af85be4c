"""Converts PASCAL VOC 2012 segmentation (and SBD's train_aug) to DeepLab TFRecord shards.

Flags follow DeepLab's ``build_voc2012_data.py``::

    python -m tools.build_voc2012_data \\
        --image_folder=VOCdevkit/VOC2012/JPEGImages \\
        --semantic_segmentation_folder=VOCdevkit/VOC2012/SegmentationClass \\
        --list_folder=VOCdevkit/VOC2012/ImageSets/Segmentation \\
        --output_dir=/data/voc/tfrecord [--sbd_root=benchmark_RELEASE/dataset]

Labels may be VOC's palette PNGs (``SegmentationClass``): their palette
indices are the class ids (0..20, 255 on object borders), so DeepLab's
``remove_gt_colormap.py`` step is not needed; grey PNGs of ids
(``SegmentationClassRaw``, ``SegmentationClassAug``) work too.

Every ``<split>.txt`` of ``--list_folder`` is a split (or only ``--splits``).
With ``--sbd_root`` (the ``dataset/`` folder of the Semantic Boundaries
Dataset: ``cls/*.mat``, ``train.txt``, ``val.txt``) the split ``train_aug`` is
built as well, the usual 10,582 images: VOC train, SBD train and SBD val, minus
VOC val; its labels come from VOC where VOC has one, else from SBD's
``cls/<name>.mat`` (read with scipy).
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import app, flags

from deeplab_dpc.data import conversion, datasets, splits
from tools import conversion_cli

DATASET = datasets.DATASETS["pascal_voc_seg"]
TRAIN_AUG = "train_aug"


@dataclasses.dataclass(frozen=True)
class VocConfig:
    """What to convert and how.

    Args:
      image_folder: ``JPEGImages``.
      semantic_segmentation_folder: ``SegmentationClass`` (palette PNGs) or
        any folder of ``<name>.png`` class-id labels.
      list_folder: ``ImageSets/Segmentation`` with ``<split>.txt`` files.
      output_dir: where the shards go.
      splits: splits to convert; empty for every list file (and ``train_aug``
        when ``sbd_root`` is set).
      sbd_root: SBD's ``dataset`` folder, to build ``train_aug``; None to skip.
      sharding: shard count, workers, shuffling.
    """

    image_folder: str
    semantic_segmentation_folder: str
    list_folder: str
    output_dir: str
    splits: tuple[str, ...] = ()
    sbd_root: str | None = None
    sharding: conversion.ShardingConfig = conversion.ShardingConfig(num_shards=4)


def read_sbd_label(path: str) -> np.ndarray:
    """The class-id map of an SBD ``cls/<name>.mat`` file (``GTcls.Segmentation``)."""
    try:
        from scipy import io as sio  # noqa: PLC0415
    except ImportError as e:
        raise ImportError("reading SBD .mat labels needs scipy: pip install scipy") from e
    try:
        mat = sio.loadmat(path, squeeze_me=True, struct_as_record=False)
        return np.asarray(mat["GTcls"].Segmentation)
    except FileNotFoundError:
        raise conversion.ConversionError(f"label file {path} does not exist") from None
    except Exception as e:
        raise conversion.ConversionError(f"cannot read SBD label {path} (expected GTcls.Segmentation): {e}") from None


def read_label(path: str) -> np.ndarray:
    """``.mat`` files through ``read_sbd_label``, images through ``conversion.read_label``."""
    if path.lower().endswith(".mat"):
        return read_sbd_label(path)
    return conversion.read_label(path)


def train_aug_names(voc_train, voc_val, sbd_train, sbd_val) -> list[str]:
    """VOC train + SBD train + SBD val, minus VOC val, first occurrence order."""
    excluded = set(voc_val)
    names, seen = [], set()
    for name in (*voc_train, *sbd_train, *sbd_val):
        if name not in excluded and name not in seen:
            seen.add(name)
            names.append(name)
    return names


def list_splits(list_folder: str) -> list[str]:
    """The splits of a list folder: one per ``<split>.txt``, sorted."""
    try:
        entries = os.listdir(list_folder)
    except OSError as e:
        raise conversion.ConversionError(f"cannot list {list_folder}: {e}") from None
    return sorted(name[:-4] for name in entries if name.endswith(".txt"))


def list_examples(config: VocConfig, split: str) -> list[conversion.SourceExample]:
    """The examples of ``split`` (``train_aug`` built from SBD when ``sbd_root`` is set)."""
    if split == TRAIN_AUG and config.sbd_root is not None:
        return _train_aug_examples(config)
    list_file = os.path.join(config.list_folder, split + ".txt")
    if not os.path.isfile(list_file):
        raise conversion.ConversionError(f"no list file {list_file} for split {split!r}")
    return conversion.examples_from_list(list_file, config.image_folder, config.semantic_segmentation_folder)


def _train_aug_examples(config: VocConfig) -> list[conversion.SourceExample]:
    def names(path):
        if not os.path.isfile(path):
            raise conversion.ConversionError(f"train_aug needs the list file {path}")
        return splits.list_names(path)

    ordered = train_aug_names(
        names(os.path.join(config.list_folder, "train.txt")),
        names(os.path.join(config.list_folder, "val.txt")),
        names(os.path.join(config.sbd_root, "train.txt")),
        names(os.path.join(config.sbd_root, "val.txt")),
    )
    examples = []
    for name in ordered:
        image = splits.find_file(name, config.image_folder, extensions=splits.IMAGE_EXTENSIONS)
        if image is None:
            image = splits.find_file(name, os.path.join(config.sbd_root, "img"), extensions=splits.IMAGE_EXTENSIONS)
        if image is None:
            raise conversion.ConversionError(
                f"train_aug example {name!r}: no image in {config.image_folder} or {config.sbd_root}/img"
            )
        label = os.path.join(config.semantic_segmentation_folder, name + ".png")
        if not os.path.isfile(label):
            label = os.path.join(config.sbd_root, "cls", name + ".mat")
        examples.append(conversion.SourceExample(image, label, name))
    return examples


def build(config: VocConfig) -> dict[str, conversion.ConversionResult]:
    """Converts every split of ``config``; returns the result per split."""
    splits = list(config.splits) or list_splits(config.list_folder)
    if config.sbd_root is not None and not config.splits and TRAIN_AUG not in splits:
        splits.append(TRAIN_AUG)
    if not splits:
        raise conversion.ConversionError(f"no <split>.txt list files in {config.list_folder}")
    return conversion.convert_dataset_splits(
        splits, lambda split: list_examples(config, split), DATASET, config, title="VOC", read_label_fn=read_label
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    flags.DEFINE_string("image_folder", None, "VOC JPEGImages folder.", flag_values=fv)
    flags.DEFINE_string(
        "semantic_segmentation_folder", None,
        "Label folder: SegmentationClass (palette PNGs) or class-id PNGs.", flag_values=fv,
    )
    flags.DEFINE_string("list_folder", None, "Folder of <split>.txt lists (ImageSets/Segmentation).", flag_values=fv)
    flags.DEFINE_list("splits", [], "Splits to convert (default: every list file, + train_aug with --sbd_root).",
                      flag_values=fv)
    flags.DEFINE_string("sbd_root", None, "SBD dataset/ folder (cls/*.mat, train.txt, val.txt) for train_aug.",
                        flag_values=fv)
    conversion_cli.define_sharding_flags(fv, num_shards=4)
    flags.mark_flags_as_required(
        ["image_folder", "semantic_segmentation_folder", "list_folder", "output_dir"], flag_values=fv
    )


def config_from_flags(fv: flags.FlagValues) -> VocConfig:
    return VocConfig(
        image_folder=fv.image_folder,
        semantic_segmentation_folder=fv.semantic_segmentation_folder,
        list_folder=fv.list_folder,
        output_dir=fv.output_dir,
        splits=tuple(fv.splits),
        sbd_root=fv.sbd_root,
        sharding=conversion_cli.sharding_from_flags(fv),
    )


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    conversion_cli.run_tool(argv, flag_values, config_from_flags, build)


if __name__ == "__main__":
    define_flags()
    app.run(main)
