"""The search's trial store: an Optuna study, with dedup by graph, budgets and interruption recovery.

``SearchConfig`` (frozen, validated) describes a search; ``run_worker`` is the
loop every worker process runs against the shared study. The rules:

* **One training per graph.** A proposed cell's canonical hash is compared,
  under the search's claim lock, with every other trial's: a graph that
  already completed is recorded COMPLETE with the stored score and user attr
  ``duplicate_of`` (no training); one that failed on its own is recorded FAIL
  with the stored error and ``duplicate_of``; one that is running is waited
  for, then copied (if that attempt is interrupted, the waiting trial trains
  the graph itself, and the queued retry will find it done). Duplicates do
  not count against ``max_trials``.
* **Budgets.** ``max_trials`` counts trials that trained: completed, failed
  on their own, or running now (duplicates and interrupted attempts left
  out; a retried trial counts once, as its retry). A worker starts a trial
  only while that count is below the budget, under the lock, so N workers
  never overshoot. ``max_hours``: no trial starts after that many hours of
  this run; running trials finish.
* **Interruptions.** A worker records its owner (host, pid, process start
  time, worker id) on each trial and a heartbeat every ``heartbeat_seconds``
  while it runs. A RUNNING trial whose owner process is gone (same host) or
  whose heartbeat is older than ``grace_seconds`` is interrupted: marked
  FAIL with user attrs ``interrupted`` and ``error``, and enqueued once more
  with the same parameters and user attr ``retry_of``. A retry that is
  interrupted again stays FAIL ("interrupted again") and counts as failed.
  Retries start before any other queued or new trial.
* **Pruning.** With a pruner (``pruner``: Optuna's median, successive
  halving or Hyperband), the objective reports its intermediate scores (the
  proxy's every ``eval_interval`` steps) and a trial the pruner stops is
  recorded PRUNED with its last intermediate score as its value and user attr
  ``pruned_at_step``. A pruned trial trained, so it counts toward
  ``max_trials``; the strategies learn from COMPLETE trials only; a later
  proposal of a pruned graph is recorded PRUNED as its duplicate (no training).
* **Zero-cost pre-filter.** With ``prefilter`` (a score of
  ``nas.zero_cost.SCORES``) and ``prefilter_ratio`` R > 1, each trial that
  trains is the best of R proposals of the strategy by that score: under the
  lock the worker claims R trials at once (RUNNING, its own, system attr
  ``dpc_prefilter_pending`` = the first one's number, user attr
  ``prefilter_group`` likewise), each asked for a cell; outside the lock it
  scores them (a second or so each, heartbeats running), writing
  ``zero_cost_<score>`` on each as it goes; then under the lock it decides:
  the best (NaN or a scoring error last, ties to the earliest) leaves the
  group and goes on as any proposal does (dedup, training), the others are
  recorded PRUNED with user attrs ``pruned_by="prefilter"`` and
  ``prefilter_winner``, no value and no intermediate values. A pre-filtered
  proposal never trained: it does not count toward ``max_trials`` (which
  counts trained trials; an undecided group counts once), it is nobody's
  original for dedup (a later proposal of its graph trains), and no strategy
  learns from it (``samplers.without_prefiltered``). A worker killed before
  the decision leaves its undecided proposals RUNNING: they are interrupted
  like any trial, with no retry (nothing was decided, nothing trained).
  Queued trials (retries, reference cells) train without a pre-filter.
* **Zero-cost scores.** ``zero_cost_scores`` (the pre-filter's score always
  among them): every trial that trains first records ``zero_cost_<score>`` of
  its cell at initialisation (the objective's ``zero_cost(spec, names)``, for
  the proxy ``zero_cost.score_cell``), ``zero_cost_seconds``, and
  ``zero_cost_error`` if scoring failed (the trial trains all the same). A
  non-finite score is stored as the string ``"inf"``, ``"-inf"`` or ``"nan"``
  (``float()`` reads it back).
* **Failures.** Any exception of the objective (the proxy's ``TrialFailed``
  on NaN, out of memory, ...) and a non-finite score make the trial FAIL with
  user attr ``error`` (and ``traceback``); the search goes on. A failure is
  never a score.

Everything that decides (budget, claim, recovery) runs under one file lock in
``search_dir`` (``fcntl.flock``: released by the kernel when a process dies, even
by SIGKILL), so every process of a search must see the same ``search_dir``
(one machine, or a shared filesystem with working locks).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import os
import socket
import sqlite3
import threading
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

from deeplab_dpc.core.spec import CellSpec, SearchSpace
from deeplab_dpc.fileio import write_json
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import zero_cost as zero_cost_lib
from deeplab_dpc.nas.cost import COST_METRICS, score_of
from deeplab_dpc.nas.samplers import (
    MULTI_OBJECTIVE,
    PREFILTER,
    PRUNED_BY,
    STRATEGIES,
    StrategyOptions,
    is_prefiltered,
    make_sampler,
)

logger = logging.getLogger(__name__)

DEFAULT_OBJECTIVE = "deeplab_dpc.nas.objective:proxy_objective"
EXECUTORS = ("local", "ray")
CONFIG_FILE = "search_config.json"
LOCK_FILE = "claims.lock"
# Proxy trainer fields added after searches were already run, with the default that reproduces those
# searches: a search_config.json without the field continues when the field is at this value.
PROXY_FIELDS_ADDED = {
    "drop_path_keep_prob": 1.0,
    "ema_decay": None,
    "initializer": "deeplab",
    "distillation_weight": 0.0,
    "distillation_loss": "kl",
    "distillation_temperature": 1.0,
}
# Search fields added after searches were already run, with the value that reproduces those searches:
# a search_config.json without the field continues only at this value.
SEARCH_FIELDS_ADDED = {"prefilter": None, "prefilter_ratio": 1}
# Optuna's pruners by flag value (``make_pruner``).
PRUNERS = ("none", "median", "sha", "hyperband")
# The best cell by proxy score so far (the re-ranked winner is rerank's best_cell.json).
BEST_PROXY_CELL = "best_proxy_cell.json"
# Fields that may change when a search is continued: budgets and how it is run, not what it searches.
RESUMABLE_FIELDS = frozenset(
    {
        "max_trials",
        "max_hours",
        "num_workers",
        "executor",
        "ray_address",
        "heartbeat_seconds",
        "grace_seconds",
        "zero_cost_scores",  # what is recorded of each trained trial, not what is searched
    }
)
# A worker that proposes only known graphs this many times in a row stops: the strategy has
# nothing new to offer (a tiny space, or a converged TPE).
MAX_CONSECUTIVE_DUPLICATES = 200
# Result fields copied to user attributes (the rest of a result is kept if small).
RESULT_ATTRS = ("miou", "params", "madds", "latency_ms", "seconds", "steps", "filters")
# Two-stage evaluation's user attributes (``nas.progressive``), copied to a duplicate with the result.
STAGE = "stage"
STAGE1_SCORE = "stage1_score"
STAGE2_DECISION = "stage2_decision"
FULL_MIOU = "full_miou"
STAGE_ATTRS = (STAGE, STAGE1_SCORE, FULL_MIOU, "score")
_MAX_ATTR_JSON = 20_000

# User attribute names.
SPEC = "spec"
GRAPH_HASH = "graph_hash"
DUPLICATE_OF = "duplicate_of"
RETRY_OF = "retry_of"
RETRIED_AS = "retried_as"
PRUNED_AT_STEP = "pruned_at_step"
INTERRUPTED = "interrupted"
ERROR = "error"
PROPOSAL = "proposal"
REFERENCE = "reference"
PREFILTER_GROUP = "prefilter_group"  # the first trial number of the proposals a trial was picked among
PREFILTER_WINNER = "prefilter_winner"  # on a pre-filtered proposal: the proposal chosen instead
ZERO_COST_SECONDS = "zero_cost_seconds"
ZERO_COST_ERROR = "zero_cost_error"
# System attribute names (not shown by the dashboard).
OWNER = "dpc_owner"
HEARTBEAT = "dpc_heartbeat"
REFERENCES_ENQUEUED = "dpc_references_enqueued"
PREFILTER_PENDING = "dpc_prefilter_pending"  # a proposal scored, not yet decided: its group's first number


def zero_cost_attr(name: str) -> str:
    """The user attribute holding zero-cost score ``name`` (``zero_cost_synflow``)."""
    return f"zero_cost_{name}"


class ConfigMismatch(ValueError):
    """A search_dir started with another value of a field that must not change."""

    def __init__(self, field: str, key: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.key = key


class WorkerSetupError(RuntimeError):
    """A worker could not build its objective: a setup problem, not a trial's failure."""


