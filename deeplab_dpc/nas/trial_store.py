"""The search's trial store: trials in an Optuna storage, what their attributes mean, and the
recovery of trials left by killed workers.

Every process of a search reads and writes one Optuna study (``study.load_study``)
in one storage: SQLite in ``search_dir`` by default, a database URL, or a journal
file (``open_storage``). A trial's state and user attributes (names below) say
what happened to it; the predicates here (``is_duplicate``, ``is_interrupted``,
``is_prefiltered``, ``counts_toward_budget``, ``resolve_duplicate``, ...) read
them, for the worker loop (``nas.worker``, which writes them) and for every
reader (progress, re-ranking, the analysis).

Interruptions. A worker records its owner (host, pid, process start time, worker
id) on each trial it claims, by the write that makes the trial RUNNING
(``pop_or_create``), and a heartbeat every ``heartbeat_seconds`` while it runs. A
RUNNING trial whose owner process is gone (same host) or whose heartbeat is
older than ``grace_seconds`` is interrupted: marked FAIL with user attrs
``interrupted`` and ``error``, and enqueued once more with the same parameters
and user attr ``retry_of``. Retries start before any other queued or new trial.
A trial whose own worker died while its search went on (``worker_deaths``
counts these along the retries of one cell) is retried once: a cell whose
training kills its worker twice (out of memory, a crash in a kernel) stays FAIL
("interrupted again") and counts as failed. An interruption that is not the
cell's doing does not count: the search stopped (its driver is gone, killed
or preempted, and its workers with it) or a worker was stopped on purpose
(SIGTERM, Ctrl-C); such a trial is retried however often it happens.

Everything that decides (budget, claim, recovery) runs under one file lock in
``search_dir`` (``fcntl.flock``: released by the kernel when a process dies, even
by SIGKILL), so every process of a search must see the same ``search_dir``
(one machine, or a shared filesystem with working locks).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import sqlite3
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

from deeplab_dpc.core.spec import SearchSpace
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import zero_cost as zero_cost_lib

logger = logging.getLogger(__name__)

# User attribute names.
SPEC = "spec"
GRAPH_HASH = "graph_hash"
DUPLICATE_OF = "duplicate_of"
RETRY_OF = "retry_of"
RETRIED_AS = "retried_as"
WORKER_DEATHS = "worker_deaths"  # how often this cell's training lost its worker while the search ran
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
# Two-stage evaluation's user attributes (``nas.progressive``).
STAGE = "stage"
STAGE1_SCORE = "stage1_score"
STAGE2_DECISION = "stage2_decision"
FULL_MIOU = "full_miou"
# A proposal the zero-cost pre-filter set aside (``nas.worker``): PRUNED, user attr PRUNED_BY = PREFILTER.
PRUNED_BY = "pruned_by"
PREFILTER = "prefilter"


def zero_cost_attr(name: str) -> str:
    """The user attribute holding zero-cost score ``name`` (``zero_cost_synflow``)."""
    return f"zero_cost_{name}"


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
    """An Optuna storage for ``url`` (see ``search_config.resolve_storage``). A SQLite file (on a local
    disk: WAL needs one) is opened as ``_sqlite_connector`` says."""
    if url.startswith("journal:"):
        from optuna.storages.journal import JournalFileBackend  # noqa: PLC0415

        path = url[len("journal:") :]
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        backend = JournalFileBackend(path, lock_obj=JournalLock(path))
        return optuna.storages.JournalStorage(backend)
    engine_kwargs = None
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = url[len("sqlite:///") :]
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine_kwargs = {"creator": _sqlite_connector(path)}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, skip_table_creation=not create_tables)


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


class JournalLock:
    """The journal file's writer lock (Optuna's lock interface: ``acquire``, ``release``) as a
    ``FileLock``: a writer killed mid-append (SIGKILL) frees it at once, where Optuna's own lock file
    stays behind and stalls every other writer until its 30 s grace period ends, then is taken from
    whoever holds it. One ``FileLock`` per holding thread, so threads of a process exclude each other."""

    def __init__(self, journal_path: str):
        self.path = journal_path + ".flock"
        self._held = threading.local()

    def acquire(self) -> bool:
        lock = FileLock(self.path)
        lock.__enter__()
        self._held.lock = lock
        return True

    def release(self) -> None:
        lock, self._held.lock = self._held.lock, None
        lock.__exit__(None, None, None)


# --------------------------------------------------------------------------- trial classification


def is_duplicate(trial: FrozenTrial) -> bool:
    return trial.user_attrs.get(DUPLICATE_OF) is not None


def is_interrupted(trial: FrozenTrial) -> bool:
    """An attempt cut short by a kill (and retried, or a duplicate): not a result."""
    return trial.state == TrialState.FAIL and INTERRUPTED in trial.user_attrs


def is_prefiltered(trial: FrozenTrial) -> bool:
    """A proposal the zero-cost pre-filter set aside: never trained, no result of any strategy."""
    return trial.state == TrialState.PRUNED and trial.user_attrs.get(PRUNED_BY) == PREFILTER


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


def driver_id() -> str:
    """This process as a search's driver: ``<host>:<pid>``, the prefix of its workers' ids
    (``<driver id>:<name>``), from which ``search_stopped`` tells whether it is gone."""
    return f"{socket.gethostname()}:{os.getpid()}"


def search_stopped(owner: Mapping[str, Any] | None) -> bool:
    """Whether the driver that started this owner's worker is gone (True only when that can be told
    from here: a driver of this host). Worker ids are ``<driver_id()>:<name>``."""
    driver = str((owner or {}).get("worker", "")).rsplit(":", 1)[0]
    host, _, pid = driver.rpartition(":")
    if not host or not pid.isdigit():
        return False
    return owner_alive({"host": host, "pid": int(pid)}) is False


def last_sign_of_life(trial: FrozenTrial) -> float:
    beat = trial.system_attrs.get(HEARTBEAT)
    started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0
    return max(float(beat or 0.0), started)


def stale_reason(trial: FrozenTrial, grace_seconds: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial is interrupted (its owner is gone, its heartbeat stopped), or None. A
    RUNNING trial without an owner (claims write one with the state, ``pop_or_create``; a trial
    created otherwise, e.g. by Optuna's ``ask``) is interrupted once silent for ``grace_seconds``
    since it started."""
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
    study: optuna.Study,
    trial: FrozenTrial,
    reason: str,
    trials: Sequence[FrozenTrial],
    space: SearchSpace,
    *,
    worker_died: bool = True,
) -> int | None:
    """Marks a RUNNING trial FAIL as interrupted and queues its retry. Call under the claim lock.

    ``worker_died``: its worker died while the search went on (counts toward the cell's one
    retry); False when the search stopped or the worker was stopped on purpose (does not).
    Idempotent: a crash halfway leaves a state the next call finishes without a second retry.
    Returns the retry's number (None when there is none: a cell whose worker died twice, a
    duplicate, or a trial killed before it had all its parameters). ``UpdateFinishedTrialError``
    if the trial finished meanwhile.
    """
    names = set(space_lib.distributions(space))
    params = dict(trial.params)
    if set(params) != names:  # killed while suggesting: a queued trial still has its fixed parameters
        params = {**trial.system_attrs.get("fixed_params", {}), **params}
    complete_params = set(params) == names
    retry_number = None
    # A retry made before worker_deaths was recorded had lost its worker once.
    deaths = int(trial.user_attrs.get(WORKER_DEATHS, 1 if trial.user_attrs.get(RETRY_OF) is not None else 0))
    if worker_died and deaths >= 1:  # a failure of its own: not INTERRUPTED, it counts toward the budget
        _set_attr(
            study, trial, ERROR, f"interrupted again ({reason}); its worker died twice, a retry is not retried"
        )
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
            attrs = {RETRY_OF: trial.number, WORKER_DEATHS: deaths + int(worker_died)}
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
    trial of that worker, known to have died while its search ran). Call under the claim lock.
    A trial whose search stopped (its worker's driver is gone) is retried without counting
    against the cell (``mark_interrupted``'s ``worker_died``).

    Returns (trial number, retry number or None) for each trial interrupted.
    """
    trials = all_trials(study)
    done = []
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        owner = trial.system_attrs.get(OWNER) or {}
        stopped = False
        if worker is not None:
            why = reason if owner.get("worker") == worker else None
        else:
            why = stale_reason(trial, grace_seconds)
            stopped = why is not None and search_stopped(owner)
            if stopped:
                why += "; its search stopped"
        if why is None:
            continue
        try:
            retry = mark_interrupted(study, trial, why, trials, space, worker_died=not stopped)
            done.append((trial.number, retry))
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


def create_owned(
    study: optuna.Study, owner: Mapping[str, Any], system_attrs: Mapping[str, Any] | None = None
) -> int:
    """A new RUNNING trial of ``owner`` (``owner_record``), owner and ``system_attrs`` written in the
    one write that creates it; returns its id."""
    attrs = {**(system_attrs or {}), OWNER: dict(owner)}
    template = create_trial(state=TrialState.RUNNING, system_attrs=attrs)
    return study._storage.create_new_trial(study._study_id, template_trial=template)


def pop_or_create(study: optuna.Study, trials: Sequence[FrozenTrial], owner: Mapping[str, Any]) -> int:
    """A queued trial, retries first, set RUNNING; or a new trial (``create_owned``). Returns its id.
    Call under the claim lock.

    The trial is ``owner``'s (``owner_record``) from the write that makes it RUNNING on: a queued trial
    gets its owner while still WAITING, then leaves WAITING (a worker killed in between leaves it
    queued, and the next claim writes its own owner over); a new one is created with it. So no RUNNING
    trial is without an owner: a worker killed mid-claim leaves a trial that ``recover_interrupted``
    finds as that worker's (its process gone, or the driver naming the dead worker), rather than one
    that counts toward ``max_trials`` until ``grace_seconds`` pass without a sign of life.
    """
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    waiting.sort(key=lambda t: (t.user_attrs.get(RETRY_OF) is None, t.number))
    for trial in waiting:
        try:
            study._storage.set_trial_system_attr(trial._trial_id, OWNER, dict(owner))
            if study._storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return trial._trial_id
        except UpdateFinishedTrialError:
            continue
    return create_owned(study, owner)
