"""Progressive two-stage evaluation: Nekrasov's early-termination rule and its place in the search."""

import os

import numpy as np
import pytest
from optuna.trial import TrialState

from deeplab_dpc.nas import progressive
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir
from deeplab_dpc.nas.worker import run_worker
from tests.nas import fakes


def test_a_cell_above_the_running_average_always_continues():
    d = progressive.decide(0.5, [0.3, 0.6, 0.4], 0.0, 0.5, seed=0, number=7)  # mean 0.433
    assert d.go and d.average == pytest.approx(1.3 / 3) and d.draw is None
    assert "beats the running average 0.4333" in d.reason
    first = progressive.decide(0.1, [], 0.0, 0.5, seed=0, number=0)
    assert first.go and first.average is None


def test_the_continue_probability_starts_at_its_initial_value_and_decays_per_earlier_result():
    assert progressive.continue_probability(0, 0.9, 0.98) == pytest.approx(0.9)
    assert progressive.continue_probability(10, 0.9, 0.98) == pytest.approx(0.9 * 0.98**10)
    d = progressive.decide(0.2, [0.5] * 10, 0.9, 0.98, seed=3, number=11)
    assert d.probability == pytest.approx(0.9 * 0.98**10)
    with pytest.raises(ValueError, match="earlier must be >= 0"):
        progressive.continue_probability(-1, 0.9, 0.98)


def test_below_average_cells_continue_with_the_scheduled_probability_for_a_seeded_run():
    # 2,000 below-average trials after 0 and after 50 earlier results: the share that continues is
    # the scheduled probability, and the same seed makes the same decisions.
    for earlier, expected in ((1, 0.9 * 0.98), (50, 0.9 * 0.98**50)):
        past = [0.5] * earlier
        runs = [progressive.decide(0.1, past, 0.9, 0.98, seed=5, number=n) for n in range(2000)]
        share = np.mean([d.go for d in runs])
        p = progressive.continue_probability(earlier, 0.9, 0.98)
        assert p == pytest.approx(expected, rel=1e-12)
        assert abs(share - p) < 4 * np.sqrt(p * (1 - p) / 2000)
        assert all(d.go == (d.draw < d.probability) for d in runs)
        again = [progressive.decide(0.1, past, 0.9, 0.98, seed=5, number=n).go for n in range(2000)]
        assert again == [d.go for d in runs]
    other_seed = [progressive.decide(0.1, [0.5], 0.9, 0.98, seed=6, number=n).go for n in range(200)]
    assert other_seed != [progressive.decide(0.1, [0.5], 0.9, 0.98, seed=5, number=n).go for n in range(200)]


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("initial_probability", 1.5, r"^stage2_initial_probability=1.5 must be a number in \[0, 1\]"),
        ("decay", -0.1, r"^stage2_decay=-0.1 must be"),
        ("trainer", "nope", r"^stage2 trainer='nope': expected 'module:function'"),
    ],
)
def test_stage2_config_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        progressive.Stage2Config(train={}, **{field: value})


def test_a_two_stage_search_records_both_scores_and_rewards_the_last_stage(tmp_path, monkeypatch):
    log = tmp_path / "stage2.log"
    monkeypatch.setenv("FAKE_STAGE2_LOG", str(log))
    stage2 = progressive.Stage2Config(train={}, initial_probability=0.5, decay=0.9, trainer="tests.nas.fakes:stage2")
    config = SearchConfig(
        search_dir=str(tmp_path / "search"), objective="tests.nas.fakes:deterministic", max_trials=25,
        stage2=stage2.to_dict(), mutation_probability=0.0, seed=4,
    )
    assert SearchConfig.from_dict(config.to_dict()) == config
    prepare_search_dir(config)
    study = study_lib.load_study(config, create=True)
    run_worker(config, "w")
    trials = sorted(study.get_trials(), key=lambda t: t.datetime_complete)
    assert len(trials) == 25 and all(t.state == TrialState.COMPLETE for t in trials)
    earlier = []
    for t in trials:
        spec = space_lib.params_to_spec(t.params, config.space)
        proxy = fakes.score(spec)
        attrs = t.user_attrs
        assert attrs["stage1_score"] == pytest.approx(proxy) and attrs["miou"] == pytest.approx(proxy)
        # Replaying the rule on the scores before it gives the recorded decision.
        replay = progressive.decide(proxy, earlier, 0.5, 0.9, seed=4, number=t.number)
        assert replay.to_dict() == attrs["stage2_decision"]
        if replay.go:
            assert attrs["stage"] == 2 and t.value == pytest.approx(proxy + 0.1) == attrs["full_miou"]
            assert attrs["full_run_dir"] == progressive.run_dir(config.search_dir, spec.canonical_hash())
        else:
            assert attrs["stage"] == 1 and t.value == pytest.approx(proxy) and "full_miou" not in attrs
        earlier.append(proxy)
    stage2_runs = log.read_text().splitlines()
    went = [t for t in trials if t.user_attrs["stage"] == 2]
    assert len(stage2_runs) == len(went) and 3 <= len(went) < 25  # some terminated early, some not
    # Below-average cells both continued (the draw) and stopped.
    drawn = [t.user_attrs["stage"] for t in trials if t.user_attrs["stage2_decision"]["draw"] is not None]
    assert 1 in drawn and 2 in drawn
    assert os.path.exists(os.path.join(config.search_dir, "search_config.json"))


