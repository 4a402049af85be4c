r"""Evaluates checkpoints of a training run: mIoU with multi-scale and flipped inference.

    python -m deeplab_dpc.eval --checkpoint_dir=RUN --eval_logdir=RUN/eval \
        --dataset=camvid --dataset_dir=DIR --eval_split=val --eval_crop_size=360,480 \
        [--eval_scales=0.5,0.75,1.0,1.25,1.5,1.75 --add_flipped_images] \
        [--max_number_of_evaluations=0 --eval_interval_secs=300]

The model is read from ``RUN/model_config.json``; model flags need not be
repeated, and a repeated one must agree. Results: ``eval_logdir/latest.json``,
``eval-<step>.json`` and TensorBoard scalars.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from deeplab_dpc import cli


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_run_reader_flags(fv)
    f = dict(flag_values=fv)
    flags.DEFINE_string("eval_logdir", None, "Where results go (default: checkpoint_dir/eval).", **f)
    flags.DEFINE_string("eval_split", "val", "Split to evaluate.", **f)
    flags.DEFINE_list("eval_crop_size", ["513", "513"], "Images are padded to 'height,width' (must not be larger).", **f)
    flags.DEFINE_integer("eval_batch_size", 1, "Images per batch.", **f)
    flags.DEFINE_float("eval_interval_secs", 300, "Seconds between checks for a new checkpoint.", **f)
    flags.DEFINE_integer("max_number_of_evaluations", 1, "1: one pass; 0: evaluate each new checkpoint forever.", **f)
    flags.DEFINE_integer("max_examples", None, "Evaluate only the first N examples.", **f)


def config_from_flags(fv: flags.FlagValues):
    from deeplab_dpc.evaluation.eval_lib import EvalConfig  # noqa: PLC0415
    from deeplab_dpc.runs import resolve_model_config  # noqa: PLC0415

    if not fv.checkpoint_dir:
        raise app.UsageError("--checkpoint_dir is required")
    data = cli.data_config_from_flags(fv)
    try:
        model = resolve_model_config(fv.checkpoint_dir, **cli.given_model_flags(fv))
        if model.num_classes != data.descriptor.num_classes:
            raise ValueError(
                f"dataset={fv.dataset} has {data.descriptor.num_classes} classes, the model {model.num_classes}"
            )
        return EvalConfig(
            checkpoint_dir=fv.checkpoint_dir,
            eval_logdir=fv.eval_logdir or os.path.join(fv.checkpoint_dir, "eval"),
            data=data,
            eval_split=fv.eval_split,
            eval_crop_size=cli.parse_pair(fv.eval_crop_size, "eval_crop_size"),
            eval_scales=cli.parse_floats(fv.eval_scales, "eval_scales"),
            add_flipped_images=fv.add_flipped_images,
            eval_batch_size=fv.eval_batch_size,
            eval_interval_secs=fv.eval_interval_secs,
            max_number_of_evaluations=fv.max_number_of_evaluations,
            max_examples=fv.max_examples,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags(flags.FLAGS)
    from deeplab_dpc.evaluation.eval_lib import run_evaluation  # noqa: PLC0415

    for results in run_evaluation(config):
        summary = {k: results[k] for k in ("step", "miou", "pixel_accuracy", "per_class_iou")}
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
