"""The zero-cost pre-filter (``prefilter``, ``prefilter_ratio``) and the zero-cost scores of trained trials.

Workers run in this process with ``tests.nas.fakes:scored``: the fake proxy of ``fakes.py`` with a cheap
deterministic zero-cost scorer (``fakes.zero_cost_score``) in place of ``zero_cost.score_cell``.
"""

import collections
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from optuna.trial import TrialState, create_trial

from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas import zero_cost
from deeplab_dpc.nas.search_config import (
    CONFIG_FILE,
    DEFAULT_OBJECTIVE,
    ConfigMismatch,
    SearchConfig,
    prepare_search_dir,
)
from deeplab_dpc.nas.worker import WorkerSetupError, run_worker
from tests.nas import fakes
from tests.nas.test_study import start, trained_hashes


def make_config(tmp_path, **overrides):
    values = dict(search_dir=str(tmp_path / "search"), objective="tests.nas.fakes:scored", max_trials=4)
    values.update(overrides)
    return SearchConfig(**values)


@pytest.fixture
def logs(tmp_path, monkeypatch):
    paths = {"trained": str(tmp_path / "trained.log"), "scored": str(tmp_path / "scored.log")}
    monkeypatch.setenv("FAKE_OBJECTIVE_LOG", paths["trained"])
    monkeypatch.setenv("FAKE_ZERO_COST_LOG", paths["scored"])
    return paths


def spec_of(trial, config):
    return space_lib.params_to_spec(trial.params, config.space)


RL = dict(rl_hidden=8, rl_layers=1, rl_batch_size=2, rl_learning_rate=0.05)


@pytest.mark.parametrize("strategy", ["random", "evolution", "rl"])
def test_each_trained_trial_is_the_best_of_three_proposals_and_the_others_never_train(
    tmp_path, logs, strategy
):
    config = make_config(
        tmp_path,
        strategy=strategy,
        prefilter="synflow",
        prefilter_ratio=3,
        zero_cost_scores="synflow",  # the default with a pre-filter is every score
        population_size=2,
        sample_size=2,
        **(RL if strategy == "rl" else {}),
    )
    study = start(config)
    report = run_worker(config, "w")
    trials = study.get_trials()
    trained = [t for t in trials if t.state == TrialState.COMPLETE]
    prefiltered = [t for t in trials if trial_store.is_prefiltered(t)]
    assert (report.trained, len(trained), len(prefiltered), len(trials)) == (4, 4, 8, 12)
    assert sorted(trained_hashes(logs["trained"])) == sorted(t.user_attrs["graph_hash"] for t in trained)
    assert trial_store.budget_used(trials) == 4  # max_trials counts trained trials
    groups = collections.defaultdict(list)
    for t in trials:
        groups[t.user_attrs[trial_store.PREFILTER_GROUP]].append(t)
    assert sorted(groups) == [0, 3, 6, 9]
    for members in groups.values():
        [winner] = [t for t in members if t.state == TrialState.COMPLETE]
        best = max(t.user_attrs["zero_cost_synflow"] for t in members)
        assert winner.user_attrs["zero_cost_synflow"] == best
        for t in members:
            expected = fakes.zero_cost_score(spec_of(t, config), "synflow")
            assert t.user_attrs["zero_cost_synflow"] == pytest.approx(expected)
            if t is not winner:
                assert t.state == TrialState.PRUNED and t.user_attrs["pruned_by"] == "prefilter"
                assert t.user_attrs[trial_store.PREFILTER_WINNER] == winner.number
                assert t.value is None and t.intermediate_values == {}  # nothing TPE could read
                assert t.user_attrs["graph_hash"] == spec_of(t, config).canonical_hash()
                assert json.loads(t.user_attrs["spec"])
    # No strategy learns from a pre-filtered proposal.
    learnt = {t.number for t in trained}
    for t in trials:
        assert t.user_attrs.get("parent") in learnt | {None}
        assert set(t.user_attrs.get("tournament", ())) <= learnt
    if strategy == "evolution":
        assert any(t.user_attrs.get("proposal") == "mutation" for t in trials)
    if strategy == "rl":
        from deeplab_dpc.nas.controller import controller_path  # noqa: PLC0415

        with np.load(controller_path(os.path.join(config.search_dir, "controller")), allow_pickle=False) as z:
            consumed = [int(n) for n in z["consumed"]]
        assert len(consumed) == 2 and set(consumed) <= learnt  # its rewards: trained trials only
    # Each graph scored once by the pre-filter (12 proposals), once more for nothing: synflow is
    # the only score, and the winners keep the one they were chosen by.
    with open(logs["scored"]) as f:
        assert len(f.read().splitlines()) == len({t.user_attrs["graph_hash"] for t in trials})


