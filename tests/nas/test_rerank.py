"""Re-ranking: which cells, where runs start, flags, full-score records, resuming, the winner's JSON.

Studies are built trial by trial (``add``), so every proxy score is known. The
orchestration tests replace training and evaluation by fakes; one slow test
trains two cells for real on generated data, is cut short and resumes.
"""

import json
import os

import numpy as np
import pytest
from absl import app, flags
from optuna.trial import TrialState, create_trial

from deeplab_dpc import rerank as rerank_main
from deeplab_dpc import synthetic
from deeplab_dpc import train as train_main
from deeplab_dpc.core.spec import CellSpec, SearchSpace
from deeplab_dpc.nas import features as features_lib
from deeplab_dpc.nas import rerank as rerank_lib
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir

# --------------------------------------------------------------------------- helpers (also used by test_analysis)


def cell(*ops, inputs=None):
    """A cell from op names (``conv1x1``, ``sep3x3_r6x6``, ``pool_2x2``), every branch reading the
    backbone unless ``inputs`` says otherwise."""
    inputs = inputs or [-1] * len(ops)
    return CellSpec(tuple(space_lib.op_from_name(op).with_input(i) for op, i in zip(ops, inputs)))


def make_search(tmp_path, num_branches=2, proxy=None, name="search"):
    """A search folder (config + SQLite study) whose trials the test adds itself."""
    config = SearchConfig(
        search_dir=str(tmp_path / name),
        objective="tests.nas.fakes:deterministic",
        num_branches=num_branches,
        proxy=proxy or {},
    )
    prepare_search_dir(config)
    return config, study_lib.load_study(config, create=True)


def add(
    study, spec, value=None, *, state=TrialState.COMPLETE, duplicate_of=None, error=None, worker="w0", **attrs
):
    """Adds one finished trial of ``spec`` as a search worker records it; returns its number."""
    space_size = len(spec.branches)

    user_attrs = {
        trial_store.SPEC: spec.to_json(),
        trial_store.GRAPH_HASH: spec.canonical_hash(),
        "madds": attrs.pop("madds", 1e9),
        "params": attrs.pop("params", 1000),
        "seconds": attrs.pop("seconds", 12.5),
        **attrs,
    }
    if duplicate_of is not None:
        user_attrs[trial_store.DUPLICATE_OF] = duplicate_of
    if error is not None:
        user_attrs[trial_store.ERROR] = error
    trial = create_trial(
        state=state,
        value=value if state == TrialState.COMPLETE else None,
        params=space_lib.spec_to_params(spec),
        distributions=space_lib.distributions(SearchSpace(num_branches=space_size)),
        user_attrs=user_attrs,
        system_attrs={trial_store.OWNER: {"host": "h", "pid": 1, "start": 1, "worker": worker}},
    )
    study.add_trial(trial)
    return study.trials[-1].number


A = cell("conv1x1", "sep3x3_r6x6")
B = cell("sep3x3_r1x1", "pool_2x2")
C = cell("pool_1x1", "conv1x1")
D = cell("sep3x3_r12x12", "conv1x1", inputs=[-1, 0])
E = cell("sep3x3_r18x18", "sep3x3_r3x3", inputs=[-1, 0])
# D's graph written with its branches in another order is the same cell.
B_REORDERED = cell("pool_2x2", "sep3x3_r1x1")


def standard_study(tmp_path, **kw):
    """Trials: 0 A 0.50, 1 B 0.60, 2 B (reordered) duplicate of 1, 3 C failed, 4 D 0.55, 5 E 0.40."""
    config, study = make_search(tmp_path, **kw)
    add(study, A, 0.50)
    add(study, B, 0.60)
    add(study, B_REORDERED, 0.60, duplicate_of=1)
    add(study, C, state=TrialState.FAIL, error="FakeNaN: loss became NaN at step 3")
    add(study, D, 0.55, madds=2e9)
    add(study, E, 0.40, madds=5e8)
    return config, study


# --------------------------------------------------------------------------- selection


