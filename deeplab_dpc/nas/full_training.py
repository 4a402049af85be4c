"""A cell trained end to end, outside the proxy: its run evaluated, and memory given back between runs.

Re-ranking (``rerank``: the full scores), two-stage evaluation's stage 2
(``progressive``) and the fidelity set's ground truth (``ground_truth``) each
train cells one after another in one process: after each run, ``evaluate_run``
scores its newest checkpoint as ``deeplab_dpc.eval`` does, and
``release_memory`` drops its model and graphs before the next one is built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from deeplab_dpc.fileio import write_json

if TYPE_CHECKING:  # Keras loads with the training config.
    from deeplab_dpc.training.config import TrainConfig


def evaluate_run(
    train_config: "TrainConfig",
    eval_split: str,
    eval_crop_size,
    eval_scales=(1.0,),
    add_flipped_images: bool = False,
    eval_batch_size: int = 1,
) -> dict:
    """The newest checkpoint in ``train_config.train_logdir``, evaluated as ``deeplab_dpc.eval`` does
    (results also in ``<run>/eval``); its results dict. Also two-stage evaluation's stage 2."""
    from deeplab_dpc.evaluation import eval_lib  # noqa: PLC0415
    from deeplab_dpc.runs import latest_checkpoint  # noqa: PLC0415

    run_dir = train_config.train_logdir
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        raise RuntimeError(f"{run_dir} holds no checkpoint after training")
    eval_config = eval_lib.EvalConfig(
        checkpoint_dir=run_dir,
        eval_logdir=os.path.join(run_dir, "eval"),
        data=train_config.data,
        eval_split=eval_split,
        eval_crop_size=tuple(eval_crop_size),
        eval_scales=tuple(eval_scales),
        add_flipped_images=add_flipped_images,
        eval_batch_size=eval_batch_size,
    )
    write_json(os.path.join(eval_config.eval_logdir, "eval_config.json"), eval_lib.config_dict(eval_config))
    return eval_lib.evaluate_checkpoint(eval_config, checkpoint)


def release_memory() -> None:
    """Drops the finished run's model and graphs before the next one is built."""
    try:
        import keras  # noqa: PLC0415

        keras.backend.clear_session()
    except Exception:  # noqa: BLE001  (memory hygiene only)
        pass
