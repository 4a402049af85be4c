"""The trial store: config checks, dedup by graph, failures, budgets, interruption recovery.

Workers run in this process with the fake objectives of ``tests/nas/fakes.py``.
"""

import datetime
import itertools
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from optuna.trial import TrialState, create_trial

from deeplab_dpc.core.spec import SearchSpace
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas import worker as worker_lib
from deeplab_dpc.nas.search_config import (
    DEFAULT_OBJECTIVE,
    ConfigMismatch,
    SearchConfig,
    prepare_search_dir,
    resolve_storage,
)
from deeplab_dpc.nas.worker import WorkerSetupError, run_worker
from tests.nas import fakes


def make_config(tmp_path, **overrides):
    values = dict(
        search_dir=str(tmp_path / "search"), objective="tests.nas.fakes:deterministic", max_trials=8
    )
    values.update(overrides)
    return SearchConfig(**values)


def start(config):
    prepare_search_dir(config)
    return study_lib.load_study(config, create=True)


def trained_hashes(log_path):
    if not os.path.exists(log_path):
        return []
    with open(log_path) as f:
        return [line.split()[0] for line in f if line.strip()]


@pytest.fixture
def objective_log(tmp_path, monkeypatch):
    path = str(tmp_path / "trained.log")
    monkeypatch.setenv("FAKE_OBJECTIVE_LOG", path)
    return path


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(strategy="grid"),
            r"^strategy='grid' unknown; valid strategies: \['evolution', 'nsga2', 'random', 'rl', 'tpe'\]",
        ),
        (dict(executor="slurm"), r"^executor='slurm' unknown"),
        (dict(max_trials=0), r"^max_trials must be a positive integer"),
        (dict(max_hours=0.0), r"^max_hours must be positive"),
        (dict(num_workers=0), r"^num_workers"),
        (dict(sample_size=30), r"^sample_size must be at most population_size"),
        (dict(mutation_probability=-0.1), r"^mutation_probability"),
        (dict(enqueue_published=True, num_branches=3), r"^enqueue_published needs num_branches=5"),
        (dict(storage="/tmp/somewhere"), r"^storage='/tmp/somewhere' is neither a database URL"),
        (
            dict(objective="fakes.deterministic"),
            r"^objective='fakes.deterministic': expected 'module:function'",
        ),
        (dict(heartbeat_seconds=10.0, grace_seconds=15.0), r"^grace_seconds must be at least twice"),
        (dict(pruner="asha"), r"^pruner='asha' unknown; valid: \['none', 'median', 'sha', 'hyperband'\]"),
        (
            dict(pruner="median", objective=DEFAULT_OBJECTIVE, proxy={"proxy_steps": 200}),
            r"^pruner=median needs intermediate scores: set proxy_eval_interval",
        ),
        (
            dict(pruner="sha", objective=DEFAULT_OBJECTIVE, proxy={"proxy_steps": 200, "eval_interval": 200}),
            r"^pruner=sha needs intermediate scores",
        ),
        (dict(pruner_reduction_factor=1), r"^pruner_reduction_factor must be an integer >= 2"),
        (dict(pruner_startup_trials=-1), r"^pruner_startup_trials must be an integer >= 0"),
    ],
)
def test_config_errors_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_storage_urls(tmp_path):
    d = str(tmp_path)
    assert resolve_storage(None, d) == f"sqlite:///{d}/study.db"
    assert resolve_storage("runs/j.log", d) == "journal:" + os.path.abspath("runs/j.log")
    assert resolve_storage("journal:x", d) == "journal:" + os.path.abspath("x")
    assert resolve_storage("postgresql://u@h/db", d) == "postgresql://u@h/db"


def test_config_round_trips_through_json(tmp_path):
    config = make_config(tmp_path, proxy={"proxy_steps": 300, "batch_size": 8}, max_hours=2.5)
    path = prepare_search_dir(config)
    with open(path) as f:
        assert SearchConfig.from_dict(json.load(f)) == config