def test_candidates_are_the_top_distinct_completed_cells_by_proxy_score(tmp_path):
    config, study = standard_study(tmp_path)
    trials = trial_store.all_trials(study)
    chosen, notes = rerank_lib.select_candidates(trials, config.space, top_k=3)
    assert [(c.number, c.proxy_miou, c.proxy_rank) for c in chosen] == [
        (1, 0.60, 1),
        (4, 0.55, 2),
        (0, 0.50, 3),
    ]
    assert chosen[0].spec == B and chosen[0].graph_hash == B.canonical_hash() and not notes
    everything, _ = rerank_lib.select_candidates(trials, config.space, top_k=50)
    assert [c.number for c in everything] == [1, 4, 0, 5]  # the duplicate and the failure left out


def test_spread_cells_cover_the_rest_of_the_proxy_ranking(tmp_path):
    assert rerank_lib.spread_ranks(10, 3) == [0, 4, 9]  # best, middle, worst of the rest
    assert rerank_lib.spread_ranks(10, 1) == [5]
    assert rerank_lib.spread_ranks(3, 5) == [0, 1, 2]
    assert rerank_lib.spread_ranks(0, 2) == [] and rerank_lib.spread_ranks(5, 0) == []
    config, study = standard_study(tmp_path)  # distinct by proxy score: 1, 4, 0, 5
    trials = trial_store.all_trials(study)
    chosen, _ = rerank_lib.select_candidates(trials, config.space, top_k=1, spread_k=2)
    assert [(c.number, c.proxy_rank) for c in chosen] == [(1, 1), (4, 2), (5, 4)]
    with pytest.raises(ValueError, match="spread_k"):
        rerank_lib.RerankConfig(search_dir=str(tmp_path), train=None, spread_k=-1)


def test_reference_cells_are_found_by_graph_and_added(tmp_path):
    config, study = make_search(tmp_path, num_branches=5)
    published = space_lib.published_cell()
    aspp_reordered = CellSpec(tuple(reversed(space_lib.aspp_cell().branches)))  # ASPP-equivalent
    add(study, published, 0.30)  # trial 0
    add(study, cell("conv1x1", "conv1x1", "conv1x1", "conv1x1", "conv1x1", inputs=[-1, 0, 1, 2, 3]), 0.70)
    add(study, aspp_reordered, 0.20)
    chosen, notes = rerank_lib.select_candidates(
        trial_store.all_trials(study), config.space, 1, include_reference=True
    )
    assert [(c.number, c.reference) for c in chosen] == [(1, None), (0, "published_cityscapes"), (2, "aspp")]
    assert chosen[2].proxy_rank == 3 and not notes
    # A reference already among the top K is marked, not added twice; one not in the study is a note.
    config2, study2 = make_search(tmp_path, num_branches=5, name="other")
    add(study2, aspp_reordered, 0.9)
    chosen, notes = rerank_lib.select_candidates(
        trial_store.all_trials(study2), config2.space, 1, include_reference=True
    )
    assert [(c.number, c.reference) for c in chosen] == [(0, "aspp")]
    assert len(notes) == 1 and notes[0].startswith("reference cell published_cityscapes is not among")


# --------------------------------------------------------------------------- records


def test_full_scores_are_recorded_in_the_study_and_read_back(tmp_path):
    config, study = standard_study(tmp_path)
    rerank_lib.record_full_score(study, 4, {"full_miou": np.float32(0.25), "full_run_dir": "/r/4"})
    rerank_lib.record_full_score(study, 1, {"full_miou": 0.5, "full_run_dir": "/r/1", "full_seconds": 3.0})
    again = rerank_lib.open_study(rerank_lib.load_search_config(config.search_dir))  # another process's view
    records = rerank_lib.full_scores(again)
    assert records == {
        4: {"full_miou": 0.25, "full_run_dir": "/r/4"},
        1: {"full_miou": 0.5, "full_run_dir": "/r/1", "full_seconds": 3.0},
    }
    assert again.user_attrs["full_trial_00004"]["full_miou"] == 0.25
    assert rerank_lib.best_record(records)[0] == 1
    assert rerank_lib.best_record(records, numbers={4})[0] == 4
    assert rerank_lib.best_record({3: {"full_error": "NaN"}}) is None


def test_a_folder_without_a_search_is_refused_naming_search_dir(tmp_path):
    with pytest.raises(ValueError, match=f"^search_dir={tmp_path} has no search_config.json"):
        rerank_lib.load_search_config(str(tmp_path))


