"""The worker loop: ``run_worker``, which every worker process runs against the shared study.

Every decision (budget, claim, dedup, the pre-filter's choice) is taken under
the search's claim lock (``trial_store.FileLock``); training runs outside it
with a heartbeat. The rules:

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
* **Interruptions.** A worker that stops (Ctrl-C, SIGTERM, a bug outside the
  objective) marks its running trial interrupted and queues its retry at once;
  the trials of a killed worker are found by ``trial_store.recover_interrupted``
  (the driver's, or the next search's).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import logging
import math
import time
import traceback
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import zero_cost as zero_cost_lib
from deeplab_dpc.nas.cost import score_of
from deeplab_dpc.nas.search_config import SearchConfig
from deeplab_dpc.nas.study import load_study
from deeplab_dpc.nas.trial_store import (
    DUPLICATE_OF,
    ERROR,
    FULL_MIOU,
    GRAPH_HASH,
    HEARTBEAT,
    PREFILTER,
    PREFILTER_GROUP,
    PREFILTER_PENDING,
    PREFILTER_WINNER,
    PROPOSAL,
    PRUNED_AT_STEP,
    PRUNED_BY,
    SPEC,
    STAGE,
    STAGE1_SCORE,
    STAGE2_DECISION,
    ZERO_COST_ERROR,
    ZERO_COST_SECONDS,
    FileLock,
    Heartbeat,
    Resolution,
    all_trials,
    budget_used,
    create_owned,
    is_duplicate,
    mark_interrupted,
    owner_record,
    pop_or_create,
    resolve_duplicate,
    zero_cost_attr,
)

logger = logging.getLogger(__name__)

# A worker that proposes only known graphs this many times in a row stops: the strategy has
# nothing new to offer (a tiny space, or a converged TPE).
MAX_CONSECUTIVE_DUPLICATES = 200
# Result fields copied to user attributes (the rest of a result is kept if small).
RESULT_ATTRS = ("miou", "params", "madds", "latency_ms", "seconds", "steps", "filters")
# Two-stage evaluation's user attributes, copied to a duplicate with the result.
STAGE_ATTRS = (STAGE, STAGE1_SCORE, FULL_MIOU, "score")
_MAX_ATTR_JSON = 20_000


class WorkerSetupError(RuntimeError):
    """A worker could not build its objective: a setup problem, not a trial's failure."""


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


def _claim(study: optuna.Study, trial_id: int, config: SearchConfig, group: int | None) -> _Proposal:
    """Asks the strategy for the cell of ``trial_id``, RUNNING and this worker's (``pop_or_create``,
    ``create_owned``). Call under the lock. ``group``: the first trial number of the pre-filter's
    proposals this one belongs to (None: none)."""
    storage = study._storage
    if group is not None:  # first, so that a worker killed from here on leaves no retry
        storage.set_trial_system_attr(trial_id, PREFILTER_PENDING, group)
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
    if not _score_before_training(trial, spec, scorer, config):
        return
    try:
        if config.pruner != "none":
            result = dict(objective(spec, report=_reporter(trial)))
        else:
            result = dict(objective(spec))
    except optuna.TrialPruned:
        step = study._storage.get_trial(trial._trial_id).last_step
        trial.set_user_attr(PRUNED_AT_STEP, step)
        report.pruned += _finish(study, trial, TrialState.PRUNED)
        return
    except Exception as e:  # noqa: BLE001  (any failure of one trial is recorded; the search goes on)
        _record_failure(study, trial, e, report)
        return
    _record(study, trial, spec, result, report, config)


def _score_before_training(
    trial: optuna.Trial, spec: CellSpec, scorer: ZeroCostScorer | None, config: SearchConfig
) -> bool:
    """The trial's zero-cost scores at initialisation (those the pre-filter computed are kept); False when
    the trial was interrupted meanwhile (it is not trained here)."""
    if scorer is None:
        return True
    own = trial.user_attrs
    try:
        _score_zero_cost(trial, spec, scorer, [n for n in config.zero_cost_scores if zero_cost_attr(n) not in own])
    except UpdateFinishedTrialError:
        logger.warning("trial %d was interrupted while it was scored; not trained here", trial.number)
        return False
    return True


def _record_failure(study: optuna.Study, trial: optuna.Trial, error: BaseException, report: WorkerReport) -> None:
    trial.set_user_attr(ERROR, f"{type(error).__name__}: {error}"[:2000])
    trial.set_user_attr(
        "traceback", "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:]
    )
    report.failed += _finish(study, trial, TrialState.FAIL)


