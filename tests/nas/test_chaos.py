"""Chaos: a search of 8 local workers whose driver and workers are killed with SIGKILL at random
times, then run to completion; every trial is done exactly once, on the journal and on SQLite.

The search runs as a user runs it (``python -m deeplab_dpc.search``) with the fake ``sleepy``
objective of ``tests/nas/fakes.py``, which logs every training. A seeded monkey kills, at random
intervals, either a random worker (the driver goes on and replaces it) or the driver (its workers die
with it; the monkey starts the search again, as a user or a job scheduler would). After the chaos
the search is run once more, untouched, to its end, and the storage is read back:

* the storage is whole (SQLite's integrity check; every journal line is a complete record),
* every trial is finished and the trials are numbered without a gap,
* exactly ``max_trials`` trials count toward the budget, each a different cell,
* every counted trial is COMPLETE, except a cell whose worker the monkey killed twice while the
  search ran (recorded as failed, "its worker died twice"): a kill of the driver never costs a cell,
* every interrupted trial names its retry, which has its parameters and names it back,
* every completed cell was trained, and trained again only as often as it was interrupted.

The short form (40 trials, 25 s of chaos, about 40 s on 2 cores) runs in the default test run on
SQLite, the default storage, and with ``--runslow`` on the journal too; the long form (``--runslow``)
runs 200 trials through 2 minutes of chaos on both.
"""

from __future__ import annotations

import collections
import json
import os
import random
import signal
import sqlite3
import subprocess
import time

import pytest
from optuna.trial import TrialState

from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import SearchConfig
from tests.nas import fakes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def worker_pids(driver_pid):
    """The driver's worker processes (its spawned children; not multiprocessing's resource tracker)."""
    try:
        with open(f"/proc/{driver_pid}/task/{driver_pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return []
    workers = []
    for pid in children:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"spawn_main" in f.read():
                    workers.append(pid)
        except OSError:
            pass
    return workers


def unleash_the_monkey(command, env, log_dir, *, seconds, seed, driver_share=0.25):
    """Runs the search under random SIGKILLs for ``seconds``. Returns the pids of the workers it
    killed while their driver ran, and how many drivers it killed."""
    rng = random.Random(seed)
    killed_workers, drivers_killed, starts = set(), 0, 0

    def start():
        nonlocal starts
        starts += 1
        with open(log_dir / f"driver_{starts}.txt", "w") as out:
            return subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)

    driver = start()
    end = time.time() + seconds
    while time.time() < end:
        time.sleep(rng.uniform(0.5, 3.0))
        if driver.poll() is not None:
            assert driver.returncode == 0, (log_dir / f"driver_{starts}.txt").read_text()
            break  # The search ended within the chaos.
        if rng.random() < driver_share:
            driver.send_signal(signal.SIGKILL)
            driver.wait()
            drivers_killed += 1
            time.sleep(rng.uniform(0.0, 1.0))
            driver = start()
            continue
        workers = worker_pids(driver.pid)
        if workers:
            victim = rng.choice(workers)
            os.kill(victim, signal.SIGKILL)
            killed_workers.add(victim)
    if driver.poll() is None:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        drivers_killed += 1
    return killed_workers, drivers_killed


def check_storage_is_whole(storage_url):
    if storage_url.startswith("sqlite:///"):
        with sqlite3.connect(storage_url[len("sqlite:///") :]) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    else:
        with open(storage_url[len("journal:") :], "rb") as f:
            for number, line in enumerate(f):
                assert line.endswith(b"\n"), f"journal line {number} is cut short"
                json.loads(line)