def test_eta_is_the_mean_run_time_times_the_runs_left():
    assert rerank_lib.eta_seconds([100.0, 300.0], 3) == 600.0
    assert np.isnan(rerank_lib.eta_seconds([], 2)) and rerank_lib.eta_seconds([5.0], 0) == 0.0


# --------------------------------------------------------------------------- flags


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    descriptor = synthetic.write_segnet_folders(root, {"train": 8, "val": 3}, 64, 80, num_classes=3)
    return str(root), descriptor


def training_flags(dataset, steps=6):
    root, descriptor = dataset
    return [
        f"--dataset={descriptor}",
        f"--dataset_dir={root}",
        "--dataset_format=folder:segnet",
        "--depth_multiplier=0.35",
        "--train_crop_size=64,64",
        "--train_batch_size=2",
        f"--training_number_of_steps={steps}",
        "--log_steps=3",
        "--save_interval_secs=0",
        "--min_scale_factor=1.0",
        "--max_scale_factor=1.0",
        "--base_learning_rate=0.05",
        "--batch_norm_momentum=0.9",
        "--eval_crop_size=64,80",
    ]


def parse(*argv):
    fv = flags.FlagValues()
    rerank_main.define_flags(fv)
    fv(["rerank", *argv])
    return fv


def write_flagfile(tmp_path, lines):
    path = tmp_path / "train.flags"
    path.write_text("# a training flagfile\n" + "\n".join(lines) + "\n")
    return str(path)


def test_a_training_flagfile_becomes_the_rerank_config(tmp_path, dataset):
    config, _ = standard_study(tmp_path)
    flagfile = write_flagfile(tmp_path, training_flags(dataset))
    fv = parse(
        f"--search_dir={config.search_dir}", "--top_k=3", f"--flagfile={flagfile}", "--eval_scales=1.0,1.5"
    )
    rerank = rerank_main.config_from_flags(fv)
    assert (rerank.top_k, rerank.eval_split, rerank.eval_scales, rerank.eval_crop_size) == (
        3,
        "val",
        (1.0, 1.5),
        (64, 80),
    )
    assert rerank.runs_dir == os.path.join(config.search_dir, "rerank")
    assert rerank.train.training_number_of_steps == 6 and rerank.train.model.depth_multiplier == 0.35
    assert rerank.train.tf_initial_checkpoint is None
    assert any("names no feature cache" in n for n in rerank.notes)
    one = rerank.train_config_for(rerank_lib.Candidate(4, D.canonical_hash(), D, 0.55, 2))
    assert one.model.dense_prediction_cell == D and one.model.context == "dpc"
    assert one.train_logdir == os.path.join(config.search_dir, "rerank", "trial_00004")
    # --train_logdir is the folder of the runs.
    fv = parse(
        f"--search_dir={config.search_dir}", f"--flagfile={flagfile}", f"--train_logdir={tmp_path}/runs"
    )
    assert rerank_main.config_from_flags(fv).run_dir(7) == f"{tmp_path}/runs/trial_00007"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--top_k=0"], "--top_k must be a positive integer"),
        (["--context=aspp"], "--context=aspp: re-ranking trains each cell"),
        (["--eval_scales=0"], "--eval_scales must be positive"),
        (["--eval_crop_size=64,x"], "--eval_crop_size="),
        (["--base_learning_rate=0"], "--base_learning_rate must be positive"),
    ],
)
def test_flag_errors_name_the_flag(tmp_path, dataset, extra, message):
    config, _ = standard_study(tmp_path)
    fv = parse(f"--search_dir={config.search_dir}", *training_flags(dataset), *extra)
    with pytest.raises(app.UsageError, match=message):
        rerank_main.config_from_flags(fv)


def test_search_dir_is_required_and_must_be_a_search(tmp_path, dataset):
    with pytest.raises(app.UsageError, match="--search_dir is required"):
        rerank_main.config_from_flags(parse(*training_flags(dataset)))
    with pytest.raises(app.UsageError, match=f"--search_dir={tmp_path} has no search_config.json"):
        rerank_main.config_from_flags(parse(f"--search_dir={tmp_path}", *training_flags(dataset)))


