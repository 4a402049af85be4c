"""``python -m deeplab_dpc.search``: flags, errors naming flags, and kill -9 then restart."""

import json
import os
import signal
import subprocess
import time

import pytest
from absl import app, flags
from optuna.trial import TrialState

from deeplab_dpc import search
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas import zero_cost
from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir
from tests.nas import fakes

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse(*argv):
    fv = flags.FlagValues()
    search.define_flags(fv)
    fv(["search", *argv])
    return fv


def test_flags_become_the_search_config(tmp_path):
    fv = parse(
        f"--search_dir={tmp_path}",
        "--strategy=evolution",
        "--max_trials=7",
        "--max_hours=1.5",
        "--num_branches=4",
        "--population_size=8",
        "--sample_size=3",
        "--num_workers=2",
        "--seed=3",
        "--objective=tests.nas.fakes:deterministic",
        "--proxy_steps=300",
        "--proxy_batch_size=8",
        "--proxy_learning_rate=0.05",
        "--proxy_loss_resolution=features",
        "--cells_per_worker=3",
        "--cache_dir=/data/features",
    )
    config = search.config_from_flags(fv)
    assert config.cells_per_worker == 3
    assert (config.strategy, config.max_trials, config.max_hours, config.num_branches) == (
        "evolution",
        7,
        1.5,
        4,
    )
    assert (config.population_size, config.sample_size, config.num_workers, config.seed) == (8, 3, 2, 3)
    assert config.storage == f"sqlite:///{tmp_path}/study.db"
    # Proxy flags pass through under the proxy trainer's field names, with the seed.
    assert config.proxy == {
        "proxy_steps": 300,
        "batch_size": 8,
        "learning_rate": 0.05,
        "loss_resolution": "features",
        "cache_dir": "/data/features",
        "seed": 3,
    }


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--search_dir is required"),
        (
            ["--search_dir=/tmp/x", "--strategy=grid"],
            r"--strategy='grid' unknown; valid strategies: \['evolution'",
        ),
        (["--search_dir=/tmp/x", "--executor=slurm"], r"--executor='slurm' unknown"),
        (["--search_dir=/tmp/x", "--population_size=4", "--sample_size=5"], "--sample_size must be at most"),
        (
            ["--search_dir=/tmp/x", "--num_branches=3", "--enqueue_published"],
            "--enqueue_published needs num_branches=5",
        ),
        (["--search_dir=/tmp/x", "--storage=/tmp/x/db"], "--storage='/tmp/x/db' is neither"),
        (["--search_dir=/tmp/x", "--max_trials=0"], "--max_trials must be a positive integer"),
    ],
)
def test_usage_errors_name_the_flag(argv, message):
    fv = parse(*argv, "--objective=tests.nas.fakes:deterministic")
    with pytest.raises(app.UsageError, match=message):
        search.config_from_flags(fv)


def test_the_default_objective_needs_the_feature_cache(tmp_path):
    with pytest.raises(app.UsageError, match="--cache_dir is required"):
        search.config_from_flags(parse(f"--search_dir={tmp_path}"))


def test_the_search_names_the_proxy_trainers_flags_as_proxy_train_does():
    """One rule for both commands: a ProxyConfig field is --proxy_<field> (--cache_dir and --seed as they are)."""
    from deeplab_dpc import proxy_train

    for flag, field in search.PROXY_FLAGS.items():
        assert proxy_train.FIELD_TO_FLAG[field] == flag
    fv = flags.FlagValues()
    proxy_train.define_flags(fv)
    assert set(search.PROXY_FLAGS) | {"seed"} <= set(fv)


def test_proxy_flags_are_checked_by_the_proxy_trainer_naming_the_flag(tmp_path):
    pytest.importorskip("deeplab_dpc.nas.proxy", reason="the proxy trainer is not in this checkout")
    with pytest.raises(app.UsageError, match="^--cache_dir=/nonexistent/features is not a folder"):
        search.config_from_flags(parse(f"--search_dir={tmp_path}", "--cache_dir=/nonexistent/features"))
    with pytest.raises(app.UsageError, match="^--proxy_batch_size=0 must be a positive integer"):
        search.config_from_flags(
            parse(f"--search_dir={tmp_path}", f"--cache_dir={tmp_path}", "--proxy_batch_size=0")
        )
    config = search.config_from_flags(
        parse(f"--search_dir={tmp_path}", f"--cache_dir={tmp_path}", "--proxy_steps=50")
    )
    # The resolved proxy config (its defaults included) is part of the search config.
    assert config.proxy["proxy_steps"] == 50 and config.proxy["cache_dir"] == str(tmp_path)
    assert {"batch_size", "learning_rate", "proxy_filters", "seed"} <= set(config.proxy)