def test_without_a_prefilter_the_search_is_the_same_and_trained_trials_record_their_scores(tmp_path, logs):
    plain = make_config(tmp_path / "plain", max_trials=6)
    start(plain)
    run_worker(plain, "w")
    scored = make_config(tmp_path / "scored", max_trials=6, zero_cost_scores="all")
    assert scored.zero_cost_scores == tuple(zero_cost.SCORES) and plain.zero_cost_scores == ()
    start(scored)
    run_worker(scored, "w")
    a, b = study_lib.load_study(plain).get_trials(), study_lib.load_study(scored).get_trials()
    assert [(t.number, t.state, t.params, t.value) for t in a] == [
        (t.number, t.state, t.params, t.value) for t in b
    ]
    assert trial_store.budget_used(a) == 6 and any(t.user_attrs.get("proposal") == "mutation" for t in a)
    assert any(trial_store.is_duplicate(t) for t in b)  # a duplicate: the same graph's scores, copied
    for t in a:
        assert not [k for k in t.user_attrs if k.startswith(("zero_cost", "prefilter", "pruned_by"))]
    for t in b:
        for name in zero_cost.SCORES:
            expected = fakes.zero_cost_score(spec_of(t, scored), name)
            assert t.user_attrs[f"zero_cost_{name}"] == pytest.approx(expected)
        assert "zero_cost_error" not in t.user_attrs
        assert trial_store.is_duplicate(t) or t.user_attrs["zero_cost_seconds"] >= 0  # a copy was not scored


def test_a_worker_stopped_while_scoring_leaves_its_proposals_interrupted_and_never_retried(tmp_path, logs):
    config = make_config(tmp_path, prefilter="grad_norm", prefilter_ratio=3, max_trials=2)
    study = start(config)
    calls = []

    def objective(spec):
        raise AssertionError("nothing trains")

    def zero_cost_fn(spec, names):
        calls.append(names)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {name: 0.5 for name in names}

    objective.zero_cost = zero_cost_fn
    with pytest.raises(KeyboardInterrupt):
        run_worker(config, "w", objective=objective)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3
    assert all("while the pre-filter scored it; nothing to retry" in t.user_attrs["error"] for t in trials)
    assert trials[0].user_attrs["zero_cost_grad_norm"] == 0.5  # recorded as it was scored
    assert trial_store.budget_used(trials) == 0


def test_a_worker_killed_9_while_scoring_leaves_nothing_half_written(tmp_path, logs):
    config = make_config(tmp_path, prefilter="synflow", prefilter_ratio=3, max_trials=2)
    study = start(config)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    code = (
        "import json, sys; from deeplab_dpc.nas.search_config import SearchConfig; "
        "from deeplab_dpc.nas.worker import run_worker; "
        "run_worker(SearchConfig.from_dict(json.load(open(sys.argv[1]))), 'killed')"
    )
    env = dict(os.environ, FAKE_ZERO_COST_SLEEP="60", PYTHONPATH=repo)
    path = os.path.join(config.search_dir, CONFIG_FILE)
    worker = subprocess.Popen([sys.executable, "-c", code, path], cwd=repo, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and worker.poll() is None:  # killed while scoring the first proposal
        if os.path.exists(logs["scored"]) and open(logs["scored"]).read().endswith("\n"):
            break
        time.sleep(0.1)
    assert worker.poll() is None
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.RUNNING] * 3
    for t in trials:  # whole proposals, not yet scored
        assert t.params and "graph_hash" in t.user_attrs and "zero_cost_synflow" not in t.user_attrs
    assert trial_store.budget_used(trials) == 1
    with trial_store.FileLock(config.lock_path):
        assert trial_store.recover_interrupted(study, config.space, config.grace_seconds) == [
            (0, None),
            (1, None),
            (2, None),
        ]
    trials = study.get_trials()
    assert all(trial_store.is_interrupted(t) and not trial_store.is_prefiltered(t) for t in trials)
    report = run_worker(config, "w")  # no sleep in this process
    assert report.trained == 2 and len(study.get_trials()) == 9
    assert not os.path.exists(logs["trained"]) or len(trained_hashes(logs["trained"])) == 2


def test_a_prefiltered_graph_is_no_original_for_dedup(tmp_path):
    config = make_config(tmp_path)
    spec = space_lib.published_cell()
    attrs = {"graph_hash": spec.canonical_hash(), "pruned_by": "prefilter"}
    pruned = create_trial(state=TrialState.PRUNED, user_attrs=attrs)
    pruned.number = 0
    assert trial_store.is_prefiltered(pruned) and not trial_store.counts_toward_budget(pruned)
    assert trial_store.resolve_duplicate(1, spec.canonical_hash(), [pruned]).action == "train"
    # A proposal the pruner (not the pre-filter) stopped is still an original.
    pruned.user_attrs = {"graph_hash": spec.canonical_hash()}
    assert trial_store.resolve_duplicate(1, spec.canonical_hash(), [pruned]).action == "copy_pruned"
    del config