def test_runs_start_from_the_feature_caches_checkpoint_unless_one_is_given(tmp_path, dataset):
    cache_dir = str(tmp_path / "cache")
    features_lib.write_arrays(
        cache_dir, "train", np.zeros((2, 4, 4, 8)), np.zeros((2, 64, 64)), num_classes=3
    )
    manifest_path = features_lib.manifest_path(cache_dir, "train")
    checkpoint = tmp_path / "backbone_run" / "ckpt-00000100.weights.h5"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    config, _ = standard_study(tmp_path, proxy={"cache_dir": cache_dir, "train_split": "train"})
    base = [f"--search_dir={config.search_dir}", *training_flags(dataset)]

    # Features of arrays (no checkpoint): nothing to start from, said so.
    rerank = rerank_main.config_from_flags(parse(*base))
    assert rerank.train.tf_initial_checkpoint is None
    assert any("not a checkpoint that tf_initial_checkpoint takes" in n for n in rerank.notes)

    manifest = json.loads(open(manifest_path).read())
    manifest["backbone"] = {
        "weights": "checkpoint",
        "checkpoint": str(checkpoint),
        "model_variant": "mobilenet_v2",
        "output_stride": 16,
        "depth_multiplier": 0.35,
        "endpoint": "features",
    }
    open(manifest_path, "w").write(json.dumps(manifest))
    rerank = rerank_main.config_from_flags(parse(*base))
    assert rerank.train.tf_initial_checkpoint == str(checkpoint)
    assert rerank.train_config_for(rerank_lib.Candidate(0, "h", A, 0.5, 1)).tf_initial_checkpoint == str(
        checkpoint
    )
    # The flagfile's own checkpoint wins.
    other = tmp_path / "other.weights.h5"
    other.write_bytes(b"x")
    assert rerank_main.config_from_flags(
        parse(*base, f"--tf_initial_checkpoint={other}")
    ).train.tf_initial_checkpoint == str(other)
    # Another backbone than the cache's would copy nothing: refused naming the flag.
    with pytest.raises(
        app.UsageError, match=r"^--depth_multiplier=1.0 differs from the backbone of the feature cache"
    ):
        rerank_main.config_from_flags(parse(*base, "--depth_multiplier=1.0"))
    checkpoint.unlink()
    with pytest.raises(
        app.UsageError,
        match="--tf_initial_checkpoint: the feature cache's backbone checkpoint .* no longer exists",
    ):
        rerank_main.config_from_flags(parse(*base))


# --------------------------------------------------------------------------- the loop, with fake training


def fake_score(spec):
    """A full mIoU that ranks cells differently from their proxy score: E > A > D > B."""
    return {
        E.canonical_hash(): 0.9,
        A.canonical_hash(): 0.7,
        D.canonical_hash(): 0.5,
        B.canonical_hash(): 0.3,
    }[spec.canonical_hash()]


class FakeTraining:
    """Stands in for train_lib.train and eval_lib: writes a checkpoint file, scores by ``fake_score``."""

    def __init__(self, monkeypatch, fail_on=None, diverge_on=None):
        self.trained = []
        self.fail_on, self.diverge_on = fail_on, diverge_on
        monkeypatch.setattr(rerank_lib, "_train_cell", self.train)
        monkeypatch.setattr(rerank_lib, "_evaluate_cell", self.evaluate)

    def train(self, train_config, verbose):
        spec = train_config.model.dense_prediction_cell
        if spec == self.fail_on:
            raise KeyboardInterrupt("killed")
        if spec == self.diverge_on:
            from deeplab_dpc.training.train_lib import TrainingDiverged  # noqa: PLC0415

            raise TrainingDiverged("the loss became NaN or infinite at step 4; training stopped.")
        self.trained.append(spec)
        return {"step": train_config.training_number_of_steps, "resumed_from": 0}

    def evaluate(self, config, train_config):
        return {
            "miou": fake_score(train_config.model.dense_prediction_cell),
            "step": train_config.training_number_of_steps,
            "pixel_accuracy": 0.95,
        }


def rerank_config(tmp_path, dataset, search_config, **kw):
    fv = parse(f"--search_dir={search_config.search_dir}", *training_flags(dataset))
    config = rerank_main.config_from_flags(fv)
    import dataclasses  # noqa: PLC0415

    return dataclasses.replace(config, **kw)


