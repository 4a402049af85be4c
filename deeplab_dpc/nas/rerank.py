"""Re-ranking: the proxy's best cells trained end to end, scored as ``eval`` scores, the winner saved.

The proxy ranks cells cheaply on cached features; the paper then trained its
top 50 end to end and found its best cell 12th by proxy score. ``run_rerank``
does that for the top K distinct cells of a search (COMPLETE, non-duplicate
trials, best proxy mIoU first; with ``include_reference`` also the published
and ASPP cells if the study has them, for comparison):

* each cell trains with one ``TrainConfig`` (the training flags), its
  ``dense_prediction_cell`` replaced, in ``<runs root>/trial_<number>``;
  by default the run starts from the checkpoint the feature cache's backbone
  came from (``initial_checkpoint_from_cache``), whose weights copy by path
  and shape: the backbone and the decoder, not the cell;
* its last checkpoint is evaluated by ``eval_lib.evaluate_checkpoint`` on
  ``eval_split`` (results also in ``<run>/eval``);
* the full score is recorded in the study beside the proxy score;
* the cell with the best full mIoU is written as DeepLab JSON to
  ``<search_dir>/best_cell.json`` (and ``<runs root>/best_cell.json``, which a
  continued search does not overwrite), ready for ``train
  --dense_prediction_cell_json``.

Where the full scores live. Optuna refuses to change a finished trial's user
attributes in every storage (``UpdateFinishedTrialError``), so the record of
trial N is the study user attribute ``full_trial_0000N``: a dict with
``full_miou``, ``full_run_dir``, ``full_seconds`` (this session's training +
evaluation), ``full_step``, ``proxy_miou``, ``graph_hash``, or ``full_error``
if training diverged. ``full_scores(study)`` reads them all; the optuna
dashboard lists them under the study's user attributes.

Resuming. Rerunning skips every cell with a record; a cell whose run was cut
short resumes from its newest checkpoint (``train`` resumes a train_logdir).
The settings of the first re-ranking (training config minus what a resume may
change, and the evaluation settings) are stored in the study
(``rerank_settings``); a rerun with other settings is refused naming the flags,
since it would mix scores made in different ways.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from typing import TYPE_CHECKING, Any, Mapping, Sequence, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState

from deeplab_dpc import console
from deeplab_dpc.console import format_duration
from deeplab_dpc.core.spec import CellSpec, SearchSpace, SpecError
from deeplab_dpc.fileio import write_json
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.full_training import evaluate_run, release_memory
from deeplab_dpc.nas.rank_correlation import spearman_rho
from deeplab_dpc.nas.search_config import CONFIG_FILE, SearchConfig, relocate

if TYPE_CHECKING:  # Keras loads with the training config; selecting and reading records needs neither.
    from deeplab_dpc.training.config import TrainConfig

# Study user attributes.
FULL_PREFIX = "full_trial_"
SETTINGS = "rerank_settings"
# Fields of a full-score record.
FULL_MIOU = "full_miou"
FULL_RUN_DIR = "full_run_dir"
FULL_SECONDS = "full_seconds"
FULL_STEP = "full_step"
FULL_ERROR = "full_error"

RUNS_FOLDER = "rerank"
BEST_CELL = "best_cell.json"
SUMMARY_FILE = "rerank.json"


class SettingsMismatch(ValueError):
    """The study's full scores were made with other training or evaluation settings."""


# --------------------------------------------------------------------------- the search, its study


def load_search_config(search_dir: str) -> SearchConfig:
    """The ``SearchConfig`` a search wrote into ``search_dir``; ValueError naming ``search_dir`` if none."""
    path = os.path.join(search_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(
            f"search_dir={search_dir} has no {CONFIG_FILE}: not the folder of a deeplab_dpc.search"
        )
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return SearchConfig.from_dict(relocate(data, search_dir))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"search_dir={search_dir}: cannot read {path}: {e}") from None


def open_study(search_config: SearchConfig) -> optuna.Study:
    """The search's study, for reading and recording (no strategy is built: nothing is sampled)."""
    try:
        return study_lib.load_study(search_config, sampler=optuna.samplers.RandomSampler())
    except KeyError:
        raise ValueError(
            f"search_dir={search_config.search_dir}: its storage {search_config.storage} holds no study "
            f"{search_config.study_name!r} (has the search run?)"
        ) from None


