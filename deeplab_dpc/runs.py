"""A training run on disk: its folder (train_logdir), its ``model_config.json`` and its checkpoints.

Training writes a run; evaluation, visualisation, export and warm starts read
one. This module is the one place that knows the layout, so it sits below all
of them and imports none of them (only the model, to rebuild it):

    train_logdir/
      model_config.json             the ModelConfig (MODEL_CONFIG_NAME)
      train_config.json
      ckpt-<step>.weights.h5        Keras weights (with the optimizer's variables)

Two kinds of path come in: a run folder (``checkpoint_dir`` of eval/vis) and a
checkpoint path that is a ``ckpt-<step>.weights.h5`` file or a run folder (its
newest checkpoint; ``checkpoint_path`` of export, ``tf_initial_checkpoint`` of
training). ``run_model_config_path`` and ``checkpoint_model_config_path`` find
the model config of each.

Example:
    >>> model, config = load_model_for_inference("/runs/camvid")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from deeplab_dpc.core.model import ModelConfig

# The model (Keras) is imported only by the functions that read a config or build a model, so listing
# checkpoints (training.checkpoints) stays cheap.

MODEL_CONFIG_NAME = "model_config.json"
CHECKPOINT_PATTERN = re.compile(r"^ckpt-(\d+)\.weights\.h5$")


# ----------------------------------------------------------------------------------------------------------
# Checkpoint files.


def checkpoint_path(directory: str, step: int) -> str:
    """``directory/ckpt-<step>.weights.h5`` (the step zero-padded to 8 digits)."""
    return os.path.join(directory, f"ckpt-{step:08d}.weights.h5")


def list_checkpoints(directory: str) -> list[tuple[int, str]]:
    """Complete checkpoints in ``directory`` as (step, path), oldest first."""
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = CHECKPOINT_PATTERN.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(directory, name)))
    return sorted(found)


def latest_checkpoint(path: str) -> str | None:
    """``path`` itself if it is a checkpoint file, else the newest checkpoint in the folder."""
    if os.path.isfile(path):
        return path
    found = list_checkpoints(path)
    return found[-1][1] if found else None


def resolve_checkpoint(checkpoint_path: str) -> str:
    """The checkpoint file meant by ``checkpoint_path`` (a file, or a train_logdir's newest).

    Raises:
        FileNotFoundError: nothing there, or a folder without checkpoints
            (the message starts with ``checkpoint_path=``).
    """
    if not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"checkpoint_path={checkpoint_path} does not exist")
    path = latest_checkpoint(checkpoint_path)
    if path is None:
        raise FileNotFoundError(
            f"checkpoint_path={checkpoint_path} holds no ckpt-<step>.weights.h5 checkpoint"
        )
    if not path.endswith(".weights.h5"):
        raise FileNotFoundError(
            f"checkpoint_path={checkpoint_path} is not a Keras weights file (*.weights.h5)"
        )
    return path


# ----------------------------------------------------------------------------------------------------------
# The model config of a run.


def run_model_config_path(checkpoint_dir: str) -> str:
    """The ``model_config.json`` of a run folder; ValueError naming ``checkpoint_dir`` if it has none."""
    path = os.path.join(checkpoint_dir, MODEL_CONFIG_NAME)
    if not os.path.isfile(path):
        raise ValueError(
            f"checkpoint_dir={checkpoint_dir} has no {MODEL_CONFIG_NAME}: not a train_logdir of deeplab_dpc.train"
        )
    return path


def checkpoint_model_config_path(checkpoint_file: str) -> str:
    """Where the ``model_config.json`` of a checkpoint file is: beside it (not checked)."""
    return os.path.join(os.path.dirname(os.path.abspath(checkpoint_file)), MODEL_CONFIG_NAME)


def resolve_model_config(checkpoint_dir: str, **flag_values) -> ModelConfig:
    """The run's model config; model flags given again must agree with it.

    Args:
        checkpoint_dir: the train_logdir.
        **flag_values: model flags given on the command line (None: not given),
            e.g. ``model_variant="xception_65"``; a value that contradicts the
            config raises naming the flag.
    """
    from deeplab_dpc.core.model import ModelConfig  # noqa: PLC0415

    config = ModelConfig.load(run_model_config_path(checkpoint_dir))
    for name, value in flag_values.items():
        if value is None:
            continue
        recorded = getattr(config, name)
        if name == "dense_prediction_cell":
            recorded = recorded.canonical_hash() if recorded is not None else None
            value = value.canonical_hash()
        if value != recorded:
            raise ValueError(
                f"--{name}={value} contradicts the training run's model config ({name}={recorded}) "
                f"in {checkpoint_dir}/{MODEL_CONFIG_NAME}; drop the flag"
            )
    return config


def load_model_config(checkpoint_path: str) -> tuple[ModelConfig, str]:
    """(the model config beside the checkpoint, the resolved checkpoint file)."""
    from deeplab_dpc.core.model import ModelConfig  # noqa: PLC0415

    path = resolve_checkpoint(checkpoint_path)
    config_path = checkpoint_model_config_path(path)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(
            f"checkpoint_path={checkpoint_path}: no {MODEL_CONFIG_NAME} beside {path} "
            "(training writes it into the train_logdir)"
        )
    try:
        return ModelConfig.load(config_path), path
    except ValueError as e:
        raise ValueError(f"checkpoint_path={checkpoint_path}: bad model config {e}") from None


# ----------------------------------------------------------------------------------------------------------
# The model of a run.


def load_model_for_inference(checkpoint_path: str):
    """Builds the model of a checkpoint and loads its weights.

    The one way evaluation, visualisation, export and warm starts turn a
    checkpoint (or a train_logdir) into a model. Needs no TensorFlow.

    Args:
        checkpoint_path: a ``ckpt-<step>.weights.h5`` file or a train_logdir
            (its newest checkpoint), with ``model_config.json`` beside it.

    Returns:
        (model, config): an uncompiled ``keras.Model`` (images 0..255 -> logits)
        and its ``ModelConfig``.

    The weights file of a training checkpoint also holds the optimizer's
    variables; Keras skips them when the model has no optimizer (checked in
    the tests: every model variable is restored), so no compile is needed.

    A run trained with auxiliary cells (``aux_cell_endpoints``) saved them in
    its checkpoints: the weights load into the training model's layout
    (``build_deeplab(..., aux_heads=True)``), and the model returned is its
    main head (``core.model.main_head``), without the auxiliary heads.

    Raises:
        FileNotFoundError: no checkpoint or no model config.
        ValueError: the checkpoint does not fit the model of the config.

    Example:
        >>> model, config = load_model_for_inference("/runs/camvid")  # doctest: +SKIP
    """
    from deeplab_dpc.core.model import build_deeplab, main_head  # noqa: PLC0415

    config, path = load_model_config(checkpoint_path)
    model = build_deeplab(config, aux_heads=True)
    try:
        model.load_weights(path)
    except ValueError as e:
        raise ValueError(
            f"checkpoint_path={checkpoint_path}: {path} does not fit the model of "
            f"{checkpoint_model_config_path(path)}: {e}"
        ) from e
    return main_head(model), config
