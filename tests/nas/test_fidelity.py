"""The fidelity benchmark: rank statistics with known answers, the two input files' validation, resumable
scoring that never mixes configs and never scores a failure as 0, and one real proxy run end to end."""

import importlib.util
import io
import json
import math
import pathlib
import sys
import types

import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.nas import fidelity
from deeplab_dpc.nas.features import nearest_indices, write_arrays
from deeplab_dpc.nas.proxy import ProxyConfig, TrialFailed

REPO = pathlib.Path(__file__).resolve().parents[2]
SPECS = {
    "conv1x1": [{"op": "conv", "kernel": 1, "input": -1}],
    "sep_r1": [{"op": "conv", "kernel": 3, "rate": [1, 1], "input": -1}],
    "sep_r3": [{"op": "conv", "kernel": 3, "rate": [3, 3], "input": -1}],
    "pool": [{"op": "pyramid_pooling", "grid_size": [1, 1], "input": -1}],
    "two": [
        {"op": "conv", "kernel": 1, "input": -1},
        {"op": "conv", "kernel": 3, "rate": [1, 1], "input": 0},
    ],
}


def _hash(name):
    return CellSpec.from_list(SPECS[name]).canonical_hash()


def _cells_file(tmp_path, names=tuple(SPECS), **changes):
    entries = [
        {"name": n, "group": "test", "graph_hash": _hash(n), "spec": SPECS[n], "depth": 1} for n in names
    ]
    for index, fields in changes.items():  # e.g. c1={"graph_hash": "bad"}; a value None drops the key
        i = int(index[1:])
        entries[i] = {k: v for k, v in {**entries[i], **fields}.items() if v is not None}
    path = tmp_path / "cells.json"
    path.write_text(json.dumps({"description": "test", "command": "test", "cells": entries}))
    return str(path)


def _truth_file(tmp_path, runs, chosen_steps=300):
    path = tmp_path / "truth.json"
    path.write_text(
        json.dumps(
            {"format": 1, "cells_file": "cells.json", "chosen_steps": chosen_steps, "protocol": {}, "runs": runs}
        )
    )
    return str(path)


def _run(cell, seed, miou, steps=300, graph_hash="auto"):
    return {
        "cell": cell,
        "graph_hash": _hash(cell) if graph_hash == "auto" else graph_hash,
        "steps": steps,
        "seed": seed,
        "miou": miou,
        "seconds": 1.0,
        "date": "2026-12-07",
        "command": "x",
    }


# --------------------------------------------------------------------------- rank statistics


def test_kendall_tau_is_one_for_the_same_order_and_minus_one_reversed():
    assert fidelity.kendall_tau([1, 2, 3, 4], [10, 20, 35, 40]) == 1.0
    assert fidelity.kendall_tau([1, 2, 3, 4], [40, 35, 20, 10]) == -1.0