def test_a_search_dir_refuses_another_config_but_takes_new_budgets(tmp_path):
    prepare_search_dir(make_config(tmp_path, proxy={"proxy_steps": 300}))
    # Budgets and how the search runs may change.
    prepare_search_dir(
        make_config(tmp_path, proxy={"proxy_steps": 300}, max_trials=50, max_hours=1.0, num_workers=4)
    )
    with pytest.raises(ConfigMismatch, match=r"^strategy='tpe' differs from 'random'") as e:
        prepare_search_dir(make_config(tmp_path, proxy={"proxy_steps": 300}, strategy="tpe"))
    assert e.value.field == "strategy"
    with pytest.raises(ConfigMismatch, match=r"^proxy.proxy_steps=100 differs from 300") as e:
        prepare_search_dir(make_config(tmp_path, proxy={"proxy_steps": 100}))
    assert (e.value.field, e.value.key) == ("proxy", "proxy_steps")
    # The file keeps the last accepted config.
    with open(os.path.join(tmp_path, "search", "search_config.json")) as f:
        assert json.load(f)["max_trials"] == 50


def test_a_search_started_before_a_proxy_field_existed_continues_at_its_default(tmp_path):
    prepare_search_dir(make_config(tmp_path, proxy={"proxy_steps": 300}))  # no drop_path_keep_prob
    with pytest.raises(ConfigMismatch, match=r"^proxy.drop_path_keep_prob=0.7 differs from None"):
        prepare_search_dir(
            make_config(tmp_path, proxy={"proxy_steps": 300, "drop_path_keep_prob": 0.7})
        )
    prepare_search_dir(
        make_config(tmp_path, proxy={"proxy_steps": 300, "drop_path_keep_prob": 1.0})
    )


# --------------------------------------------------------------------------- trials


def test_failing_trials_are_stored_with_their_error_and_the_search_goes_on(tmp_path, objective_log):
    config = make_config(tmp_path, objective="tests.nas.fakes:flaky", max_trials=25, mutation_probability=0.0)
    study = start(config)
    report = run_worker(config, "w")
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert failed, "the test needs cells the fake fails on"
    for t in failed:
        assert t.value is None
        assert t.user_attrs["error"] == "FakeNaN: loss became NaN at step 3"
        assert "FakeNaN" in t.user_attrs["traceback"]
        assert fakes.fails(space_lib.params_to_spec(t.params, config.space))
    assert report.failed == len(failed) and report.trained == 25 - len(failed)
    assert trial_store.budget_used(trials) == 25 and report.stopped_because == "max_trials reached"
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)


def test_a_non_finite_score_is_a_failure_not_a_score(tmp_path):
    config = make_config(tmp_path, max_trials=2)
    study = start(config)
    run_worker(config, "w", objective=lambda spec: {"miou": float("nan")})
    assert [t.state for t in study.trials] == [TrialState.FAIL] * 2
    assert "non-finite mIoU" in study.trials[0].user_attrs["error"]


def test_a_duplicate_graph_is_never_trained_twice(tmp_path, objective_log):
    # One branch: 81 cells, so 30 trials propose duplicates (mutations of the best, too).
    config = make_config(tmp_path, num_branches=1, max_trials=30, mutation_probability=0.7, mutation_top_k=2)
    study = start(config)
    run_worker(config, "w")
    trials = study.get_trials()
    duplicates = [t for t in trials if trial_store.is_duplicate(t)]
    originals = [t for t in trials if not trial_store.is_duplicate(t)]
    assert len(duplicates) > 3 and len(originals) == 30
    trained = trained_hashes(objective_log)
    assert len(trained) == len(set(trained)) == 30
    assert sorted(trained) == sorted(t.user_attrs["graph_hash"] for t in originals)
    by_number = {t.number: t for t in trials}
    for t in duplicates:
        original = by_number[t.user_attrs["duplicate_of"]]
        assert t.state == TrialState.COMPLETE and t.value == original.value
        assert t.user_attrs["graph_hash"] == original.user_attrs["graph_hash"]
        assert not trial_store.is_duplicate(original)