def _record(
    study: optuna.Study,
    trial: optuna.Trial,
    spec: CellSpec,
    result: Mapping[str, Any],
    report: WorkerReport,
    config: SearchConfig,
) -> None:
    """A trained trial's result: its score (a non-finite mIoU or cost fails it), result attrs, stage 2."""
    result = dict(result)
    try:
        miou = float(result["miou"])
        if not math.isfinite(miou):
            raise FloatingPointError(f"the objective returned a non-finite mIoU ({miou})")
        if config.multi_objective:
            score = [miou, _cost_of(result, config.cost_metric)]
        else:
            score = score_of(
                result, config.cost_metric, config.cost_target, config.cost_alpha, config.cost_beta
            )
    except Exception as e:  # noqa: BLE001
        _record_failure(study, trial, e, report)
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
    if config.cells_per_worker > 1 and not callable(getattr(objective, "group", None)):
        raise WorkerSetupError(
            f"cells_per_worker={config.cells_per_worker} needs an objective that trains several cells in one "
            f"program (objective.group(specs)); {config.objective} has none"
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
        if config.cells_per_worker > 1:
            counts = _run_group(study, lock, worker, objective, report, config, scorer, poll_seconds)
            if counts is None:
                report.stopped_because = "max_trials reached"
                break
            duplicates_in_a_row = 0 if counts[0] else duplicates_in_a_row + counts[1]
            continue
        with lock:
            trials = all_trials(study)
            if budget_used(trials) >= config.max_trials:
                report.stopped_because = "max_trials reached"
                break
            trial_id = pop_or_create(study, trials, owner_record(worker))
            queued = any(t._trial_id == trial_id for t in trials)  # popped, not created
            # Queued trials (retries, reference cells) train as they are, without a pre-filter.
            if config.prefilter_ratio > 1 and not queued:
                group = study._storage.get_trial_number_from_id(trial_id)
                ids = [trial_id] + [
                    create_owned(study, owner_record(worker), {PREFILTER_PENDING: group})
                    for _ in range(config.prefilter_ratio - 1)
                ]
                proposals = [_claim(study, i, config, group) for i in ids]
            else:
                chosen = _claim(study, trial_id, config, None)
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
        trial_id = chosen.trial._trial_id
        try:
            with Heartbeat(study._storage, trial_id, config.heartbeat_seconds):
                if _train_or_settle(study, lock, chosen, resolution, objective, report, config, scorer, poll_seconds):
                    duplicates_in_a_row = 0
                else:
                    duplicates_in_a_row += 1
        except BaseException:
            # Ctrl-C, SIGTERM (SystemExit) or a bug outside the objective: this attempt is
            # interrupted, not the cell's doing; it is retried, now rather than when the next search starts.
            _interrupt(study, lock, [trial_id], worker, space)
            raise
    return report


def _interrupt(study: optuna.Study, lock: FileLock, trial_ids: Sequence[int], worker: str, space) -> None:
    """Marks this worker's trials that are still RUNNING interrupted: it was stopped on purpose
    (SIGTERM, Ctrl-C), which does not count against the cells (each is retried)."""
    with contextlib.suppress(Exception), lock:
        for trial_id in trial_ids:
            frozen = study._storage.get_trial(trial_id)
            if frozen.state == TrialState.RUNNING:
                mark_interrupted(
                    study, frozen, f"worker {worker} stopped", all_trials(study), space, worker_died=False
                )


def _train_or_settle(
    study: optuna.Study,
    lock: FileLock,
    proposal: _Proposal,
    resolution: Resolution,
    objective: Objective,
    report: WorkerReport,
    config: SearchConfig,
    scorer: ZeroCostScorer | None,
    poll_seconds: float,
) -> bool:
    """Trains the proposal, or, a duplicate, waits for its original and copies its outcome. Returns
    whether it trained. Call with the trial's heartbeat running."""
    trial, graph_hash = proposal.trial, proposal.graph_hash
    while resolution.action == "wait":
        time.sleep(poll_seconds)
        with lock:
            resolution = resolve_duplicate(trial.number, graph_hash, all_trials(study))
            if resolution.action == "train":
                trial.set_user_attr(DUPLICATE_OF, None)  # Its original is gone: it trains itself.
            elif resolution.action != "wait":
                trial.set_user_attr(DUPLICATE_OF, resolution.of)
    if resolution.action == "train":
        _train(study, trial, proposal.spec, objective, report, config, scorer)
        return True
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
        trial.set_user_attr(ERROR, f"same graph as trial {source.number}, which failed: {error}"[:2000])
        report.duplicates += _finish(study, trial, TrialState.FAIL)
    return False


def _run_group(
    study: optuna.Study,
    lock: FileLock,
    worker: str,
    objective: Objective,
    report: WorkerReport,
    config: SearchConfig,
    scorer: ZeroCostScorer | None,
    poll_seconds: float,
) -> tuple[int, int] | None:
    """``cells_per_worker`` > 1: claims up to that many trials under the lock and trains those that train
    in one program (``objective.group``), each recorded as its own trial; the duplicates among them are
    settled after. Returns (trained, duplicates), or None when the budget is used."""
    claimed: list[tuple[_Proposal, Resolution]] = []
    with lock:
        for _ in range(config.cells_per_worker):
            trials = all_trials(study)
            if budget_used(trials) >= config.max_trials:
                break
            proposal = _claim(study, pop_or_create(study, trials, owner_record(worker)), config, None)
            claimed.append((proposal, _resolve(study, proposal)))
    if not claimed:
        return None
    group = [p for p, r in claimed if r.action == "train"]
    ids = [p.trial._trial_id for p, _ in claimed]
    try:
        with _Heartbeats(study._storage, ids, config.heartbeat_seconds):
            ready = [p for p in group if _score_before_training(p.trial, p.spec, scorer, config)]
            if ready:
                try:
                    outcomes = list(objective.group([p.spec for p in ready]))
                    if len(outcomes) != len(ready):
                        raise RuntimeError(f"the objective's group returned {len(outcomes)} results for {len(ready)} cells")
                except Exception as e:  # noqa: BLE001  (the whole program failed: each of its trials did)
                    outcomes = [e] * len(ready)
                for proposal, outcome in zip(ready, outcomes):
                    if isinstance(outcome, BaseException):
                        _record_failure(study, proposal.trial, outcome, report)
                    else:
                        _record(study, proposal.trial, proposal.spec, outcome, report, config)
            duplicates = 0
            for proposal, resolution in claimed:
                if resolution.action != "train":
                    trained = _train_or_settle(
                        study, lock, proposal, resolution, objective, report, config, scorer, poll_seconds
                    )
                    duplicates += not trained
    except BaseException:
        _interrupt(study, lock, ids, worker, config.space)  # each retried, as a lone trial is
        raise
    return len(group), duplicates