def test_kendall_tau_b_with_ties_equals_the_hand_count():
    # Pairs of [1, 2, 2, 3] / [1, 3, 2, 2]: (0,1) (0,2) (0,3) concordant, (1,3) discordant, (1,2) tied in x,
    # (2,3) tied in y: (3 - 1) / sqrt((6 - 1) * (6 - 1)) = 0.4.
    assert fidelity.kendall_tau([1, 2, 2, 3], [1, 3, 2, 2]) == pytest.approx(0.4)
    # scipy.stats.kendalltau's documented example (tau-b): -0.47140452079103173.
    assert fidelity.kendall_tau([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-0.47140452079103173)
    assert math.isnan(fidelity.kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="pairs"):
        fidelity.kendall_tau([1, 2], [1, 2, 3])


def test_top_k_recall_counts_the_shared_top_cells():
    truth = list(range(10, 0, -1))  # cell 0 best
    assert fidelity.top_k_recall(truth, truth, k=5) == 1.0
    proxy = [10, 9, 8, 1, 2, 3, 4, 5, 7, 6]  # top 5 by proxy: cells 0, 1, 2, 8, 9; by truth: 0..4
    assert fidelity.top_k_recall(proxy, truth, k=5) == pytest.approx(3 / 5)
    assert fidelity.top_k_recall(proxy, truth, k=2) == 1.0
    assert math.isnan(fidelity.top_k_recall([1, 2, 3], [1, 2, 3], k=5))  # every cell in both tops


def test_spearman_over_the_better_half_sees_only_the_best_cells():
    truth = [1, 2, 3, 4, 5, 6]
    proxy = [1, 2, 3, 6, 5, 4]  # right overall, reversed among the three best
    assert fidelity.better_half(truth) == [3, 4, 5]
    assert fidelity.spearman(proxy, truth) > 0.5
    assert fidelity.spearman_better_half(proxy, truth) == pytest.approx(-1.0)


def test_bootstrap_interval_holds_a_perfect_correlation_and_repeats_for_a_seed():
    x = np.arange(12.0)
    low, high = fidelity.bootstrap_interval(fidelity.spearman, x, 2 * x + 1, n=200)
    assert (low, high) == (1.0, 1.0)  # every non-degenerate resample has rho 1

    rng = np.random.default_rng(3)
    y = x + rng.normal(scale=4.0, size=12)
    rho = fidelity.spearman(x, y)
    first = fidelity.bootstrap_interval(fidelity.spearman, x, y, n=300, seed=7)
    assert first == fidelity.bootstrap_interval(fidelity.spearman, x, y, n=300, seed=7)
    assert first != fidelity.bootstrap_interval(fidelity.spearman, x, y, n=300, seed=8)
    assert first[0] <= rho <= first[1] and first[0] < first[1]
    wider = fidelity.bootstrap_interval(fidelity.spearman, x, y, n=300, level=0.99, seed=7)
    assert wider[0] <= first[0] and wider[1] >= first[1]
    # Two cells: most resamples repeat one cell (degenerate, skipped); what is kept is +1.
    assert fidelity.bootstrap_interval(fidelity.kendall_tau, [1, 2], [3, 4], n=50) == (1.0, 1.0)


def test_summary_of_plain_scores():
    truth = {f"c{i}": 0.1 * i for i in range(8)}
    proxy = {f"c{i}": float(i) for i in range(8)}
    proxy["c0"] = None  # every trial failed: left out
    figures = fidelity.summary(proxy, truth, bootstrap=50)
    assert figures["n"] == 7 and figures["cells_without_score"] == ["c0"]
    assert figures["spearman"] == 1.0 and figures["kendall"] == 1.0 and figures["top5_recall"] == 1.0
    assert figures["spearman_ci90"] == [1.0, 1.0] and figures["spearman_better_half"] == 1.0
    assert figures["cpu_seconds_per_cell"] is None
    row = fidelity.table_row("test", figures)
    assert row.startswith("| test | 1.000 [1.00, 1.00] | 1.000 [1.00, 1.00] | 1.00 | 1.000 | n/a | 7 |")
    small = fidelity.summary({"a": 1.0, "b": 2.0}, {"a": 0.1, "b": 0.2}, bootstrap=10)
    assert small["top5_recall"] is None and small["spearman_better_half"] is None  # JSON-safe: no NaN
    # Two cells always rank +-1: no correlation is reported below three.
    assert small["spearman"] is None and small["kendall"] is None and small["spearman_ci90"] == [None, None]
    three = fidelity.summary({"a": 1.0, "b": 2.0, "c": 3.0}, {"a": 0.1, "b": 0.3, "c": 0.2}, bootstrap=10)
    assert three["spearman"] == pytest.approx(0.5) and three["kendall"] == pytest.approx(1 / 3)


# --------------------------------------------------------------------------- the input files


def test_ground_truth_is_the_mean_over_seeds_at_the_chosen_budget(tmp_path):
    cells = fidelity.load_cells(_cells_file(tmp_path))
    assert [c.name for c in cells] == list(SPECS) and cells[0].graph_hash == _hash("conv1x1")
    runs = [
        _run("sep_r1", 1, 0.5),
        _run("sep_r1", 2, 0.6),
        _run("conv1x1", 1, 0.4),
        _run("sep_r1", 1, 0.7, steps=1000),
        _run("pool", 1, 0.3, steps=1000),  # no run at 300 steps: left out there
        _run("head_continued", 1, 0.65, graph_hash=None),  # a control outside the set
    ]
    path = _truth_file(tmp_path, runs)
    truth = fidelity.load_ground_truth(path, cells=cells)
    assert list(truth) == ["conv1x1", "sep_r1"]  # the set's order
    assert truth["sep_r1"]["mean"] == pytest.approx(0.55) and truth["sep_r1"]["scores"] == {1: 0.5, 2: 0.6}
    assert truth["sep_r1"]["steps"] == 300 and truth["conv1x1"]["mean"] == pytest.approx(0.4)
    longer = fidelity.load_ground_truth(path, steps=1000, cells=cells)
    assert {k: v["mean"] for k, v in longer.items()} == {"sep_r1": 0.7, "pool": 0.3}
    assert "head_continued" in fidelity.load_ground_truth(path)  # without the set every run counts

    undecided = _truth_file(tmp_path, runs[:5], chosen_steps=None)
    message = r"chosen_steps is null .* budgets \[300, 1000\].*--truth_steps"
    with pytest.raises(fidelity.FidelityError, match=message):
        fidelity.load_ground_truth(undecided, cells=cells)
    with pytest.raises(fidelity.FidelityError, match="no run at 500 steps"):
        fidelity.load_ground_truth(path, steps=500, cells=cells)


@pytest.mark.parametrize(
    "runs, message",
    [
        (
            [_run("sep_r1", 1, 0.5), {"cell": "sep_r1", "graph_hash": "x", "steps": 300, "seed": 2}],
            r"runs\[1\] has no 'miou'",
        ),
        ([_run("sep_r1", 1, 51.2)], r"runs\[0\]\.miou=51\.2 must be a number in \[0, 1\]"),
        (
            [_run("sep_r1", 1, 0.5), _run("sep_r1", 1, 0.6)],
            r"runs\[1\] repeats cell sep_r1, steps 300, seed 1 of runs\[0\]",
        ),
        (
            [_run("sep_r1", 1, 0.5, graph_hash="0123456789abcdef")],
            r"runs\[0\]\.graph_hash=0123456789abcdef is not the graph_hash of cell sep_r1",
        ),
        ([{**_run("sep_r1", 1, 0.5), "seed": "1"}], r"runs\[0\]\.seed='1' must be an integer"),
    ],
)
def test_ground_truth_errors_name_the_file_and_field(tmp_path, runs, message):
    cells = fidelity.load_cells(_cells_file(tmp_path))
    path = _truth_file(tmp_path, runs)
    with pytest.raises(fidelity.FidelityError, match=message) as error:
        fidelity.load_ground_truth(path, cells=cells)
    assert str(error.value).startswith(path)


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"c1": {"graph_hash": "0123456789abcdef"}},
            r"cells\[1\] \(sep_r1\)\.graph_hash=0123456789abcdef does not match its spec",
        ),
        ({"c2": {"name": "conv1x1"}}, r"cells\[2\] \(conv1x1\)\.name repeats the name of cells\[0\]"),
        ({"c1": {"group": None}}, r"cells\[1\] \(sep_r1\) has no 'group'"),
        (
            {"c0": {"spec": [{"op": "conv", "input": -1}]}},
            r"cells\[0\] \(conv1x1\)\.spec is not a valid cell: .*kernel",
        ),
        (
            {"c1": {"spec": SPECS["conv1x1"], "graph_hash": _hash("conv1x1")}},
            r"cells\[1\] \(sep_r1\)\.spec is the same graph as cells\[0\]",
        ),
    ],
)
def test_cell_set_errors_name_the_file_and_field(tmp_path, changes, message):
    path = _cells_file(tmp_path, **changes)
    with pytest.raises(fidelity.FidelityError, match=message) as error:
        fidelity.load_cells(path)
    assert str(error.value).startswith(path)