def test_a_duplicate_of_a_failed_graph_is_failed_without_training(tmp_path, objective_log):
    config = make_config(tmp_path, num_branches=1, max_trials=30, objective="tests.nas.fakes:flaky")
    study = start(config)
    run_worker(config, "w")
    trials = study.get_trials()
    copies = [t for t in trials if trial_store.is_duplicate(t) and t.state == TrialState.FAIL]
    assert copies
    for t in copies:
        assert t.user_attrs["error"].startswith(
            f"same graph as trial {t.user_attrs['duplicate_of']}, which failed"
        )
    trained = trained_hashes(objective_log)
    assert len(trained) == len(set(trained)) == 30


def test_resolution_rules():
    def trial(number, state, value=None, **attrs):
        t = (
            create_trial(state=state, value=value, user_attrs={"graph_hash": "h", **attrs})
            if state == TrialState.COMPLETE
            else create_trial(state=state, user_attrs={"graph_hash": "h", **attrs})
        )
        t.number = number
        return t

    R = trial_store.resolve_duplicate
    assert R(9, "h", []) == trial_store.Resolution("train")
    assert R(9, "h", [trial(3, TrialState.COMPLETE, 0.5)]) == trial_store.Resolution("copy", 3)
    assert R(9, "h", [trial(3, TrialState.RUNNING)]) == trial_store.Resolution("wait", 3)
    assert R(9, "h", [trial(3, TrialState.FAIL, error="x")]) == trial_store.Resolution("copy_failure", 3)
    # An interrupted attempt is no result, and its queued retry is not waited for (this worker may be
    # the one that would run it): the new trial trains, the retry will find the graph done.
    assert R(9, "h", [trial(3, TrialState.FAIL, interrupted="killed")]) == trial_store.Resolution("train")
    assert R(
        9, "h", [trial(3, TrialState.FAIL, interrupted="k"), trial(5, TrialState.WAITING, retry_of=3)]
    ) == (trial_store.Resolution("train"))
    # A duplicate is never an original; a completed result wins over a failure.
    assert R(9, "h", [trial(3, TrialState.COMPLETE, 0.5, duplicate_of=1)]) == trial_store.Resolution("train")
    assert (
        R(9, "h", [trial(3, TrialState.FAIL, error="x"), trial(4, TrialState.COMPLETE, 0.4)]).action == "copy"
    )


def test_reference_cells_run_first_and_are_queued_once(tmp_path):
    config = make_config(tmp_path, enqueue_published=True, max_trials=3)
    study = start(config)
    with trial_store.FileLock(config.lock_path):
        assert trial_store.enqueue_reference_cells(study) == [0, 1]
        assert trial_store.enqueue_reference_cells(study) == []
    run_worker(config, "w")
    trials = study.get_trials()
    assert [t.user_attrs.get("reference") for t in trials] == ["published_cityscapes", "aspp", None]
    assert space_lib.params_to_spec(trials[0].params, config.space) == space_lib.published_cell()
    assert json.loads(trials[1].user_attrs["spec"]) == space_lib.aspp_cell().to_list()


def test_max_hours_stops_starting_trials(tmp_path):
    config = make_config(tmp_path, max_trials=100)
    start(config)
    report = run_worker(config, "w", deadline=time.time() - 1)
    assert report.stopped_because == "max_hours reached" and report.trained == 0


# --------------------------------------------------------------------------- interruptions


def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def plant_running_trial(study, config, spec, *, owner, heartbeat, retry_of=None):
    """A RUNNING trial as a killed worker leaves it, started when its last heartbeat was written."""
    attrs = {"graph_hash": spec.canonical_hash(), "spec": spec.to_json()}
    if retry_of is not None:
        attrs["retry_of"] = retry_of
    template = create_trial(
        state=TrialState.RUNNING,
        params=space_lib.spec_to_params(spec),
        distributions=space_lib.distributions(config.space),
        user_attrs=attrs,
        system_attrs={trial_store.OWNER: owner, trial_store.HEARTBEAT: heartbeat},
    )
    template.datetime_start = datetime.datetime.fromtimestamp(heartbeat)
    trial_id = study._storage.create_new_trial(study._study_id, template_trial=template)
    return study._storage.get_trial_number_from_id(trial_id)


