"""The analysis: the Pareto front, trials.csv, the figures."""

import csv
import os

import numpy as np
import pytest
from absl import app, flags
from optuna.trial import TrialState

from deeplab_dpc import analyze as analyze_main
from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.nas import analysis
from deeplab_dpc.nas import rerank as rerank_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir
from deeplab_dpc.nas.worker import run_worker
from tests.nas.test_rerank import A, B, C, D, E, add, make_search, standard_study

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# --------------------------------------------------------------------------- Pareto front


def test_pareto_front_of_a_hand_made_set():
    costs = [1, 2, 2, 3, 4, 5, 1]
    scores = [0.3, 0.5, 0.4, 0.5, 0.6, 0.55, 0.3]
    # 2 loses to 1 (same cost, lower score), 3 to 1 (dearer, same score), 5 to 4; 0 and 6 are identical.
    assert analysis.pareto_front(costs, scores) == [0, 6, 1, 4]
    assert analysis.pareto_front([5, 4, 3], [0.1, 0.2, 0.3]) == [2]  # one point beats both others
    assert analysis.pareto_front([], []) == []
    with pytest.raises(ValueError, match="needs pairs"):
        analysis.pareto_front([1], [])


# --------------------------------------------------------------------------- trials.csv


def read_csv(path):
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def test_trials_csv_has_a_row_per_trial_with_its_numbers(tmp_path):
    config, study = standard_study(tmp_path)
    rerank_lib.record_full_score(study, 4, {"full_miou": 0.7, "full_run_dir": "/runs/4"})
    summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir, str(tmp_path / "out")))
    columns, rows = read_csv(tmp_path / "out" / "trials.csv")
    assert columns == list(analysis.CSV_COLUMNS)
    assert columns[:11] == [
        "number",
        "state",
        "hash",
        "spec",
        "proxy_miou",
        "full_miou",
        "params",
        "madds",
        "seconds",
        "worker",
        "error",
    ]
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4", "5"]
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert [r["proxy_miou"] for r in rows] == ["0.5", "0.6", "0.6", "", "0.55", "0.4"]
    assert [r["full_miou"] for r in rows] == ["", "", "", "", "0.7", ""]
    assert rows[4]["hash"] == D.canonical_hash() and rows[4]["madds"] == "2000000000.0"
    assert CellSpec.from_json(rows[4]["spec"]) == D
    assert rows[2]["duplicate_of"] == "1" and rows[2]["hash"] == B.canonical_hash()
    assert rows[3]["error"] == "FakeNaN: loss became NaN at step 3" and rows[3]["worker"] == "w0"
    assert [r["params"] for r in rows][0] == "1000" and rows[0]["seconds"] == "12.5"
    assert summary["states"] == {"COMPLETE": 5, "FAIL": 1, "duplicates": 1, "interrupted": 0, "prefiltered": 0}
    assert summary["best_proxy"]["trial"] == 1 and summary["best_proxy"]["proxy_miou"] == 0.6


def test_trials_csv_of_a_search_run_by_a_worker(tmp_path):
    config = SearchConfig(
        search_dir=str(tmp_path / "search"), objective="tests.nas.fakes:flaky", max_trials=15, num_branches=2
    )
    prepare_search_dir(config)
    study = study_lib.load_study(config, create=True)
    run_worker(config, "worker-7")
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    analysis.analyze(analysis.AnalyzeConfig(config.search_dir, str(tmp_path / "out")))
    _, rows = read_csv(tmp_path / "out" / "trials.csv")
    assert len(rows) == len(trials) >= 15
    for trial, row in zip(trials, rows):
        assert int(row["number"]) == trial.number and row["state"] == trial.state.name
        assert row["worker"] == "worker-7" and row["hash"] == trial.user_attrs["graph_hash"]
        if trial.state == TrialState.COMPLETE:
            assert float(row["proxy_miou"]) == trial.value and float(row["madds"]) == 2.5e8
        else:
            assert row["proxy_miou"] == "" and row["error"] == trial.user_attrs["error"]


# --------------------------------------------------------------------------- figures


@pytest.fixture
def trained_run(tmp_path):
    """A DPC run of cell D whose projection weights are 0.01 on branch 0's channels, -0.02 on branch 1's."""
    from deeplab_dpc import runs  # noqa: PLC0415
    from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: PLC0415

    config = ModelConfig(num_classes=3, context="dpc", dense_prediction_cell=D, depth_multiplier=0.35)
    model = build_deeplab(config)
    kernel = model.get_layer("dense_prediction_cell").projection.conv.kernel
    assert tuple(kernel.shape) == (1, 1, 512, 256)
    kernel.assign(np.concatenate([np.full((1, 1, 256, 256), 0.01), np.full((1, 1, 256, 256), -0.02)], axis=2))
    run_dir = tmp_path / "rerank" / "trial_00004"
    run_dir.mkdir(parents=True)
    config.save(str(run_dir / "model_config.json"))
    model.save_weights(runs.checkpoint_path(str(run_dir), 6))
    return str(run_dir)