# --------------------------------------------------------------------------- scoring, resumable


def _fake_score(spec, seed):
    """A deterministic pseudo-mIoU of the graph and the seed."""
    return (int(spec.canonical_hash()[:6], 16) % 1000) / 2000 + 0.01 * seed


class FakeRunProxy:
    """Stands in for ``run_proxy``: counts calls; raises ``TrialFailed`` for the cells in ``fail``
    (at every seed, or at the seeds given), or ``KeyboardInterrupt`` at call number ``kill_at``."""

    def __init__(self, fail=None, kill_at=None):
        self.calls = []
        self.fail = fail or {}
        self.kill_at = kill_at

    def __call__(self, spec, config, features=None, **kwargs):
        self.calls.append((spec.canonical_hash(), config.seed))
        if self.kill_at is not None and len(self.calls) == self.kill_at:
            raise KeyboardInterrupt
        seeds = self.fail.get(spec.canonical_hash(), ())
        if seeds == "all" or config.seed in seeds:
            raise TrialFailed("the loss became nan by step 20 (learning_rate=0.2)", 20)
        return {"miou": _fake_score(spec, config.seed), "train_seconds": 0.0, "final_loss": 0.1}


@pytest.fixture
def fake_proxy(monkeypatch):
    def install(**kw):
        fake = FakeRunProxy(**kw)
        monkeypatch.setattr("deeplab_dpc.nas.proxy.run_proxy", fake)
        return fake

    return install