def trial_spec(trial: FrozenTrial, space: SearchSpace) -> CellSpec:
    """The cell of a trial: its ``spec`` user attribute, else its parameters."""
    text = trial.user_attrs.get(trial_store.SPEC)
    if text:
        return CellSpec.from_json(text)
    return space_lib.params_to_spec(trial.params, space)


def trial_hash(trial: FrozenTrial, space: SearchSpace) -> str | None:
    graph_hash = trial.user_attrs.get(trial_store.GRAPH_HASH)
    if graph_hash:
        return graph_hash
    try:
        return trial_spec(trial, space).canonical_hash()
    except (SpecError, ValueError):
        return None


# --------------------------------------------------------------------------- full-score records


def full_key(number: int) -> str:
    return f"{FULL_PREFIX}{number:05d}"


def record_full_score(study: optuna.Study, number: int, record: Mapping[str, Any]) -> None:
    """Stores trial ``number``'s full-training record (a JSON-able dict) in the study."""
    study.set_user_attr(full_key(number), _jsonable(dict(record)))


def _jsonable(value: Any) -> Any:
    """Plain JSON types (NumPy scalars and arrays become numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def full_scores(study: optuna.Study) -> dict[int, dict]:
    """Every recorded full-training record, by trial number."""
    attrs = study._storage.get_study_user_attrs(study._study_id)  # now, not a cached copy
    out = {}
    for key, value in attrs.items():
        if key.startswith(FULL_PREFIX) and key[len(FULL_PREFIX) :].isdigit() and isinstance(value, dict):
            out[int(key[len(FULL_PREFIX) :])] = value
    return out


# --------------------------------------------------------------------------- which cells


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A cell to train end to end.

    Args:
        number: its trial (the first completed, non-duplicate trial of its graph).
        graph_hash: the cell's canonical hash.
        spec: the cell.
        proxy_miou: its proxy score.
        proxy_rank: 1 for the best distinct cell by proxy score.
        reference: "published_cityscapes" or "aspp" when it is a reference cell.
    """

    number: int
    graph_hash: str
    spec: CellSpec
    proxy_miou: float
    proxy_rank: int
    reference: str | None = None


def proxy_ranking(trials: Sequence[FrozenTrial], space: SearchSpace) -> list[Candidate]:
    """Distinct completed cells, best proxy score first (ties: the earlier trial); duplicates left out.

    The proxy score is the trial's value, or its stage-1 score in a two-stage search (whose value may
    be stage 2's); ``Candidate.proxy_miou`` is the proxy's mIoU (``miou``, not weighed by cost).
    """

    def proxy_score(t: FrozenTrial) -> float:
        return float(t.user_attrs.get(trial_store.STAGE1_SCORE, trial_store.trial_score(t)))

    done = [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and not trial_store.is_duplicate(t)
        and t.values
        and math.isfinite(proxy_score(t))
    ]
    done.sort(key=lambda t: (-proxy_score(t), t.number))
    out: list[Candidate] = []
    seen: set[str] = set()
    for trial in done:
        try:
            spec = trial_spec(trial, space)
        except (SpecError, ValueError):
            continue  # Not a cell of this space (a corrupt record): nothing to train.
        graph_hash = trial.user_attrs.get(trial_store.GRAPH_HASH) or spec.canonical_hash()
        if graph_hash in seen:
            continue
        seen.add(graph_hash)
        miou = float(trial.user_attrs.get("miou", trial_store.trial_score(trial)))
        out.append(Candidate(trial.number, graph_hash, spec, miou, len(out) + 1))
    return out


