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
import sys

from absl import app, flags

from deeplab_dpc import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares this entry point's flags (on the global FLAGS by default).

    Flags are declared by ``console_main`` rather than at import, so importing
    this module (e.g. from tests) never clashes with other entry points' flags.
    """
    cli.define_model_flags(flag_values)
    flags.DEFINE_string("crop_size", "513,513", "Input size 'height,width' (or one integer for a square).", flag_values=flag_values)
    flags.DEFINE_integer("num_classes", 19, "Number of classes of the logits layer.", flag_values=flag_values)


def parse_crop_size(text: str) -> tuple[int, int]:
    """'1025,2049' -> (1025, 2049); '513' -> (513, 513). Raises ``app.UsageError``."""
    return cli.parse_pair(text, "crop_size")


def config_from_flags(fv: flags.FlagValues):
    """Turns parsed flags into ``(ModelConfig, crop_size)``. Raises ``app.UsageError`` naming the flag."""
    crop_size = parse_crop_size(fv.crop_size)
    return cli.model_config_from_flags(fv, fv.num_classes), crop_size


def run(fv: flags.FlagValues) -> dict:
    """The statistics for parsed flags (``model_statistics`` of their config)."""
    config, crop_size = config_from_flags(fv)  # First: most flag errors need no Keras.
    from deeplab_dpc.analysis.stats import model_statistics
    from deeplab_dpc.core.model import backbone_of

    try:  # The backbone checks what ModelConfig does not (e.g. depth_multiplier per variant).
        backbone = backbone_of(config)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None
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
