"""Executors: many worker processes share one study; a dead worker's trial is retried; Ray tasks.

Workers are real processes (multiprocessing spawn, Ray tasks) running the fake objectives of
``tests/nas/fakes.py``, which log every training so a test counts them across processes.
"""

import io
import os
import signal
import threading
import time

import pytest
from optuna.trial import TrialState

from deeplab_dpc.nas import executors
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import SearchConfig


def make_config(tmp_path, **overrides):
    values = dict(
        search_dir=str(tmp_path / "search"), objective="tests.nas.fakes:deterministic", max_trials=8
    )
    values.update(overrides)
    return SearchConfig(**values)


@pytest.fixture
def objective_log(tmp_path, monkeypatch):
    path = str(tmp_path / "trained.log")
    monkeypatch.setenv("FAKE_OBJECTIVE_LOG", path)
    return path


def trained_hashes(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


def check_every_graph_trained_once(config, objective_log):
    """Every trial finished; originals = the budget, each graph trained exactly once."""
    study = study_lib.load_study(config)
    trials = study.get_trials()
    assert not [t.number for t in trials if not t.state.is_finished()]
    assert [t.number for t in trials] == list(range(len(trials)))
    originals = [t for t in trials if trial_store.counts_toward_budget(t)]
    assert len(originals) == config.max_trials
    trained = trained_hashes(objective_log)
    assert len(trained) == len(set(trained))
    assert sorted(trained) == sorted(
        t.user_attrs["graph_hash"] for t in originals if t.state == TrialState.COMPLETE
    )
    return trials


def test_eight_workers_lose_and_duplicate_no_trial(tmp_path, objective_log):
    # One branch (81 cells) and mutations of the top 2: workers often propose the same graph at once.
    config = make_config(
        tmp_path, num_branches=1, max_trials=24, num_workers=8, mutation_probability=0.8, mutation_top_k=2
    )
    out = io.StringIO()
    summary = executors.run_search(config, stream=out, poll_seconds=0.2)
    trials = check_every_graph_trained_once(config, objective_log)
    duplicates = [t for t in trials if trial_store.is_duplicate(t)]
    assert summary["completed"] == 24 and summary["duplicates"] == len(duplicates) > 0
    # Owners: the trials were spread over several worker processes.
    workers = {
        study_lib.load_study(config)._storage.get_trial(t._trial_id).system_attrs[trial_store.OWNER]["pid"]
        for t in trials
    }
    assert len(workers) > 1
    # One console line per finished trial, and a TensorBoard run per original.
    text = out.getvalue()
    for t in trials:
        assert text.count(f"trial {t.number} done:") + text.count(f"trial {t.number} duplicate of") == 1
    runs = sorted(os.listdir(config.tensorboard_dir))
    assert [r for r in runs if r.startswith("trial_")] == sorted(
        f"trial_{t.number:05d}" for t in trials if not trial_store.is_duplicate(t)
    )
    assert "optuna-dashboard sqlite:///" in text


def test_workers_that_prefilter_train_the_budget_and_no_more(tmp_path, objective_log):
    # Three workers claim groups of three proposals at once; each group counts once toward max_trials.
    config = make_config(
        tmp_path,
        objective="tests.nas.fakes:scored",
        max_trials=6,
        num_workers=3,
        prefilter="naswot",
        prefilter_ratio=3,
        zero_cost_scores="all",
    )
    out = io.StringIO()
    summary = executors.run_search(config, stream=out, poll_seconds=0.2)
    trials = check_every_graph_trained_once(config, objective_log)
    prefiltered = [t for t in trials if trial_store.is_prefiltered(t)]
    assert summary["completed"] == 6 and summary["prefiltered"] == len(prefiltered) == 12
    text = out.getvalue()
    for t in prefiltered:
        assert f"trial {t.number} pre-filtered (naswot " in text
    # TensorBoard: a run per trained trial, none for a proposal that never trained.
    runs = [r for r in os.listdir(config.tensorboard_dir) if r.startswith("trial_")]
    assert len(runs) == len(trials) - len(prefiltered) - sum(trial_store.is_duplicate(t) for t in trials)
    assert "12 pre-filtered]" in text


def test_a_killed_worker_is_replaced_and_its_trial_retried_once(tmp_path, objective_log, monkeypatch):
    monkeypatch.setenv("FAKE_OBJECTIVE_SLEEP", "2")
    config = make_config(tmp_path, objective="tests.nas.fakes:sleepy", max_trials=4, num_workers=2)
    out = io.StringIO()
    result = {}
    thread = threading.Thread(
        target=lambda: result.update(executors.run_search(config, stream=out, poll_seconds=0.2))
    )
    thread.start()
    victim = None
    deadline = time.time() + 60
    while victim is None and time.time() < deadline:
        time.sleep(0.2)
        if not os.path.isdir(os.path.join(config.search_dir, "workers")):
            continue  # The study is created before the workers start.
        study = study_lib.load_study(config)
        for t in trial_store.all_trials(study, states=(TrialState.RUNNING,)):
            if "graph_hash" in t.user_attrs and trial_store.OWNER in t.system_attrs:
                victim = t
                break
    assert victim is not None, "no trial started"
    os.kill(victim.system_attrs[trial_store.OWNER]["pid"], signal.SIGKILL)
    thread.join(timeout=120)
    assert not thread.is_alive()
    trials = check_every_graph_trained_once(config, objective_log)
    killed = trials[victim.number]
    assert killed.state == TrialState.FAIL and "died" in killed.user_attrs["interrupted"]
    retry = trials[killed.user_attrs["retried_as"]]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == victim.number
    assert retry.params == killed.params
    assert f"trial {victim.number} was interrupted; retried as trial {retry.number}" in out.getvalue()
    assert result["interrupted"] == 1


def test_a_worker_that_cannot_build_its_objective_stops_the_search(tmp_path):
    config = make_config(tmp_path, objective="tests.nas.fakes:broken_factory", num_workers=2)
    with pytest.raises(executors.SearchError, match="could not build its objective(.|\n)*has no features"):
        executors.run_search(config, stream=io.StringIO(), poll_seconds=0.2)
    assert study_lib.load_study(config).get_trials() == []


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("No module named 'ray'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(executors.SearchError, match=r"pip install -e \.\[ray\]"):
        executors.RayExecutor(make_config(tmp_path, executor="ray"), "driver", None)


@pytest.mark.slow
def test_ray_executor_completes_trials_and_retries_a_lost_task(tmp_path, objective_log):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e .[ray])")
    env = {"PYTHONPATH": os.getcwd(), "FAKE_OBJECTIVE_LOG": objective_log, "FAKE_OBJECTIVE_SLEEP": "1.5"}
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    config = make_config(
        tmp_path,
        objective="tests.nas.fakes:sleepy",
        executor="ray",
        num_workers=2,
        max_trials=5,
        enqueue_published=True,
    )
    out, result = io.StringIO(), {}
    thread = threading.Thread(
        target=lambda: result.update(executors.run_search(config, stream=out, poll_seconds=0.2))
    )
    try:
        thread.start()
        victim, deadline = None, time.time() + 120
        while victim is None and time.time() < deadline:
            time.sleep(0.2)
            if "optuna-dashboard" not in out.getvalue():
                continue  # printed once the study exists
            for t in trial_store.all_trials(study_lib.load_study(config), states=(TrialState.RUNNING,)):
                if len(t.params) == 10 and trial_store.OWNER in t.system_attrs:  # training
                    victim = t
                    break
        assert victim is not None, "no trial started"
        assert ":ray-" in victim.system_attrs[trial_store.OWNER]["worker"]
        os.kill(victim.system_attrs[trial_store.OWNER]["pid"], signal.SIGKILL)  # a lost Ray worker
        thread.join(timeout=180)
    finally:
        ray.shutdown()
    assert not thread.is_alive()
    trials = check_every_graph_trained_once(config, objective_log)
    assert result["completed"] == 5 and result["interrupted"] == 1
    assert trials[0].user_attrs["reference"] == "published_cityscapes"
    killed = trials[victim.number]
    retry = trials[killed.user_attrs["retried_as"]]
    assert retry.state == TrialState.COMPLETE and retry.params == killed.params


def test_local_workers_share_the_cores_without_overriding_the_user(monkeypatch):
    assert [executors.cpu_threads_per_worker(n, cpus=2) for n in (1, 2, 3)] == [2, 1, 1]
    assert executors.cpu_threads_per_worker(2, cpus=16) == 8
    monkeypatch.delenv("TF_NUM_INTRAOP_THREADS", raising=False)
    monkeypatch.setenv("TF_NUM_INTEROP_THREADS", "3")  # the user's own setting
    executors._share_cpu_threads(1)
    assert "TF_NUM_INTRAOP_THREADS" not in os.environ  # one worker: TensorFlow's default
    executors._share_cpu_threads(os.cpu_count() or 1)
    assert os.environ["TF_NUM_INTRAOP_THREADS"] == "1"
    assert os.environ["TF_NUM_INTEROP_THREADS"] == "3"
