"""Prints a DeepLab model's parameters and multiply-adds as one JSON object.

Counts are analytical (see deeplab_dpc.analysis.stats for the conventions):
parameters include batch norm moving statistics; MACs count convolutions at
their output size and nothing else.

Usage (one line each):
  python -m deeplab_dpc.model_stats --model_variant=mobilenet_v2
    --dense_prediction_cell_json=experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json
    --crop_size=1025,2049 --output_stride=16
  python -m deeplab_dpc.model_stats --context=aspp --crop_size=1025,2049 [--decoder_output_stride=4]
"""

# Console script for the lead to declare in setup.py / pyproject.toml:
#   deeplab-model-stats = deeplab_dpc.model_stats:console_main

from __future__ import annotations

import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

CONTEXT_CHOICES = ("dpc", "aspp", "none")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares this entry point's flags (on the global FLAGS by default).

    Flags are declared by ``console_main`` rather than at import, so importing
    this module (e.g. from tests) never clashes with other entry points' flags.
    """
    fv = flag_values
    flags.DEFINE_string("model_variant", "mobilenet_v2", "Backbone (a key of core.backbones.BACKBONES).", flag_values=fv)
    flags.DEFINE_string(
        "dense_prediction_cell_json",
        None,
        "Path of a Dense Prediction Cell spec (DeepLab's JSON format). Implies --context=dpc.",
        flag_values=fv,
    )
    flags.DEFINE_enum(
        "context",
        None,
        list(CONTEXT_CHOICES),
        "Context module. Default: dpc if --dense_prediction_cell_json is given, else required.",
        flag_values=fv,
    )
    flags.DEFINE_string("crop_size", "513,513", "Input size 'height,width' (or one integer for a square).", flag_values=fv)
    flags.DEFINE_integer("output_stride", 16, "Backbone output stride: 8, 16 (or 32 without DPC/ASPP).", flag_values=fv)
    flags.DEFINE_integer("decoder_output_stride", None, "4 for the DeepLab v3+ decoder; unset for none.", flag_values=fv)
    flags.DEFINE_integer("num_classes", 19, "Number of classes of the logits layer.", flag_values=fv)
    flags.DEFINE_float("depth_multiplier", 1.0, "MobileNet-v2 width multiplier.", flag_values=fv)
    flags.DEFINE_multi_integer(
        "atrous_rates", None, "ASPP atrous rates (repeat the flag); unset: DeepLab's defaults.", flag_values=fv
    )


def parse_crop_size(text: str) -> tuple[int, int]:
    """'1025,2049' -> (1025, 2049); '513' -> (513, 513). Raises ``app.UsageError``."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) == 1:
        parts = parts * 2
    try:
        if len(parts) != 2:
            raise ValueError
        height, width = (int(p) for p in parts)
    except ValueError:
        raise app.UsageError(f"--crop_size={text!r}: expected 'height,width' with two positive integers") from None
    if height < 1 or width < 1:
        raise app.UsageError(f"--crop_size={text!r}: sizes must be positive")
    return height, width


def config_from_flags(fv: flags.FlagValues):
    """Turns parsed flags into ``(ModelConfig, crop_size)``. Raises ``app.UsageError`` naming the flag."""
    crop_size = parse_crop_size(fv.crop_size)
    context = fv.context
    spec_path = fv.dense_prediction_cell_json
    if context is None:
        if spec_path is None:
            raise app.UsageError(
                "give --dense_prediction_cell_json=PATH (for the DPC) or --context=aspp|none"
            )
        context = "dpc"
    if context == "dpc" and spec_path is None:
        raise app.UsageError("--context=dpc requires --dense_prediction_cell_json=PATH")
    if context != "dpc" and spec_path is not None:
        raise app.UsageError(f"--dense_prediction_cell_json is only used with --context=dpc, got --context={context}")
    if fv.atrous_rates and context != "aspp":
        raise app.UsageError(f"--atrous_rates is only used with --context=aspp, got --context={context}")
    from deeplab_dpc.core.model import ModelConfig  # Imported after the cheap checks: it loads Keras.
    from deeplab_dpc.core.spec import CellSpec, SpecError

    spec = None
    if spec_path is not None:
        try:
            spec = CellSpec.load(spec_path)
        except SpecError as e:
            raise app.UsageError(f"--dense_prediction_cell_json: {e}") from None
    try:
        config = ModelConfig(
            num_classes=fv.num_classes,
            model_variant=fv.model_variant,
            output_stride=fv.output_stride,
            context=context,
            dense_prediction_cell=spec,
            atrous_rates=tuple(fv.atrous_rates) if fv.atrous_rates else None,
            decoder_output_stride=fv.decoder_output_stride,
            depth_multiplier=fv.depth_multiplier,
        )
    except ValueError as e:
        raise app.UsageError(_flag_message(str(e), fv)) from None
    return config, crop_size


def _flag_message(message: str, fv: flags.FlagValues) -> str:
    """ModelConfig errors start with 'field=value' or 'field must': write the field as a flag."""
    match = re.match(r"(\w+)\b", message)
    if match and match.group(1) in fv:
        return "--" + message
    return message


def run(fv: flags.FlagValues) -> dict:
    """The statistics for parsed flags (``model_statistics`` of their config)."""
    config, crop_size = config_from_flags(fv)  # First: most flag errors need no Keras.
    from deeplab_dpc.analysis.stats import model_statistics
    from deeplab_dpc.core.backbones import build_backbone

    try:  # The backbone checks what ModelConfig does not (e.g. depth_multiplier per variant).
        backbone = build_backbone(
            config.model_variant,
            output_stride=config.output_stride,
            depth_multiplier=config.depth_multiplier,
            weight_decay=config.weight_decay,
            name="backbone",
        )
    except ValueError as e:
        raise app.UsageError(_flag_message(str(e), fv)) from None
    return model_statistics(config, crop_size, backbone=backbone)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    stats = run(flags.FLAGS)
    sys.stdout.write(json.dumps(stats, indent=1) + "\n")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
