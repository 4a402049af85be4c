"""Flag helpers for the entry points: model flags, 'h,w' pairs, errors that name flags, renamed
flags' old names; importing it sets up what the console shows (``console``).

Entry points declare flags in a ``define_flags(fv)`` function called by their
console ``main`` (never at import, so modules import without clashing), turn
them into typed configs once, and call library code. Every error becomes an
``app.UsageError`` that names the flag.
"""

from __future__ import annotations

import re

from absl import app, flags
from absl import logging as absl_logging

from deeplab_dpc import console

# Every entry point imports this module before TensorFlow (the conversion tools
# through tools.conversion_cli): one place keeps TensorFlow's start-up lines off
# the console. DEEPLAB_DPC_VERBOSE=1 brings them back (console.py).
console.quiet_tensorflow()


def plain_log_lines() -> None:
    """Gives absl's log handler a ``console.ConsoleFormatter``: our records print plainly, as the search's
    lines do (``step 25/100 loss ...``, ``WARNING: ...``); ``--showprefixforinfo`` (absl's flag, which
    brings absl's prefix back) now defaults to false. Idempotent."""
    if "showprefixforinfo" in flags.FLAGS:
        flags.FLAGS.set_default("showprefixforinfo", False)  # A value given on the command line stays.

    def prefix_wanted() -> bool:
        return "showprefixforinfo" in flags.FLAGS and flags.FLAGS["showprefixforinfo"].value

    handler = absl_logging.get_absl_handler()
    current = handler.python_handler.formatter
    if not isinstance(current, console.ConsoleFormatter):
        handler.setFormatter(console.ConsoleFormatter(current, prefix_wanted))


# Once app.run has put absl's log handler in place (only then: an import changes nothing else).
app.call_after_init(plain_log_lines)

# Flags defined by these helpers belong to the entry point that calls them, so
# its --help lists them (not only --helpfull).
flags.disclaim_key_flags()

CONTEXT_CHOICES = ("dpc", "aspp", "none")
MODEL_FLAGS = (
    "model_variant",
    "output_stride",
    "dense_prediction_cell_json",
    "context",
    "atrous_rates",
    "decoder_output_stride",
    "depth_multiplier",
    "initializer",
)


def define_model_flags(fv: flags.FlagValues, *, with_defaults: bool = True) -> None:
    """DeepLab's model flags. ``with_defaults=False``: all default to None
    ("not given"), for entry points that read the model from a training run
    and only check that repeated flags agree."""
    d = (lambda value: value) if with_defaults else (lambda value: None)
    flags.DEFINE_string("model_variant", d("mobilenet_v2"), "Backbone (a key of core.backbones.BACKBONES).", flag_values=fv)
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
    flags.DEFINE_integer("output_stride", d(16), "Backbone output stride: 8, 16 (or 32 without DPC/ASPP).", flag_values=fv)
    flags.DEFINE_integer("decoder_output_stride", None, "4 for the DeepLab v3+ decoder; unset for none.", flag_values=fv)
    flags.DEFINE_float("depth_multiplier", d(1.0), "MobileNet-v2 width multiplier.", flag_values=fv)
    flags.DEFINE_multi_integer(
        "atrous_rates", None, "ASPP atrous rates (repeat the flag); unset: DeepLab's defaults.", flag_values=fv
    )
    flags.DEFINE_enum(
        "initializer",
        d("deeplab"),
        ["deeplab", "keras"],
        "Kernel initialisers of a fresh model: DeepLab's (truncated normal: backbone 0.09, separable convs "
        "0.33/0.06) or Keras' glorot_uniform, which trains faster from scratch on short budgets (BENCHMARKS.md).",
        flag_values=fv,
    )