def _config(cache_dir, **kw):
    return ProxyConfig(cache_dir=cache_dir, proxy_steps=5, batch_size=4, proxy_filters=8, **kw)


def test_a_second_call_runs_no_trial_and_a_killed_run_resumes(tmp_path, fake_proxy):
    cells = fidelity.load_cells(_cells_file(tmp_path))[:3]
    results = str(tmp_path / "results.json")
    config = _config(str(tmp_path))
    fake_proxy(kill_at=4)
    with pytest.raises(KeyboardInterrupt):
        fidelity.score_proxy(cells, config, [0, 1], results, data=object())
    recorded = json.loads(pathlib.Path(results).read_text())
    assert [(t["cell"], t["seed"]) for t in recorded["trials"]] == [
        ("conv1x1", 0),
        ("sep_r1", 0),
        ("sep_r3", 0),
    ]  # seed by seed; the killed trial is not recorded
    assert "seed" not in recorded["config"] and recorded["config"]["proxy_steps"] == 5
    assert all(t["status"] == "ok" and t["cpu_seconds"] >= 0 and t["seconds"] >= 0 for t in recorded["trials"])

    fake = fake_proxy()
    lines = []
    scores = fidelity.score_proxy(cells, config, [0, 1], results, data=object(), log=lines.append)
    assert fake.calls == [(c.graph_hash, 1) for c in cells]  # only the three not recorded
    assert lines[0].endswith("3 of 6 trials already recorded; 3 to run")
    assert lines[-1].startswith("[6/6] sep_r3 seed 1: score ") and "ETA 0 s" in lines[-1]
    for cell in cells:
        expected = [_fake_score(cell.spec, s) for s in (0, 1)]
        assert scores[cell.name]["scores"] == dict(zip((0, 1), expected))
        assert scores[cell.name]["mean"] == pytest.approx(np.mean(expected))

    again = fake_proxy()
    assert fidelity.score_proxy(cells, config, [0, 1], results, data=None) == scores  # no data loaded either
    assert again.calls == []
    assert fidelity.score_proxy(cells, config, [1], results, data=object())["sep_r1"]["scores"] == {
        1: _fake_score(cells[1].spec, 1)
    }


def test_results_of_another_config_or_score_are_refused(tmp_path, fake_proxy):
    cells = fidelity.load_cells(_cells_file(tmp_path))[:2]
    results = str(tmp_path / "results.json")
    fake = fake_proxy()
    fidelity.score_proxy(cells, _config(str(tmp_path)), [0], results, data=object())
    before = pathlib.Path(results).read_text()
    other = _config(str(tmp_path), learning_rate=0.05, dropout_rate=0.0)
    message = r"dropout_rate: 0\.1 recorded, 0\.0 now.*learning_rate"
    with pytest.raises(fidelity.ConfigMismatch, match=message) as error:
        fidelity.score_proxy(cells, other, [0], results, data=object())
    assert error.value.fields == ("dropout_rate", "learning_rate")
    with pytest.raises(fidelity.ConfigMismatch, match="score: 'proxy' recorded, 'synflow' now"):
        fidelity.score_proxy(cells, _config(str(tmp_path)), [0], results, score="synflow", scorer=lambda *a: {})
    assert pathlib.Path(results).read_text() == before and len(fake.calls) == 2
    # Another seed is the same setup: more trials, not a mismatch.
    fidelity.score_proxy(cells, _config(str(tmp_path), seed=5), [1], results, data=object())
    assert len(fake.calls) == 4


