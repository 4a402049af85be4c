"""The fidelity set's ground truth: what each run trains, the record written after each run and resumed,
protocols never mixed, and the seed and budget statistics that choose the budget."""

import json
import math

import numpy as np
import pytest

from deeplab_dpc.core.model import ModelConfig
from deeplab_dpc.core.spec import SearchSpace
from deeplab_dpc.data.batches import DataConfig
from deeplab_dpc.nas import fidelity, ground_truth
from deeplab_dpc.nas.space import aspp_cell, params_to_spec, published_cell, spec_to_params
from deeplab_dpc.training.config import TrainConfig

CELLS = [
    fidelity.Cell("published", "reference", published_cell(), published_cell().canonical_hash()),
    fidelity.Cell("aspp", "reference", aspp_cell(), aspp_cell().canonical_hash()),
]


def _template(tmp_path, **changes):
    fields = dict(
        model=ModelConfig(num_classes=11, context="dpc", dense_prediction_cell=published_cell()),
        data=DataConfig(dataset="camvid", dataset_dir=str(tmp_path)),
        train_logdir=str(tmp_path / "runs"),
        train_crop_size=(64, 64),
        training_number_of_steps=30,
        base_learning_rate=0.01,
        freeze_backbone=True,
        eval_split="val",
        eval_crop_size=(64, 80),
    )
    fields.update(changes)
    return TrainConfig(**fields)


class _Fakes:
    """train_fn / evaluate_fn that record what they were given; mIoU from the seed and the context."""

    def __init__(self):
        self.trained = []

    def train(self, config, verbose):
        self.trained.append(config)
        return {"step": config.training_number_of_steps}

    def evaluate(self, config, split, crop):
        miou = 0.5 + 0.01 * config.seed + (0.1 if config.model.context == "aspp" else 0.0)
        return {"miou": miou, "pixel_accuracy": 0.9, "step": config.training_number_of_steps}


def _run(tmp_path, fakes, template=None, names=("published", "aspp", ground_truth.CONTINUED), seeds=(1, 2)):
    return ground_truth.run_ground_truth(
        template or _template(tmp_path), CELLS, list(names), list(seeds), str(tmp_path / "truth.json"),
        str(tmp_path / "runs"), "cells.json", "the command", say=lambda line: None,
        train_fn=fakes.train, evaluate_fn=fakes.evaluate,
    )


def test_each_run_trains_its_cell_budget_and_seed_in_its_own_folder(tmp_path):
    fakes = _Fakes()
    record = _run(tmp_path, fakes)
    # Seed-major: every cell's first seed before any second seed.
    assert [(c.seed, c.model.context) for c in fakes.trained] == [
        (1, "dpc"), (1, "dpc"), (1, "aspp"), (2, "dpc"), (2, "dpc"), (2, "aspp")
    ]
    first = fakes.trained[0]
    assert first.model.dense_prediction_cell == published_cell() and first.freeze_backbone
    assert first.train_logdir == str(tmp_path / "runs" / "published" / "steps30_seed1")
    # The control is the checkpoint's own ASPP head: no cell, every weight restorable.
    assert fakes.trained[2].model.dense_prediction_cell is None
    assert [(r["cell"], r["seed"], r["miou"]) for r in record["runs"]][:3] == [
        ("published", 1, 0.51), ("aspp", 1, 0.51), (ground_truth.CONTINUED, 1, pytest.approx(0.61))
    ]
    assert record["runs"][0]["graph_hash"] == published_cell().canonical_hash()
    assert record["runs"][2]["graph_hash"] is None
    assert record["protocol"]["freeze_backbone"] is True and "seed" not in record["protocol"]
    # fidelity reads it as the truth: the control is left out, the mean is over seeds.
    truth = fidelity.load_ground_truth(str(tmp_path / "truth.json"), cells=CELLS)
    assert list(truth) == ["published", "aspp"] and truth["aspp"]["mean"] == pytest.approx(0.515)


def test_a_rerun_trains_only_what_is_missing_and_another_budget_adds_runs(tmp_path):
    fakes = _Fakes()
    _run(tmp_path, fakes, seeds=(1,))
    assert len(fakes.trained) == 3
    _run(tmp_path, fakes, seeds=(1, 2))
    assert [c.seed for c in fakes.trained[3:]] == [2, 2, 2]
    _run(tmp_path, fakes, seeds=(1, 2))
    assert len(fakes.trained) == 6  # nothing left
    record = _run(tmp_path, fakes, template=_template(tmp_path, training_number_of_steps=90), seeds=(1,))
    assert len(fakes.trained) == 9 and sorted({r["steps"] for r in record["runs"]}) == [30, 90]