def test_a_search_dir_started_with_other_flags_is_refused_naming_the_flag(tmp_path):
    common = [f"--search_dir={tmp_path}", "--objective=tests.nas.fakes:deterministic", "--proxy_steps=300"]
    prepare_search_dir(search.config_from_flags(parse(*common)))
    with pytest.raises(app.UsageError, match=r"^--strategy='tpe' differs from 'random'"):
        search.run(search.config_from_flags(parse(*common, "--strategy=tpe")))
    with pytest.raises(app.UsageError, match=r"^--proxy_steps=100 differs from 300"):
        search.run(
            search.config_from_flags(
                parse(*[a for a in common if "proxy_steps" not in a], "--proxy_steps=100")
            )
        )
    with pytest.raises(app.UsageError, match=r"^--seed=1 differs from 0"):
        search.run(search.config_from_flags(parse(*common, "--seed=1")))


def test_prefilter_flags_become_the_search_config_and_bad_ones_are_refused_naming_the_flag(tmp_path):
    common = [f"--search_dir={tmp_path}", "--objective=tests.nas.fakes:scored"]
    config = search.config_from_flags(parse(*common, "--prefilter=snip", "--prefilter_ratio=4"))
    assert (config.prefilter, config.prefilter_ratio) == ("snip", 4)
    assert config.zero_cost_scores[0] == "snip" and set(config.zero_cost_scores) == set(zero_cost.SCORES)
    config = search.config_from_flags(parse(*common, "--zero_cost_scores=zico, synflow"))
    assert (config.prefilter, config.prefilter_ratio, config.zero_cost_scores) == (None, 1, ("zico", "synflow"))
    assert search.config_from_flags(parse(*common)).zero_cost_scores == ()
    valid = r"valid: \['grad_norm', 'naswot', 'snip', 'synflow', 'zico'\]"
    for argv, message in [
        (
            ["--prefilter=jacov", "--prefilter_ratio=2"],
            rf"^--prefilter='jacov': unknown zero-cost score 'jacov'; {valid}",
        ),
        (
            ["--zero_cost_scores=synflow,jacov"],
            rf"^--zero_cost_scores='synflow,jacov': unknown zero-cost score 'jacov'; {valid}",
        ),
        (["--prefilter_ratio=3"], r"^--prefilter_ratio=3 needs prefilter"),
        (["--prefilter=synflow"], r"^--prefilter_ratio=1 with prefilter=synflow filters nothing"),
    ]:
        with pytest.raises(app.UsageError, match=message):
            search.config_from_flags(parse(*common, *argv))
    # A search continued with other pre-filter settings is refused; its recorded scores may change.
    first = [*common, "--prefilter=synflow", "--prefilter_ratio=3"]
    prepare_search_dir(search.config_from_flags(parse(*first)))
    with pytest.raises(app.UsageError, match=r"^--prefilter_ratio=2 differs from 3"):
        search.run(search.config_from_flags(parse(*common, "--prefilter=synflow", "--prefilter_ratio=2")))
    with pytest.raises(app.UsageError, match=r"^--prefilter=None differs from 'synflow'"):
        search.run(search.config_from_flags(parse(*common)))
    prepare_search_dir(search.config_from_flags(parse(*first, "--zero_cost_scores=all")))


