"""Search strategies as Optuna samplers, in a registry: random (+ near-best mutation), evolution, TPE.

Each strategy proposes a whole cell at once (``sample_relative`` returns every
``b{i}_input`` / ``b{i}_op`` parameter), except TPE, which is Optuna's own
sampler over the same categorical parameters. All of them:

* learn only from COMPLETE trials: a failed trial is never a score;
* are deterministic for a seed: trial n draws from a generator seeded with
  (seed, n), so a resumed search proposes what an uninterrupted one would
  have, and parallel workers never share a stream;
* record how a cell was proposed as user attributes of its trial
  (``proposal``: uniform | mutation | tpe, and ``parent``: the trial mutated).

Strategies (``STRATEGIES``, a name -> factory dict):

* ``random``: the paper's policy. Uniform samples, and with probability
  ``mutation_probability`` a mutation of one of the ``mutation_top_k`` best
  cells so far.
* ``evolution``: regularized (aging) evolution, Real et al. 2019. The
  population is the ``population_size`` most recently completed trials (so
  the oldest dies as each new one completes); until it is full cells are
  uniform samples; then ``sample_size`` members are drawn with replacement
  and the child is a mutation of the best of them.
* ``tpe``: ``optuna.samplers.TPESampler`` (seeded per trial, no constant liar).
* ``nsga2``: Optuna's NSGA-II on two objectives, proxy mIoU (up) and the
  search's ``cost_metric`` (down): its result is the Pareto front
  (population ``population_size``; seeded per trial like TPE).
* ``rl``: the LSTM controller of ``nas.controller`` (NASNet, Nekrasov et al.),
  trained with PPO or REINFORCE on the completed trials it proposed (user
  attr ``rl_logp``: the cell's log-probability when proposed), ``batch_size``
  at a time in completion order. Its state (weights, Adam's moments, the
  reward baseline, the trials learnt from) is saved after every update to
  ``<search_dir>/controller/controller.npz``, under the search's claim lock:
  every worker, and a restarted search, continues from it exactly.

Proposals set aside by the search's zero-cost pre-filter (``--prefilter``:
recorded PRUNED with user attr ``pruned_by="prefilter"``, no value, no
intermediate values, never trained) are results of no strategy: random,
evolution and rl read COMPLETE trials only, and TPE and NSGA-II, Optuna's own
samplers, see the study through ``without_prefiltered`` (Optuna's TPE would
otherwise count a PRUNED trial without intermediate values among its
observations, ranked below every scored one).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
import math
import os
import random
import warnings
from typing import Any, Callable, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler, TPESampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from deeplab_dpc.core.spec import CellSpec, SearchSpace
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas.trial_store import is_prefiltered


@dataclasses.dataclass(frozen=True)
class StrategyOptions:
    """What a strategy may be told. Unused fields are ignored by strategies that have no use for them.

    Args:
        seed: seed of every proposal (with the trial number).
        mutation_probability: ``random``: probability of mutating a near-best cell.
        mutation_top_k: ``random``: how many of the best completed cells may be mutated.
        population_size: ``evolution``: trials in the population.
        sample_size: ``evolution``: tournament size (at most population_size).
        state_dir: where a strategy with state keeps it (``rl``: the controller); None: in memory.
        rl: ``rl``: ``nas.controller.ControllerConfig`` fields.
    """

    seed: int = 0
    mutation_probability: float = 0.5
    mutation_top_k: int = 10
    population_size: int = 20
    sample_size: int = 5
    state_dir: str | None = None
    rl: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not 0.0 <= self.mutation_probability <= 1.0:
            raise ValueError(f"mutation_probability must be in [0, 1], got {self.mutation_probability}")
        for name in ("mutation_top_k", "population_size", "sample_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.sample_size > self.population_size:
            raise ValueError(
                f"sample_size must be at most population_size ({self.population_size}), "
                f"got {self.sample_size}"
            )


def without_prefiltered(study: Study) -> Study:
    """``study`` whose trial lists (``get_trials``, ``_get_trials``) leave out pre-filtered proposals:
    the study an Optuna sampler is shown. A shallow copy: same storage, same study."""
    view = copy.copy(study)
    get = study._get_trials

    def _get_trials(deepcopy: bool = True, states=None, use_cache: bool = False) -> list[FrozenTrial]:
        return [t for t in get(deepcopy, states, use_cache) if not is_prefiltered(t)]

    view._get_trials = _get_trials
    return view


def trial_seed(seed: int, number: int) -> int:
    """A 32-bit seed for trial ``number`` of a search seeded with ``seed``, the same in every process."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{number}".encode()).digest()[:4], "little")