def spread_ranks(remaining: int, count: int) -> list[int]:
    """``count`` indices evenly spaced over ``range(remaining)``, first and last included (all of
    them when ``count >= remaining``)."""
    if count <= 0 or remaining <= 0:
        return []
    if count >= remaining:
        return list(range(remaining))
    if count == 1:
        return [remaining // 2]
    return sorted({round(i * (remaining - 1) / (count - 1)) for i in range(count)})


def select_candidates(
    trials: Sequence[FrozenTrial],
    space: SearchSpace,
    top_k: int,
    include_reference: bool = False,
    spread_k: int = 0,
) -> tuple[list[Candidate], list[str]]:
    """The top ``top_k`` distinct cells by proxy score, then ``spread_k`` more spread evenly over
    the rest of the proxy ranking (best to worst: what a rank correlation needs), then
    (``include_reference``) the published and ASPP cells found in the study by graph; returns
    (candidates, notes on what was not found)."""
    ranking = proxy_ranking(trials, space)
    chosen = list(ranking[:top_k])
    rest = ranking[top_k:]
    chosen += [rest[i] for i in spread_ranks(len(rest), spread_k)]
    notes = []
    if include_reference:
        for name, spec in space_lib.reference_cells().items():
            graph_hash = spec.canonical_hash()
            found = [c for c in ranking if c.graph_hash == graph_hash]
            if not found:
                notes.append(
                    f"reference cell {name} is not among the study's completed cells "
                    "(search --enqueue_published runs it); not re-ranked"
                )
                continue
            at = [i for i, c in enumerate(chosen) if c.graph_hash == graph_hash]
            if at:
                chosen[at[0]] = dataclasses.replace(chosen[at[0]], reference=name)
            else:
                chosen.append(dataclasses.replace(found[0], reference=name))
    return chosen, notes


# --------------------------------------------------------------------------- where a run starts from


def initial_checkpoint_from_cache(
    search_config: SearchConfig, model=None
) -> tuple[str | None, str]:
    """The checkpoint the search's cached features came from, as a ``tf_initial_checkpoint``.

    Reads the manifest of the proxy's train split in ``proxy.cache_dir``. Returns (path or None,
    a sentence saying what was found). ``model`` (a ``ModelConfig``): the cache's backbone must
    be its ``model_variant`` and ``depth_multiplier``, else weights would not copy (ValueError
    naming the field).
    """
    from deeplab_dpc.nas.features import CacheError, FeatureCache  # noqa: PLC0415 (NumPy only)

    proxy = dict(search_config.proxy)
    cache_dir = proxy.get("cache_dir")
    if not cache_dir:
        return (
            None,
            "the search config names no feature cache: training starts from the flags' initialisation",
        )
    split = proxy.get("train_split", "train")
    try:
        backbone = FeatureCache(cache_dir, split).manifest.get("backbone") or {}
    except CacheError as e:
        return None, f"the feature cache cannot be read ({e}): training starts from the flags' initialisation"
    kind, checkpoint = backbone.get("weights"), backbone.get("checkpoint")
    if kind not in ("checkpoint", "tf_initial_checkpoint") or not checkpoint:
        return None, (
            f"the cached features came from a backbone with weights {kind!r}, not a checkpoint that "
            "tf_initial_checkpoint takes: training starts from the flags' initialisation"
        )
    if not (os.path.exists(checkpoint) or os.path.exists(checkpoint + ".index")):
        raise ValueError(
            f"tf_initial_checkpoint: the feature cache's backbone checkpoint {checkpoint} "
            f"(recorded in {cache_dir}) no longer exists; give --tf_initial_checkpoint"
        )
    if model is not None:
        for name in ("model_variant", "depth_multiplier"):
            cached = backbone.get(name)
            if cached is not None and cached != getattr(model, name):
                raise ValueError(
                    f"{name}={getattr(model, name)} differs from the backbone of the feature cache "
                    f"({name}={cached}, {checkpoint}), whose weights the runs would start from; "
                    f"use {name}={cached} or give tf_initial_checkpoint"
                )
    return (
        os.path.abspath(checkpoint),
        f"runs start from the feature cache's backbone checkpoint {checkpoint}",
    )


# --------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class RerankConfig:
    """One re-ranking; each field is the flag of the same name (``train``: the training flags).

    Args:
        search_dir: the search (its ``search_config.json`` and study).
        train: the training of every cell; its ``train_logdir`` is the folder of the runs (one
            ``trial_<number>`` folder per cell), its model's cell is replaced by each candidate's.
        top_k: distinct cells to train, best proxy score first.
        include_reference: also the published and ASPP cells, if the study has them.
        spread_k: also this many cells spread evenly over the rest of the proxy ranking.
        eval_split, eval_crop_size, eval_scales, add_flipped_images, eval_batch_size: the
            evaluation, as ``deeplab_dpc.eval``'s flags.
        notes: sentences printed when the re-ranking starts (where the runs start from, ...).
    """

    search_dir: str
    train: "TrainConfig"
    top_k: int = 10
    include_reference: bool = False
    spread_k: int = 0
    eval_split: str = "val"
    eval_crop_size: tuple[int, int] = (513, 513)
    eval_scales: tuple[float, ...] = (1.0,)
    add_flipped_images: bool = False
    eval_batch_size: int = 1
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "search_dir", os.path.abspath(os.fspath(self.search_dir)))
        object.__setattr__(self, "eval_crop_size", tuple(int(v) for v in self.eval_crop_size))
        object.__setattr__(self, "eval_scales", tuple(float(s) for s in self.eval_scales))
        object.__setattr__(self, "notes", tuple(self.notes))
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be a positive integer, got {self.top_k!r}")
        if isinstance(self.spread_k, bool) or not isinstance(self.spread_k, int) or self.spread_k < 0:
            raise ValueError(f"spread_k must be an integer >= 0, got {self.spread_k!r}")
        if self.train.model.context != "dpc":
            raise ValueError(
                f"context={self.train.model.context!r}: re-ranking trains each cell as the model's Dense "
                "Prediction Cell; drop the flag (or set dpc)"
            )
        if not self.eval_split:
            raise ValueError("eval_split must name a split")
        if len(self.eval_crop_size) != 2 or min(self.eval_crop_size) < 1:
            raise ValueError(f"eval_crop_size must be two positive integers, got {list(self.eval_crop_size)}")
        if not self.eval_scales or min(self.eval_scales) <= 0:
            raise ValueError(f"eval_scales must be positive, got {list(self.eval_scales)}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be positive, got {self.eval_batch_size}")

    @property
    def runs_dir(self) -> str:
        return os.path.abspath(self.train.train_logdir)

    def run_dir(self, number: int) -> str:
        return os.path.join(self.runs_dir, f"trial_{number:05d}")

    def train_config_for(self, candidate: Candidate) -> "TrainConfig":
        """The training of one cell: the template with that cell and its own train_logdir."""
        model = dataclasses.replace(self.train.model, context="dpc", dense_prediction_cell=candidate.spec)
        return dataclasses.replace(self.train, model=model, train_logdir=self.run_dir(candidate.number))

    def eval_settings(self) -> dict[str, Any]:
        return {
            "eval_split": self.eval_split,
            "eval_crop_size": list(self.eval_crop_size),
            "eval_scales": list(self.eval_scales),
            "add_flipped_images": self.add_flipped_images,
        }

    def settings(self) -> dict[str, Any]:
        """What makes full scores comparable: the training config and the evaluation."""
        return {"train": self.train.to_dict(), "eval": self.eval_settings()}