def test_zero_cost_scores_need_an_objective_that_scores(tmp_path):
    config = make_config(tmp_path, objective="tests.nas.fakes:deterministic", zero_cost_scores="synflow")
    start(config)
    message = "^zero_cost_scores: objective tests.nas.fakes:deterministic has no zero_cost"
    with pytest.raises(WorkerSetupError, match=message):
        run_worker(config, "w")


def test_the_proxy_objective_scores_with_score_cell_on_its_own_features(tmp_path, monkeypatch):
    from deeplab_dpc.nas import objective as objective_lib  # noqa: PLC0415
    from deeplab_dpc.nas import proxy  # noqa: PLC0415

    features = object()
    seen = []
    monkeypatch.setattr(proxy, "load_proxy_data", lambda config: features)

    def fake_score_cell(spec, config, data, names):
        seen.append((spec, config.cache_dir, data, names))
        return {**{name: 1.5 for name in names}, "seconds": {}, "cpu_seconds": 0.1}

    monkeypatch.setattr(zero_cost, "score_cell", fake_score_cell)
    config = make_config(tmp_path, objective=DEFAULT_OBJECTIVE, proxy={"cache_dir": str(tmp_path)})
    spec = space_lib.published_cell()
    assert objective_lib.proxy_objective(config).zero_cost(spec, ["snip", "zico"]) == {"snip": 1.5, "zico": 1.5}
    assert seen == [(spec, str(tmp_path), features, ("snip", "zico"))]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            dict(prefilter="bogus", prefilter_ratio=2),
            r"^prefilter='bogus': unknown zero-cost score 'bogus'; valid: \[",
        ),
        (
            dict(zero_cost_scores="synflow,bogus"),
            r"^zero_cost_scores='synflow,bogus': unknown zero-cost score 'bogus'",
        ),
        (dict(prefilter_ratio=3), r"^prefilter_ratio=3 needs prefilter"),
        (dict(prefilter="synflow"), r"^prefilter_ratio=1 with prefilter=synflow filters nothing"),
        (dict(prefilter="synflow", prefilter_ratio=0), r"^prefilter_ratio must be an integer >= 1"),
    ],
)
def test_config_errors_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_the_prefilter_settings_of_a_search_cannot_change_but_its_recorded_scores_can(tmp_path):
    config = make_config(tmp_path, prefilter="synflow", prefilter_ratio=3)
    assert config.zero_cost_scores == tuple(zero_cost.SCORES)  # by default a pre-filtered search records all
    assert make_config(tmp_path, prefilter="naswot", prefilter_ratio=3, zero_cost_scores="zico").zero_cost_scores == (
        "naswot", "zico"
    )
    path = prepare_search_dir(config)
    with open(path) as f:
        assert SearchConfig.from_dict(json.load(f)) == config
    for overrides, message in [
        (dict(prefilter="synflow", prefilter_ratio=4), r"^prefilter_ratio=4 differs from 3"),
        (dict(prefilter="snip", prefilter_ratio=3), r"^prefilter='snip' differs from 'synflow'"),
        (dict(), r"^prefilter=None differs from 'synflow'"),
    ]:
        with pytest.raises(ConfigMismatch, match=message):
            prepare_search_dir(make_config(tmp_path, **overrides))
    prepare_search_dir(
        make_config(tmp_path, prefilter="synflow", prefilter_ratio=3, zero_cost_scores="all")
    )
    # A search started before these fields existed continues only without a pre-filter.
    with open(path) as f:
        added = ("prefilter", "prefilter_ratio", "zero_cost_scores")
        old = {k: v for k, v in json.load(f).items() if k not in added}
    with open(path, "w") as f:
        json.dump(old, f)
    message = r"^prefilter='synflow' differs from None, .*written before prefilter existed"
    with pytest.raises(ConfigMismatch, match=message):
        prepare_search_dir(make_config(tmp_path, prefilter="synflow", prefilter_ratio=3))
    prepare_search_dir(make_config(tmp_path, zero_cost_scores="naswot"))


def _search_report():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "bench" / "search_report.py"
    spec = importlib.util.spec_from_file_location("bench_search_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_search_report_compares_searches_with_and_without_the_prefilter_as_separate_rows():
    from types import SimpleNamespace

    report = _search_report()
    plain = SimpleNamespace(strategy="evolution", prefilter=None, prefilter_ratio=1)
    filtered = SimpleNamespace(strategy="evolution", prefilter="naswot", prefilter_ratio=4)
    assert report.search_label(plain) == "evolution"
    assert report.search_label(filtered) == "evolution + naswot x4"
    curves = [
        (report.search_label(plain), 1, [40.0, 41.0]),
        (report.search_label(plain), 2, [42.0, 42.0]),
        (report.search_label(filtered), 1, [43.0, 44.0]),
    ]
    rows = report.strategy_table(curves, [2])
    assert rows[2] == "| evolution | 1,2 | 41.50 (41.00-42.00, n=2) |"
    assert rows[3] == "| evolution + naswot x4 | 1 | 44.00 |"