def test_a_failed_trial_is_recorded_as_failed_and_left_out_of_the_statistics(tmp_path, fake_proxy):
    cells = fidelity.load_cells(_cells_file(tmp_path))
    bad, flaky = cells[3], cells[1]
    results = str(tmp_path / "results.json")
    fake = fake_proxy(fail={bad.graph_hash: "all", flaky.graph_hash: (0,)})
    scores = fidelity.score_proxy(cells, _config(str(tmp_path)), [0, 1], results, data=object())
    trials = json.loads(pathlib.Path(results).read_text())["trials"]
    failed = [t for t in trials if t["status"] == "failed"]
    assert sorted((t["cell"], t["seed"]) for t in failed) == [("pool", 0), ("pool", 1), ("sep_r1", 0)]
    assert all("score" not in t and t["reason"].startswith("the loss became nan") for t in failed)
    assert [t["step"] for t in failed] == [20, 20, 20]
    assert scores["pool"]["mean"] is None and set(scores["pool"]["failed"]) == {0, 1}
    assert scores["sep_r1"]["mean"] == _fake_score(flaky.spec, 1)  # the seed that finished

    truth = {c.name: 0.1 * i for i, c in enumerate(cells)}
    figures = fidelity.summary(scores, truth, bootstrap=20)
    assert figures["n"] == 4 and figures["cells_without_score"] == ["pool"] and figures["failed_trials"] == 3
    kept = [c.name for c in cells if c.name != "pool"]
    assert figures["spearman"] == pytest.approx(
        fidelity.spearman([scores[n]["mean"] for n in kept], [truth[n] for n in kept])
    )
    calls = len(fake.calls)
    fidelity.score_proxy(cells, _config(str(tmp_path)), [0, 1], results, data=object())
    assert len(fake.calls) == calls  # a failure is a result: not retried


def test_a_zero_cost_score_is_scored_through_the_hook_and_a_missing_module_is_named(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, fidelity.ZERO_COST_MODULE, None)  # as if the module did not exist
    with pytest.raises(fidelity.FidelityError, match=r"deeplab_dpc\.nas\.zero_cost .*does not exist"):
        fidelity.get_scorer("synflow")
    with pytest.raises(fidelity.FidelityError, match="unknown"):
        fidelity.get_scorer("flops")

    calls = []

    def score_cell(spec, config, data, names=()):
        calls.append((names, config.seed, data))
        return {"synflow": float(len(spec.branches)), "seconds": {"synflow": 0.01}, "cpu_seconds": 0.02}

    monkeypatch.setitem(sys.modules, fidelity.ZERO_COST_MODULE, types.SimpleNamespace(score_cell=score_cell))
    cells = fidelity.load_cells(_cells_file(tmp_path))
    results = str(tmp_path / "synflow.json")
    scores = fidelity.score_proxy(cells, _config(str(tmp_path)), [3], results, score="synflow", data="data")
    assert calls == [(("synflow",), 3, "data")] * len(cells)
    assert scores["two"]["mean"] == 2.0 and scores["conv1x1"]["mean"] == 1.0
    trial = json.loads(pathlib.Path(results).read_text())["trials"][0]
    assert trial["score_cpu_seconds"] == 0.02
    assert json.loads(pathlib.Path(results).read_text())["score"] == "synflow"