def test_rerank_records_full_scores_writes_the_winner_and_skips_recorded_cells(
    tmp_path, dataset, monkeypatch, capsys
):
    import io  # noqa: PLC0415

    search, study = standard_study(tmp_path)
    config = rerank_config(tmp_path, dataset, search, top_k=4)
    fake = FakeTraining(monkeypatch)
    out = io.StringIO()
    summary = rerank_lib.run_rerank(config, stream=out, verbose=0)
    assert fake.trained == [B, D, A, E] and summary["trained"] == 4
    records = rerank_lib.full_scores(study)
    assert {n: r["full_miou"] for n, r in records.items()} == {1: 0.3, 4: 0.5, 0: 0.7, 5: 0.9}
    assert records[5]["proxy_miou"] == 0.40 and records[5]["proxy_rank"] == 4
    assert records[5]["full_run_dir"] == os.path.join(search.search_dir, "rerank", "trial_00005")
    assert records[5]["full_seconds"] >= 0 and records[5]["full_step"] == 6
    # The winner (4th by proxy score) as DeepLab JSON, in the search folder and beside the runs.
    assert summary["best_trial"] == 5 and summary["best_proxy_rank"] == 4
    for path in (
        os.path.join(search.search_dir, "best_cell.json"),
        os.path.join(config.runs_dir, "best_cell.json"),
    ):
        assert CellSpec.load(path) == E
    # Proxy 0.6, 0.55, 0.5, 0.4 vs full 0.3, 0.5, 0.7, 0.9: perfectly reversed.
    assert summary["spearman_rho"] == pytest.approx(-1.0)
    text = out.getvalue()
    assert "[1/4] trial 1 (proxy mIoU 0.6000, #1 by proxy): training in" in text and "ETA ?" in text
    assert "[2/4] trial 4" in text and "ETA" in text.split("[2/4] trial 4")[1].splitlines()[0]
    assert (
        "best cell after re-ranking: trial 5, full mIoU 0.9000 (#1 of 4 by full score, #4 by proxy score)"
        in text
    )
    with open(os.path.join(config.runs_dir, "rerank.json")) as f:
        assert json.load(f)["best_trial"] == 5
    assert CellSpec.load(os.path.join(config.run_dir(4), "cell.json")) == D

    # Rerunning trains nothing; a larger K trains only the new cell.
    fake.trained.clear()
    again = rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    assert fake.trained == [] and again["trained"] == 0 and again["best_trial"] == 5


def test_the_best_cell_json_loads_unchanged_into_train(tmp_path, dataset, monkeypatch):
    import io  # noqa: PLC0415

    search, _ = standard_study(tmp_path)
    FakeTraining(monkeypatch)
    summary = rerank_lib.run_rerank(
        rerank_config(tmp_path, dataset, search, top_k=4), stream=io.StringIO(), verbose=0
    )
    best = summary["best_cell"]
    with open(best) as f:
        assert json.load(f) == E.to_list()  # DeepLab's list of branch dicts
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    root, descriptor = dataset
    fv(
        [
            "train",
            f"--dataset={descriptor}",
            f"--dataset_dir={root}",
            "--dataset_format=folder:segnet",
            f"--train_logdir={tmp_path}/final",
            f"--dense_prediction_cell_json={best}",
        ]
    )
    model = train_main.config_from_flags(fv).model
    assert model.context == "dpc" and model.dense_prediction_cell == E


def test_a_killed_rerank_resumes_where_it_stopped(tmp_path, dataset, monkeypatch):
    import io  # noqa: PLC0415

    search, study = standard_study(tmp_path)
    config = rerank_config(tmp_path, dataset, search, top_k=3)
    fake = FakeTraining(monkeypatch, fail_on=D)
    with pytest.raises(KeyboardInterrupt):
        rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    assert fake.trained == [B] and set(rerank_lib.full_scores(study)) == {1}
    fake.fail_on = None
    rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    assert fake.trained == [B, D, A] and set(rerank_lib.full_scores(study)) == {1, 4, 0}