def test_a_record_is_written_after_each_run(tmp_path):
    fakes = _Fakes()

    def evaluate(config, split, crop):
        if len(fakes.trained) == 2:
            raise KeyboardInterrupt  # killed during the second run
        return fakes.evaluate(config, split, crop)

    with pytest.raises(KeyboardInterrupt):
        ground_truth.run_ground_truth(
            _template(tmp_path), CELLS, ["published", "aspp"], [1], str(tmp_path / "truth.json"),
            str(tmp_path / "runs"), "cells.json", "cmd", say=lambda line: None,
            train_fn=fakes.train, evaluate_fn=evaluate,
        )
    runs = json.loads((tmp_path / "truth.json").read_text())["runs"]
    assert [r["cell"] for r in runs] == ["published"]


def test_other_training_settings_are_refused_naming_the_field(tmp_path):
    _run(tmp_path, _Fakes(), seeds=(1,))
    with pytest.raises(ground_truth.ProtocolMismatch, match=r"base_learning_rate: 0\.01 -> 0\.001"):
        _run(tmp_path, _Fakes(), template=_template(tmp_path, base_learning_rate=0.001))
    with pytest.raises(ground_truth.ProtocolMismatch, match="freeze_backbone: true -> false"):
        _run(tmp_path, _Fakes(), template=_template(tmp_path, freeze_backbone=False))
    # Paths, the budget and logging may differ.
    _run(tmp_path, _Fakes(), template=_template(tmp_path, train_logdir="/elsewhere", log_steps=7))


def test_unknown_names_are_refused_listing_the_valid_ones(tmp_path):
    with pytest.raises(fidelity.FidelityError, match=r"\['nope'\].*published.*aspp_head_continued"):
        _run(tmp_path, _Fakes(), names=("published", "nope"))


def test_seed_study_pooled_noise_spread_and_ratio():
    scores = {"a": {1: 0.50, 2: 0.52}, "b": {1: 0.40, 2: 0.40}, "c": {1: 0.30, 2: 0.34}, "d": {1: 0.9}}
    study = ground_truth.seed_study(scores)
    assert study["cells"] == 3  # d has one seed
    # Within-cell variances (ddof 1): 0.0002, 0, 0.0008 -> pooled SD sqrt(0.001 / 3).
    assert study["seed_noise"] == pytest.approx(math.sqrt(0.001 / 3))
    assert study["spread"] == pytest.approx(np.std([0.51, 0.40, 0.32], ddof=1))
    assert study["ratio"] == pytest.approx(study["seed_noise"] / study["spread"])
    assert study["rho_between_seeds"] == pytest.approx(1.0)
    # Seed 2 is +0.02, 0, +0.04 over seed 1 (common effect +0.02): residuals 0, 0 for a, +-0.01 for b
    # and c -> residual SD sqrt(4 * 0.0001 / ((3 - 1) * (2 - 1))).
    assert study["interaction_noise"] == pytest.approx(math.sqrt(0.0004 / 2))
    # A seed that lifts every cell alike is seed noise, but no noise in the order.
    shifted = ground_truth.seed_study({"a": {1: 0.50, 2: 0.55}, "b": {1: 0.40, 2: 0.45}, "c": {1: 0.3, 2: 0.35}})
    assert shifted["seed_noise"] == pytest.approx(math.sqrt(0.05**2 / 2))
    assert shifted["interaction_noise"] == pytest.approx(0.0, abs=1e-12) and shifted["interaction_ratio"] < 1e-9
    assert ground_truth.seed_study({"a": {1: 0.5, 2: 0.5}, "b": {1: 0.4, 2: 0.4}}) is None


def test_budget_rho_compares_means_of_common_cells():
    scores = {
        300: {"a": {1: 0.5, 2: 0.5}, "b": {1: 0.4}, "c": {1: 0.3}, "x": {1: 0.1}},
        900: {"a": {1: 0.3}, "b": {1: 0.4}, "c": {1: 0.5, 2: 0.5}},
    }
    rho, n = ground_truth.budget_rho(scores, 300, 900)
    assert n == 3 and rho == pytest.approx(-1.0)
    assert math.isnan(ground_truth.budget_rho(scores, 300, 600)[0])