def define_old_name(old: str, new: str, fv: flags.FlagValues) -> None:
    """Keeps a renamed flag's old name working: ``--old=V`` sets ``--new`` (as absl's ``DEFINE_alias``:
    both names read the same value). Both names given with different values is a flag parsing error
    (absl exits naming both); the same value under both is accepted. The old name is listed by
    ``--helpfull`` only, as ``Old name of --new.``"""
    flag = fv[new]
    state = {"direct_seen": 0, "direct": None, "old": None}  # the new name's and the old name's last values

    def seen_direct() -> None:  # notes the new name's last value if it was parsed since we last looked
        direct = flag.present - alias.present  # parses under the new name so far
        if direct < state["direct_seen"]:  # the flags were unparsed: a new command line
            state["direct_seen"], state["direct"] = 0, None
        if direct > state["direct_seen"]:
            state["direct_seen"], state["direct"] = direct, flag.value

    class OldName(flags.Flag):
        def parse(self, argument):
            seen_direct()
            self._parse(argument)  # a bad value is reported under the name it was given with
            flag.parse(argument)
            self.present += 1
            state["old"] = flag.value

        def _parse_from_default(self, value):
            return value

        @property
        def value(self):
            return flag.value

        @value.setter
        def value(self, value):
            flag.value = value

    alias = OldName(flag.parser, flag.serializer, old, flag.default, f"Old name of --{new}.", boolean=flag.boolean)

    def _check(_value=None) -> bool:
        if not alias.present:
            return True
        seen_direct()  # the new name given after the old one
        if state["direct_seen"] and state["direct"] != state["old"]:
            raise flags.ValidationError(
                f"--{new}={state['direct']} and its old name --{old}={state['old']} disagree: give --{new} only"
            )
        return True

    # Registered under its own module name: --help lists the entry point's flags, not their old names.
    flags.DEFINE_flag(alias, fv, module_name="old names of renamed flags")
    flags.register_validator(new, _check, flag_values=fv)