# --------------------------------------------------------------------------- config


def resolve_storage(storage: str | None, search_dir: str) -> str:
    """The storage URL: SQLite in ``search_dir`` by default, a database URL, or ``journal:PATH``
    (also written as a path ending in ``.log``)."""
    if not storage:
        return "sqlite:///" + os.path.join(os.path.abspath(search_dir), "study.db")
    if storage.startswith("journal:"):
        return "journal:" + os.path.abspath(storage[len("journal:") :])
    if "://" not in storage and storage.endswith(".log"):
        return "journal:" + os.path.abspath(storage)
    if "://" not in storage:
        raise ValueError(
            f"storage={storage!r} is neither a database URL (sqlite:///path.db, postgresql://...) "
            "nor a journal file (a path ending in .log, or journal:PATH)"
        )
    return storage


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """One architecture search; each field is the flag of the same name (``proxy`` holds the
    proxy trainer's config, ``ProxyConfig.to_dict()``, passed to the objective).

    Args:
        search_dir: where the config, the default SQLite study, the claim lock, TensorBoard logs
            and ``best_proxy_cell.json`` go.
        storage: Optuna storage: None (``sqlite:///<search_dir>/study.db``), a database URL, or a
            journal file (``journal:PATH`` or a path ending in .log) for many processes. Resolved
            to a URL on construction.
        study_name: the study's name in the storage.
        strategy: a key of ``samplers.STRATEGIES``.
        max_trials: trials that train (see the module docstring).
        max_hours: no trial starts after this many hours of this run (None: no limit).
        num_branches: B, branches per cell.
        seed: seed of the strategy (and of the proxy, through ``proxy``).
        mutation_probability, mutation_top_k: the ``random`` strategy.
        population_size, sample_size: the ``evolution`` strategy.
        enqueue_published: run the published Cityscapes cell and an ASPP cell first.
        executor: "local" (worker processes) or "ray" (Ray tasks).
        num_workers: workers running trials at once.
        ray_address: Ray cluster address (None: start a local Ray).
        objective: ``module:function``; the function takes this config and returns the per-process
            objective, ``objective(spec) -> {"miou": ..., "params": ..., "madds": ..., ...}``.
        proxy: the proxy trainer's config as a dict.
        heartbeat_seconds: interval of a running trial's heartbeat.
        grace_seconds: a running trial whose heartbeat is older than this is interrupted.
        cost_metric: None (the trial's value is its mIoU, as in the paper) or a key of the result
            (``madds``, ``params``) that ``nas.cost.cost_aware_score`` weighs the mIoU by; the
            mIoU stays in user attr ``miou``, the weighed value is also user attr ``score``.
        cost_target, cost_alpha, cost_beta: the target cost and MnasNet's exponents (below / above
            the target).
        rl_*: the ``rl`` strategy's controller (``nas.controller.ControllerConfig`` without the prefix).
        pruner: one of ``PRUNERS``: stop trials early on their intermediate scores (the proxy's
            ``eval_interval`` must be set): "median" (Optuna's MedianPruner: below the median of
            earlier trials at the same step), "sha" (asynchronous successive halving) or
            "hyperband"; "none" trains every trial to the end (the paper).
        pruner_startup_trials: "median" prunes nothing until this many trials completed.
        pruner_warmup_steps: "median" prunes no trial before this step.
        pruner_reduction_factor: "sha" and "hyperband": keep about 1 in this many at each rung.
        stage2: progressive two-stage evaluation (``nas.progressive``): a
            ``Stage2Config.to_dict()`` (the end-to-end training of promising cells and Nekrasov's
            early-termination rule), or None: the proxy alone (the paper).
        prefilter: None, or a key of ``zero_cost.SCORES``: with ``prefilter_ratio`` R > 1, each
            trained trial is the best of R proposals by this score (see the module docstring).
        prefilter_ratio: proposals per trained trial (1: no pre-filter, the paper).
        zero_cost_scores: zero-cost scores recorded on every trained trial, before it trains: names of
            ``zero_cost.SCORES``, "all", or a comma-separated string; None: all with a pre-filter,
            else none. The pre-filter's score is always added. Stored as a tuple of names.
    """

    search_dir: str
    storage: str | None = None
    study_name: str = "dpc_search"
    strategy: str = "random"
    max_trials: int = 100
    max_hours: float | None = None
    num_branches: int = 5
    seed: int = 0
    mutation_probability: float = 0.5
    mutation_top_k: int = 10
    population_size: int = 20
    sample_size: int = 5
    enqueue_published: bool = False
    executor: str = "local"
    num_workers: int = 1
    ray_address: str | None = None
    objective: str = DEFAULT_OBJECTIVE
    proxy: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    heartbeat_seconds: float = 15.0
    grace_seconds: float = 120.0
    cost_metric: str | None = None
    cost_target: float | None = None
    cost_alpha: float = -0.07
    cost_beta: float = -0.07
    rl_algorithm: str = "ppo"
    rl_learning_rate: float = 1e-3
    rl_batch_size: int = 5
    rl_epochs: int = 4
    rl_clip: float = 0.1
    rl_entropy_weight: float = 1e-3
    rl_baseline_decay: float = 0.95
    rl_hidden: int = 100
    rl_layers: int = 2
    pruner: str = "none"
    pruner_startup_trials: int = 5
    pruner_warmup_steps: int = 0
    pruner_reduction_factor: int = 3
    stage2: Mapping[str, Any] | None = None
    prefilter: str | None = None
    prefilter_ratio: int = 1
    zero_cost_scores: Sequence[str] | str | None = None

    def __post_init__(self):
        if not self.search_dir:
            raise ValueError("search_dir is required")
        object.__setattr__(self, "search_dir", os.path.abspath(os.fspath(self.search_dir)))
        object.__setattr__(self, "storage", resolve_storage(self.storage, self.search_dir))
        object.__setattr__(self, "proxy", dict(self.proxy))
        if not self.study_name:
            raise ValueError("study_name must not be empty")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy={self.strategy!r} unknown; valid strategies: {sorted(STRATEGIES)}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor={self.executor!r} unknown; valid executors: {list(EXECUTORS)}")
        for name in ("max_trials", "num_branches", "num_workers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_hours is not None and not self.max_hours > 0:
            raise ValueError(f"max_hours must be positive, got {self.max_hours}")
        if not self.heartbeat_seconds > 0:
            raise ValueError(f"heartbeat_seconds must be positive, got {self.heartbeat_seconds}")
        if not self.grace_seconds >= 2 * self.heartbeat_seconds:
            raise ValueError(
                f"grace_seconds must be at least twice heartbeat_seconds ({self.heartbeat_seconds}), "
                f"got {self.grace_seconds}"
            )
        if self.enqueue_published and self.num_branches != 5:
            raise ValueError(
                f"enqueue_published needs num_branches=5 (the published and ASPP cells have 5 branches), "
                f"got num_branches={self.num_branches}"
            )
        self._check_pruner()
        self._check_zero_cost()
        if self.stage2 is not None:
            from deeplab_dpc.nas.progressive import Stage2Config  # noqa: PLC0415  (NumPy only)

            object.__setattr__(self, "stage2", Stage2Config.from_dict(self.stage2).to_dict())
        module, _, attr = self.objective.partition(":")
        if not module or not attr:
            raise ValueError(f"objective={self.objective!r}: expected 'module:function'")
        self.strategy_options()  # validates the strategy fields, errors naming them
        if self.multi_objective:
            if self.cost_metric is None:
                raise ValueError(
                    f"strategy={self.strategy} searches two objectives, proxy mIoU and a cost: set cost_metric "
                    f"(one of {list(COST_METRICS)})"
                )
            if self.pruner != "none":
                raise ValueError(
                    f"pruner={self.pruner}: Optuna's pruners take one objective, strategy={self.strategy} two"
                )
            if self.stage2 is not None:
                raise ValueError(
                    f"stage2_flagfile: two-stage evaluation takes one objective, strategy={self.strategy} two"
                )
        if self.cost_metric is not None:
            if self.cost_metric not in COST_METRICS:
                raise ValueError(f"cost_metric={self.cost_metric!r} unknown; valid: {list(COST_METRICS)}")
            if not self.multi_objective and (self.cost_target is None or not self.cost_target > 0):
                raise ValueError(
                    f"cost_target={self.cost_target} must be positive with cost_metric={self.cost_metric}"
                )

    def _check_pruner(self) -> None:
        if self.pruner not in PRUNERS:
            raise ValueError(f"pruner={self.pruner!r} unknown; valid: {list(PRUNERS)}")
        for name in ("pruner_startup_trials", "pruner_warmup_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        factor = self.pruner_reduction_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
            raise ValueError(f"pruner_reduction_factor must be an integer >= 2, got {factor!r}")
        if self.pruner != "none" and self.objective == DEFAULT_OBJECTIVE:
            interval = self.proxy.get("eval_interval") or 0
            steps = self.proxy.get("proxy_steps")
            if not interval or (steps is not None and interval >= steps):
                raise ValueError(
                    f"pruner={self.pruner} needs intermediate scores: set proxy_eval_interval to a number of "
                    f"steps below proxy_steps ({steps}), got {interval}"
                )

    def _check_zero_cost(self) -> None:
        ratio = self.prefilter_ratio
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f"prefilter_ratio must be an integer >= 1, got {ratio!r}")
        valid = sorted(zero_cost_lib.SCORES)
        if self.prefilter is not None:
            try:
                zero_cost_lib.check_names([self.prefilter])
            except ValueError as e:
                raise ValueError(f"prefilter={self.prefilter!r}: {e}") from None
            if ratio == 1:
                raise ValueError(
                    f"prefilter_ratio=1 with prefilter={self.prefilter} filters nothing: set prefilter_ratio to "
                    f"the proposals scored per trained trial (>= 2), or record the score alone with "
                    f"zero_cost_scores={self.prefilter}"
                )
        elif ratio > 1:
            raise ValueError(
                f"prefilter_ratio={ratio} needs prefilter, the zero-cost score that ranks the proposals "
                f"(one of {valid})"
            )
        given = self.zero_cost_scores
        names = given.split(",") if isinstance(given, str) else list(given or ())
        names = [str(n).strip() for n in names if str(n).strip()]
        if "all" in names or (given is None and self.prefilter is not None):
            names = list(zero_cost_lib.SCORES)  # a pre-filtered search records every score by default
        if names:
            try:
                zero_cost_lib.check_names(names)
            except ValueError as e:
                raise ValueError(f"zero_cost_scores={given!r}: {e} (or 'all')") from None
        if self.prefilter is not None:
            names.insert(0, self.prefilter)
        object.__setattr__(self, "zero_cost_scores", tuple(dict.fromkeys(names)))

    def make_pruner(self) -> optuna.pruners.BasePruner:
        """The study's pruner (``NopPruner`` for "none"); steps are the proxy's training steps."""
        if self.pruner == "none":
            return optuna.pruners.NopPruner()
        if self.pruner == "median":
            return optuna.pruners.MedianPruner(
                n_startup_trials=self.pruner_startup_trials, n_warmup_steps=self.pruner_warmup_steps
            )
        interval = int(self.proxy.get("eval_interval") or 1)
        if self.pruner == "sha":
            return optuna.pruners.SuccessiveHalvingPruner(
                min_resource=interval, reduction_factor=self.pruner_reduction_factor
            )
        return optuna.pruners.HyperbandPruner(
            min_resource=interval,
            max_resource=int(self.proxy["proxy_steps"]) if self.proxy.get("proxy_steps") else "auto",
            reduction_factor=self.pruner_reduction_factor,
        )

    @property
    def multi_objective(self) -> bool:
        """Two objectives (proxy mIoU up, ``cost_metric`` down) rather than one score."""
        return self.strategy in MULTI_OBJECTIVE

    @property
    def directions(self) -> list[str]:
        return ["maximize", "minimize"] if self.multi_objective else ["maximize"]

    @property
    def space(self) -> SearchSpace:
        return SearchSpace(num_branches=self.num_branches)

    @property
    def lock_path(self) -> str:
        return os.path.join(self.search_dir, LOCK_FILE)

    @property
    def tensorboard_dir(self) -> str:
        return os.path.join(self.search_dir, "tensorboard")

    def strategy_options(self) -> StrategyOptions:
        return StrategyOptions(
            seed=self.seed,
            mutation_probability=self.mutation_probability,
            mutation_top_k=self.mutation_top_k,
            population_size=self.population_size,
            sample_size=self.sample_size,
            state_dir=os.path.join(self.search_dir, "controller"),
            rl=self.controller_config(),
        )

    def controller_config(self) -> dict[str, Any]:
        """The ``rl_*`` fields without their prefix, validated (errors name the ``rl_`` field)."""
        from deeplab_dpc.nas.controller import ControllerConfig  # noqa: PLC0415  (NumPy only at import)

        values = {f.name: getattr(self, f"rl_{f.name}") for f in dataclasses.fields(ControllerConfig)}
        return dataclasses.asdict(ControllerConfig(**values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "SearchConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown search config fields {unknown}")
        return cls(**data)


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def relocate(data: Mapping[str, Any], search_dir: str) -> dict[str, Any]:
    """A ``SearchConfig.to_dict()`` read from ``search_dir``, as that folder's own: a folder that was
    moved or copied (``cp -r``, another machine) keeps its config, whose ``search_dir`` and default
    SQLite storage still name the old place. Both then name ``search_dir``, so that nothing reads or
    writes the study of the folder it came from (a database or journal URL is kept)."""
    data = dict(data)
    old = data.get("search_dir")
    if old and os.path.realpath(old) != os.path.realpath(search_dir):
        if data.get("storage") == resolve_storage(None, old):
            data["storage"] = resolve_storage(None, search_dir)
        data["search_dir"] = os.path.abspath(search_dir)
    return data


def prepare_search_dir(config: SearchConfig) -> str:
    """Creates ``search_dir`` and writes ``search_config.json``; continuing a search checks that
    every field outside ``RESUMABLE_FIELDS`` is unchanged (``ConfigMismatch`` naming it)."""
    os.makedirs(config.search_dir, exist_ok=True)
    path = os.path.join(config.search_dir, CONFIG_FILE)
    new = config.to_dict()
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = relocate(json.load(f), config.search_dir)
        for name, value in new.items():
            if name in RESUMABLE_FIELDS:
                continue
            if name not in old:
                # A field added since the search started: it continues only at the value that
                # reproduces it (older additions, such as the pruner's, are not checked).
                if name in SEARCH_FIELDS_ADDED and _canonical_json(value) != _canonical_json(
                    SEARCH_FIELDS_ADDED[name]
                ):
                    raise ConfigMismatch(
                        name,
                        None,
                        f"{name}={value!r} differs from {SEARCH_FIELDS_ADDED[name]!r}, the value the search in "
                        f"{config.search_dir} was started with ({path}, written before {name} existed); use "
                        "the same value or a new search_dir",
                    )
                continue
            if name == "proxy":
                for key in sorted(set(value) | set(old[name])):
                    if (
                        key not in old[name]
                        and key in value
                        and _canonical_json(value[key])
                        == _canonical_json(PROXY_FIELDS_ADDED.get(key, object()))
                    ):
                        continue  # A field added since the search started, at its default: nothing changed.
                    if _canonical_json(value.get(key)) != _canonical_json(old[name].get(key)):
                        raise ConfigMismatch(
                            name,
                            key,
                            f"proxy.{key}={value.get(key)!r} differs from {old[name].get(key)!r}, the value "
                            f"the search in {config.search_dir} was started with ({path}); "
                            "use the same value or a new search_dir",
                        )
            elif _canonical_json(value) != _canonical_json(old[name]):
                raise ConfigMismatch(
                    name,
                    None,
                    f"{name}={value!r} differs from {old[name]!r}, the value the search in "
                    f"{config.search_dir} was started with ({path}); use the same value or a new search_dir "
                    f"(only {sorted(RESUMABLE_FIELDS)} may change)",
                )
    write_json(path, new)
    return path


# --------------------------------------------------------------------------- storage


def _sqlite_connector(path: str) -> Callable[[], sqlite3.Connection]:
    """Connections that wait up to a minute for a busy database (many workers share one file), in
    write-ahead-log mode without an fsync per commit: 4x faster trial bookkeeping, and a killed
    process still loses nothing it committed (a power cut may lose the last commits)."""

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        return connection

    return connect


def open_storage(url: str, *, create_tables: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url`` (see ``resolve_storage``). A SQLite file (on a local disk: WAL
    needs one) is opened as ``_sqlite_connector`` says."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock  # noqa: PLC0415

        path = url[len("journal:") :]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        backend = JournalFileBackend(path, lock_obj=JournalFileOpenLock(path))
        return optuna.storages.JournalStorage(backend)
    engine_kwargs = None
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = url[len("sqlite:///") :]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine_kwargs = {"creator": _sqlite_connector(path)}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create_tables)


def load_study(config: SearchConfig, *, create: bool = False, sampler=None) -> optuna.Study:
    """The search's study, created if ``create``; Optuna's INFO lines are silenced."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage, create_tables=create)
    sampler = sampler or make_sampler(config.strategy, config.space, config.strategy_options())
    pruner = config.make_pruner()
    if create:
        return optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            directions=config.directions,
            load_if_exists=True,
            sampler=sampler,
            pruner=pruner,
        )
    return optuna.load_study(storage=storage, study_name=config.study_name, sampler=sampler, pruner=pruner)


def trial_score(trial: FrozenTrial) -> float | None:
    """The trial's score: its value, or in a two-objective search its first value (the proxy mIoU)."""
    return trial.values[0] if trial.values else None


def all_trials(study: optuna.Study, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
    """Every trial, read from the storage now (no cache)."""
    return study._storage.get_all_trials(study._study_id, deepcopy=False, states=states)


class FileLock:
    """An exclusive ``fcntl.flock`` on a file: one holder among all processes; the kernel releases it
    when the holder dies. Re-entrant within a process is not supported."""

    def __init__(self, path: str):
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        import fcntl  # noqa: PLC0415  (POSIX only)

        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        import fcntl  # noqa: PLC0415

        fd, self._fd = self._fd, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --------------------------------------------------------------------------- trial classification


def is_duplicate(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(DUPLICATE_OF) is not None


def is_interrupted(trial: FrozenTrial) -> bool:
    """An attempt cut short by a kill (and retried, or a duplicate): not a result."""
    return trial.state == TrialState.FAIL and INTERRUPTED in trial.user_attrs


def prefilter_pending(trial: FrozenTrial) -> int | None:
    """For a RUNNING proposal the pre-filter has not decided yet: its group's first trial number."""
    if trial.state != TrialState.RUNNING:
        return None
    return trial.system_attrs.get(PREFILTER_PENDING)


def counts_toward_budget(trial: FrozenTrial) -> bool:
    """Trials that trained (to the end or until pruned), are training, or failed on their own (see
    ``max_trials``); a group of proposals the pre-filter is scoring counts once, as its first one, and
    a pre-filtered proposal not at all."""
    if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING):
        return False
    if is_prefiltered(trial):
        return False
    group = prefilter_pending(trial)
    if group is not None and group != trial.number:
        return False
    return not is_duplicate(trial) and not is_interrupted(trial)


def budget_used(trials: Iterable[FrozenTrial]) -> int:
    return sum(counts_toward_budget(t) for t in trials)


@dataclasses.dataclass(frozen=True)
class Resolution:
    """What to do with a proposed graph: "train", "copy" a completed score, "copy_pruned",
    "copy_failure", or "wait" for an attempt in progress; ``of``: the trial it refers to."""

    action: str
    of: int | None = None


def resolve_duplicate(number: int, graph_hash: str, trials: Iterable[FrozenTrial]) -> Resolution:
    """Decides whether trial ``number`` (graph ``graph_hash``) trains, from every other trial."""
    same = [
        t
        for t in trials
        if t.number != number
        and t.user_attrs.get(GRAPH_HASH) == graph_hash
        and not is_duplicate(t)
        and not is_prefiltered(t)  # never trained: no result to copy
        and prefilter_pending(t) is None  # not an attempt to train (yet)
    ]
    done = [t for t in same if t.state == TrialState.COMPLETE]
    if done:
        return Resolution("copy", min(t.number for t in done))
    # Only a running attempt is waited for: a queued retry may wait for a worker that is this one.
    running = [t for t in same if t.state == TrialState.RUNNING]
    if running:
        return Resolution("wait", min(t.number for t in running))
    pruned = [t for t in same if t.state == TrialState.PRUNED]
    if pruned:
        return Resolution("copy_pruned", min(t.number for t in pruned))
    failed = [t for t in same if t.state == TrialState.FAIL and not is_interrupted(t)]
    if failed:
        return Resolution("copy_failure", min(t.number for t in failed))
    return Resolution("train")


# --------------------------------------------------------------------------- owners and heartbeats


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[19])


def _process_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def owner_record(worker: str) -> dict[str, Any]:
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": pid, "start": _process_start(pid), "worker": worker}


def owner_alive(owner: Mapping[str, Any] | None) -> bool | None:
    """False if the owner is a process of this host that is gone (or a zombie, or its pid now
    belongs to another process); True if it is alive; None if it cannot be told from here."""
    if not owner or owner.get("host") != socket.gethostname():
        return None
    pid = int(owner["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _process_state(pid) == "Z":
        return False
    start = owner.get("start")
    if start is not None and _process_start(pid) not in (None, start):
        return False
    return True


def last_sign_of_life(trial: FrozenTrial) -> float:
    beat = trial.system_attrs.get(HEARTBEAT)
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(float(beat or 0.0), started)


def stale_reason(trial: FrozenTrial, grace_seconds: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial is interrupted (its owner is gone, its heartbeat stopped), or None."""
    if trial.state != TrialState.RUNNING:
        return None
    owner = trial.system_attrs.get(OWNER)
    if owner_alive(owner) is False:
        return f"worker {owner.get('worker')} (pid {owner.get('pid')} on {owner.get('host')}) is gone"
    silent = (time.time() if now is None else now) - last_sign_of_life(trial)
    if silent > grace_seconds:
        return f"no heartbeat for {silent:.0f} s"
    return None


class Heartbeat:
    """Writes a trial's heartbeat every ``interval`` seconds on a thread while in the block."""

    def __init__(self, storage, trial_id: int, interval: float):
        self._storage, self._trial_id, self._interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dpc-heartbeat", daemon=True)

    def beat(self) -> None:
        self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT, time.time())

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.beat()
            except UpdateFinishedTrialError:
                return  # The trial ended (or was declared interrupted): nothing to keep alive.
            except Exception as e:  # noqa: BLE001  (a busy database must not kill the trial)
                logger.warning("heartbeat of trial id %d failed: %s", self._trial_id, e)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- recovery and queue


def _set_attr(study: optuna.Study, trial: FrozenTrial, key: str, value: Any) -> None:
    study._storage.set_trial_user_attr(trial._trial_id, key, value)


def _enqueue(study: optuna.Study, params: Mapping[str, Any], user_attrs: Mapping[str, Any]) -> int:
    """Queues a trial with fixed parameters; returns its number."""
    template = create_trial(
        state=TrialState.WAITING, system_attrs={"fixed_params": dict(params)}, user_attrs=dict(user_attrs)
    )
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial_number_from_id(trial_id)


def mark_interrupted(
    study: optuna.Study, trial: FrozenTrial, reason: str, trials: Sequence[FrozenTrial], space: SearchSpace
) -> int | None:
    """Marks a RUNNING trial FAIL as interrupted and queues its one retry. Call under the claim lock.

    Idempotent: a crash halfway leaves a state the next call finishes without a second retry.
    Returns the retry's number (None when there is none: a retry interrupted again, a duplicate, or
    a trial killed before it had all its parameters). ``UpdateFinishedTrialError`` if the trial
    finished meanwhile.
    """
    names = set(space_lib.distributions(space))
    params = dict(trial.params)
    if set(params) != names:  # killed while suggesting: a queued trial still has its fixed parameters
        params = {**trial.system_attrs.get("fixed_params", {}), **params}
    complete_params = set(params) == names
    retry_number = None
    if trial.user_attrs.get(RETRY_OF) is not None:
        _set_attr(study, trial, ERROR, f"interrupted again ({reason}); a retry is not retried")
    elif prefilter_pending(trial) is not None:
        _set_attr(study, trial, INTERRUPTED, reason)
        _set_attr(
            study, trial, ERROR, f"interrupted ({reason}) while the pre-filter scored it; nothing to retry"
        )
    elif is_duplicate(trial) or not complete_params:
        _set_attr(study, trial, INTERRUPTED, reason)
        _set_attr(study, trial, ERROR, f"interrupted ({reason}) before training; nothing to retry")
    else:
        _set_attr(study, trial, INTERRUPTED, reason)
        existing = [t.number for t in trials if t.user_attrs.get(RETRY_OF) == trial.number]
        if existing:
            retry_number = existing[0]
        else:
            attrs = {RETRY_OF: trial.number}
            keys = (SPEC, GRAPH_HASH, PROPOSAL, "parent", REFERENCE, PREFILTER_GROUP)
            for key in keys + tuple(zero_cost_attr(name) for name in zero_cost_lib.SCORES):
                if key in trial.user_attrs:
                    attrs[key] = trial.user_attrs[key]
            retry_number = _enqueue(study, params, attrs)
        _set_attr(study, trial, RETRIED_AS, retry_number)
        _set_attr(study, trial, ERROR, f"interrupted ({reason}); retried as trial {retry_number}")
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    return retry_number


def recover_interrupted(
    study: optuna.Study,
    space: SearchSpace,
    grace_seconds: float,
    *,
    worker: str | None = None,
    reason: str | None = None,
) -> list[tuple[int, int | None]]:
    """Interrupts RUNNING trials whose owner is gone or silent (or, with ``worker``, every RUNNING
    trial of that worker, known to be dead). Call under the claim lock.

    Returns (trial number, retry number or None) for each trial interrupted.
    """
    trials = all_trials(study)
    done = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        if worker is not None:
            owner = trial.system_attrs.get(OWNER) or {}
            why = reason if owner.get("worker") == worker else None
        else:
            why = stale_reason(trial, grace_seconds)
        if why is None:
            continue
        try:
            done.append((trial.number, mark_interrupted(study, trial, why, trials, space)))
        except UpdateFinishedTrialError:
            continue  # It finished after all.
    return done


def enqueue_reference_cells(study: optuna.Study) -> list[int]:
    """Queues the published Cityscapes cell and the ASPP cell once per study. Call under the lock."""
    if study._storage.get_study_system_attrs(study._study_id).get(REFERENCES_ENQUEUED):
        return []
    numbers = []
    for name, spec in space_lib.reference_cells().items():
        attrs = {
            REFERENCE: name,
            PROPOSAL: "enqueued",
            SPEC: spec.to_json(),
            GRAPH_HASH: spec.canonical_hash(),
        }
        numbers.append(_enqueue(study, space_lib.spec_to_params(spec), attrs))
    study._storage.set_study_system_attr(study._study_id, REFERENCES_ENQUEUED, True)
    return numbers


def _pop_or_create(study: optuna.Study, trials: Sequence[FrozenTrial]) -> int:
    """A queued trial, retries first, set RUNNING; or a new trial. Returns its id."""
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    waiting.sort(key=lambda t: (t.user_attrs.get(RETRY_OF) is None, t.number))
    for trial in waiting:
        try:
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except UpdateFinishedTrialError:
            continue
    return study._storage.create_new_trial(study._study_id)


# --------------------------------------------------------------------------- objectives


Objective = Callable[[CellSpec], Mapping[str, Any]]


def load_objective_factory(reference: str) -> Callable[[SearchConfig], Objective]:
    """Imports ``module:function``."""
    module, _, attr = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise WorkerSetupError(f"objective={reference!r} cannot be imported: {e}") from e
    return factory


def accepts_report(objective: Callable) -> bool:
    """Whether ``objective`` takes the pruners' ``report=`` keyword."""
    import inspect  # noqa: PLC0415

    try:
        parameters = inspect.signature(objective).parameters
    except (TypeError, ValueError):
        return False
    return "report" in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def _jsonable(value: Any) -> Any:
    """Plain JSON types (NumPy scalars and arrays become numbers and lists)."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


# --------------------------------------------------------------------------- the worker loop


@dataclasses.dataclass
class WorkerReport:
    """What one worker did (counts of its trials by outcome) and why it stopped."""

    trained: int = 0
    pruned: int = 0
    failed: int = 0
    duplicates: int = 0
    stopped_because: str = ""


def _finish(study: optuna.Study, trial: optuna.Trial, state: TrialState, value=None) -> bool:
    """Tells the outcome; False if the trial was declared interrupted meanwhile (result dropped)."""
    try:
        if state == TrialState.COMPLETE:
            study.tell(trial, value)
        else:
            study.tell(trial, state=state)
        return True
    except (UpdateFinishedTrialError, ValueError) as e:
        logger.warning(
            "trial %d: could not record its result (%s); it was interrupted meanwhile", trial.number, e
        )
        return False


def _copy_result_attrs(trial: optuna.Trial, source: FrozenTrial) -> None:
    for key in RESULT_ATTRS + STAGE_ATTRS:
        if key in source.user_attrs and key != "seconds":
            trial.set_user_attr(key, source.user_attrs[key])
    own = trial.user_attrs
    for name in zero_cost_lib.SCORES:  # the same graph's scores, where this proposal has none of its own
        key = zero_cost_attr(name)
        if key in source.user_attrs and key not in own:
            trial.set_user_attr(key, source.user_attrs[key])


# --------------------------------------------------------------------------- zero-cost scores

ZeroCostScorer = Callable[[CellSpec, Sequence[str]], Mapping[str, float]]


def zero_cost_scorer(objective: Objective, config: SearchConfig) -> ZeroCostScorer | None:
    """The objective's ``zero_cost(spec, names) -> {name: score}`` when the search records or
    pre-filters by zero-cost scores (None when it does not); ``WorkerSetupError`` if it has none."""
    if not config.zero_cost_scores:
        return None
    scorer = getattr(objective, "zero_cost", None)
    if not callable(scorer):
        flag = "prefilter" if config.prefilter else "zero_cost_scores"
        raise WorkerSetupError(
            f"{flag}: objective {config.objective} has no zero_cost(spec, names) function, which zero-cost "
            "scores need (see deeplab_dpc.nas.objective)"
        )
    return scorer


def attr_float(value: float) -> float | str:
    """A score as a user attribute: a finite float as is, inf / -inf / NaN as "inf" / "-inf" / "nan"
    (valid JSON for every reader; ``float()`` reads them back)."""
    value = float(value)
    return value if math.isfinite(value) else str(value)


def _score_zero_cost(
    trial: optuna.Trial, spec: CellSpec, scorer: ZeroCostScorer, names: Sequence[str]
) -> dict[str, float]:
    """Scores ``spec`` by ``names`` and records each as ``zero_cost_<name>`` on ``trial`` (with
    ``zero_cost_seconds``); a scoring failure is recorded as ``zero_cost_error`` and leaves those names
    out of the result. Never raises for the scorer's own errors."""
    if not names:
        return {}
    start = time.perf_counter()
    try:
        result = scorer(spec, tuple(names))
        scores = {name: float(result[name]) for name in names}
    except Exception as e:  # noqa: BLE001  (a score is a measurement: its failure fails no trial)
        logger.warning(
            "trial %d: zero-cost scores %s failed: %s: %s", trial.number, list(names), type(e).__name__, e
        )
        trial.set_user_attr(ZERO_COST_ERROR, f"{','.join(names)}: {type(e).__name__}: {e}"[:2000])
        return {}
    previous = trial.user_attrs.get(ZERO_COST_SECONDS) or 0.0
    trial.set_user_attr(ZERO_COST_SECONDS, float(previous) + time.perf_counter() - start)
    for name, value in scores.items():
        trial.set_user_attr(zero_cost_attr(name), attr_float(value))
    return scores


def _rank_key(score: float | None) -> tuple[int, float]:
    """Higher is better; a missing or NaN score is last (-inf is below every finite score)."""
    if score is None or math.isnan(score):
        return (0, 0.0)
    return (1, score)


@dataclasses.dataclass
class _Proposal:
    trial: optuna.Trial
    spec: CellSpec
    graph_hash: str
    score: float | None = None


def _claim(
    study: optuna.Study, trial_id: int, worker: str, config: SearchConfig, group: int | None
) -> _Proposal:
    """Makes ``trial_id`` (RUNNING) this worker's and asks the strategy for its cell. Call under the lock.
    ``group``: the first trial number of the pre-filter's proposals this one belongs to (None: none)."""
    storage = study._storage
    if group is not None:  # first, so that a worker killed from here on leaves no retry
        storage.set_trial_system_attr(trial_id, PREFILTER_PENDING, group)
    storage.set_trial_system_attr(trial_id, OWNER, owner_record(worker))
    storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
    trial = optuna.Trial(study, trial_id)
    spec = space_lib.suggest_spec(trial, config.space)
    trial.set_user_attr(SPEC, spec.to_json())
    trial.set_user_attr(GRAPH_HASH, spec.canonical_hash())
    if group is not None:
        trial.set_user_attr(PREFILTER_GROUP, group)
    if PROPOSAL not in storage.get_trial_user_attrs(trial_id):
        trial.set_user_attr(PROPOSAL, config.strategy)  # TPE (the cell samplers write their own)
    return _Proposal(trial, spec, spec.canonical_hash())


class _Heartbeats(contextlib.ExitStack):
    """``Heartbeat`` of each of several trials, while in the block."""

    def __init__(self, storage, trial_ids: Iterable[int], interval: float):
        super().__init__()
        self._beats = [Heartbeat(storage, i, interval) for i in trial_ids]

    def __enter__(self) -> "_Heartbeats":
        super().__enter__()
        for beat in self._beats:
            self.enter_context(beat)
        return self


def _score_proposals(
    study: optuna.Study, proposals: Sequence[_Proposal], scorer: ZeroCostScorer, config: SearchConfig
) -> None:
    """Scores each proposal by ``config.prefilter`` (outside the lock, heartbeats running), recording
    ``zero_cost_<score>`` on each as it goes; the same graph twice is scored once."""
    seen: dict[str, float | None] = {}
    with _Heartbeats(study._storage, [p.trial._trial_id for p in proposals], config.heartbeat_seconds):
        for p in proposals:
            try:
                if p.graph_hash in seen:
                    p.score = seen[p.graph_hash]
                    if p.score is not None:
                        p.trial.set_user_attr(zero_cost_attr(config.prefilter), attr_float(p.score))
                else:
                    scores = _score_zero_cost(p.trial, p.spec, scorer, (config.prefilter,))
                    p.score = seen[p.graph_hash] = scores.get(config.prefilter)
            except UpdateFinishedTrialError:
                p.score = None  # Interrupted meanwhile (declared silent): the decision leaves it out.


def _decide(study: optuna.Study, proposals: Sequence[_Proposal]) -> _Proposal | None:
    """The pre-filter's decision, under the lock: every proposal but the best recorded PRUNED (user
    attrs ``pruned_by="prefilter"``, ``prefilter_winner``; no value), the best returned, now an ordinary
    RUNNING trial (retried if its worker dies). None if every proposal was interrupted meanwhile."""
    storage = study._storage
    alive = [p for p in proposals if storage.get_trial(p.trial._trial_id).state == TrialState.RUNNING]
    if not alive:
        return None
    best = max(alive, key=lambda p: (_rank_key(p.score), -p.trial.number))
    # The best leaves the group first, then each other proposal is recorded whole (attributes, then state).
    storage.set_trial_system_attr(best.trial._trial_id, PREFILTER_PENDING, None)
    for p in alive:
        if p is not best:
            p.trial.set_user_attr(PRUNED_BY, PREFILTER)
            p.trial.set_user_attr(PREFILTER_WINNER, best.trial.number)
            _finish(study, p.trial, TrialState.PRUNED)  # no intermediate values: no value
    return best


def _resolve(study: optuna.Study, proposal: _Proposal) -> Resolution:
    """Whether the proposal trains, under the lock (``resolve_duplicate``; a duplicate is marked)."""
    resolution = resolve_duplicate(proposal.trial.number, proposal.graph_hash, all_trials(study))
    if resolution.action != "train":
        proposal.trial.set_user_attr(DUPLICATE_OF, resolution.of)
    return resolution


def _reporter(trial: optuna.Trial) -> Callable[[int, float], None]:
    """The objective's ``report(step, score)``: records an intermediate score and raises
    ``optuna.TrialPruned`` when the study's pruner stops the trial."""

    def report(step: int, score: float) -> None:
        trial.report(float(score), int(step))
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} (intermediate score {score:.4f})")

    return report


def _train(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: CellSpec,
    objective: Objective,
    report: WorkerReport,
    config: SearchConfig,
    scorer: ZeroCostScorer | None = None,
) -> None:
    if scorer is not None:  # at initialisation, before training; those the pre-filter computed are kept
        own = trial.user_attrs
        try:
            _score_zero_cost(
                trial, spec, scorer, [n for n in config.zero_cost_scores if zero_cost_attr(n) not in own]
            )
        except UpdateFinishedTrialError:
            logger.warning("trial %d was interrupted while it was scored; not trained here", trial.number)
            return
    try:
        if config.pruner != "none":
            result = dict(objective(spec, report=_reporter(trial)))
        else:
            result = dict(objective(spec))
        miou = float(result["miou"])
        if not math.isfinite(miou):
            raise FloatingPointError(f"the objective returned a non-finite mIoU ({miou})")
        if config.multi_objective:
            score = [miou, _cost_of(result, config.cost_metric)]
        else:
            score = score_of(
                result, config.cost_metric, config.cost_target, config.cost_alpha, config.cost_beta
            )
    except optuna.TrialPruned:
        step = study._storage.get_trial(trial._trial_id).last_step
        trial.set_user_attr(PRUNED_AT_STEP, step)
        report.pruned += _finish(study, trial, TrialState.PRUNED)
        return
    except Exception as e:  # noqa: BLE001  (any failure of one trial is recorded; the search goes on)
        trial.set_user_attr(ERROR, f"{type(e).__name__}: {e}"[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
        report.failed += _finish(study, trial, TrialState.FAIL)
        return
    result = _jsonable(result)
    for key, value in result.items():
        if key in RESULT_ATTRS or len(json.dumps(value)) <= _MAX_ATTR_JSON:
            trial.set_user_attr(key if key in RESULT_ATTRS else f"result_{key}", value)
    if config.stage2 is not None:
        try:
            score = _stage2(study, trial, spec, result, score, config)
        except Exception as e:  # noqa: BLE001  (a stage-2 failure fails the trial, as a stage-1 one does)
            trial.set_user_attr(ERROR, f"stage 2: {type(e).__name__}: {e}"[:2000])
            trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
            report.failed += _finish(study, trial, TrialState.FAIL)
            return
    if config.cost_metric is not None and not config.multi_objective:
        trial.set_user_attr("score", score)
    report.trained += _finish(study, trial, TrialState.COMPLETE, score)


def _cost_of(result: Mapping[str, Any], metric: str) -> float:
    if metric not in result:
        raise KeyError(
            f"the objective's result has no {metric!r}, the search's second objective (cost_metric)"
        )
    cost = float(result[metric])
    if not math.isfinite(cost):
        raise FloatingPointError(f"the objective returned a non-finite {metric} ({cost})")
    return cost


def _stage2(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: CellSpec,
    result: Mapping[str, Any],
    score: float,
    config: SearchConfig,
) -> float:
    """Nekrasov's progressive evaluation after stage 1 (the proxy's ``result``, its ``score``): decides,
    runs stage 2 if so, records both stages; returns the trial's value (the last stage's score)."""
    from deeplab_dpc.nas import progressive  # noqa: PLC0415

    stage2 = progressive.Stage2Config.from_dict(config.stage2)
    earlier = [
        float(t.user_attrs[STAGE1_SCORE])
        for t in all_trials(study, states=(TrialState.COMPLETE,))
        if t.number != trial.number and not is_duplicate(t) and STAGE1_SCORE in t.user_attrs
    ]
    decision = progressive.decide(
        score, earlier, stage2.initial_probability, stage2.decay, config.seed, trial.number, stage2.average
    )
    trial.set_user_attr(STAGE1_SCORE, score)
    trial.set_user_attr(STAGE2_DECISION, decision.to_dict())
    if not decision.go:
        trial.set_user_attr(STAGE, 1)
        return score
    directory = progressive.run_dir(config.search_dir, spec.canonical_hash())
    full = dict(progressive.load_trainer(stage2.trainer)(spec, stage2, directory))
    miou = float(full["miou"])
    if not math.isfinite(miou):
        raise FloatingPointError(f"stage 2 returned a non-finite mIoU ({miou})")
    trial.set_user_attr(FULL_MIOU, miou)
    trial.set_user_attr("full_seconds", float(full.get("seconds", float("nan"))))
    trial.set_user_attr("full_run_dir", directory)
    trial.set_user_attr(STAGE, 2)
    return score_of(
        {**result, "miou": miou}, config.cost_metric, config.cost_target, config.cost_alpha, config.cost_beta
    )


def run_worker(
    config: SearchConfig,
    worker: str,
    *,
    objective: Objective | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    deadline: float | None = None,
    poll_seconds: float = 2.0,
) -> WorkerReport:
    """Runs trials until the budget is used, ``deadline`` (a ``time.time()``) passes, or
    ``should_stop()``. Every decision is taken under the claim lock; training runs outside it with
    a heartbeat.

    Args:
        config: the search.
        worker: this worker's id, unique in the search (recorded as the owner of its trials).
        objective: the objective; default: built from ``config.objective`` (a failure to build it
            raises ``WorkerSetupError`` before any trial starts).
    """
    if objective is None:
        factory = load_objective_factory(config.objective)
        try:
            objective = factory(config)
        except Exception as e:  # noqa: BLE001
            raise WorkerSetupError(
                f"objective {config.objective} could not be built: {type(e).__name__}: {e}"
            ) from e
    if config.pruner != "none" and not accepts_report(objective):
        raise WorkerSetupError(
            f"pruner={config.pruner} needs intermediate scores, but objective {config.objective} takes no "
            "report= argument (see deeplab_dpc.nas.objective)"
        )
    scorer = zero_cost_scorer(objective, config)
    study = load_study(config)
    space = config.space
    lock = FileLock(config.lock_path)
    report = WorkerReport()
    duplicates_in_a_row = 0
    while True:
        if should_stop():
            report.stopped_because = "asked to stop"
            break
        if deadline is not None and time.time() >= deadline:
            report.stopped_because = "max_hours reached"
            break
        if duplicates_in_a_row >= MAX_CONSECUTIVE_DUPLICATES:
            report.stopped_because = f"{duplicates_in_a_row} proposals in a row were known graphs"
            break
        with lock:
            trials = all_trials(study)
            if budget_used(trials) >= config.max_trials:
                report.stopped_because = "max_trials reached"
                break
            trial_id = _pop_or_create(study, trials)
            queued = any(t._trial_id == trial_id for t in trials)  # popped, not created
            # Queued trials (retries, reference cells) train as they are, without a pre-filter.
            if config.prefilter_ratio > 1 and not queued:
                ids = [trial_id] + [
                    study._storage.create_new_trial(study._study_id) for _ in range(config.prefilter_ratio - 1)
                ]
                group = study._storage.get_trial_number_from_id(trial_id)
                proposals = [_claim(study, i, worker, config, group) for i in ids]
            else:
                chosen = _claim(study, trial_id, worker, config, None)
                resolution = _resolve(study, chosen)
                proposals = [chosen]
        if len(proposals) > 1:
            try:
                _score_proposals(study, proposals, scorer, config)
                with lock:
                    chosen = _decide(study, proposals)
                    if chosen is not None:
                        resolution = _resolve(study, chosen)
            except BaseException:
                # As below: the proposals not yet decided are interrupted (never retried), now.
                with contextlib.suppress(Exception), lock:
                    for p in proposals:
                        frozen = study._storage.get_trial(p.trial._trial_id)
                        if frozen.state == TrialState.RUNNING:
                            reason = f"worker {worker} stopped"
                            mark_interrupted(study, frozen, reason, all_trials(study), space)
                raise
            if chosen is None:
                continue
        trial, spec, graph_hash = chosen.trial, chosen.spec, chosen.graph_hash
        trial_id = trial._trial_id
        try:
            with Heartbeat(study._storage, trial_id, config.heartbeat_seconds):
                while resolution.action == "wait":
                    time.sleep(poll_seconds)
                    with lock:
                        resolution = resolve_duplicate(trial.number, graph_hash, all_trials(study))
                        if resolution.action == "train":
                            trial.set_user_attr(DUPLICATE_OF, None)  # Its original is gone: it trains itself.
                        elif resolution.action != "wait":
                            trial.set_user_attr(DUPLICATE_OF, resolution.of)
                if resolution.action == "train":
                    duplicates_in_a_row = 0
                    _train(study, trial, spec, objective, report, config, scorer)
                    continue
                duplicates_in_a_row += 1
                source = study._storage.get_trial(
                    study._storage.get_trial_id_from_study_id_trial_number(study._study_id, resolution.of)
                )
                if resolution.action == "copy":
                    _copy_result_attrs(trial, source)
                    value = source.values if config.multi_objective else source.value
                    report.duplicates += _finish(study, trial, TrialState.COMPLETE, value)
                elif resolution.action == "copy_pruned":
                    for step, value in sorted(source.intermediate_values.items()):
                        trial.report(value, step)
                    trial.set_user_attr(PRUNED_AT_STEP, source.user_attrs.get(PRUNED_AT_STEP))
                    report.duplicates += _finish(study, trial, TrialState.PRUNED)
                else:
                    error = source.user_attrs.get(ERROR, "")
                    trial.set_user_attr(
                        ERROR, f"same graph as trial {source.number}, which failed: {error}"[:2000]
                    )
                    report.duplicates += _finish(study, trial, TrialState.FAIL)
        except BaseException:
            # Ctrl-C, SIGTERM (SystemExit) or a bug outside the objective: this attempt is
            # interrupted; it is retried once, now rather than when the next search starts.
            with contextlib.suppress(Exception), lock:
                frozen = study._storage.get_trial(trial_id)
                if frozen.state == TrialState.RUNNING:
                    mark_interrupted(study, frozen, f"worker {worker} stopped", all_trials(study), space)
            raise
    return report
