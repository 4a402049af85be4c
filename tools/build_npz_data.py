"""Packs dataset splits into ``<split>.npz`` files for the TensorFlow-free loader.

For a GPU host with JAX and no TensorFlow, or to carry a dataset where its
image files do not fit: each split becomes one ``.npz`` of encoded images
(JPEG by default, or lossless PNG) and label PNGs, read back with
``--dataset_format=npz`` (``deeplab_dpc/data/packing.py`` has the details).
Any source the loader reads can be packed: DeepLab TFRecords or an image
folder (SegNet or VOC layout).

Usage::

    python -m tools.build_npz_data --dataset=camvid --dataset_format=folder \\
        --dataset_dir=../shared/data/camvid --label_remap=11:255 \\
        --output_dir=/tmp/camvid_npz [--splits=train,val] [--image_format=jpeg --jpeg_quality=95]
"""

from __future__ import annotations

from absl import app, flags

from deeplab_dpc import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines this tool's flags (called by ``__main__``; tests pass their own FlagValues)."""
    fv = flag_values
    cli.define_data_flags(fv, loader=False)
    flags.DEFINE_list("splits", ["train", "val"], "Splits to pack, each to <output_dir>/<split>.npz.", flag_values=fv)
    flags.DEFINE_string("output_dir", None, "Folder for the packed splits.", flag_values=fv)
    flags.DEFINE_enum("image_format", "jpeg", ["jpeg", "png"], "Image encoding: jpeg (small) or png (lossless).",
                      flag_values=fv)
    flags.DEFINE_integer("jpeg_quality", 95, "JPEG quality, 1..100.", flag_values=fv)
    flags.mark_flags_as_required(["dataset_dir", "output_dir"], flag_values=fv)


def config_from_flags(fv: flags.FlagValues):
    from deeplab_dpc.data.packing import PackConfig  # noqa: PLC0415

    data = cli.data_config_from_flags(fv)
    try:
        return PackConfig(
            data=data, splits=tuple(fv.splits), output_dir=fv.output_dir, image_format=fv.image_format,
            jpeg_quality=fv.jpeg_quality,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    from deeplab_dpc.data.packing import pack_dataset  # noqa: PLC0415

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    pack_dataset(config_from_flags(flag_values))  # logs each split's summary


if __name__ == "__main__":
    define_flags()
    app.run(main)