def assert_png(path):
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == PNG_SIGNATURE and len(data) > 1000, path
    from PIL import Image  # noqa: PLC0415

    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 200


def test_analyze_writes_every_figure_and_the_numbers_behind_them(tmp_path, trained_run):
    config, study = standard_study(tmp_path)
    for number, full in ((1, 0.3), (0, 0.5)):
        rerank_lib.record_full_score(study, number, {"full_miou": full, "full_run_dir": f"/nowhere/{number}"})
    rerank_lib.record_full_score(study, 4, {"full_miou": 0.7, "full_run_dir": trained_run})
    out = tmp_path / "out"
    summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir, str(out)))
    assert summary["notes"] == []
    names = sorted(os.path.basename(p) for p in summary["written"])
    assert names == sorted(["trials.csv", *analysis.FIGURES.values()])
    for name in analysis.FIGURES.values():
        assert_png(out / name)
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary files left
    # Proxy B .6, D .55, A .5 against full .3, .7, .5: rank differences 2, -1, -1, rho = 1 - 36 / 24.
    assert summary["reranked"] == 3 and summary["spearman_rho"] == pytest.approx(-0.5)
    assert summary["best_full"] == {"trial": 4, "full_miou": 0.7, "proxy_rank": 2, "run_dir": trained_run}
    # L1 of each branch's 256 x 256 projection weights: 0.01 and 0.02 each.
    assert summary["projection_l1"] == pytest.approx([655.36, 1310.72], rel=1e-5)
    # Costs: A 1e9 0.5, B 1e9 0.6, D 2e9 0.55, E 5e8 0.4: E and B are not beaten.
    assert summary["pareto_front"] == [5, 1]
    lines = analyze_main.summary_lines(summary)
    assert lines[0] == "6 trials: 5 complete, 1 fail (1 duplicates, 0 interrupted attempts)"
    assert "best proxy cell: trial 1, proxy mIoU 0.6000" in lines
    assert "best re-ranked cell: trial 4, full mIoU 0.7000 (#2 by proxy score), of 3 re-ranked" in lines
    assert "Spearman's rho, proxy vs full mIoU: -0.500 (n = 3)" in lines


def test_figures_that_need_rerank_results_are_skipped_with_a_note(tmp_path):
    config, study = standard_study(tmp_path)
    rerank_lib.record_full_score(study, 1, {"full_miou": 0.3, "full_run_dir": "/nowhere"})
    summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir))
    out = os.path.join(config.search_dir, "analysis")  # the default output_dir
    assert sorted(os.listdir(out)) == ["best_cells.png", "pareto.png", "proxy_scores.png", "trials.csv"]
    assert summary["spearman_rho"] is None
    assert any(n.startswith("proxy_vs_full.png skipped: 1 re-ranked cells") for n in summary["notes"])
    assert any(n.startswith("projection_l1.png skipped") for n in summary["notes"])


def test_projection_l1_slices_the_kernel_per_branch():
    kernel = np.zeros((1, 1, 6, 2))
    kernel[0, 0, :, 0] = [1, -2, 3, 0, 0, -4]
    kernel[0, 0, :, 1] = [1, 0, 0, 0, 5, 0]
    per_channel, per_branch = analysis.projection_l1(kernel, 3)
    assert per_channel.tolist() == [2, 2, 3, 0, 5, 4] and per_branch.tolist() == [4, 3, 9]
    with pytest.raises(ValueError, match="6 input channels do not split into 4 branches"):
        analysis.projection_l1(kernel, 4)


def test_cell_layout_puts_branches_right_of_their_input():
    position = analysis.cell_layout(D)  # branch 1 reads branch 0
    assert position[-1] == (0.0, 0.0) and position[0] == (1.0, 0.0) and position[1] == (2.0, 0.0)
    position = analysis.cell_layout(A)  # both read the backbone
    assert position[0] == (1.0, 0.5) and position[1] == (1.0, -0.5)
    assert [analysis.op_label(b) for b in E.branches] == ["sep 3x3 r18x18", "sep 3x3 r3x3"]