def test_a_failing_stage2_fails_the_trial_with_its_reason(tmp_path):
    stage2 = progressive.Stage2Config(train={}, trainer="tests.nas.fakes:no_such_trainer")
    config = SearchConfig(
        search_dir=str(tmp_path / "search"), objective="tests.nas.fakes:deterministic", max_trials=2,
        stage2=stage2.to_dict(),
    )
    prepare_search_dir(config)
    study = study_lib.load_study(config, create=True)
    report = run_worker(config, "w")
    first = study.trials[0]  # the first cell always goes to stage 2
    assert first.state == TrialState.FAIL and first.user_attrs["error"].startswith("stage 2: AttributeError")
    assert report.failed >= 1


@pytest.mark.slow
def test_stage2_trains_the_cell_end_to_end_scores_it_as_eval_does_and_resumes(tmp_path):
    import json

    from absl import flags

    from deeplab_dpc import search, synthetic
    from deeplab_dpc.core.spec import CellSpec

    root = tmp_path / "data"
    descriptor = synthetic.write_segnet_folders(root, {"train": 6, "val": 2}, 64, 80, num_classes=3)
    flagfile = tmp_path / "stage2.flags"
    flagfile.write_text("\n".join([
        f"--dataset={descriptor}", f"--dataset_dir={root}", "--dataset_format=folder:segnet",
        "--depth_multiplier=0.35", "--train_crop_size=64,64", "--train_batch_size=2",
        "--training_number_of_steps=4", "--log_steps=2", "--save_interval_secs=0",
        "--min_scale_factor=1.0", "--max_scale_factor=1.0", "--eval_crop_size=64,80",
    ]) + "\n")
    fv = flags.FlagValues()
    search.define_flags(fv)
    fv(["search", f"--search_dir={tmp_path / 's'}", "--objective=tests.nas.fakes:deterministic",
        f"--stage2_flagfile={flagfile}"])
    config = progressive.Stage2Config.from_dict(search.config_from_flags(fv).stage2)
    spec = CellSpec.from_list([{"op": "conv", "kernel": 3, "rate": [1, 3], "input": -1}])
    run = progressive.run_dir(str(tmp_path / "s"), spec.canonical_hash())
    result = progressive.end_to_end(spec, config, run)
    with open(os.path.join(run, "eval", "latest.json")) as f:
        evaluated = json.load(f)
    assert result["miou"] == pytest.approx(evaluated["miou"]) and 0 < result["miou"] <= 1
    assert result["step"] == 4 == evaluated["step"]
    with open(os.path.join(run, "model_config.json")) as f:
        assert CellSpec.from_list(json.load(f)["dense_prediction_cell"]) == spec
    # A retried trial finds the run done: nothing is trained again, the score is the same.
    assert progressive.end_to_end(spec, config, run)["miou"] == pytest.approx(result["miou"])


def test_the_median_rule_resists_an_outlier_the_mean_does_not():
    earlier = [0.40, 0.41, 0.42, 0.05]  # one broken cell: mean 0.32, median 0.405
    assert progressive.decide(0.39, earlier, 0.0, 1.0, seed=0, number=5).go  # beats the mean
    median = progressive.decide(0.39, earlier, 0.0, 1.0, seed=0, number=5, average="median")
    assert not median.go and median.average == pytest.approx(0.405) and "running median 0.4050" in median.reason
    with pytest.raises(ValueError, match=r"^stage2_average='mode' unknown"):
        progressive.decide(0.39, earlier, 0.0, 1.0, seed=0, number=5, average="mode")
    with pytest.raises(ValueError, match=r"^stage2_average='mode' unknown"):
        progressive.Stage2Config(train={}, average="mode")