def check_every_trial_done_once(config, trained_log, killed_workers):
    check_storage_is_whole(config.storage)
    trials = trial_store.all_trials(study_lib.load_study(config))
    by_number = {t.number: t for t in trials}
    assert sorted(by_number) == list(range(len(trials)))
    assert all(t.state.is_finished() for t in trials), [t.number for t in trials if not t.state.is_finished()]
    counted = [t for t in trials if trial_store.counts_toward_budget(t)]
    assert len(counted) == config.max_trials
    hashes = [t.user_attrs["graph_hash"] for t in counted]
    assert len(set(hashes)) == len(hashes), "a cell counted twice"

    def params(t):  # a trial killed before it suggested its parameters has them as queued
        return {**t.system_attrs.get("fixed_params", {}), **t.params}

    def owner_pid(t):
        return (t.system_attrs.get(trial_store.OWNER) or {}).get("pid")

    def chain(t):  # the trial and the attempts it retries, newest first
        while t is not None:
            yield t
            previous = t.user_attrs.get(trial_store.RETRY_OF)
            t = by_number[previous] if previous is not None else None

    interrupted = [t for t in trials if trial_store.is_interrupted(t)]
    for t in counted:
        if t.state == TrialState.COMPLETE:
            continue
        # Only a cell whose worker the monkey killed twice while the search ran may fail.
        assert t.state == TrialState.FAIL and "its worker died twice" in t.user_attrs["error"], (
            t.number,
            t.state,
            t.user_attrs.get("error"),
        )
        killed_in_chain = [a for a in chain(t) if owner_pid(a) in killed_workers]
        assert len(killed_in_chain) >= 2, (t.number, [a.user_attrs.get("interrupted") for a in chain(t)])
    for t in interrupted:
        retry = t.user_attrs.get(trial_store.RETRIED_AS)
        if retry is None:  # killed before it had its parameters (or a duplicate): it trained nothing
            assert "nothing to retry" in t.user_attrs["error"], t.user_attrs["error"]
            continue
        assert by_number[retry].user_attrs[trial_store.RETRY_OF] == t.number
        assert params(by_number[retry]) == params(t)
    trained = collections.Counter(line.split()[0] for line in trained_log.read_text().splitlines() if line.strip())
    # Every completed cell trained; a cell trains again only after an attempt at it was interrupted.
    completed = {t.user_attrs["graph_hash"] for t in counted if t.state == TrialState.COMPLETE}
    assert completed <= set(trained)
    attempts = collections.Counter(t.user_attrs.get("graph_hash") for t in interrupted)
    for graph_hash, times in trained.items():
        assert graph_hash in hashes, "trained a cell no counted trial holds"
        assert times <= 1 + attempts[graph_hash], (graph_hash, times, attempts[graph_hash])
    return trials


def run_chaos(tmp_path, storage, *, max_trials, seconds, seed):
    search_dir = tmp_path / "search"
    trained_log = tmp_path / "trained.log"
    env = dict(os.environ, FAKE_OBJECTIVE_LOG=str(trained_log), FAKE_OBJECTIVE_SLEEP="2", PYTHONPATH=REPO)
    if storage == "journal":
        storage = f"journal:{tmp_path / 'journal.log'}"
    command = fakes.search_command(
        search_dir,
        f"--max_trials={max_trials}",
        "--num_workers=8",
        "--num_branches=3",
        "--heartbeat_seconds=1",
        "--grace_seconds=10",
        *([f"--storage={storage}"] if storage else []),
    )
    killed_workers, drivers_killed = unleash_the_monkey(command, env, tmp_path, seconds=seconds, seed=seed)
    # Then the search once more, untouched, to its end.
    last = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert last.returncode == 0, last.stderr[-4000:]
    config = SearchConfig(search_dir=str(search_dir), num_branches=3, storage=storage, max_trials=max_trials)
    trials = check_every_trial_done_once(config, trained_log, killed_workers)
    # The monkey did land blows: workers killed mid-trial and at least one driver.
    assert killed_workers and drivers_killed >= 1
    assert any(trial_store.is_interrupted(t) for t in trials)
    return trials


@pytest.mark.parametrize(
    "storage",
    [pytest.param("journal", marks=pytest.mark.slow), None],  # SQLite, the default, in every test run
    ids=["journal", "sqlite"],
)
def test_a_search_whose_driver_and_workers_are_killed_at_random_does_every_trial_once(tmp_path, storage):
    run_chaos(tmp_path, storage, max_trials=40, seconds=25, seed=1)


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["journal", None], ids=["journal", "sqlite"])
@pytest.mark.parametrize("seed", [2, 3])
def test_a_long_chaos_search_does_every_trial_once(tmp_path, storage, seed):
    run_chaos(tmp_path, storage, max_trials=200, seconds=120, seed=seed)