def test_analyze_flags_name_the_flag(tmp_path):
    fv = flags.FlagValues()
    analyze_main.define_flags(fv)
    fv(["analyze", "--num_cells=0", f"--search_dir={tmp_path}"])
    with pytest.raises(app.UsageError, match="^--num_cells must be between 1 and 20"):
        analyze_main.config_from_flags(fv)
    fv = flags.FlagValues()
    analyze_main.define_flags(fv)
    fv(["analyze"])
    with pytest.raises(app.UsageError, match="--search_dir is required"):
        analyze_main.config_from_flags(fv)
    with pytest.raises(ValueError, match=f"^search_dir={tmp_path} has no search_config.json"):
        analysis.analyze(analysis.AnalyzeConfig(str(tmp_path)))


def test_an_empty_search_writes_the_csv_and_says_why_figures_are_missing(tmp_path):
    config, _ = make_search(tmp_path)
    summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir))
    assert [os.path.basename(p) for p in summary["written"]] == ["trials.csv"]
    assert len(summary["notes"]) == 5 and summary["best_proxy"] is None


def test_the_best_cell_under_a_multiply_add_budget(tmp_path):
    # Standard study: A 0.50 and B 0.60 at 1 GMAdds, D 0.55 at 2, E 0.40 at 0.5 (B's duplicate left out).
    config, _ = standard_study(tmp_path)
    expected = {3e9: B, 1e9: B, 9.9e8: E, 5e8: E}
    for limit, spec in expected.items():
        summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir, max_madds=limit))
        best = summary["best_under_max_madds"]
        assert CellSpec.from_list(best["spec"]) == spec and best["madds"] <= limit
        path = os.path.join(config.search_dir, "analysis", "best_cell_under_max_madds.json")
        assert CellSpec.load(path) == spec
        line = [ln for ln in analyze_main.summary_lines(summary) if ln.startswith("best cell with at most")]
        assert line and f"trial {best['trial']}" in line[0]
    summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir, output_dir=str(tmp_path / "o"), max_madds=1e8))
    assert summary["best_under_max_madds"] is None
    assert any("no completed cell has at most max_madds=1e+08" in n for n in summary["notes"])
    assert not os.path.exists(tmp_path / "o" / "best_cell_under_max_madds.json")
    with pytest.raises(ValueError, match="^max_madds must be positive"):
        analysis.AnalyzeConfig(config.search_dir, max_madds=0)


def test_proxy_against_each_zero_cost_score_of_the_trained_cells(tmp_path):
    config, study = make_search(tmp_path)
    add(study, A, 0.50, zero_cost_synflow=3.0, zero_cost_naswot="-inf", zero_cost_grad_norm=1.0)
    add(study, B, 0.60, zero_cost_synflow=4.0, zero_cost_naswot=10.0, zero_cost_grad_norm=2.0)
    add(study, B, 0.60, duplicate_of=1, zero_cost_synflow=4.0)  # not a second cell
    add(study, D, 0.55, zero_cost_synflow=1.0, zero_cost_naswot=12.0)
    add(study, E, 0.40, zero_cost_synflow=2.0, zero_cost_naswot=5.0)
    add(study, C, state=TrialState.PRUNED, pruned_by="prefilter", zero_cost_synflow=100.0)  # never trained
    out = tmp_path / "out"
    summary = analysis.analyze(analysis.AnalyzeConfig(config.search_dir, str(out)))
    # Proxy ranks A 2, B 4, D 3, E 1. synflow ranks 3, 4, 1, 2: sum d^2 = 6, rho = 1 - 36 / 60.
    # naswot: A's -inf ranks first (1, 3, 4, 2): sum d^2 = 4, rho = 1 - 24 / 60.
    rho = summary["zero_cost_rho"]
    assert rho["synflow"] == {"rho": pytest.approx(0.4), "n": 4, "infinite": 0}
    assert rho["naswot"] == {"rho": pytest.approx(0.6), "n": 4, "infinite": 1}
    assert sorted(rho) == ["naswot", "synflow"]
    for name in ("synflow", "naswot"):
        assert_png(out / f"proxy_vs_{name}.png")
        assert str(out / f"proxy_vs_{name}.png") in summary["written"]
    assert not (out / "proxy_vs_grad_norm.png").exists()
    skipped = "proxy_vs_grad_norm.png skipped: 2 trained cells record grad_norm"
    assert any(n.startswith(skipped) for n in summary["notes"])
    assert summary["states"]["prefiltered"] == 1
    lines = analyze_main.summary_lines(summary)
    assert lines[0] == (
        "6 trials: 5 complete, 1 pruned "
        "(1 duplicates, 0 interrupted attempts, 1 pre-filtered proposals, not trained)"
    )
    assert "Spearman's rho, proxy mIoU vs synflow at initialisation: 0.400 (n = 4)" in lines
    assert "Spearman's rho, proxy mIoU vs naswot at initialisation: 0.600 (n = 4)" in lines
    assert analysis.rank_preserving([2.0, float("inf"), -float("inf"), 1.0]) == [2.0, 3.0, 0.0, 1.0]