def test_a_trial_whose_worker_is_gone_is_retried_once(tmp_path, objective_log):
    config = make_config(tmp_path, max_trials=3)
    study = start(config)
    spec = space_lib.published_cell()
    owner = {"host": socket.gethostname(), "pid": dead_pid(), "start": None, "worker": "old"}
    number = plant_running_trial(study, config, spec, owner=owner, heartbeat=time.time())
    # A live owner with a fresh heartbeat is left alone.
    alive = dict(trial_store.owner_record("me"))
    plant_running_trial(study, config, space_lib.aspp_cell(), owner=alive, heartbeat=time.time())
    with trial_store.FileLock(config.lock_path):
        recovered = trial_store.recover_interrupted(study, config.space, config.grace_seconds)
        assert recovered == [(number, 2)]
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == []
    interrupted, live, retry = study.get_trials()
    assert interrupted.state == TrialState.FAIL and live.state == TrialState.RUNNING
    assert "worker old (pid" in interrupted.user_attrs["interrupted"]
    assert interrupted.user_attrs["retried_as"] == 2
    assert retry.state == TrialState.WAITING and retry.user_attrs["retry_of"] == number
    # The live one now stops (its owner "finished"); the retry runs first and trains the graph.
    study._storage.set_trial_state_values(live._trial_id, TrialState.COMPLETE, [0.3])
    run_worker(config, "w")
    retry = study.get_trials()[2]
    assert retry.state == TrialState.COMPLETE and retry.value == pytest.approx(fakes.score(spec))
    assert trained_hashes(objective_log)[0] == spec.canonical_hash()
    # Budget: the interrupted attempt does not count, its retry does.
    assert trial_store.budget_used(study.get_trials()) == 3


def test_a_silent_trial_is_interrupted_after_the_grace_period(tmp_path):
    config = make_config(tmp_path, heartbeat_seconds=1.0, grace_seconds=5.0)
    study = start(config)
    elsewhere = {"host": "another-machine", "pid": 1, "start": None, "worker": "remote"}
    fresh = plant_running_trial(study, config, space_lib.aspp_cell(), owner=elsewhere, heartbeat=time.time())
    silent = plant_running_trial(
        study, config, space_lib.published_cell(), owner=elsewhere, heartbeat=time.time() - 60
    )
    with trial_store.FileLock(config.lock_path):
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == [(silent, 2)]
    trials = study.get_trials()
    assert trials[fresh].state == TrialState.RUNNING
    assert trials[silent].user_attrs["interrupted"].startswith("no heartbeat for 6")


def test_a_retry_interrupted_again_fails_for_good(tmp_path):
    config = make_config(tmp_path)
    study = start(config)
    owner = {"host": socket.gethostname(), "pid": dead_pid(), "start": None, "worker": "old"}
    number = plant_running_trial(
        study, config, space_lib.published_cell(), owner=owner, heartbeat=time.time(), retry_of=7
    )
    with trial_store.FileLock(config.lock_path):
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == [(number, None)]
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL and trial.user_attrs["error"].startswith("interrupted again")
    assert trial_store.counts_toward_budget(trial)  # a failure of its own, not retried