def search_command(search_dir, *extra):
    return fakes.search_command(
        search_dir,
        "--max_trials=6",
        "--num_workers=2",
        "--num_branches=2",
        "--heartbeat_seconds=1",
        "--grace_seconds=4",
        *extra,
    )


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_search_killed_with_sigkill_continues_where_it_stopped(tmp_path):
    search_dir = tmp_path / "search"
    log = tmp_path / "trained.log"
    env = dict(os.environ, FAKE_OBJECTIVE_LOG=str(log), FAKE_OBJECTIVE_SLEEP="3", PYTHONPATH=REPO)
    output = open(tmp_path / "first.txt", "w+")
    first = subprocess.Popen(
        search_command(search_dir), cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT
    )
    config = SearchConfig(search_dir=str(search_dir), num_branches=2)
    deadline = time.time() + 180
    while not (search_dir / "workers").is_dir() and time.time() < deadline:  # the study exists then
        assert first.poll() is None, (tmp_path / "first.txt").read_text()
        time.sleep(0.2)
    study = study_lib.load_study(config)
    # Kill the driver once a trial has finished and another is training.
    running = []
    while time.time() < deadline and first.poll() is None:
        trials = trial_store.all_trials(study)
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        running = [t for t in trials if t.state == TrialState.RUNNING and "graph_hash" in t.user_attrs]
        if done and running:
            break
        time.sleep(0.2)
    assert running and first.poll() is None, "no trial was training: " + (tmp_path / "first.txt").read_text()
    first.send_signal(signal.SIGKILL)
    first.wait()
    # What was training when the kill landed (a trial seen running above may have finished since).
    running = [
        t
        for t in trial_store.all_trials(study_lib.load_study(config))
        if t.state == TrialState.RUNNING and "graph_hash" in t.user_attrs
    ]
    assert running, "the kill landed between trials: " + (tmp_path / "first.txt").read_text()
    # Its workers die with it (no orphan keeps training). A trial is its worker's from the write that
    # made it RUNNING (a kill mid-claim included); only a queued one (WAITING) may name none.
    trials = trial_store.all_trials(study_lib.load_study(config))
    assert all(trial_store.OWNER in t.system_attrs for t in trials if t.state != TrialState.WAITING)
    workers = {t.system_attrs[trial_store.OWNER]["pid"] for t in trials if trial_store.OWNER in t.system_attrs}
    end = time.time() + 10
    while any(pid_alive(p) for p in workers) and time.time() < end:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in workers)
    trained_before = len(log.read_text().splitlines())

    second = subprocess.run(
        search_command(search_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr
    trials = trial_store.all_trials(study_lib.load_study(config))
    assert all(t.state.is_finished() for t in trials)
    originals = [t for t in trials if trial_store.counts_toward_budget(t)]
    assert len(originals) == 6 and all(t.state == TrialState.COMPLETE for t in originals)
    trained = log.read_text().split()[::2]
    assert len(set(trained)) == 6 > trained_before
    assert set(trained) == {t.user_attrs["graph_hash"] for t in originals}
    # Trained once each, except a cell whose training ended just before the kill but whose result the
    # kill stopped from being recorded: it was RUNNING at the kill, and it trains once more (once).
    before, after = trained[:trained_before], trained[trained_before:]
    assert len(after) == len(set(after)) and len(before) == len(set(before))
    assert set(before) & set(after) <= {t.user_attrs["graph_hash"] for t in running}
    interrupted = [t for t in trials if trial_store.is_interrupted(t)]
    assert {t.number for t in interrupted} >= {t.number for t in running}
    by_number = {t.number: t for t in trials}
    for t in interrupted:
        if trial_store.RETRIED_AS not in t.user_attrs:  # killed while proposed (or a duplicate): nothing trained
            assert "nothing to retry" in t.user_attrs["error"] and t.number not in {r.number for r in running}
            continue
        retry = by_number[t.user_attrs["retried_as"]]
        assert retry.state == TrialState.COMPLETE and retry.user_attrs["retry_of"] == t.number
        assert retry.params == t.params
        assert f"trial {t.number} was interrupted; retried as trial {retry.number}" in second.stderr
    # A third run has nothing left to do and trains nothing (the log holds 7 trainings when one cell
    # trained twice, as above).
    third = subprocess.run(
        search_command(search_dir), cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert third.returncode == 0, third.stderr
    assert log.read_text().split()[::2] == trained
    assert "best proxy mIoU" in third.stderr
    with open(search_dir / "best_proxy_cell.json") as f:
        assert len(json.load(f)) == 2


def test_a_stage2_flagfile_becomes_the_two_stage_config(tmp_path):
    data = tmp_path / "tfrecord"
    data.mkdir()
    flagfile = tmp_path / "stage2.flags"
    flagfile.write_text(
        "\n".join([
            "--top_k=5",  # a re-ranking flagfile works unchanged: rerank's own flags are accepted
            "--model_variant=mobilenet_v2", "--dataset=camvid", f"--dataset_dir={data}",
            "--train_crop_size=65,65", "--training_number_of_steps=7", "--eval_crop_size=97,129",
            "--dense_prediction_cell_json=ignored.json",
        ]) + "\n"
    )
    search_dir = tmp_path / "s"
    fv = parse(f"--search_dir={search_dir}", "--objective=tests.nas.fakes:deterministic",
               f"--stage2_flagfile={flagfile}", "--stage2_probability=0.6", "--stage2_probability_decay=0.9")
    config = search.config_from_flags(fv)
    stage2 = config.stage2
    assert (stage2["initial_probability"], stage2["decay"], stage2["eval_crop_size"]) == (0.6, 0.9, [97, 129])
    assert stage2["train"]["training_number_of_steps"] == 7
    assert stage2["train"]["train_logdir"] == os.path.join(str(search_dir), "stage2")
    assert stage2["train"]["model"]["context"] == "dpc"
    with pytest.raises(app.UsageError, match=r"^--stage2_probability=1.5 must be a number in \[0, 1\]"):
        search.config_from_flags(parse(f"--search_dir={search_dir}", "--objective=tests.nas.fakes:deterministic",
                                       f"--stage2_flagfile={flagfile}", "--stage2_probability=1.5"))
    with pytest.raises(app.UsageError, match=r"^--stage2_flagfile=.*nope.flags does not exist"):
        search.config_from_flags(parse(f"--search_dir={search_dir}", "--objective=tests.nas.fakes:deterministic",
                                       f"--stage2_flagfile={tmp_path / 'nope.flags'}"))
    flagfile.write_text(f"--dataset=camvid\n--dataset_dir={data}\n--train_crop_size=8,8\n")
    with pytest.raises(app.UsageError, match=r"^--stage2_flagfile=.*stage2.flags: .*train_crop_size"):
        search.config_from_flags(parse(f"--search_dir={search_dir}", "--objective=tests.nas.fakes:deterministic",
                                       f"--stage2_flagfile={flagfile}"))