def check_settings(saved: Mapping[str, Any] | None, config: RerankConfig) -> None:
    """``SettingsMismatch`` naming the flags if ``config`` trains or evaluates other than the
    re-ranking that recorded the study's full scores (what a resume may change is allowed, and
    the cell, which each run replaces)."""
    if not saved:
        return
    from deeplab_dpc.training.config import flag_name, resume_changes  # noqa: PLC0415

    refused, _ = resume_changes(dict(saved.get("train", {})), config.train)
    changes = [
        (flag_name(f), a, b)
        for f, a, b in refused
        if f not in ("model.dense_prediction_cell", "model.context")
    ]
    old_eval = dict(saved.get("eval", {}))
    for name, value in config.eval_settings().items():
        if name in old_eval and json.dumps(old_eval[name]) != json.dumps(value):
            changes.append((name, old_eval[name], value))
    if changes:
        listed = "; ".join(f"--{name}: {json.dumps(a)} -> {json.dumps(b)}" for name, a, b in changes)
        raise SettingsMismatch(
            f"the full scores recorded in this study were made with other settings ({listed}); a re-ranking "
            f"with these would mix scores made in different ways. Use the same flags, or re-rank a copy of the "
            f"search made by `python -m deeplab_dpc.copy_search --search_dir={config.search_dir} "
            f"--output_dir=<new folder>` (the same proxy trials, no full scores)"
        )


# --------------------------------------------------------------------------- one cell


def _train_cell(train_config: "TrainConfig", verbose) -> dict:
    """Trains (or resumes) one cell's run; ``train_lib.train``'s summary."""
    from deeplab_dpc.training import train_lib  # noqa: PLC0415

    return train_lib.train(train_config, verbose=verbose)


def _evaluate_cell(config: RerankConfig, train_config: "TrainConfig") -> dict:
    """The newest checkpoint of the run, evaluated as ``deeplab_dpc.eval`` does; its results dict."""
    return evaluate_run(
        train_config,
        config.eval_split,
        config.eval_crop_size,
        config.eval_scales,
        config.add_flipped_images,
        config.eval_batch_size,
    )


