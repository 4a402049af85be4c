r"""Trains one Dense Prediction Cell on cached backbone features and scores it: one proxy trial.

    python -m deeplab_dpc.proxy_train --cache_dir=/tmp/camvid_cache \
        --dense_prediction_cell_json=experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json \
        --proxy_steps=300 --proxy_batch_size=8 --proxy_filters=64 --output_json=/tmp/trial.json

The cache comes from ``python -m deeplab_dpc.cache_features`` (a ``--proxy_train_split``
and a ``--proxy_eval_split``). Prints progress with ETA, then the result (val mIoU,
per-class IoU, the cell's parameters and multiply-adds, seconds); writes it to
``--output_json`` with ``"status": "ok"``, or ``"status": "failed"`` and the
reason when the loss diverges (exit status 1). Runs on any Keras backend
(``KERAS_BACKEND=jax`` too); what each knob costs in fidelity is in
``deeplab_dpc/nas/proxy.py``.

Flag names: each ``ProxyConfig`` field is ``--proxy_<field>`` (``--proxy_learning_rate``,
``--proxy_batch_size``; ``--proxy_steps`` and ``--proxy_filters`` as they are), the names the search
gives the same settings, so a line of one command's flagfile means the same in the other. ``--cache_dir``
and ``--seed`` keep the names every command gives them. The names before (``--learning_rate``,
``--batch_size``, ...) still work (``--helpfull`` lists them); one given with another value than its new
name is a flag error.
"""

from __future__ import annotations

import json
import re
import sys

from absl import app, flags

from deeplab_dpc import cli

# Every ProxyConfig field is a flag: FIELD_TO_FLAG.
PROXY_FIELDS = (
    "cache_dir",
    "train_split",
    "eval_split",
    "proxy_steps",
    "batch_size",
    "proxy_filters",
    "learning_rate",
    "weight_decay",
    "batch_norm_momentum",
    "loss_resolution",
    "eval_resolution",
    "seed",
    "momentum",
    "learning_power",
    "dropout_rate",
    "drop_path_keep_prob",
    "ema_decay",
    "initializer",
    "eval_interval",
    "feature_dtype",
    "max_train_examples",
    "max_eval_examples",
    "eval_batch_size",
    "jit_compile",
    "steps_per_execution",
    "distillation_weight",
    "distillation_loss",
    "distillation_temperature",
)
# The flags every command names alike (the feature cache, the seed).
SHARED_FLAGS = ("cache_dir", "seed")


def flag_name(field: str) -> str:
    """A ``ProxyConfig`` field's flag in proxy_train and search: ``proxy_<field>`` (once: ``proxy_steps``)."""
    return field if field in SHARED_FLAGS or field.startswith("proxy_") else f"proxy_{field}"


FIELD_TO_FLAG = {field: flag_name(field) for field in PROXY_FIELDS}
# Names before issue 18 (the field's own), kept working: old name -> flag.
OLD_NAMES = {field: flag for field, flag in FIELD_TO_FLAG.items() if flag != field}
SUMMARY_KEYS = (
    "miou",
    "pixel_accuracy",
    "per_class_iou",
    "params",
    "madds",
    "params_256",
    "madds_256",
    "seconds",
    "train_seconds",
    "eval_seconds",
    "steps",
    "filters",
    "history",
    "backend",
)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("cache_dir", None, "The feature cache (python -m deeplab_dpc.cache_features).", **f)
    flags.DEFINE_string("proxy_train_split", "train", "Cached split to train on.", **f)
    flags.DEFINE_string("proxy_eval_split", "val", "Cached split to score on.", **f)
    flags.DEFINE_string("dense_prediction_cell_json", None, "The cell to train (DeepLab's JSON format).", **f)
    flags.DEFINE_string("output_json", None, "Where the result goes (written atomically).", **f)
    flags.DEFINE_integer(
        "proxy_steps", 300, "Training steps (the paper: 30K; a few hundred rank how fast a cell learns).", **f
    )
    flags.DEFINE_integer("proxy_batch_size", 8, "Examples per step (the paper: 8).", **f)
    flags.DEFINE_integer(
        "proxy_filters",
        64,
        "Filters of every branch and the projection (the paper: 256; 64 is ~4x cheaper per step on a CPU "
        "but ranks cells at another width).",
        **f,
    )
    flags.DEFINE_float(
        "proxy_learning_rate",
        0.2,
        "Base rate of the poly schedule (to 0 at --proxy_steps); 0.05 leaves a 300-step cell undertrained.",
        **f,
    )
    flags.DEFINE_float("proxy_weight_decay", 4e-5, "DeepLab's weight decay.", **f)
    flags.DEFINE_float(
        "proxy_batch_norm_momentum",
        0.99,
        "Batch norm moving-average momentum (DeepLab's 0.9997 barely leaves its start in a short run).",
        **f,
    )
    flags.DEFINE_enum(
        "proxy_loss_resolution",
        "features4x",
        ["features4x", "label", "features"],
        "Labels of the loss: features4x = nearest-sampled to 4x the feature grid (cheap; thin classes lose "
        "pixels); label = the cached crop (16x the pixels at stride 16); features = the feature grid itself "
        "(no resize in the loss, 16x fewer pixels than features4x).",
        **f,
    )
    flags.DEFINE_enum(
        "proxy_eval_resolution",
        "label",
        ["label", "features4x", "features"],
        "Labels the score is computed on: label = the crop, as evaluation does; features4x = 16x cheaper, "
        "noisier; features = the feature grid.",
        **f,
    )
    flags.DEFINE_integer("seed", 0, "Initial weights, batch order and dropout.", **f)
    flags.DEFINE_float("proxy_momentum", 0.9, "SGD momentum.", **f)
    flags.DEFINE_float("proxy_learning_power", 0.9, "Poly power.", **f)
    flags.DEFINE_float("proxy_dropout_rate", 0.1, "Dropout on the concatenated branches (the model's: 0.1).", **f)
    flags.DEFINE_float(
        "proxy_drop_path_keep_prob",
        1.0,
        "ScheduledDropPath: branch outputs kept with a probability falling linearly from 1 to this over "
        "--proxy_steps (1: off).",
        **f,
    )
    flags.DEFINE_enum(
        "proxy_initializer",
        "deeplab",
        ["deeplab", "keras"],
        "The cell's kernel initialisers: DeepLab's (separable 0.33/0.06) or Keras' glorot_uniform.",
        **f,
    )
    flags.DEFINE_float(
        "proxy_ema_decay", None, "Polyak averaging: score the cell with an EMA of its weights of this decay.", **f
    )
    flags.DEFINE_integer(
        "proxy_eval_interval", 0, "Steps between intermediate val scores (0: only at the end).", **f
    )
    flags.DEFINE_enum(
        "proxy_feature_dtype",
        "float16",
        ["float16", "float32"],
        "Resident features: float16 (as cached; half the memory, computed in float32) or float32.",
        **f,
    )
    flags.DEFINE_integer("proxy_max_train_examples", None, "Train on the first N cached examples only.", **f)
    flags.DEFINE_integer("proxy_max_eval_examples", None, "Score on the first N cached examples only.", **f)
    flags.DEFINE_integer("proxy_eval_batch_size", 16, "Examples per prediction call.", **f)
    flags.DEFINE_enum(
        "proxy_jit_compile",
        "auto",
        ["auto", "true", "false"],
        "XLA: auto = on JAX and on TensorFlow with a GPU, off on a TensorFlow CPU (several times slower "
        "there).",
        **f,
    )
    flags.DEFINE_integer("proxy_steps_per_execution", 1, "Training steps per compiled call (raise on a GPU).", **f)
    flags.DEFINE_float(
        "proxy_distillation_weight",
        0.0,
        "Weight of a distillation term against teacher logits cached with the features (cache_features "
        "--teacher_checkpoint_path), added to the cross entropy (0: off).",
        **f,
    )
    flags.DEFINE_enum(
        "proxy_distillation_loss",
        "kl",
        ["kl", "mse"],
        "kl: KL divergence of probabilities softened at --proxy_distillation_temperature, times T^2; "
        "mse: squared difference of the logits.",
        **f,
    )
    flags.DEFINE_float("proxy_distillation_temperature", 1.0, "Softening temperature T of the kl term.", **f)
    for old, new in OLD_NAMES.items():
        cli.define_old_name(old, new, fv)


