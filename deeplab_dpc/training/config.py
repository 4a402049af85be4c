"""TrainConfig: every training setting, typed and validated once.

Field names are DeepLab's flag names, so an error naming a field names the
flag too. ``train.py`` builds this from flags; tests and scripts build it
directly. Written as ``train_config.json`` next to the checkpoints, with the
model's ``model_config.json``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from deeplab_dpc.core.model import ModelConfig
from deeplab_dpc.data.batches import DataConfig
from deeplab_dpc.fileio import write_json
from deeplab_dpc.training.schedules import BURNIN_TYPES, POLICIES

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
    eval_max_examples: int = 50
    num_summary_images: int = 3
    mixed_precision: bool = False
    jit_compile: bool = False
    num_clones: int = 1
    seed: int | None = 0

    def __post_init__(self):
        for name in ("train_crop_size",):
            value = tuple(int(v) for v in getattr(self, name))
            if len(value) != 2:
                raise ValueError(f"{name} must be height,width, got {getattr(self, name)!r}")
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
        if self.class_weights is not None:
            object.__setattr__(self, "class_weights", tuple(float(w) for w in self.class_weights))
        if self.tf_initial_checkpoint and not _checkpoint_exists(self.tf_initial_checkpoint):
            raise ValueError(f"tf_initial_checkpoint={self.tf_initial_checkpoint} does not exist")

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
        write_json(os.path.join(directory, "train_config.json"), self.to_dict())
        self.model.save(os.path.join(directory, "model_config.json"))


def _checkpoint_exists(path: str) -> bool:
    """A file, a directory, or a TF1 checkpoint prefix (``model.ckpt`` + ``.index``)."""
    return os.path.exists(path) or os.path.exists(path + ".index")
