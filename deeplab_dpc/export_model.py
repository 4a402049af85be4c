"""Exports a trained checkpoint as a SavedModel for TensorFlow Serving (and optionally TFLite).

Usage (one line):
  python -m deeplab_dpc.export_model --checkpoint_path=/runs/camvid
    --export_path=/models/deeplab/1 [--inference_scales=0.75,1.0,1.25] [--add_flipped_images]
    [--save_probabilities] [--tflite_path=/models/deeplab.tflite --crop_size=513,513]
    [--onnx_path=/models/deeplab.onnx]

The model is rebuilt from the ``model_config.json`` that training wrote beside
the checkpoint, so no model flag is repeated here; ``--num_classes`` is only
a guard that must agree with it. The SavedModel takes uint8 images of any
size (signature ``serving_default``, input ``images``) or encoded PNG/JPEG
bytes (signature ``serving_bytes``, input ``image_bytes``) and returns
``semantic_predictions`` (int32 labels at the input size), and with
``--save_probabilities`` also ``semantic_probabilities``. Scales and flips
run inside the graph. See ``deeplab_dpc.export.export_lib``.

Unlike DeepLab's export, nothing is padded to ``--crop_size``: the model
takes any size. ``--crop_size`` only sets the TFLite model's static input.
"""

# Console script for the lead to declare in setup.py:
#   deeplab-export-model = deeplab_dpc.export_model:console_main

from __future__ import annotations

import json
import sys

from absl import app, flags, logging

from deeplab_dpc import cli


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Declares this entry point's flags (on the global FLAGS by default; tests pass their own)."""
    fv = flag_values
    flags.DEFINE_string(
        "checkpoint_path",
        None,
        "A ckpt-<step>.weights.h5 checkpoint, or a train_logdir (its newest checkpoint). The "
        "model_config.json beside it defines the model.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "export_path",
        None,
        "SavedModel folder to create; for TensorFlow Serving a version folder <model_base_path>/<version>. "
        "Written to a temporary folder and renamed when complete.",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "Optional guard: must equal num_classes of the checkpoint's model config.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "crop_size",
        None,
        "'height,width' of the TFLite model's static input (required with --tflite_path). The SavedModel "
        "takes any image size and is not padded or resized to it.",
        flag_values=fv,
    )
    flags.DEFINE_list(
        "inference_scales",
        ["1.0"],
        "Image scales whose softmax is averaged, e.g. 0.75,1.0,1.25.",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "add_flipped_images", False, "Also average the left-right flipped images.", flag_values=fv
    )
    flags.DEFINE_boolean(
        "save_probabilities",
        False,
        "Also output semantic_probabilities [B, H, W, num_classes].",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "tflite_path",
        None,
        "Also write a TFLite model there: float32 input [1, crop_h, crop_w, 3] (0..255), int32 labels out.",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "onnx_path",
        None,
        "Also write the SavedModel's serving_default as an ONNX model there (tf2onnx; pip install -e .[serve]): "
        "uint8 images [B, H, W, 3] of any size in, int32 labels out; serve --runtime=onnx serves it.",
        flag_values=fv,
    )
    flags.DEFINE_boolean(
        "overwrite",
        False,
        "Replace an existing --export_path / --tflite_path / --onnx_path once the new export is complete.",
        flag_values=fv,
    )


def config_from_flags(fv: flags.FlagValues):
    """Parsed flags -> ``ExportConfig``; raises ``app.UsageError`` naming the flag."""
    from deeplab_dpc.export.export_lib import ExportConfig

    for name in ("checkpoint_path", "export_path"):
        if not fv[name].value:
            raise app.UsageError(f"--{name} is required")
    try:
        return ExportConfig(
            checkpoint_path=fv.checkpoint_path,
            export_path=fv.export_path,
            num_classes=fv.num_classes,
            crop_size=None if fv.crop_size is None else cli.parse_pair(fv.crop_size, "crop_size"),
            inference_scales=cli.parse_floats(fv.inference_scales, "inference_scales"),
            add_flipped_images=fv.add_flipped_images,
            save_probabilities=fv.save_probabilities,
            tflite_path=fv.tflite_path,
            onnx_path=fv.onnx_path,
            overwrite=fv.overwrite,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def run(fv: flags.FlagValues) -> dict:
    """Exports as the parsed flags say; returns the summary of ``export_lib.run_export``."""
    config = config_from_flags(fv)
    from deeplab_dpc.export.export_lib import run_export

    try:
        return run_export(config)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        message = cli.flag_message(str(e), fv)
        if not message.startswith("--"):
            raise  # Not about a flag: keep the traceback.
        raise app.UsageError(message) from None


def main(argv, flag_values: flags.FlagValues = flags.FLAGS):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    summary = run(flag_values)
    logging.info("exported %s", summary["export_path"])
    sys.stdout.write(json.dumps(summary) + "\n")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
