r"""Writes colour predictions (and raw label PNGs) for a split, named after the images.

    python -m deeplab_dpc.vis --checkpoint_dir=RUN --vis_logdir=RUN/vis \
        --dataset=camvid --dataset_dir=DIR --vis_split=val --vis_crop_size=360,480 \
        [--also_save_raw_predictions] [--colormap_type=camvid]

The model comes from ``RUN/model_config.json`` (model flags need not be repeated).
"""

from __future__ import annotations

import logging
import os

from absl import app, flags

from deeplab_dpc import cli


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_run_reader_flags(fv)
    f = dict(flag_values=fv)
    flags.DEFINE_string("vis_logdir", None, "Where PNGs go (default: checkpoint_dir/vis).", **f)
    flags.DEFINE_string("vis_split", "val", "Split to visualise.", **f)
    flags.DEFINE_list("vis_crop_size", ["513", "513"], "Images are padded to 'height,width'.", **f)
    flags.DEFINE_string("colormap_type", None, "pascal, cityscapes, ade20k or camvid (default: the dataset's).", **f)
    flags.DEFINE_boolean("also_save_raw_predictions", False, "Also write class-id PNGs (Cityscapes: label ids).", **f)
    flags.DEFINE_integer("max_number_of_images", None, "Stop after N images.", **f)


def config_from_flags(fv: flags.FlagValues):
    from deeplab_dpc.data.colormaps import COLORMAPS  # noqa: PLC0415
    from deeplab_dpc.evaluation.vis_lib import VisConfig  # noqa: PLC0415
    from deeplab_dpc.runs import resolve_model_config  # noqa: PLC0415

    if not fv.checkpoint_dir:
        raise app.UsageError("--checkpoint_dir is required")
    if fv.colormap_type is not None and fv.colormap_type not in COLORMAPS:
        raise app.UsageError(f"--colormap_type={fv.colormap_type} is unknown; valid: {sorted(COLORMAPS)}")
    data = cli.data_config_from_flags(fv)
    try:
        resolve_model_config(fv.checkpoint_dir, **cli.given_model_flags(fv))
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None
    return VisConfig(
        checkpoint_dir=fv.checkpoint_dir,
        vis_logdir=fv.vis_logdir or os.path.join(fv.checkpoint_dir, "vis"),
        data=data,
        vis_split=fv.vis_split,
        vis_crop_size=cli.parse_pair(fv.vis_crop_size, "vis_crop_size"),
        eval_scales=cli.parse_floats(fv.eval_scales, "eval_scales"),
        add_flipped_images=fv.add_flipped_images,
        colormap_type=fv.colormap_type,
        also_save_raw_predictions=fv.also_save_raw_predictions,
        max_number_of_images=fv.max_number_of_images,
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags(flags.FLAGS)
    from deeplab_dpc.evaluation.vis_lib import visualize  # noqa: PLC0415

    names = visualize(config)
    logging.info("wrote %d images to %s", len(names), config.vis_logdir)


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
