"""TrainConfig: every training setting, typed and validated once.

Field names are DeepLab's flag names, so an error naming a field names the
flag too. ``train.py`` builds this from flags; tests and scripts build it
directly. Written as ``train_config.json`` next to the checkpoints, with the
model's ``model_config.json``.

A train_logdir holds one run. Rerunning in it resumes that run, so
``check_resume`` compares the new config with the saved one first: only the
fields in ``RESUMABLE_FIELDS`` (what is logged, saved and evaluated, and how
the data is read) may change; any other change (model, data, schedule, loss,
initialisation) raises ``ResumeMismatch`` naming the flags, and nothing is
written.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from deeplab_dpc.core.model import ModelConfig
from deeplab_dpc.data.batches import DataConfig
from deeplab_dpc.fileio import write_json
from deeplab_dpc.training.losses import DISTILLATION_LOSSES
from deeplab_dpc.training.schedules import BURNIN_TYPES, POLICIES

TRAIN_CONFIG_NAME = "train_config.json"

# What a resumed run may change: where and how often it logs, saves and evaluates, and how the data is
# read (not which data). Nothing here changes the weights a step computes. Names are TrainConfig fields;
# ``data.`` prefixes DataConfig fields.
RESUMABLE_FIELDS = frozenset({
    "train_logdir",  # the folder may have moved
    "log_steps",
    "save_interval_secs",
    "keep_checkpoint_max",
    "eval_split",
    "eval_interval_steps",
    "eval_crop_size",
    "eval_max_examples",
    "num_summary_images",
    "jit_compile",  # how a step is compiled, not what it computes
    "data.loader",  # tf.data or NumPy: the same preprocessing
    "data.num_workers",
})

# Config fields whose flag has another name (the rest are their own flag's name).
_FLAG_NAMES = {
    "model.dense_prediction_cell": "dense_prediction_cell_json",
    "model.num_classes": "num_classes (of the dataset)",
    "data.num_workers": "num_readers",
}

@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings (DeepLab's train.py flags).

    See ``train.py`` for each flag's help text.
    """

    model: ModelConfig
    data: DataConfig
    train_logdir: str
    train_split: str = "train"
    train_crop_size: tuple[int, int] = (513, 513)
    train_batch_size: int = 8
    min_scale_factor: float = 0.5
    max_scale_factor: float = 2.0
    scale_factor_step_size: float = 0.25
    min_resize_value: int | None = None
    max_resize_value: int | None = None
    learning_policy: str = "poly"
    base_learning_rate: float = 1e-4
    learning_rate_decay_factor: float = 0.1
    learning_rate_decay_step: int = 2000
    learning_power: float = 0.9
    training_number_of_steps: int = 30000
    slow_start_step: int = 0
    slow_start_learning_rate: float = 1e-4
    slow_start_burnin_type: str = "none"
    momentum: float = 0.9
    fine_tune_batch_norm: bool = True
    freeze_backbone: bool = False
    batch_norm_momentum: float | None = None
    batch_norm_warm_start: bool = True
    top_k_percent_pixels: float = 1.0
    class_weights: tuple[float, ...] | None = None
    tf_initial_checkpoint: str | None = None
    initialize_last_layer: bool = True
    save_interval_secs: float = 1200.0
    keep_checkpoint_max: int = 5
    log_steps: int = 10
    eval_split: str | None = None
    eval_interval_steps: int = 0
    eval_crop_size: tuple[int, int] = (513, 513)
    eval_max_examples: int | None = None
    num_summary_images: int = 3
    mixed_precision: bool = False
    jit_compile: bool = False
    num_clones: int = 1
    seed: int | None = 0
    ema_decay: float | None = None
    # Extra training losses (issue 10; see training/objective.py): auxiliary cells' weight, distillation.
    aux_loss_weight: float = 0.15
    distillation_teacher: str | None = None
    distillation_loss: str = "mse"
    distillation_weight: float = 0.0
    distillation_temperature: float = 1.0

    def __post_init__(self):
        for name in ("train_crop_size", "eval_crop_size"):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2 or min(value) < 1:
                raise ValueError(f"{name} must be two positive integers height,width, got {getattr(self, name)!r}")
            object.__setattr__(self, name, value)
        stride = self.model.output_stride
        if min(self.train_crop_size) < stride:
            raise ValueError(
                f"train_crop_size={list(self.train_crop_size)} is smaller than output_stride={stride}"
            )
        positive = ("train_batch_size", "training_number_of_steps", "log_steps", "keep_checkpoint_max", "num_clones")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.train_batch_size % self.num_clones:
            raise ValueError(
                f"train_batch_size={self.train_batch_size} must be divisible by num_clones={self.num_clones}"
            )
        if self.learning_policy not in POLICIES:
            raise ValueError(f"learning_policy={self.learning_policy!r} is unknown; valid: {list(POLICIES)}")
        if self.slow_start_burnin_type not in BURNIN_TYPES:
            raise ValueError(
                f"slow_start_burnin_type={self.slow_start_burnin_type!r} is unknown; valid: {list(BURNIN_TYPES)}"
            )
        if self.base_learning_rate <= 0:
            raise ValueError(f"base_learning_rate must be positive, got {self.base_learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.batch_norm_momentum is not None and not 0 < self.batch_norm_momentum < 1:
            raise ValueError(f"batch_norm_momentum must be in (0, 1), got {self.batch_norm_momentum}")
        if self.eval_interval_steps < 0:
            raise ValueError(f"eval_interval_steps must be >= 0, got {self.eval_interval_steps}")
        if self.eval_interval_steps and not self.eval_split:
            raise ValueError("eval_interval_steps needs eval_split")
        if self.eval_max_examples is not None and self.eval_max_examples < 1:
            raise ValueError(f"eval_max_examples must be positive (or unset: the whole split), got {self.eval_max_examples}")
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        _check_ema_decay(self)
        if self.tf_initial_checkpoint and not _checkpoint_exists(self.tf_initial_checkpoint):
            raise ValueError(f"tf_initial_checkpoint={self.tf_initial_checkpoint} does not exist")
        self._check_extra_losses()

    def _check_extra_losses(self):
        """Auxiliary cells' loss weight and distillation: values, and the teacher's run on disk."""
        if not self.aux_loss_weight >= 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {self.aux_loss_weight}")
        if self.distillation_loss not in DISTILLATION_LOSSES:
            raise ValueError(
                f"distillation_loss={self.distillation_loss!r} is unknown; valid: {list(DISTILLATION_LOSSES)}"
            )
        if not self.distillation_weight >= 0:
            raise ValueError(f"distillation_weight must be >= 0, got {self.distillation_weight}")
        if not self.distillation_temperature > 0:
            raise ValueError(
                f"distillation_temperature must be positive, got {self.distillation_temperature}"
            )
        if self.distillation_weight > 0 and not self.distillation_teacher:
            raise ValueError(
                f"distillation_weight={self.distillation_weight} needs distillation_teacher (a train_logdir "
                "or checkpoint)"
            )
        if self.distillation_teacher and self.distillation_weight == 0:
            raise ValueError(
                f"distillation_teacher={self.distillation_teacher} is unused: distillation_weight is 0 (off)"
            )
        if self.distillation_teacher:
            teacher_classes = teacher_num_classes(self.distillation_teacher)
            if teacher_classes != self.model.num_classes:
                raise ValueError(
                    f"distillation_teacher={self.distillation_teacher} predicts {teacher_classes} classes; "
                    f"the student has num_classes={self.model.num_classes} (of the dataset); a teacher "
                    "must have the same classes"
                )

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model"] = self.model.to_dict()
        out["data"] = self.data.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        data = dict(data)
        data["model"] = ModelConfig.from_dict(data["model"])
        data["data"] = DataConfig(**data["data"])
        return cls(**data)

    def save(self, directory: str) -> None:
        """Writes ``train_config.json`` and ``model_config.json`` atomically."""
        write_json(os.path.join(directory, TRAIN_CONFIG_NAME), self.to_dict())
        self.model.save(os.path.join(directory, "model_config.json"))


class ResumeMismatch(ValueError):
    """A rerun in a train_logdir changes what defines the run saved there."""


def _flat(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"model": {"context": ..}, ..} -> {"model.context": .., ..}; values as JSON reads them back."""
    out = {}
    for key, value in data.items():
        if key in ("model", "data") and not prefix and isinstance(value, dict):
            out.update(_flat(value, f"{key}."))
        else:
            out[prefix + key] = json.loads(json.dumps(value))
    return out


def _defaults() -> dict[str, Any]:
    """Flat field defaults, for keys an older train_config.json lacks."""
    out = {}
    for owner, prefix in ((TrainConfig, ""), (ModelConfig, "model."), (DataConfig, "data.")):
        for field in dataclasses.fields(owner):
            if field.default is not dataclasses.MISSING:
                out[prefix + field.name] = json.loads(json.dumps(field.default))
    return out


def flag_name(field: str) -> str:
    """The flag of a flat config field (``model.atrous_rates`` -> ``atrous_rates``)."""
    return _FLAG_NAMES.get(field, field.rpartition(".")[2])


def resume_changes(saved: dict, config: TrainConfig) -> tuple[list, list]:
    """(refused, allowed) changes from a saved ``train_config.json`` dict to ``config``.

    Each change is ``(field, old, new)`` with flat field names; a field absent
    from the saved file (written before the field existed) counts as its default.
    """
    old, new, defaults = _flat(saved), _flat(config.to_dict()), _defaults()
    refused, allowed = [], []
    for field, value in new.items():
        before = old.get(field, defaults.get(field, "<not recorded>"))
        if before != value:
            (allowed if field in RESUMABLE_FIELDS else refused).append((field, before, value))
    return refused, allowed


def check_resume(config: TrainConfig, has_checkpoints: bool) -> bool:
    """Checks a (re)run against the run saved in its train_logdir; True when the config files need writing.

    Args:
        config: the new run's settings.
        has_checkpoints: the train_logdir already holds checkpoints.

    Returns:
        True when there is no saved config yet or only ``RESUMABLE_FIELDS``
        changed (the files should then describe the new settings); False when
        nothing changed.

    Raises:
        ResumeMismatch: the saved run differs in a field outside
            ``RESUMABLE_FIELDS`` (each named by its flag, with the old and new
            values), or checkpoints exist without a ``train_config.json`` to check.
    """
    path = os.path.join(config.train_logdir, TRAIN_CONFIG_NAME)
    if not os.path.isfile(path):
        if has_checkpoints:
            raise ResumeMismatch(
                f"train_logdir={config.train_logdir} holds checkpoints but no {TRAIN_CONFIG_NAME}, so resuming "
                "them cannot be checked; use a new train_logdir (and tf_initial_checkpoint to start from them)"
            )
        return True
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError) as e:
        raise ResumeMismatch(f"train_logdir={config.train_logdir}: cannot read {path}: {e}") from None
    refused, allowed = resume_changes(saved, config)
    if refused:
        changes = "; ".join(f"{flag_name(f)}: {_show(a)} -> {_show(b)}" for f, a, b in refused)
        may = ", ".join(sorted(flag_name(f) for f in RESUMABLE_FIELDS))
        raise ResumeMismatch(
            f"train_logdir={config.train_logdir} already holds a run with other settings ({path}); "
            f"rerunning there resumes it, and these would change it: {changes}. A resume may change only "
            f"{may}. Use a new train_logdir (tf_initial_checkpoint={config.train_logdir} starts from its weights)."
        )
    return bool(allowed)


def teacher_num_classes(teacher: str) -> int:
    """The class count of the run or checkpoint ``teacher`` (its ``model_config.json``; no model is built).

    Raises:
        ValueError naming ``distillation_teacher``: no checkpoint or model config there.
    """
    from deeplab_dpc.runs import load_model_config  # noqa: PLC0415

    try:
        config, _ = load_model_config(teacher)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"distillation_teacher={teacher}: {e}") from None
    return config.num_classes


def _show(value) -> str:
    return json.dumps(value, separators=(",", ":"))


def _check_ema_decay(config: TrainConfig) -> None:
    """``ema_decay``: None (off) or a number in (0, 1), stored as a float."""
    decay = config.ema_decay
    if decay is None:
        return
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1:
        raise ValueError(f"ema_decay={decay!r} must be in (0, 1) (None: off)")
    object.__setattr__(config, "ema_decay", float(decay))


def _checkpoint_exists(path: str) -> bool:
    """A file, a directory, or a TF1 checkpoint prefix (``model.ckpt`` + ``.index``)."""
    return os.path.exists(path) or os.path.exists(path + ".index")