def test_a_search_that_stops_again_and_again_retries_its_cells_without_counting_it_against_them(tmp_path):
    # Workers are named <driver host>:<driver pid>:<name>. A worker gone with its driver (the search was
    # killed or preempted) is not the cell's doing: the retry is retried, the count of worker deaths kept.
    config = make_config(tmp_path)
    study = start(config)
    host = socket.gethostname()
    spec = space_lib.published_cell()

    def owner(driver_pid):
        return {"host": host, "pid": dead_pid(), "start": None, "worker": f"{host}:{driver_pid}:local-0"}

    first = plant_running_trial(study, config, spec, owner=owner(dead_pid()), heartbeat=time.time())
    with trial_store.FileLock(config.lock_path):
        [(_, retry)] = trial_store.recover_interrupted(study, config.space, config.grace_seconds)
    trials = study.get_trials()
    assert trials[first].user_attrs["interrupted"].endswith("is gone; its search stopped")
    assert trials[retry].user_attrs["retry_of"] == first and trials[retry].user_attrs["worker_deaths"] == 0
    # The retry is claimed, then the search is killed again: retried again.
    study._storage.set_trial_state_values(trials[retry]._trial_id, TrialState.RUNNING)
    study._storage.set_trial_system_attr(trials[retry]._trial_id, trial_store.OWNER, owner(dead_pid()))
    with trial_store.FileLock(config.lock_path):
        [(number, again)] = trial_store.recover_interrupted(study, config.space, config.grace_seconds)
    assert number == retry and again is not None
    trials = study.get_trials()
    assert trials[again].user_attrs["retry_of"] == retry and trials[again].system_attrs["fixed_params"] == trials[first].params
    # Now its worker dies while the driver (this process) runs: the first death of this cell, retried.
    study._storage.set_trial_state_values(trials[again]._trial_id, TrialState.RUNNING)
    study._storage.set_trial_system_attr(trials[again]._trial_id, trial_store.OWNER, owner(os.getpid()))
    with trial_store.FileLock(config.lock_path):
        [(_, third)] = trial_store.recover_interrupted(study, config.space, config.grace_seconds)
    trials = study.get_trials()
    assert not trials[again].user_attrs["interrupted"].endswith("its search stopped")
    assert trials[third].user_attrs["worker_deaths"] == 1
    # Its worker dies once more while the search runs: a failure of the cell's own, counted, not retried.
    study._storage.set_trial_state_values(trials[third]._trial_id, TrialState.RUNNING)
    study._storage.set_trial_system_attr(trials[third]._trial_id, trial_store.OWNER, owner(os.getpid()))
    with trial_store.FileLock(config.lock_path):
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == [(third, None)]
    trials = study.get_trials()
    assert trials[third].state == TrialState.FAIL and "worker died twice" in trials[third].user_attrs["error"]
    assert [t.number for t in trials if trial_store.counts_toward_budget(t)] == [third]


def test_a_queued_trial_killed_before_its_parameters_were_written_is_retried(tmp_path):
    config = make_config(tmp_path, enqueue_published=True)
    study = start(config)
    with trial_store.FileLock(config.lock_path):
        trial_store.enqueue_reference_cells(study)
        # A worker popped trial 0 and was killed before suggesting its parameters.
        owner = {"host": socket.gethostname(), "pid": dead_pid(), "start": None, "worker": "old"}
        trial_store.pop_or_create(study, trial_store.all_trials(study), owner)
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == [(0, 2)]
    retry = study.get_trials()[2]
    assert retry.user_attrs["reference"] == "published_cityscapes" and retry.user_attrs["retry_of"] == 0
    assert retry.system_attrs["fixed_params"] == space_lib.spec_to_params(space_lib.published_cell())


class Killed(BaseException):
    """SIGKILL landing on a storage write: that write and every later one never happen, and no handler
    runs (a worker's own clean-up is for Ctrl-C and SIGTERM; ``BaseException`` passes through it)."""


class DiesAtWrite:
    """A worker's storage that is killed at its ``n``-th write (``Killed``, then and ever after)."""

    WRITES = {
        "create_new_trial", "set_trial_state_values", "set_trial_param", "set_trial_user_attr",
        "set_trial_system_attr", "set_trial_intermediate_value", "set_study_user_attr", "set_study_system_attr",
    }

    def __init__(self, storage, n):
        self._storage, self._left, self.n = storage, n, n

    def __getattr__(self, name):
        attr = getattr(self._storage, name)
        if name not in self.WRITES:
            return attr

        def write(*args, **kwargs):
            self._left -= 1
            if self._left <= 0:
                raise Killed(f"at write {self.n}: {name}")
            return attr(*args, **kwargs)

        return write


CLAIMS = {
    "a new trial": dict(num_branches=2),
    "a queued trial": dict(enqueue_published=True),
    "pre-filter proposals": dict(
        num_branches=2, objective="tests.nas.fakes:scored", prefilter="synflow", prefilter_ratio=2,
        zero_cost_scores="synflow",
    ),
    "a group of cells": dict(
        num_branches=2, objective="tests.nas.fakes:grouped", cells_per_worker=2, max_trials=2
    ),
}


