"""Atomic checkpoints of model weights and optimizer state.

A checkpoint is ``ckpt-<step>.weights.h5`` (Keras' weights file, which holds
the optimizer's variables, its step counter included, when the model is
compiled). It is written under a temporary name and renamed, so a killed run
never leaves a checkpoint that looks whole; the newest complete one is found
by listing the folder. Restoring sets the optimizer's step, so the learning
rate schedule continues where it was.
"""

from __future__ import annotations

import os

from deeplab_dpc.fileio import atomic_path
from deeplab_dpc.runs import CHECKPOINT_PATTERN as _PATTERN, checkpoint_path, latest_checkpoint, list_checkpoints

__all__ = ["CheckpointManager", "checkpoint_path", "latest_checkpoint", "list_checkpoints"]


class CheckpointManager:
    """Saves and restores ``ckpt-<step>.weights.h5`` in a folder, keeping the newest few.

    Args:
        directory: the train_logdir.
        max_to_keep: how many checkpoints to keep.

    Example:
        >>> manager = CheckpointManager("/tmp/run", max_to_keep=5)
        >>> step = manager.restore(model)  # 0 when the folder has none
        >>> manager.save(model, step=1000)
    """

    def __init__(self, directory: str, max_to_keep: int = 5):
        self.directory = directory
        self.max_to_keep = int(max_to_keep)
        os.makedirs(directory, exist_ok=True)

    def save(self, model, step: int) -> str:
        path = checkpoint_path(self.directory, step)
        with atomic_path(path, suffix=".weights.h5") as tmp:  # Keras insists on the ending
            model.save_weights(tmp)
        for _, old in list_checkpoints(self.directory)[: -self.max_to_keep]:
            os.remove(old)
        return path

    def latest(self) -> str | None:
        return latest_checkpoint(self.directory)

    def restore(self, model) -> int:
        """Loads the newest checkpoint into ``model`` (compiled, optimizer built); returns its step."""
        path = self.latest()
        if path is None:
            return 0
        model.load_weights(path)
        return int(_PATTERN.match(os.path.basename(path)).group(1))