def _is_divergence(error: BaseException) -> bool:
    try:
        from deeplab_dpc.training.train_lib import TrainingDiverged  # noqa: PLC0415
    except ImportError:  # pragma: no cover
        return False
    return isinstance(error, TrainingDiverged)


# --------------------------------------------------------------------------- console


def _describe(candidate: Candidate) -> str:
    what = (
        f"trial {candidate.number} (proxy mIoU {candidate.proxy_miou:.4f}, #{candidate.proxy_rank} by proxy"
    )
    if candidate.reference:
        what += f", reference {candidate.reference}"
    return what + ")"


def eta_seconds(trained_seconds: Sequence[float], remaining: int) -> float:
    """The time left: ``remaining`` runs at the mean time of those trained this session (NaN before one)."""
    if not remaining:
        return 0.0
    if not trained_seconds:
        return float("nan")
    return remaining * sum(trained_seconds) / len(trained_seconds)


# --------------------------------------------------------------------------- the re-ranking


def best_record(records: Mapping[int, Mapping[str, Any]], numbers=None) -> tuple[int, dict] | None:
    """(trial number, record) with the highest full mIoU (ties: the earlier trial), among ``numbers``."""
    scored = [
        (n, r)
        for n, r in records.items()
        if r.get(FULL_MIOU) is not None and (numbers is None or n in numbers)
    ]
    if not scored:
        return None
    return max(scored, key=lambda item: (item[1][FULL_MIOU], -item[0]))


def write_best_cell(path: str, spec: CellSpec) -> None:
    """The winner as DeepLab JSON (atomic), the format ``train --dense_prediction_cell_json`` reads."""
    spec.save(path)


def run_rerank(config: RerankConfig, stream: TextIO | None = None, verbose: int | str = "auto") -> dict:
    """Trains and evaluates the candidates that have no record yet; returns a summary.

    Args:
        config: the re-ranking.
        stream: where progress and result lines go (stderr).
        verbose: each run's progress bar (``train_lib.train``): 0 none, 1 live, 2 a line per run;
            "auto": live on a terminal, else a line.

    Raises:
        SettingsMismatch: the study's full scores were made with other settings.
        ResumeMismatch: a run folder holds a run with other settings (``train``'s check).
        ValueError: not a search folder, or no completed cell to re-rank.
    """
    stream = stream or sys.stderr
    if verbose == "auto":
        verbose = console.progress_verbosity(stream)

    def say(line: str) -> None:
        stream.write(line + "\n")
        stream.flush()

    search_config = load_search_config(config.search_dir)
    study = open_study(search_config)
    trials = trial_store.all_trials(study)
    candidates, notes = select_candidates(
        trials, search_config.space, config.top_k, config.include_reference, config.spread_k
    )
    if not candidates:
        raise ValueError(f"search_dir={config.search_dir}: the study has no completed cell to re-rank")
    check_settings(study.user_attrs.get(SETTINGS), config)
    study.set_user_attr(SETTINGS, _jsonable(config.settings()))

    for note in (*config.notes, *notes):
        say(note)
    distinct = len(proxy_ranking(trials, search_config.space))
    records = full_scores(study)
    todo = [c for c in candidates if c.number not in records]
    say(
        f"re-ranking {len(candidates)} of {distinct} distinct completed cells end to end "
        f"({len(candidates) - len(todo)} already recorded): {config.train.training_number_of_steps} steps "
        f"each, scored on {config.eval_split}; runs in {config.runs_dir}"
    )
    os.makedirs(config.runs_dir, exist_ok=True)
    start = time.time()
    trained_seconds: list[float] = []
    results = []
    for index, candidate in enumerate(candidates, 1):
        record = records.get(candidate.number)
        prefix = f"[{index}/{len(candidates)}]"
        if record is not None:
            say(f"{prefix} {_describe(candidate)}: {_result_text(record)} (recorded)")
            results.append((candidate, record))
            continue
        remaining = sum(c.number not in records for c in candidates[index - 1 :])
        train_config = config.train_config_for(candidate)
        say(
            f"{prefix} {_describe(candidate)}: training in {train_config.train_logdir} | "
            f"{len(trained_seconds)} trained this session, {format_duration(time.time() - start)} | "
            f"ETA {format_duration(eta_seconds(trained_seconds, remaining))}"
        )
        began = time.time()
        os.makedirs(train_config.train_logdir, exist_ok=True)
        candidate.spec.save(os.path.join(train_config.train_logdir, "cell.json"))
        record = {
            "graph_hash": candidate.graph_hash,
            "proxy_miou": candidate.proxy_miou,
            "proxy_rank": candidate.proxy_rank,
            "spec": candidate.spec.to_json(),
            FULL_RUN_DIR: train_config.train_logdir,
        }
        if candidate.reference:
            record["reference"] = candidate.reference
        try:
            summary = _train_cell(train_config, verbose)
        except Exception as e:  # noqa: BLE001
            if not _is_divergence(e):
                raise
            record.update({FULL_ERROR: str(e)[:2000], FULL_SECONDS: time.time() - began})
        else:
            results_eval = _evaluate_cell(config, train_config)
            record.update(
                {
                    FULL_MIOU: float(results_eval["miou"]),
                    FULL_SECONDS: time.time() - began,
                    FULL_STEP: int(results_eval["step"]),
                    "resumed_from_step": int(summary.get("resumed_from") or 0),
                    "pixel_accuracy": float(results_eval["pixel_accuracy"]),
                    "eval_split": config.eval_split,
                }
            )
        finally:
            release_memory()
        record_full_score(study, candidate.number, record)
        records[candidate.number] = record
        trained_seconds.append(time.time() - began)
        say(f"{prefix} {_describe(candidate)}: {_result_text(record)}")
        results.append((candidate, record))

    return _finish(config, study, search_config, candidates, results, len(trained_seconds), say)