@pytest.mark.parametrize("claim", list(CLAIMS))
def test_a_worker_killed_at_any_write_of_its_claim_leaves_no_trial_running_unowned(tmp_path, monkeypatch, claim):
    """The worker is killed at its 1st, 2nd, ... storage write, until one lands after training started.
    Each time every RUNNING trial names the dead worker, so the driver (which knows which worker died)
    and the next search (which finds its process gone) both recover it at once; the kill used none of
    the budget, and a new worker uses it all. Before claims wrote the owner with the state, a kill
    between the two left a RUNNING trial without an owner: neither found it, and it held a slot of
    ``max_trials`` until ``grace_seconds`` passed."""
    dead = dead_pid()
    real_owner_record = worker_lib.owner_record
    monkeypatch.setattr(
        worker_lib, "owner_record", lambda worker: {**real_owner_record(worker), "pid": dead, "start": None}
    )
    real_load_study = worker_lib.load_study
    kills = 0
    for n in itertools.count(1):
        config = make_config(tmp_path / str(n), **{"max_trials": 1, **CLAIMS[claim]})
        study = start(config)
        if config.enqueue_published:
            with trial_store.FileLock(config.lock_path):
                trial_store.enqueue_reference_cells(study)
        killed_log = tmp_path / str(n) / "killed.log"
        monkeypatch.setenv("FAKE_OBJECTIVE_LOG", str(killed_log))

        def dying_study(config, n=n, **kwargs):
            killed = real_load_study(config, **kwargs)
            killed._storage = DiesAtWrite(killed._storage, n)
            return killed

        monkeypatch.setattr(worker_lib, "load_study", dying_study)
        try:
            run_worker(config, "w")
        except Killed:
            kills += 1
        else:
            pytest.fail(f"write {n} came after the worker finished: the kill never landed")
        finally:
            monkeypatch.setattr(worker_lib, "load_study", real_load_study)
        trained = killed_log.exists()  # the kill landed after training started: the claims are behind
        trials = trial_store.all_trials(study)
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        of_w = {t.number for t in trials if t.system_attrs.get(trial_store.OWNER, {}).get("worker") == "w"}
        stale = {t.number for t in trials if trial_store.stale_reason(t, config.grace_seconds) is not None}
        assert running <= of_w and running == stale, (n, running, of_w, stale)
        with trial_store.FileLock(config.lock_path):
            recovered = trial_store.recover_interrupted(study, config.space, config.grace_seconds)
        assert {number for number, _ in recovered} == running, n
        if not trained:
            assert trial_store.budget_used(trial_store.all_trials(study)) == 0, n
        monkeypatch.setenv("FAKE_OBJECTIVE_LOG", str(tmp_path / str(n) / "after.log"))
        run_worker(config, "w2")
        trials = trial_store.all_trials(study)
        assert not any(t.state == TrialState.RUNNING for t in trials), n
        assert trial_store.budget_used(trials) == config.max_trials, n
        if trained:
            break
    assert kills >= 5


def test_marking_an_interruption_is_idempotent(tmp_path):
    """A recovery killed halfway (retry queued, trial still RUNNING) queues no second retry."""
    config = make_config(tmp_path)
    study = start(config)
    owner = {"host": socket.gethostname(), "pid": dead_pid(), "start": None, "worker": "old"}
    number = plant_running_trial(
        study, config, space_lib.published_cell(), owner=owner, heartbeat=time.time()
    )
    frozen = study._storage.get_trial(study.get_trials()[number]._trial_id)
    trial_store._enqueue(study, frozen.params, {"retry_of": number})  # the first, interrupted recovery
    with trial_store.FileLock(config.lock_path):
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == [(number, 1)]
    assert len(study.get_trials()) == 2


def test_journal_storage_runs_a_search(tmp_path, objective_log):
    config = make_config(tmp_path, storage=str(tmp_path / "study.log"), max_trials=4)
    study = start(config)
    run_worker(config, "w")
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 4
    assert config.storage.startswith("journal:")