@dataclasses.dataclass(frozen=True)
class Scored:
    """A completed trial as a strategy sees it."""

    number: int
    value: float
    spec: CellSpec


def completed(study: Study, space: SearchSpace) -> list[Scored]:
    """COMPLETE trials in completion order (ties by number), as (number, value, cell)."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trials = sorted(trials, key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
    return [Scored(t.number, float(t.value), space_lib.params_to_spec(t.params, space)) for t in trials]


class CellSampler(BaseSampler):
    """Base of the strategies that propose a whole cell: subclasses implement ``propose``."""

    def __init__(self, space: SearchSpace, options: StrategyOptions):
        self.space = space
        self.options = options
        self._distributions = space_lib.distributions(space)

    def propose(self, history: Sequence[Scored], rng: random.Random) -> tuple[CellSpec, dict[str, Any]]:
        """The next cell and how it was found (user attributes), from completed trials only."""
        raise NotImplementedError

    # -- Optuna's sampler interface
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        rng = random.Random(trial_seed(self.options.seed, trial.number))
        spec, info = self.propose(completed(study, self.space), rng)
        for key, value in info.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        params = space_lib.spec_to_params(spec)
        return {name: params[name] for name in search_space}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        # Only reached for a parameter outside the space (not asked by ``suggest_spec``).
        rng = random.Random(f"{trial_seed(self.options.seed, trial.number)}/{param_name}")
        return rng.choice(param_distribution.choices)


class RandomMutationSampler(CellSampler):
    """Uniform cells; with probability ``mutation_probability`` a mutation of a near-best cell."""

    def propose(self, history, rng):
        mutate = rng.random() < self.options.mutation_probability
        if mutate and history:
            best: dict[str, Scored] = {}
            for s in sorted(history, key=lambda s: (-s.value, s.number)):
                best.setdefault(s.spec.canonical_hash(), s)  # one entry per graph
            top = list(best.values())[: self.options.mutation_top_k]
            parent = rng.choice(top)
            return self.space.mutate(parent.spec, rng), {"proposal": "mutation", "parent": parent.number}
        return self.space.sample(rng), {"proposal": "uniform"}


class RegularizedEvolutionSampler(CellSampler):
    """Aging evolution: tournament among the most recent ``population_size`` completed trials."""

    def population(self, history: Sequence[Scored]) -> list[Scored]:
        """The living population: the most recently completed trials (the older ones have died)."""
        return list(history[-self.options.population_size :])

    def propose(self, history, rng):
        if len(history) < self.options.population_size:
            return self.space.sample(rng), {"proposal": "uniform"}
        population = self.population(history)
        tournament = [rng.choice(population) for _ in range(self.options.sample_size)]
        parent = max(tournament, key=lambda s: (s.value, -s.number))
        info = {
            "proposal": "mutation",
            "parent": parent.number,
            "tournament": sorted({s.number for s in tournament}),
        }
        return self.space.mutate(parent.spec, rng), info


class _ReseededPerTrial:
    """Mixin for Optuna samplers with a seeded ``_rng`` and ``_random_sampler``: both streams are
    reseeded from (seed, trial number) before each trial, so a resumed search and parallel workers
    propose what an uninterrupted one would."""

    def __init__(self, seed: int, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self._base_seed = seed

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        seed = trial_seed(self._base_seed, trial.number)
        self._rng.rng.seed(seed)
        self._random_sampler._rng.rng.seed(seed)
        super().before_trial(study, trial)


class _IgnoresPrefiltered:
    """Mixin for Optuna's samplers: every call that reads the study reads ``without_prefiltered(study)``,
    so a pre-filtered proposal is neither an observation nor counted towards the startup trials."""

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial):
        return super().infer_relative_search_space(without_prefiltered(study), trial)

    def sample_relative(self, study: Study, trial: FrozenTrial, search_space):
        return super().sample_relative(without_prefiltered(study), trial, search_space)

    def sample_independent(self, study: Study, trial: FrozenTrial, param_name, param_distribution):
        return super().sample_independent(without_prefiltered(study), trial, param_name, param_distribution)

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        super().before_trial(without_prefiltered(study), trial)

    def after_trial(self, study: Study, trial: FrozenTrial, state, values) -> None:
        super().after_trial(without_prefiltered(study), trial, state, values)


class SeededTPESampler(_IgnoresPrefiltered, _ReseededPerTrial, TPESampler):
    """Optuna's TPE, reseeded per trial, blind to pre-filtered proposals."""


