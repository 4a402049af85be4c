"""Progressive two-stage evaluation with early termination (Nekrasov et al., CVPR 2019).

Stage 1 is the proxy: the candidate cell trained on cached features. Stage 2
fine-tunes it end to end (the backbone, the cell and the decoder, as
``rerank`` does) and scores it as ``eval`` does. Stage 2 is costly, so a
search runs it only for promising cells:

* a cell whose stage-1 score beats the running average (the mean, or with
  ``average="median"`` the median) of the stage-1 scores of the cells
  evaluated before it always continues (the median resists outliers: on the
  CamVid random search one broken cell at 15 mIoU among ~40s pulled the mean
  down so far that 89 of 100 cells beat it, against 53 for the median);
* any other cell continues with a probability that starts at
  ``initial_probability`` (Nekrasov: 0.9) and decays by ``decay`` with each
  earlier stage-1 result: ``initial_probability * decay ** n``, so late in a
  search, when the average is reliable, weak cells stop after stage 1.

The draw is seeded by the search's seed and the trial's number
(``np.random.default_rng([seed, number])``): a seeded search makes the same
decisions, and a retried trial the same one as its first attempt. The trial's
value (the reward the strategies learn from) is its last stage's score; the
study records both scores (user attrs ``miou``: stage 1, ``full_miou``:
stage 2), ``stage`` (1 or 2: where the trial ended) and ``stage2_decision``.

A stage-2 run lives in ``<search_dir>/stage2/<graph hash>``: an interrupted
trial's retry resumes it from its last checkpoint (``train`` resumes a
train_logdir).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from deeplab_dpc.nas.full_training import evaluate_run, release_memory

STAGE2_FOLDER = "stage2"
AVERAGES = ("mean", "median")
DEFAULT_STAGE2 = "deeplab_dpc.nas.progressive:end_to_end"


@dataclasses.dataclass(frozen=True)
class Decision:
    """Whether a cell goes on to stage 2, and why.

    Attributes:
        go: True to run stage 2.
        reason: a sentence for the study and the console.
        probability: the chance a cell at or below the average continues (at this point of the search).
        average: the mean (or median) of the earlier stage-1 scores (None: there were none).
        draw: the uniform draw compared with ``probability`` (None when it was not needed).
    """

    go: bool
    reason: str
    probability: float
    average: float | None
    draw: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def continue_probability(earlier: int, initial_probability: float, decay: float) -> float:
    """``initial_probability * decay ** earlier``: the chance a below-average cell continues after
    ``earlier`` stage-1 results."""
    if earlier < 0:
        raise ValueError(f"earlier must be >= 0, got {earlier}")
    return float(initial_probability) * float(decay) ** earlier


def decide(
    score: float,
    earlier_scores: Sequence[float],
    initial_probability: float,
    decay: float,
    seed: int,
    number: int,
    average: str = "mean",
) -> Decision:
    """Nekrasov's rule for the cell of trial ``number`` whose stage-1 score is ``score``.

    Args:
        score: the cell's stage-1 score.
        earlier_scores: the stage-1 scores of the cells evaluated before it (this trial's left out).
        initial_probability: the continue probability of a below-average cell at the start.
        decay: its decay per earlier stage-1 result.
        seed, number: seed the draw (the search's seed, the trial's number).
        average: "mean" (Nekrasov's running average) or "median" of the earlier scores.
    """
    if average not in AVERAGES:
        raise ValueError(f"stage2_average={average!r} unknown; valid: {list(AVERAGES)}")
    probability = continue_probability(len(earlier_scores), initial_probability, decay)
    if not earlier_scores:
        return Decision(True, "the first cell: no average to beat yet", probability, None)
    level = float(np.mean(earlier_scores) if average == "mean" else np.median(earlier_scores))
    name = "running average" if average == "mean" else "running median"
    if score > level:
        return Decision(True, f"stage 1 {score:.4f} beats the {name} {level:.4f}", probability, level)
    draw = float(np.random.default_rng([int(seed), int(number)]).random())
    go = draw < probability
    verdict = "continued" if go else "terminated"
    return Decision(
        go,
        f"stage 1 {score:.4f} is not above the {name} {level:.4f}: {verdict} "
        f"(continue probability {probability:.3f}, draw {draw:.3f})",
        probability,
        level,
        draw,
    )


@dataclasses.dataclass(frozen=True)
class Stage2Config:
    """Stage 2 of a search: the end-to-end training of a cell and its evaluation.

    Args:
        train: a ``TrainConfig.to_dict()``: the template each cell's run copies, its cell replaced
            and its ``train_logdir`` set to ``<search_dir>/stage2/<graph hash>``.
        eval_split, eval_crop_size: the evaluation of the run's last checkpoint (``eval``'s flags).
        initial_probability, decay, average: ``decide``'s rule.
        trainer: ``module:function`` taking (cell spec, this config, run_dir) and returning
            ``{"miou": ...}``; the default trains and evaluates with ``train_lib`` and ``eval_lib``.
    """

    train: Mapping[str, Any]
    eval_split: str = "val"
    eval_crop_size: tuple[int, int] = (513, 513)
    initial_probability: float = 0.9
    decay: float = 0.98
    average: str = "mean"
    trainer: str = DEFAULT_STAGE2

    def __post_init__(self):
        object.__setattr__(self, "train", dict(self.train))
        object.__setattr__(self, "eval_crop_size", tuple(int(v) for v in self.eval_crop_size))
        for name in ("initial_probability", "decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"stage2_{name}={value!r} must be a number in [0, 1]")
        if len(self.eval_crop_size) != 2 or min(self.eval_crop_size) < 1:
            raise ValueError(f"eval_crop_size must be two positive integers, got {list(self.eval_crop_size)}")
        if self.average not in AVERAGES:
            raise ValueError(f"stage2_average={self.average!r} unknown; valid: {list(AVERAGES)}")
        module, _, attr = self.trainer.partition(":")
        if not module or not attr:
            raise ValueError(f"stage2 trainer={self.trainer!r}: expected 'module:function'")

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["eval_crop_size"] = list(self.eval_crop_size)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Stage2Config":
        return cls(**dict(data))


def run_dir(search_dir: str, graph_hash: str) -> str:
    return os.path.join(search_dir, STAGE2_FOLDER, graph_hash[:16])


def end_to_end(spec, config: Stage2Config, run_directory: str) -> dict[str, Any]:
    """Trains ``spec`` end to end with ``config.train`` in ``run_directory`` (resuming a run that was
    cut short) and evaluates its last checkpoint as ``deeplab_dpc.eval`` does. Returns ``miou``,
    ``seconds``, ``step``, ``run_dir``."""
    import time  # noqa: PLC0415

    from deeplab_dpc.training import train_lib  # noqa: PLC0415
    from deeplab_dpc.training.config import TrainConfig  # noqa: PLC0415

    start = time.perf_counter()
    template = TrainConfig.from_dict(config.train)
    model = dataclasses.replace(template.model, context="dpc", dense_prediction_cell=spec)
    train_config = dataclasses.replace(template, model=model, train_logdir=run_directory)
    summary = train_lib.train(train_config, verbose=0)
    results = evaluate_run(train_config, config.eval_split, config.eval_crop_size)
    release_memory()  # the next trial builds its own graphs
    return {
        "miou": float(results["miou"]),
        "seconds": time.perf_counter() - start,
        "step": int(summary["step"]),
        "run_dir": run_directory,
    }


def load_trainer(reference: str) -> Callable[..., Mapping[str, Any]]:
    import importlib  # noqa: PLC0415

    module, _, attr = reference.partition(":")
    return getattr(importlib.import_module(module), attr)