def parse_pair(text, flag: str) -> tuple[int, int]:
    """'1025,2049' -> (1025, 2049); '513' -> (513, 513). Raises ``app.UsageError`` naming ``flag``."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else [str(p) for p in text])]
    if len(parts) == 1:
        parts = parts * 2
    try:
        if len(parts) != 2:
            raise ValueError
        height, width = (int(p) for p in parts)
    except ValueError:
        raise app.UsageError(f"--{flag}={text!r}: expected 'height,width' with two positive integers") from None
    if height < 1 or width < 1:
        raise app.UsageError(f"--{flag}={text!r}: sizes must be positive")
    return height, width


def flag_message(message: str, fv: flags.FlagValues) -> str:
    """Config errors start with 'field=value' or 'field must': write the field as a flag."""
    match = re.match(r"(\w+)\b", message)
    if match and match.group(1) in fv:
        return "--" + message
    return message


def model_config_from_flags(fv: flags.FlagValues, num_classes: int, weight_decay: float = 4e-5):
    """Turns the model flags into a ``ModelConfig``; ``app.UsageError`` naming the flag."""
    context = fv.context
    spec_path = fv.dense_prediction_cell_json
    if context is None:
        if spec_path is None:
            raise app.UsageError("give --dense_prediction_cell_json=PATH (for the DPC) or --context=aspp|none")
        context = "dpc"
    if context == "dpc" and spec_path is None:
        raise app.UsageError("--context=dpc requires --dense_prediction_cell_json=PATH")
    if context != "dpc" and spec_path is not None:
        raise app.UsageError(f"--dense_prediction_cell_json is only used with --context=dpc, got --context={context}")
    if fv.atrous_rates and context != "aspp":
        raise app.UsageError(f"--atrous_rates is only used with --context=aspp, got --context={context}")
    from deeplab_dpc.core.model import ModelConfig  # noqa: PLC0415 (loads Keras: after the cheap checks)

    try:
        return ModelConfig(
            num_classes=num_classes,
            model_variant=fv.model_variant,
            output_stride=fv.output_stride,
            context=context,
            dense_prediction_cell=load_cell(spec_path),
            atrous_rates=tuple(fv.atrous_rates) if fv.atrous_rates else None,
            decoder_output_stride=fv.decoder_output_stride,
            depth_multiplier=fv.depth_multiplier,
            weight_decay=weight_decay,
            initializer=fv.initializer or "deeplab",
        )
    except ValueError as e:
        raise app.UsageError(flag_message(str(e), fv)) from None


def load_cell(spec_path):
    """The cell spec at ``spec_path`` (None passes through); errors name the flag."""
    if spec_path is None:
        return None
    from deeplab_dpc.core.spec import CellSpec, SpecError  # noqa: PLC0415

    try:
        return CellSpec.load(spec_path)
    except SpecError as e:
        raise app.UsageError(f"--dense_prediction_cell_json: {e}") from None


def given_model_flags(fv: flags.FlagValues) -> dict:
    """The model flags given on the command line, as ModelConfig fields (for consistency checks)."""
    out = {}
    for name in ("model_variant", "output_stride", "decoder_output_stride", "depth_multiplier", "context", "initializer"):
        if name in fv and fv[name].present:
            out[name] = fv[name].value
    if "dense_prediction_cell_json" in fv and fv["dense_prediction_cell_json"].present:
        out["dense_prediction_cell"] = load_cell(fv.dense_prediction_cell_json)
    if "atrous_rates" in fv and fv["atrous_rates"].present:
        out["atrous_rates"] = tuple(fv.atrous_rates)
    return out


def define_data_flags(fv: flags.FlagValues, *, loader: bool = True) -> None:
    """The dataset flags shared by train, eval and vis (and, without ``--loader``, tools)."""
    f = dict(flag_values=fv)
    flags.DEFINE_string("dataset", "camvid", "Dataset name, JSON descriptor file, or tfds:NAME[/CONFIG].", **f)
    flags.DEFINE_string("dataset_dir", None, "Folder of the dataset (TFRecords unless --dataset_format says otherwise).", **f)
    flags.DEFINE_string("dataset_format", "tfrecord", "tfrecord, folder[:segnet|voc] or npz.", **f)
    if loader:
        flags.DEFINE_enum("loader", "auto", ["auto", "tfdata", "numpy"], "Input pipeline: tf.data or NumPy/OpenCV.", **f)
    flags.DEFINE_integer("num_readers", 0, "Reader threads of the NumPy loader (0: one per CPU core).", **f)
    flags.DEFINE_list("label_remap", None, "Label values to remap after decoding, e.g. 11:255 for raw CamVid.", **f)


def data_config_from_flags(fv: flags.FlagValues):
    """The data flags as a ``DataConfig``; ``app.UsageError`` naming the flag."""
    from deeplab_dpc.data.batches import DataConfig  # noqa: PLC0415

    remap = None
    if fv.label_remap:
        try:
            remap = {int(k): int(v) for k, v in (item.split(":") for item in fv.label_remap)}
        except ValueError:
            raise app.UsageError(
                f"--label_remap={','.join(fv.label_remap)}: expected from:to pairs like 11:255"
            ) from None
    try:
        data = DataConfig(
            dataset=fv.dataset,
            dataset_dir=fv.dataset_dir,
            dataset_format=fv.dataset_format,
            loader=fv.loader if "loader" in fv else "numpy",
            num_workers=fv.num_readers,
            label_remap=remap,
        )
        data.descriptor  # noqa: B018 -- an unknown dataset fails here, naming the flag
    except ValueError as e:
        raise app.UsageError(flag_message(str(e), fv)) from None
    return data


def define_run_reader_flags(fv: flags.FlagValues) -> None:
    """Flags of the entry points that read a training run (eval, vis): the run,
    the data, the inference scales and flips, and the model flags (optional,
    checked against the run's config)."""
    define_model_flags(fv, with_defaults=False)
    define_data_flags(fv)
    flags.DEFINE_string("checkpoint_dir", None, "The train_logdir to read (model_config.json, checkpoints).", flag_values=fv)
    flags.DEFINE_list("eval_scales", ["1.0"], "Inference scales, comma separated.", flag_values=fv)
    flags.DEFINE_boolean("add_flipped_images", False, "Also average left-right flipped images.", flag_values=fv)


def parse_floats(values, flag: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in values)
    except ValueError:
        raise app.UsageError(f"--{flag}={','.join(values)}: expected numbers") from None