# --------------------------------------------------------------------------- end to end, a real proxy


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A tiny cache: 16 train and 8 val examples of 4x4x8 features, 3 classes, labels at a 64x64 crop."""
    root = tmp_path_factory.mktemp("cache")
    for split, n, seed in (("train", 16, 0), ("val", 8, 1)):
        rng = np.random.default_rng(seed)
        features = rng.normal(size=(n, 4, 4, 8)).astype("float32")
        labels = np.argmax(features[..., :3], axis=-1).astype("uint8")
        rows = nearest_indices(4, 64)
        labels = labels[:, rows[:, None], rows[None, :]]
        write_arrays(
            str(root), split, features, labels, num_classes=3, shard_size=16, class_names=["a", "b", "c"]
        )
    return str(root)


def test_score_proxy_trains_real_cells_and_resumes(cache_dir, tmp_path):
    cells = fidelity.load_cells(_cells_file(tmp_path, names=("conv1x1", "two")))
    results = str(tmp_path / "proxy.json")
    config = _config(cache_dir, eval_batch_size=8)
    scores = fidelity.score_proxy(cells, config, [0], results)
    trials = json.loads(pathlib.Path(results).read_text())["trials"]
    assert [(t["cell"], t["status"]) for t in trials] == [("conv1x1", "ok"), ("two", "ok")]
    for t in trials:
        assert 0 <= t["score"] <= 1 and t["score"] == t["miou"] and t["cpu_seconds"] > 0 and t["seconds"] > 0
        assert scores[t["cell"]]["mean"] == t["score"]
    assert fidelity.score_proxy(cells, config, [0], results) == scores  # nothing to train the second time


# --------------------------------------------------------------------------- the command


def _bench(monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_fidelity", REPO / "bench" / "fidelity.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_fidelity", module)  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_the_command_prints_a_row_and_the_command_and_refuses_another_config(cache_dir, tmp_path, monkeypatch):
    bench = _bench(monkeypatch)
    monkeypatch.setitem(
        sys.modules,
        fidelity.ZERO_COST_MODULE,
        types.SimpleNamespace(score_cell=lambda spec, config, data, names: {names[0]: _fake_score(spec, 0)}),
    )
    cells_path = _cells_file(tmp_path)
    cells = fidelity.load_cells(cells_path)
    runs = [_run(c.name, s, _fake_score(c.spec, 0) + 0.001 * s) for c in cells[:4] for s in (1, 2)]
    truth_path = _truth_file(tmp_path, runs)
    results = str(tmp_path / "naswot.json")

    def parse(*args):
        fv = flags.FlagValues()
        bench.define_flags(fv)
        fv(["fidelity.py", f"--cache_dir={cache_dir}", f"--cells={cells_path}", f"--ground_truth={truth_path}",
            f"--output_json={results}", "--score=naswot", "--bootstrap=30", *args])
        return bench.config_from_flags(fv)

    config = parse("--seeds=0", "--proxy_steps=5")
    assert config.proxy.proxy_steps == 5 and config.seeds == (0,) and config.name == "naswot"
    out, err = io.StringIO(), io.StringIO()
    record = bench.run(config, "python bench/fidelity.py --x", out=out, err=err)
    text = out.getvalue()
    assert "| naswot | 1.000 [1.00, 1.00] | 1.000 [1.00, 1.00] | n/a | n/a | 0 | 4 |" in text
    assert text.rstrip().endswith("command: python bench/fidelity.py --x")
    assert "ground truth: 4 of 5 cells at 300 steps" in err.getvalue() and "left out: two" in err.getvalue()
    assert json.loads(pathlib.Path(results).read_text())["summary"] == json.loads(json.dumps(record))
    assert record["n"] == 4 and record["truth_steps"] == 300
    # The cell without ground truth was scored too: when its runs arrive, no new trial is needed.
    assert sorted(t["cell"] for t in json.loads(pathlib.Path(results).read_text())["trials"]) == sorted(
        c.name for c in cells
    )

    with pytest.raises(app.UsageError, match=r"proxy_steps: 5 recorded, 300 now.*flags: --proxy_steps"):
        bench.run(parse("--seeds=0"), "x", out=io.StringIO(), err=io.StringIO())
    with pytest.raises(app.UsageError, match="--dense_prediction_cell_json"):
        parse(f"--dense_prediction_cell_json={cells_path}")
    with pytest.raises(app.UsageError, match="--seed and --seeds"):
        parse("--seed=1", "--seeds=0")
