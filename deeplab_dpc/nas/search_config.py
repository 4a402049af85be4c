"""What a search is: ``SearchConfig`` (frozen, validated), and the folder that holds it.

Each field of ``SearchConfig`` is the ``deeplab_dpc.search`` flag of the same
name; constructing one checks every field, naming it. ``prepare_search_dir``
writes it to ``<search_dir>/search_config.json``; continuing a search checks
that nothing but ``RESUMABLE_FIELDS`` (budgets, and how the search is run)
changed (``ConfigMismatch`` naming the field), and a field added since the
search started continues only at the value that reproduces it
(``SEARCH_FIELDS_ADDED``, ``PROXY_FIELDS_ADDED``). ``relocate`` reads a
config from a folder that was moved or copied as that folder's own.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import optuna

from deeplab_dpc.core.spec import SearchSpace
from deeplab_dpc.fileio import write_json
from deeplab_dpc.nas import zero_cost as zero_cost_lib
from deeplab_dpc.nas.cost import COST_METRICS
from deeplab_dpc.nas.samplers import MULTI_OBJECTIVE, STRATEGIES, StrategyOptions

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
SEARCH_FIELDS_ADDED = {"prefilter": None, "prefilter_ratio": 1, "cells_per_worker": 1}
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
        "cells_per_worker",  # how trials are packed into programs, not what they score
        "executor",
        "ray_address",
        "heartbeat_seconds",
        "grace_seconds",
        "zero_cost_scores",  # what is recorded of each trained trial, not what is searched
    }
)


class ConfigMismatch(ValueError):
    """A search_dir started with another value of a field that must not change."""

    def __init__(self, field: str, key: str | None, message: str):
        super().__init__(message)
        self.field = field
        self.key = key


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
        max_trials: trials that train (see ``nas.worker``).
        max_hours: no trial starts after this many hours of this run (None: no limit).
        num_branches: B, branches per cell.
        seed: seed of the strategy (and of the proxy, through ``proxy``).
        mutation_probability, mutation_top_k: the ``random`` strategy.
        population_size, sample_size: the ``evolution`` strategy.
        enqueue_published: run the published Cityscapes cell and an ASPP cell first.
        executor: "local" (worker processes) or "ray" (Ray tasks).
        num_workers: workers running trials at once.
        cells_per_worker: K > 1: each worker trains K trials in one program on the same batches
            (``proxy.run_proxy_group``: each cell as it would train alone), each recorded as its own
            trial; where small cells cannot fill a device. Not with a pruner or a pre-filter.
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
            trained trial is the best of R proposals by this score (see ``nas.worker``).
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
    cells_per_worker: int = 1
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
        for name in ("max_trials", "num_branches", "num_workers", "cells_per_worker"):
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
        if self.cells_per_worker > 1 and (self.pruner != "none" or self.prefilter_ratio > 1):
            raise ValueError(
                f"cells_per_worker={self.cells_per_worker} trains several trials in one program: it takes "
                f"no pruner (got {self.pruner!r}) and no pre-filter (prefilter_ratio={self.prefilter_ratio}); "
                "set cells_per_worker=1 for those"
            )
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