def test_runs_of_the_same_protocol_are_reused_not_retrained(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    _run(source, _Fakes(), template=_template(tmp_path), seeds=(1, 2))  # 6 runs in source/truth.json
    fakes = _Fakes()
    record = ground_truth.run_ground_truth(
        _template(tmp_path), CELLS, ["aspp", ground_truth.CONTINUED], [1, 2, 3], str(tmp_path / "payoff.json"),
        str(tmp_path / "runs"), "cells.json", "cmd", say=lambda line: None,
        train_fn=fakes.train, evaluate_fn=fakes.evaluate, reuse_from=[str(source / "truth.json")],
    )
    # Seeds 1 and 2 of both names come from the source; only seed 3 trains.
    assert [(c.seed, c.model.context) for c in fakes.trained] == [(3, "dpc"), (3, "aspp")]
    assert sorted((r["cell"], r["seed"]) for r in record["runs"]) == [
        ("aspp", 1), ("aspp", 2), ("aspp", 3),
        (ground_truth.CONTINUED, 1), (ground_truth.CONTINUED, 2), (ground_truth.CONTINUED, 3),
    ]
    assert record["runs"][0]["reused_from"].endswith("truth.json: aspp")
    # Cells are matched by graph, not name: "winner" is the source's "published" under another name,
    # and "aspp" here is another graph than the source's "aspp", so it trains.
    params = {**spec_to_params(aspp_cell()), "b0_op": "sep3x3_r1x1"}
    another = params_to_spec(params, SearchSpace(num_branches=5))
    other = [
        fidelity.Cell("winner", "search", published_cell(), published_cell().canonical_hash()),
        fidelity.Cell("aspp", "reference", another, another.canonical_hash()),
    ]
    fakes = _Fakes()
    record = ground_truth.run_ground_truth(
        _template(tmp_path), other, ["winner", "aspp"], [1], str(tmp_path / "other.json"), str(tmp_path / "runs"),
        "cells.json", "cmd", say=lambda line: None, train_fn=fakes.train, evaluate_fn=fakes.evaluate,
        reuse_from=[str(source / "truth.json")],
    )
    assert [c.model.dense_prediction_cell for c in fakes.trained] == [other[1].spec]
    assert {r["cell"]: r.get("reused_from", "").rsplit(": ", 1)[-1] for r in record["runs"]} == {
        "winner": "published", "aspp": ""
    }


def test_reuse_from_another_protocol_is_refused_naming_the_field(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    _run(source, _Fakes(), template=_template(tmp_path), seeds=(1,))
    with pytest.raises(ground_truth.ProtocolMismatch, match=r"truth\.json.*base_learning_rate: 0\.01 -> 0\.001"):
        ground_truth.run_ground_truth(
            _template(tmp_path, base_learning_rate=0.001), CELLS, ["aspp"], [1], str(tmp_path / "payoff.json"),
            str(tmp_path / "runs"), "cells.json", "cmd", say=lambda line: None,
            train_fn=_Fakes().train, evaluate_fn=_Fakes().evaluate, reuse_from=[str(source / "truth.json")],
        )
    assert not (tmp_path / "payoff.json").exists()


def test_report_gives_each_cells_mean_and_sample_standard_deviation_best_first():
    runs = [("aspp", 1, 0.49), ("aspp", 2, 0.50), ("aspp", 3, 0.48), ("searched", 1, 0.51), ("searched", 2, 0.52),
            ("lone", 1, 0.30)]
    record = {"runs": [{"cell": c, "steps": 900, "seed": s, "miou": m} for c, s, m in runs]}
    lines = ground_truth.report_lines(record)
    assert lines[0] == "900 steps: val mIoU per seed and mean"
    # searched: mean 51.50, s.d. sqrt(0.5) = 0.71; aspp: mean 49.00, s.d. 1.00 (ddof 1); one run has no s.d.
    assert [line.split()[0] for line in lines[1:4]] == ["searched", "aspp", "lone"]
    assert lines[1].endswith("mean 51.50 ± 0.71") and lines[2].endswith("mean 49.00 ± 1.00")
    assert lines[3].endswith("mean 30.00")