def _result_text(record: Mapping[str, Any]) -> str:
    if record.get(FULL_MIOU) is None:
        return f"failed: {str(record.get(FULL_ERROR, 'no score')).splitlines()[0][:300]}"
    text = f"full mIoU {record[FULL_MIOU]:.4f}"
    if record.get(FULL_SECONDS) is not None:
        text += f" in {format_duration(float(record[FULL_SECONDS]))}"
    return text


def _finish(config, study, search_config, candidates, results, trained, say) -> dict:
    records = full_scores(study)
    numbers = {c.number for c in candidates}
    best = best_record(records, numbers)
    scored = [(c, r) for c, r in results if r.get(FULL_MIOU) is not None]
    rho = None
    if len(scored) >= 3:
        rho = spearman_rho([c.proxy_miou for c, _ in scored], [r[FULL_MIOU] for _, r in scored])
    summary: dict[str, Any] = {
        "search_dir": config.search_dir,
        "runs_dir": config.runs_dir,
        "trained": trained,
        "cells": [
            {
                "trial": c.number,
                "graph_hash": c.graph_hash,
                "reference": c.reference,
                "proxy_miou": c.proxy_miou,
                "proxy_rank": c.proxy_rank,
                FULL_MIOU: r.get(FULL_MIOU),
                FULL_RUN_DIR: r.get(FULL_RUN_DIR),
                FULL_SECONDS: r.get(FULL_SECONDS),
                FULL_ERROR: r.get(FULL_ERROR),
            }
            for c, r in results
        ],
        "spearman_rho": rho,
        "best_trial": None,
        "best_cell": None,
    }
    if best is not None:
        number, record = best
        winner = next(c for c in candidates if c.number == number)
        paths = [os.path.join(config.search_dir, BEST_CELL), os.path.join(config.runs_dir, BEST_CELL)]
        for path in paths:
            write_best_cell(path, winner.spec)
        by_full = sorted((r[FULL_MIOU] for _, r in scored), reverse=True)
        summary.update(
            best_trial=number,
            best_full_miou=record[FULL_MIOU],
            best_proxy_rank=winner.proxy_rank,
            best_reference=winner.reference,
            best_cell=paths[0],
            best_run_dir=record.get(FULL_RUN_DIR),
        )
        say(
            f"best cell after re-ranking: trial {number}, full mIoU {record[FULL_MIOU]:.4f} "
            f"(#{by_full.index(record[FULL_MIOU]) + 1} of {len(scored)} by full score, "
            f"#{winner.proxy_rank} by proxy score"
            + (f", the reference {winner.reference} cell" if winner.reference else "")
            + f"): {paths[0]} (train it with --dense_prediction_cell_json={paths[0]})"
        )
    if rho is not None:
        say(f"Spearman's rho, proxy vs full mIoU over {len(scored)} cells: {rho:.3f}")
    write_json(os.path.join(config.runs_dir, SUMMARY_FILE), summary)
    return summary