def test_a_diverged_cell_is_recorded_as_a_failure_not_a_score(tmp_path, dataset, monkeypatch):
    import io  # noqa: PLC0415

    search, study = standard_study(tmp_path)
    config = rerank_config(tmp_path, dataset, search, top_k=3)
    fake = FakeTraining(monkeypatch, diverge_on=A)
    out = io.StringIO()
    summary = rerank_lib.run_rerank(config, stream=out, verbose=0)
    records = rerank_lib.full_scores(study)
    assert "full_miou" not in records[0] and records[0]["full_error"].startswith("the loss became NaN")
    assert summary["best_trial"] == 4  # D 0.5 beats B 0.3; A has no score
    assert "trial 0 (proxy mIoU 0.5000, #3 by proxy): failed: the loss became NaN" in out.getvalue()
    fake.trained.clear()
    rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    assert fake.trained == []  # a failure is recorded: not retrained


def test_other_training_settings_are_refused_naming_the_flags(tmp_path, dataset, monkeypatch):
    import dataclasses  # noqa: PLC0415
    import io  # noqa: PLC0415

    search, _ = standard_study(tmp_path)
    config = rerank_config(tmp_path, dataset, search, top_k=1)
    FakeTraining(monkeypatch)
    rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    changed = dataclasses.replace(
        config, train=dataclasses.replace(config.train, base_learning_rate=0.1), eval_scales=(1.0, 1.5)
    )
    with pytest.raises(
        rerank_lib.SettingsMismatch,
        match=r"\(--base_learning_rate: 0.05 -> 0.1; --eval_scales: \[1.0\] -> \[1.0, 1.5\]\)",
    ):
        rerank_lib.run_rerank(changed, stream=io.StringIO(), verbose=0)
    # Through the entry point the error is a usage error; logging and saving may change.
    fv = parse(f"--search_dir={search.search_dir}", *training_flags(dataset), "--base_learning_rate=0.1")
    with pytest.raises(app.UsageError, match=r"\(--base_learning_rate: 0.05 -> 0.1\)"):
        rerank_main.run(rerank_main.config_from_flags(fv), fv, verbose=0)
    relaxed = dataclasses.replace(config, top_k=2, train=dataclasses.replace(config.train, log_steps=2))
    assert rerank_lib.run_rerank(relaxed, stream=io.StringIO(), verbose=0)["trained"] == 1


# --------------------------------------------------------------------------- for real


@pytest.mark.slow
def test_rerank_trains_two_cells_end_to_end_and_resumes_a_cut_short_run(tmp_path, dataset, monkeypatch):
    """Two cells, 6 steps each on generated data; the second run is killed at step 4 (after the
    checkpoint of step 3) and resumes from it; a third call trains nothing."""
    import io  # noqa: PLC0415

    from deeplab_dpc.training import train_lib  # noqa: PLC0415

    search, study = make_search(tmp_path)
    add(study, A, 0.5)
    add(study, D, 0.6)
    add(study, E, 0.4)
    config = rerank_config(tmp_path, dataset, search, top_k=2)
    original = train_lib._Monitor.on_train_batch_end
    calls = []

    def die_in_second_run(self, batch, logs=None):
        original(self, batch, logs)
        if self.config.model.dense_prediction_cell == A and self._step() == 4 and not calls:
            calls.append(self.config.train_logdir)
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_lib._Monitor, "on_train_batch_end", die_in_second_run)
    with pytest.raises(KeyboardInterrupt):
        rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    records = rerank_lib.full_scores(study)
    assert set(records) == {1}
    assert os.path.exists(os.path.join(config.run_dir(0), "ckpt-00000003.weights.h5"))

    summary = rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    records = rerank_lib.full_scores(study)
    assert summary["trained"] == 1 and set(records) == {0, 1}
    assert records[0]["resumed_from_step"] == 3 and records[0]["full_step"] == 6
    for number in (0, 1):
        with open(os.path.join(config.run_dir(number), "eval", "latest.json")) as f:
            evaluated = json.load(f)
        assert records[number]["full_miou"] == pytest.approx(evaluated["miou"])
        assert 0.0 < records[number]["full_miou"] <= 1.0 and evaluated["step"] == 6
    best = max((0, 1), key=lambda n: records[n]["full_miou"])
    assert CellSpec.load(os.path.join(search.search_dir, "best_cell.json")) == (A if best == 0 else D)

    monkeypatch.setattr(train_lib, "train", lambda *a, **k: pytest.fail("a recorded cell was trained again"))
    assert rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)["trained"] == 0