class SeededNSGAIISampler(_IgnoresPrefiltered, _ReseededPerTrial, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II (two objectives: proxy mIoU up, cost down), reseeded per trial."""


RL_LOGP = "rl_logp"
log = logging.getLogger(__name__)


class ControllerSampler(CellSampler):
    """Cells written by the RL controller, which learns from the completed trials it proposed."""

    def __init__(self, space: SearchSpace, options: StrategyOptions):
        from deeplab_dpc.nas.controller import ControllerConfig  # noqa: PLC0415

        super().__init__(space, options)
        self.config = ControllerConfig(**dict(options.rl))
        self._controller = None

    def _fresh(self):
        from deeplab_dpc.nas.controller import Controller  # noqa: PLC0415  (Keras: only for this strategy)

        return Controller(self.space, self.config, seed=self.options.seed)

    def controller(self, study: Study):
        """The controller after learning from every full batch of completed proposals (saved)."""
        from deeplab_dpc.nas.controller import controller_path  # noqa: PLC0415

        if self._controller is None:
            self._controller = self._fresh()
        c = self._controller
        path = controller_path(self.options.state_dir) if self.options.state_dir else None
        if path and os.path.exists(path):
            import numpy as np  # noqa: PLC0415

            with np.load(path, allow_pickle=False) as z:
                saved = int(z["consumed"].size)
            if saved > len(c.consumed):
                c.load(path)
        trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        history = [
            t for t in trials if RL_LOGP in t.user_attrs and t.value is not None and math.isfinite(t.value)
        ]
        history.sort(key=lambda t: (t.datetime_complete is None, t.datetime_complete, t.number))
        numbers = [t.number for t in history]
        if numbers[: len(c.consumed)] != c.consumed:
            log.warning(
                "the controller's saved state does not match the study's trials: learning again from the start"
            )
            c = self._controller = self._fresh()
        batch = self.config.batch_size
        while len(numbers) - len(c.consumed) >= batch:
            chosen = history[len(c.consumed) : len(c.consumed) + batch]
            actions = [c.actions_of(space_lib.params_to_spec(t.params, self.space)) for t in chosen]
            c.update(actions, [t.user_attrs[RL_LOGP] for t in chosen], [t.value for t in chosen])
            c.consumed = c.consumed + [t.number for t in chosen]
            if path:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                c.save(path)
        return c

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        import numpy as np  # noqa: PLC0415

        c = self.controller(study)
        actions, logp = c.sample(np.random.default_rng(trial_seed(self.options.seed, trial.number)))
        spec = c.spec_of(actions)
        info = {"proposal": "rl", RL_LOGP: logp, "rl_learnt_from": len(c.consumed)}
        for key, value in info.items():
            study._storage.set_trial_user_attr(trial._trial_id, key, value)
        params = space_lib.spec_to_params(spec)
        return {name: params[name] for name in search_space}


def _random(space: SearchSpace, options: StrategyOptions) -> BaseSampler:
    return RandomMutationSampler(space, options)


def _evolution(space: SearchSpace, options: StrategyOptions) -> BaseSampler:
    return RegularizedEvolutionSampler(space, options)


def _tpe(space: SearchSpace, options: StrategyOptions) -> BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # No constant liar: running trials are not scored, only completed ones.
        return SeededTPESampler(seed=options.seed, constant_liar=False, multivariate=True)


def _nsga2(space: SearchSpace, options: StrategyOptions) -> BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return SeededNSGAIISampler(seed=options.seed, population_size=options.population_size)


STRATEGIES: dict[str, Callable[[SearchSpace, StrategyOptions], BaseSampler]] = {
    "random": _random,
    "evolution": _evolution,
    "tpe": _tpe,
    "rl": lambda space, options: ControllerSampler(space, options),
    "nsga2": _nsga2,
}
# Strategies that search two objectives at once (proxy mIoU up, ``cost_metric`` down): their result
# is the Pareto front.
MULTI_OBJECTIVE = frozenset({"nsga2"})


def make_sampler(strategy: str, space: SearchSpace, options: StrategyOptions) -> BaseSampler:
    """The sampler of ``strategy``; ``ValueError`` listing the valid names if there is none."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy={strategy!r} unknown; valid strategies: {sorted(STRATEGIES)}")
    return STRATEGIES[strategy](space, options)