def test_the_journals_lock_is_freed_when_its_holder_is_killed_and_excludes_threads(tmp_path):
    import fcntl  # noqa: PLC0415

    journal = str(tmp_path / "study.log")
    lock = trial_store.JournalLock(journal)

    def free_now():
        fd = os.open(lock.path, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    # A writer process takes the lock and is killed while it holds it (SIGKILL mid-append).
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from deeplab_dpc.nas.trial_store import JournalLock; "
            f"JournalLock({journal!r}).acquire(); print('held', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    assert not free_now()
    holder.kill()
    holder.wait()
    assert free_now()  # at once: no lock file left behind to wait out
    # Two threads of one process exclude each other (each holds its own open file).
    lock.acquire()
    assert not free_now()
    lock.release()
    assert free_now()


# --------------------------------------------------------------------------- pruning


def test_the_median_pruner_stops_trials_below_the_median_and_they_count_once(tmp_path, objective_log):
    # The fake curves end where their steps point (score * step / 4): the median pruner stops a trial at
    # a step where its score is below the median of the completed trials' scores at that step.
    config = make_config(
        tmp_path, objective="tests.nas.fakes:curves", max_trials=20, pruner="median", pruner_startup_trials=3,
        mutation_probability=0.0,
    )
    study = start(config)
    report = run_worker(config, "w")
    trials = [t for t in study.get_trials() if not trial_store.is_duplicate(t)]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(trials) == 20 and report.pruned == len(pruned) and report.trained == len(complete)
    assert 3 <= len(pruned) <= 17
    for t in pruned:
        step = t.user_attrs["pruned_at_step"]
        assert max(t.intermediate_values) == step and t.value == pytest.approx(t.intermediate_values[step])
        earlier = [u.intermediate_values[step] for u in complete if u.datetime_complete < t.datetime_complete]
        assert len(earlier) >= 3 and t.value < np.median(earlier)
    assert all(t.number >= 3 for t in pruned)  # n_startup_trials
    for t in complete:
        assert sorted(t.intermediate_values) == [1, 2, 3] and t.value == pytest.approx(fakes.score(
            space_lib.params_to_spec(t.params, config.space)))
    # Every cell trained once (pruned ones partly); the budget counted each once.
    assert len(trained_hashes(objective_log)) == 20 == trial_store.budget_used(study.get_trials())


def test_a_duplicate_of_a_pruned_graph_is_pruned_without_training(tmp_path, objective_log):
    config = make_config(
        tmp_path, objective="tests.nas.fakes:curves", num_branches=1, max_trials=40, pruner="median",
        pruner_startup_trials=2,
    )
    study = start(config)
    run_worker(config, "w")
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    copies = [t for t in trials if trial_store.is_duplicate(t) and t.state == TrialState.PRUNED]
    assert copies
    for t in copies:
        original = by_number[t.user_attrs["duplicate_of"]]
        assert original.state == TrialState.PRUNED and t.value == original.value
        assert t.intermediate_values == original.intermediate_values
    trained = trained_hashes(objective_log)
    assert len(trained) == len(set(trained)) == 40


def test_a_pruner_needs_an_objective_that_reports(tmp_path):
    config = make_config(tmp_path, pruner="median")
    start(config)
    with pytest.raises(WorkerSetupError, match="pruner=median needs intermediate scores.*report="):
        run_worker(config, "w")


@pytest.mark.parametrize("pruner, kind", [("none", "NopPruner"), ("median", "MedianPruner"),
                                          ("sha", "SuccessiveHalvingPruner"), ("hyperband", "HyperbandPruner")])
def test_the_study_uses_the_configured_pruner(tmp_path, pruner, kind):
    config = make_config(tmp_path, pruner=pruner)
    assert type(config.make_pruner()).__name__ == kind
    assert type(start(config).pruner).__name__ == kind


# --------------------------------------------------------------------------- two objectives


def test_nsga2_searches_miou_and_cost_as_two_objectives(tmp_path, objective_log):
    config = make_config(
        tmp_path, strategy="nsga2", cost_metric="latency_ms", objective="tests.nas.fakes:costly",
        num_branches=1, max_trials=30, population_size=6,
    )
    assert config.directions == ["maximize", "minimize"]
    study = start(config)
    run_worker(config, "w")
    trials = study.get_trials()
    by_number = {t.number: t for t in trials}
    assert sum(not trial_store.is_duplicate(t) for t in trials) == 30
    for t in trials:
        spec = space_lib.params_to_spec(t.params, config.space)
        assert t.state == TrialState.COMPLETE
        assert t.values == pytest.approx([fakes.score(spec), fakes.latency(spec)])
        if trial_store.is_duplicate(t):
            assert t.values == by_number[t.user_attrs["duplicate_of"]].values
        assert trial_store.trial_score(t) == t.values[0]
    front = {t.number for t in study.best_trials}
    assert len(front) >= 2
    for t in trials:  # no completed cell dominates a cell of the front
        if t.number in front:
            assert not any(
                u.values[0] >= t.values[0] and u.values[1] <= t.values[1] and u.values != t.values for u in trials
            )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(strategy="nsga2"), r"^strategy=nsga2 searches two objectives, proxy mIoU and a cost: set cost_metric"),
        (dict(strategy="nsga2", cost_metric="madds", pruner="median"), r"^pruner=median: Optuna's pruners take one"),
        (dict(cost_metric="latency_ms"), r"^cost_target=None must be positive with cost_metric=latency_ms"),
    ],
)
def test_two_objective_config_errors_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