def config_from_flags(fv: flags.FlagValues):
    """Flags -> (``CellSpec``, ``ProxyConfig``); errors are ``app.UsageError`` naming the flag."""
    from deeplab_dpc.nas.proxy import ProxyConfig  # noqa: PLC0415

    if not fv.cache_dir:
        raise app.UsageError("--cache_dir is required (a feature cache made by cache_features)")
    if not fv.dense_prediction_cell_json:
        raise app.UsageError("--dense_prediction_cell_json is required (the cell to train)")
    spec = cli.load_cell(fv.dense_prediction_cell_json)
    values = {field: fv[flag].value for field, flag in FIELD_TO_FLAG.items()}
    values["jit_compile"] = {"auto": None, "true": True, "false": False}[values["jit_compile"]]
    try:
        return spec, ProxyConfig(**values)
    except ValueError as e:
        raise app.UsageError(flag_message(str(e))) from None


def flag_message(message: str) -> str:
    """A ``ProxyConfig`` error (``field=value ...``, ``field must ...``), its field written as the flag."""
    field = re.match(r"\w*", message).group(0)
    return f"--{FIELD_TO_FLAG[field]}{message[len(field):]}" if field in FIELD_TO_FLAG else message


def run(fv: flags.FlagValues) -> dict:
    """One trial for the flags; writes ``--output_json``; returns the result (``status`` ok or failed)."""
    spec, config = config_from_flags(fv)
    from deeplab_dpc.fileio import write_json  # noqa: PLC0415
    from deeplab_dpc.nas.features import CacheError, Progress  # noqa: PLC0415
    from deeplab_dpc.nas.proxy import TrialFailed, load_proxy_data, run_proxy  # noqa: PLC0415

    try:
        data = load_proxy_data(config)
    except CacheError as e:
        raise app.UsageError(str(e)) from None
    sys.stderr.write(
        f"loaded {len(data.train_features)} training and {len(data.eval_features)} validation examples, "
        f"features {list(data.feature_shape)}, {data.nbytes / 2**20:.0f} MiB\n"
    )
    bar = None

    def progress(step, total):
        nonlocal bar
        if bar is None:  # The clock starts at the first step: the rate and ETA leave model building out.
            bar = Progress(total, "proxy training", unit="steps")
        if step > bar.done:
            bar.update(step - bar.done)

    try:
        result = {"status": "ok", **run_proxy(spec, config, features=data, progress=progress)}
    except TrialFailed as e:
        sys.stderr.write("\n")
        result = {
            "status": "failed",
            "reason": e.reason,
            "step": e.step,
            "spec": spec.to_list(),
            "config": config.to_dict(),
        }
    if fv.output_json:
        write_json(fv.output_json, result)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    result = run(flags.FLAGS)
    if result["status"] != "ok":
        sys.stderr.write(f"trial failed: {result['reason']}\n")
        sys.exit(1)
    summary = {k: result[k] for k in SUMMARY_KEYS}
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