# --------------------------------------------------------------------------- several cells per program


def test_a_worker_trains_several_cells_per_program_each_recorded_as_its_own_trial(
    tmp_path, objective_log, monkeypatch
):
    groups = tmp_path / "groups.log"
    monkeypatch.setenv("FAKE_GROUP_LOG", str(groups))
    config = make_config(tmp_path, objective="tests.nas.fakes:grouped", max_trials=11, cells_per_worker=4)
    study = start(config)
    report = run_worker(config, "w")
    trials = study.get_trials()
    trained = [t for t in trials if not trial_store.is_duplicate(t)]
    assert trial_store.budget_used(trials) == 11 and report.stopped_because == "max_trials reached"
    sizes = [int(line) for line in groups.read_text().split()]
    assert sum(sizes) == len(trained) == 11 and max(sizes) == 4 and sizes[-1] == 11 - 4 * (len(sizes) - 1)
    for t in trained:  # each as it would score alone, or failed with its own error
        spec = space_lib.params_to_spec(t.params, config.space)
        if fakes.fails(spec):
            assert t.state == TrialState.FAIL and t.user_attrs["error"] == "FakeNaN: loss became NaN at step 3"
        else:
            assert t.state == TrialState.COMPLETE and t.value == pytest.approx(fakes.score(spec))
            assert t.user_attrs["result_group_size"] in sizes
    assert sorted(trained_hashes(objective_log)) == sorted(t.user_attrs["graph_hash"] for t in trained)


def test_a_group_stopped_midway_leaves_each_of_its_trials_to_be_retried_once(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_GROUP_INTERRUPT", "2")
    config = make_config(tmp_path, objective="tests.nas.fakes:grouped", max_trials=6, cells_per_worker=3)
    study = start(config)
    with pytest.raises(KeyboardInterrupt):
        run_worker(config, "w")
    trials = study.get_trials()
    interrupted = [t for t in trials if "interrupted" in t.user_attrs]
    retries = [t for t in trials if t.state == TrialState.WAITING]
    assert len(interrupted) == 3 and all(t.state == TrialState.FAIL for t in interrupted)
    assert sorted(t.user_attrs["retry_of"] for t in retries) == sorted(t.number for t in interrupted)
    monkeypatch.delenv("FAKE_GROUP_INTERRUPT")
    run_worker(config, "w")  # the retries train; the budget counts each once
    trials = study.get_trials()
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in trials)
    assert trial_store.budget_used(trials) == 6
    assert all(t.state != TrialState.WAITING for t in trials)


def test_several_cells_per_program_need_an_objective_that_groups_and_take_no_pruner(tmp_path):
    config = make_config(tmp_path, cells_per_worker=2)  # tests.nas.fakes:deterministic has no group
    start(config)
    with pytest.raises(WorkerSetupError, match="cells_per_worker=2 needs an objective"):
        run_worker(config, "w")
    with pytest.raises(ValueError, match="cells_per_worker=2 .* no pruner"):
        make_config(tmp_path, cells_per_worker=2, pruner="median", proxy={"eval_interval": 10})
    with pytest.raises(ValueError, match="cells_per_worker must be a positive integer"):
        make_config(tmp_path, cells_per_worker=0)
