"""The proxy trainer: it learns a cached task, fails loudly on NaN, and its config and output round-trip."""

import dataclasses
import importlib.util
import json
import math
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import proxy_train
from deeplab_dpc.evaluation.metrics import ConfusionMatrix
from deeplab_dpc.nas.features import nearest_indices, write_arrays
from deeplab_dpc.nas.proxy import (
    ProxyConfig,
    TrialFailed,
    interpolation_matrix,
    load_proxy_data,
    resized_argmax,
    run_proxy,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
# A 1x1 conv and a 3x3 conv on it: enough for a task whose label is a per-cell function of the features.
CELL = [
    {"op": "conv", "kernel": 1, "rate": [1, 1], "input": -1},
    {"op": "conv", "kernel": 3, "rate": [1, 1], "input": 0},
]
CROP = (96, 128)  # stride 16: 6 x 8 features


def _task(n, seed):
    """Features N(0, 1) [n, 6, 8, 16]; a cell's label is the argmax of its first 3 channels (crop size)."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 6, 8, 16)).astype("float32")
    labels = np.argmax(features[..., :3], axis=-1).astype("uint8")
    rows, cols = nearest_indices(6, CROP[0]), nearest_indices(8, CROP[1])
    return features, labels[:, rows[:, None], cols[None, :]]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    for split, n, seed in (("train", 48, 0), ("val", 16, 1)):
        features, labels = _task(n, seed)
        write_arrays(
            str(root), split, features, labels, num_classes=3, shard_size=20, class_names=["a", "b", "c"]
        )
    return str(root)


def _fast(cache_dir, **kw):
    args = dict(
        cache_dir=cache_dir,
        proxy_steps=40,
        batch_size=8,
        proxy_filters=16,
        learning_rate=0.3,
        eval_interval=20,
    )
    args.update(kw)
    return ProxyConfig(**args)


def _flags(*args):
    fv = flags.FlagValues()
    proxy_train.define_flags(fv)
    fv(["proxy_train", *args])
    return fv


def test_a_proxy_trial_learns_the_cached_task_and_writes_its_result(cache_dir, tmp_path):
    val_labels = _task(16, 1)[1]
    chance = ConfusionMatrix(3)
    chance.update(val_labels, np.random.default_rng(0).integers(0, 3, val_labels.shape))
    assert 0.15 < chance.mean_iou() < 0.25  # uniform guessing

    spec_path = tmp_path / "cell.json"
    spec_path.write_text(json.dumps(CELL))
    out = tmp_path / "out" / "trial.json"
    fv = _flags(
        f"--cache_dir={cache_dir}",
        f"--dense_prediction_cell_json={spec_path}",
        "--proxy_steps=40",
        "--proxy_batch_size=8",
        "--proxy_filters=16",
        "--proxy_learning_rate=0.3",
        "--proxy_eval_interval=20",
        f"--output_json={out}",
    )
    result = proxy_train.run(fv)
    # Measured 0.63 after 40 steps (2 CPU cores, TensorFlow); uniform guessing scores 0.20.
    assert result["status"] == "ok" and result["miou"] > 0.45
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert not [n for n in os.listdir(out.parent) if n != "trial.json"]  # written through a renamed temporary
    for key in (
        "miou",
        "params",
        "madds",
        "params_256",
        "madds_256",
        "seconds",
        "steps",
        "filters",
        "per_class_iou",
        "history",
        "backend",
    ):
        assert key in result, key
    assert result["steps"] == 40 and result["filters"] == 16 and result["backend"] == "tensorflow"
    assert [h["step"] for h in result["history"]] == [20, 40] and result["history"][-1]["miou"] == result[
        "miou"
    ]
    assert set(result["per_class_iou"]) == {"a", "b", "c"}
    # 1x1 conv 16->16 + BN; 3x3 separable 16->16 (depthwise + BN + pointwise + BN); projection 32->16 + BN.
    assert result["params"] == (256 + 64) + (144 + 64 + 256 + 64) + (512 + 64)
    assert result["madds"] == 48 * (256 + 144 + 256 + 512)
    assert result["params_256"] > 10 * result["params"] and result["madds_256"] > 10 * result["madds"]
    assert 0 < result["train_seconds"] < result["seconds"]


def test_a_diverging_trial_raises_trial_failed_and_the_command_records_it(cache_dir, tmp_path):
    config = _fast(cache_dir, learning_rate=1e12, proxy_steps=20, eval_interval=0)
    with pytest.raises(TrialFailed, match="the loss became (nan|inf)") as failure:
        run_proxy(CELL, config)
    assert 1 <= failure.value.step < 20  # the first non-finite step: the trial stops there, not at its end

    spec_path = tmp_path / "cell.json"
    spec_path.write_text(json.dumps(CELL))
    out = tmp_path / "failed.json"
    fv = _flags(
        f"--cache_dir={cache_dir}",
        f"--dense_prediction_cell_json={spec_path}",
        "--proxy_steps=20",
        "--proxy_filters=16",
        "--proxy_learning_rate=1e12",
        f"--output_json={out}",
    )
    result = proxy_train.run(fv)
    assert result["status"] == "failed" and "the loss became" in result["reason"]
    assert json.loads(out.read_text())["status"] == "failed"


def test_equal_seeds_give_equal_scores_in_one_process(cache_dir):
    config = _fast(cache_dir, proxy_steps=10, eval_interval=0)
    data = load_proxy_data(config)
    first = run_proxy(CELL, config, features=data)
    again = run_proxy(CELL, config, features=data)  # dropout included
    assert first["miou"] == again["miou"] and first["final_loss"] == again["final_loss"]


def test_a_trial_scored_in_segments_trains_on_the_same_batches_as_one_scored_once(cache_dir):
    """Scoring every few steps must not change what the cell trains on: each segment takes exactly its
    steps' batches (fit on a generator used to prefetch batches it then dropped, so later segments'
    batches depended on timing)."""
    seen = {}

    def record(name):
        def on_step(step, total):
            seen.setdefault(name, []).append(step)

        return on_step

    once = run_proxy(CELL, _fast(cache_dir, proxy_steps=30, eval_interval=0), progress=record("once"))
    segmented = run_proxy(CELL, _fast(cache_dir, proxy_steps=30, eval_interval=7), progress=record("segmented"))
    assert [h["step"] for h in segmented["history"]] == [7, 14, 21, 28, 30]
    assert once["miou"] == segmented["miou"]  # the same 30 batches in the same order, the same weights
    assert seen["once"][:30] == seen["segmented"][:30] == list(range(30))


def test_the_segment_loss_is_the_mean_of_its_steps_and_a_nan_ends_it():
    import keras

    from deeplab_dpc.nas.proxy import train_segment

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")  # rate 0: the weights stay
    x = np.ones((4, 2), "float32")
    targets = [np.full((4, 1), v, "float32") for v in (1.0, 2.0, 3.0)]
    prediction = float(model.predict_on_batch(x)[0, 0])
    losses = [(prediction - t[0, 0]) ** 2 for t in targets]
    [loss], raw, [failed] = train_segment(model, iter([(x, t) for t in targets]), 3)
    assert loss == pytest.approx(np.mean(losses), rel=1e-6) and raw is None and failed is None
    bad = iter([(x, targets[0]), (x, np.full((4, 1), np.nan, "float32")), (x, targets[0])])
    _, _, [failed] = train_segment(model, bad, 3)
    assert failed[0] == 2 and math.isnan(failed[1]) and next(bad)[1] is targets[0]  # stopped at step 2


def test_in_a_group_each_output_has_its_own_loss_and_one_that_fails_leaves_the_others_training():
    import keras

    from deeplab_dpc.nas.proxy import train_segment

    inputs = keras.Input((2,))
    fine = keras.layers.Dense(1, name="fine")(inputs)
    huge = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(1e30), name="huge")(inputs)
    model = keras.Model(inputs, [fine, huge])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=["mse", "mse"])
    x, y = np.ones((4, 2), "float32"), np.ones((4, 1), "float32")
    losses, _, failed = train_segment(model, iter([(x, y)] * 3), 3)
    assert math.isfinite(losses[0]) and failed[0] is None
    assert failed[1][0] == 1 and not math.isfinite(failed[1][1])  # (1e30 * 2)^2 overflows float32


def test_cells_trained_in_one_program_score_as_each_trained_alone(cache_dir):
    from deeplab_dpc.nas.proxy import run_proxy_group

    cells = [
        CELL,
        [{"op": "conv", "kernel": 3, "rate": [2, 2], "input": -1}],
        [{"op": "pyramid_pooling", "grid_size": [1, 1], "input": -1},
         {"op": "conv", "kernel": 1, "rate": [1, 1], "input": -1}],
    ]
    config = _fast(cache_dir, proxy_steps=30, eval_interval=15, dropout_rate=0.1)
    data = load_proxy_data(config)
    alone = [run_proxy(cell, config, features=data) for cell in cells]
    together = run_proxy_group(cells, config, features=data)
    for a, b in zip(alone, together):
        assert b["group_size"] == 3 and b["spec"] == a["spec"] and b["madds"] == a["madds"]
        assert [h["step"] for h in b["history"]] == [15, 30]
        # The same weights, batches, dropout masks and updates: the same scores (bitwise here; the
        # tolerance leaves room for a reduction summed in another order).
        assert [h["miou"] for h in b["history"]] == pytest.approx([h["miou"] for h in a["history"]], abs=1e-6)
    # In a group, a cell's loss is its own term, without the weight decay Keras sums over all cells: with
    # none, the losses agree too.
    bare = _fast(cache_dir, proxy_steps=30, eval_interval=0, dropout_rate=0.1, weight_decay=0.0)
    alone = [run_proxy(cell, bare, features=data)["final_loss"] for cell in cells]
    together = [r["final_loss"] for r in run_proxy_group(cells, bare, features=data)]
    assert together == pytest.approx(alone, rel=1e-6)
    with pytest.raises(ValueError, match="one cell per program"):
        run_proxy_group(cells, config, features=data, report=lambda step, miou: None)


def test_scheduled_drop_path_trains_and_changes_the_run_but_not_inference(cache_dir):
    config = _fast(cache_dir, proxy_steps=10, eval_interval=0)
    data = load_proxy_data(config)
    plain = run_proxy(CELL, config, features=data)
    dropped = run_proxy(
        CELL, ProxyConfig.from_dict(dict(config.to_dict(), drop_path_keep_prob=0.5)), features=data
    )
    assert dropped["config"]["drop_path_keep_prob"] == 0.5 and math.isfinite(dropped["miou"])
    assert dropped["final_loss"] != plain["final_loss"]  # branches were dropped in training


def test_features_loaded_for_another_config_are_refused(cache_dir):
    data = load_proxy_data(_fast(cache_dir))
    assert data.train_labels.shape == (48, 24, 32) and data.eval_labels.shape == (
        16,
        *CROP,
    )  # features4x, label
    assert data.train_features.dtype == np.float16
    with pytest.raises(ValueError, match="call load_proxy_data"):
        run_proxy(CELL, _fast(cache_dir, loss_resolution="label"), features=data)
    # The loss on the feature grid itself: labels nearest-sampled to it, no resize in the loss.
    grid = _fast(cache_dir, loss_resolution="features", proxy_steps=20, eval_interval=0)
    on_grid = load_proxy_data(grid)
    rows, cols = nearest_indices(CROP[0], 6), nearest_indices(CROP[1], 8)
    full = load_proxy_data(_fast(cache_dir, loss_resolution="label"))
    np.testing.assert_array_equal(on_grid.train_labels, full.train_labels[:, rows[:, None], cols[None, :]])
    assert run_proxy(CELL, grid, features=on_grid)["miou"] > 0.3  # chance on this 3-class task is ~0.2


def test_features_are_mapped_from_the_cache_and_train_as_features_in_memory_do(cache_dir):
    import dataclasses

    from deeplab_dpc.nas.mapped import ShardedArray

    config = _fast(cache_dir, proxy_steps=20, eval_interval=0)
    data = load_proxy_data(config)
    assert isinstance(data.train_features, ShardedArray) and isinstance(data.eval_features, ShardedArray)
    in_memory = dataclasses.replace(
        data, train_features=np.asarray(data.train_features), eval_features=np.asarray(data.eval_features)
    )
    mapped, read = run_proxy(CELL, config, features=data), run_proxy(CELL, config, features=in_memory)
    assert mapped["miou"] == read["miou"] and mapped["final_loss"] == read["final_loss"]
    # float32 asked for: read and converted, as before.
    assert load_proxy_data(_fast(cache_dir, feature_dtype="float32")).train_features.dtype == np.float32


def test_config_round_trips_through_json():
    config = ProxyConfig(
        cache_dir=os.getcwd(),
        proxy_steps=123,
        learning_rate=0.01,
        loss_resolution="label",
        jit_compile=False,
        max_eval_examples=5,
    )
    assert ProxyConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert ProxyConfig.from_dict({"cache_dir": os.getcwd()}) == ProxyConfig(cache_dir=os.getcwd())
    assert {f.name for f in dataclasses.fields(ProxyConfig)} == set(config.to_dict())


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("proxy_steps", 0, "proxy_steps=0 must be a positive integer"),
        ("batch_size", 2.5, "batch_size=2.5 must be a positive integer"),
        ("proxy_filters", True, "proxy_filters=True must be a positive integer"),
        ("learning_rate", 0.0, "learning_rate=0.0 must be positive"),
        ("learning_rate", float("nan"), "learning_rate=nan must be a finite number"),
        ("weight_decay", -1.0, "weight_decay=-1.0 must be >= 0"),
        ("batch_norm_momentum", 1.0, r"batch_norm_momentum=1.0 must be in \[0, 1\)"),
        (
            "loss_resolution",
            "pixels",
            "loss_resolution='pixels' is unknown; valid: \\['features4x', 'label', 'features'\\]",
        ),
        ("eval_resolution", "x", "eval_resolution='x' is unknown"),
        ("feature_dtype", "bfloat16", "feature_dtype='bfloat16' is unknown"),
        ("seed", -1, "seed=-1 must be an integer >= 0"),
        ("cache_dir", "/nonexistent/cache", "cache_dir=/nonexistent/cache is not a folder"),
    ],
)
def test_validation_errors_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        ProxyConfig.from_dict({"cache_dir": os.getcwd(), field: value})


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match=r"^proxy_stepz is not a ProxyConfig field"):
        ProxyConfig.from_dict({"cache_dir": os.getcwd(), "proxy_stepz": 3})


def test_command_flag_errors_name_the_flag(cache_dir):
    with pytest.raises(app.UsageError, match="--proxy_filters=0 must be a positive integer"):
        proxy_train.config_from_flags(
            _flags(
                f"--cache_dir={cache_dir}",
                "--proxy_filters=0",
                f"--dense_prediction_cell_json={REPO}/experiments/specs/"
                "dense_prediction_cell_branch5_top1_cityscapes.json",
            )
        )
    with pytest.raises(app.UsageError, match="--dense_prediction_cell_json is required"):
        proxy_train.config_from_flags(_flags(f"--cache_dir={cache_dir}"))
    for given in ("--proxy_batch_size=0", "--batch_size=0"):  # named by the flag's name, not the field's
        with pytest.raises(app.UsageError, match="^--proxy_batch_size=0 must be a positive integer"):
            proxy_train.config_from_flags(_flags(f"--cache_dir={cache_dir}", f"--dense_prediction_cell_json={SPEC}", given))


SPEC = REPO / "experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json"
# A value other than the default for each flag renamed to --proxy_<field> (issue 18), by its old name.
RENAMED_VALUES = {
    "train_split": "other_train", "eval_split": "other_val", "batch_size": "4", "learning_rate": "0.05",
    "weight_decay": "1e-4", "batch_norm_momentum": "0.9", "loss_resolution": "label",
    "eval_resolution": "features", "momentum": "0.8", "learning_power": "1.0", "dropout_rate": "0.2",
    "drop_path_keep_prob": "0.7", "ema_decay": "0.99", "initializer": "keras", "eval_interval": "10",
    "feature_dtype": "float32", "max_train_examples": "5", "max_eval_examples": "3", "eval_batch_size": "4",
    "jit_compile": "false", "steps_per_execution": "2", "distillation_weight": "0.5",
    "distillation_loss": "mse", "distillation_temperature": "2",
}


def test_old_flag_names_give_the_config_their_new_names_give(cache_dir):
    assert proxy_train.OLD_NAMES == {old: f"proxy_{old}" for old in RENAMED_VALUES}
    base = (f"--cache_dir={cache_dir}", f"--dense_prediction_cell_json={SPEC}")
    _, default = proxy_train.config_from_flags(_flags(*base))
    for old, value in RENAMED_VALUES.items():
        new = proxy_train.OLD_NAMES[old]
        _, by_old = proxy_train.config_from_flags(_flags(*base, f"--{old}={value}"))
        _, by_new = proxy_train.config_from_flags(_flags(*base, f"--{new}={value}"))
        assert by_old == by_new != default, old
        _, by_both = proxy_train.config_from_flags(_flags(*base, f"--{new}={value}", f"--{old}={value}"))
        assert by_both == by_new, old  # the same value under both names is no conflict


@pytest.mark.parametrize(
    "args",
    [
        ["--learning_rate=0.1", "--proxy_learning_rate=0.3"],
        ["--proxy_learning_rate=0.3", "--learning_rate=0.1"],
        ["--proxy_learning_rate=0.3", "--learning_rate=0.3", "--learning_rate=0.1"],
        ["--flagfile={old}", "--proxy_learning_rate=0.3"],  # an old flagfile: override with its name
    ],
)
def test_an_old_name_given_with_another_value_than_its_new_name_is_a_flag_error(args, tmp_path):
    old_flagfile = tmp_path / "old.flags"
    old_flagfile.write_text("--learning_rate=0.1\n")
    with pytest.raises(
        flags.IllegalFlagValueError, match=r"--proxy_learning_rate=0.3 and its old name --learning_rate=0.1 disagree"
    ):
        _flags(*[a.format(old=old_flagfile) for a in args])


def test_the_help_lists_the_new_names_and_helpfull_the_old_ones():
    def help_text(flag):
        env = dict(os.environ, PYTHONPATH=str(REPO))
        command = [sys.executable, "-m", "deeplab_dpc.proxy_train", flag]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120).stdout

    short = help_text("--help")
    assert all(f"\n  --{new}: " in short for new in proxy_train.FIELD_TO_FLAG.values()), short
    assert not [old for old in proxy_train.OLD_NAMES if f"\n  --{old}: " in short], short
    assert "\n  --learning_rate: Old name of --proxy_learning_rate.\n" in help_text("--helpfull")


def test_labels_are_sampled_where_an_align_corners_resize_samples():
    import keras

    from deeplab_dpc.core.layers import resize_bilinear_align_corners

    assert nearest_indices(360, 92)[[0, -1]].tolist() == [0, 359]
    assert nearest_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    logits = np.random.default_rng(0).normal(size=(2, 4, 5, 3)).astype("float32")
    resized = np.asarray(resize_bilinear_align_corners(keras.ops.convert_to_tensor(logits), (13, 17)))
    rows, cols = interpolation_matrix(4, 13), interpolation_matrix(5, 17)
    np.testing.assert_allclose(np.einsum("Hh,bhwc,Ww->bHWc", rows, logits, cols), resized, atol=1e-5)
    np.testing.assert_array_equal(resized_argmax(logits, (13, 17)), np.argmax(resized, axis=-1))


def test_the_compiled_label_map_gives_the_labels_of_the_numpy_one():
    from deeplab_dpc.nas.proxy import label_map_function

    rng = np.random.default_rng(3)
    logits = rng.normal(size=(4, 23, 30, 11)).astype("float32")
    grid = (360, 480)
    got = label_map_function(logits.shape, grid)(logits)
    want = resized_argmax(logits, grid)
    assert got.shape == want.shape == (4, *grid)
    # Equal wherever float32 rounding cannot swap the two best classes (the exact float64 margin above
    # 1e-5; the interpolated values are below 5 in size, their float32 error near 1e-6).
    rows, cols = interpolation_matrix(23, 360).astype(np.float64), interpolation_matrix(30, 480).astype(np.float64)
    exact = np.sort(np.einsum("Hh,bhwc,Ww->bHWc", rows, logits.astype(np.float64), cols), axis=-1)
    clear = exact[..., -1] - exact[..., -2] > 1e-5
    assert clear.mean() > 0.999
    np.testing.assert_array_equal(got[clear], want[clear])
    assert label_map_function(logits.shape, grid) is label_map_function(logits.shape, grid)  # compiled once


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_the_proxy_trains_on_jax(cache_dir):
    code = (
        "import json, sys; from deeplab_dpc.nas.proxy import ProxyConfig, run_proxy; "
        f"r = run_proxy({CELL!r}, ProxyConfig(cache_dir={cache_dir!r}, proxy_steps=40, batch_size=8, "
        "proxy_filters=16, learning_rate=0.3)); print(json.dumps([r['backend'], r['miou']]))"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend, miou = json.loads(proc.stdout.strip().splitlines()[-1])
    assert backend == "jax" and miou > 0.45


# A trial on the PyTorch backend, then a cell trained alone and second in a program of two (dropout on, no
# weight decay: a cell's loss in a group leaves out the others' decay).
TORCH_TRIAL = """
import json, sys
from deeplab_dpc.nas.proxy import ProxyConfig, load_proxy_data, run_proxy, run_proxy_group

cache_dir, cell, other = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
config = ProxyConfig(
    cache_dir=cache_dir, proxy_steps=40, batch_size=8, proxy_filters=16, learning_rate=0.3, eval_interval=10
)
data = load_proxy_data(config)
trial = run_proxy(cell, config, features=data)
short = ProxyConfig.from_dict(
    dict(config.to_dict(), proxy_steps=6, eval_interval=0, dropout_rate=0.5, weight_decay=0.0)
)
alone = run_proxy(other, short, features=data)["final_loss"]
together = run_proxy_group([cell, other], short, features=data)[1]["final_loss"]
losses = [h["loss"] for h in trial["history"]]
result = dict(backend=trial["backend"], miou=trial["miou"], losses=losses, alone=alone, together=together)
print(json.dumps(result))
"""


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="PyTorch is not installed (.[torch])")
def test_the_proxy_trains_on_torch_and_a_cell_in_a_group_trains_as_alone(cache_dir):
    other = [{"op": "conv", "kernel": 3, "rate": [2, 2], "input": -1}]
    # One torch thread: the tensors are tiny, and a second thread would wait on a core a job beside the
    # tests keeps busy.
    env = dict(os.environ, KERAS_BACKEND="torch", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-c", TORCH_TRIAL, cache_dir, json.dumps(CELL), json.dumps(other)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "torch"
    assert 0.45 < result["miou"] <= 1  # chance is 1/3 (TensorFlow: 0.53)
    losses = result["losses"]  # the mean of each 10 steps
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.8 * losses[0], losses
    # Its dropout masks are its own: torch's unseeded dropout would draw them from one global generator.
    assert result["together"] == pytest.approx(result["alone"], rel=1e-6)


def test_ema_weights_equal_the_hand_computed_average_and_training_continues_from_the_raw_weights():
    import keras

    from deeplab_dpc.nas.proxy import restore_weights, train_segment

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)).astype("float32"), rng.normal(size=(12, 1)).astype("float32")

    def model(ema):
        keras.utils.set_random_seed(0)
        m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
        m.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=ema, ema_momentum=0.6), loss="mse")
        return m

    def batches():
        while True:
            for i in range(0, 12, 4):
                yield x[i : i + 4], y[i : i + 4]

    averaged, plain = model(True), model(False)
    data, plain_data, raw_steps = batches(), batches(), []
    for _ in range(3):  # three one-step segments, as a proxy with eval_interval=1
        _, raw, _ = train_segment(averaged, data, 1)
        raw_steps.append(raw)
        if len(raw_steps) < 3:
            restore_weights(averaged, raw)
        assert train_segment(plain, plain_data, 1)[1] is None  # no EMA: nothing to keep
    # Training went on from the raw weights: they equal the same segments without EMA.
    for got, want in zip(raw_steps[-1], plain.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    # The model holds the average: a_1 = w_1, a_t = 0.6 a_(t-1) + 0.4 w_t.
    expected = [w.copy() for w in raw_steps[0]]
    for raw in raw_steps[1:]:
        expected = [0.6 * a + 0.4 * w for a, w in zip(expected, raw)]
    for got, want in zip(averaged.get_weights(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    assert not np.allclose(averaged.get_weights()[0], raw_steps[-1][0])


def test_a_proxy_trial_with_ema_scores_the_average(cache_dir):
    config = _fast(cache_dir, proxy_steps=20, eval_interval=10, ema_decay=0.9)
    result = run_proxy(CELL, config)
    assert result["config"]["ema_decay"] == 0.9 and len(result["history"]) == 2
    assert [h["step"] for h in result["history"]] == [10, 20]
    assert result["miou"] > 0.3  # chance on this 3-class task is ~0.2
    with pytest.raises(ValueError, match="ema_decay=1.0 must be in"):
        _fast(cache_dir, ema_decay=1.0)


def test_the_proxy_cell_takes_the_models_initialisers(cache_dir):
    from deeplab_dpc.core.spec import CellSpec
    from deeplab_dpc.nas.proxy import build_proxy_model

    spec = CellSpec.from_list([{"op": "conv", "kernel": 3, "rate": [1, 1], "input": -1}])

    def depthwise_std(initializer):
        model = build_proxy_model(spec, _fast(cache_dir, initializer=initializer), (6, 8, 16), 3, 16)
        [kernel] = [w for w in model.weights if "depthwise" in w.path and w.path.endswith("kernel")]
        return float(np.std(np.asarray(kernel)))

    assert 0.2 < depthwise_std("deeplab") < 0.33  # truncated normal of stddev 0.33
    assert depthwise_std("keras") < 0.2  # glorot_uniform over 9 x 16 fan-in + 9 x 1 fan-out
    with pytest.raises(ValueError, match="initializer='he' is unknown"):
        _fast(cache_dir, initializer="he")


def test_intermediate_scores_reach_the_pruner_and_a_prune_stops_the_trial(cache_dir):
    import optuna

    config = _fast(cache_dir, proxy_steps=30, eval_interval=10)
    seen = []

    def report(step, miou):
        seen.append((step, miou))
        if step == 20:
            raise optuna.TrialPruned("stop")

    with pytest.raises(optuna.TrialPruned):
        run_proxy(CELL, config, progress=lambda step, total: seen.append(("progress", step)), report=report)
    scores = [s for s in seen if s[0] != "progress"]
    assert [s[0] for s in scores] == [10, 20] and all(0 <= m <= 1 for _, m in scores)
    assert max(step for kind, step in seen if kind == "progress") < 30  # no step past the prune
    full = run_proxy(CELL, config, report=lambda step, miou: None)
    assert [h["step"] for h in full["history"]] == [10, 20, 30] and full["latency_ms"] > 0
    assert [h["miou"] for h in full["history"][:2]] == pytest.approx([m for _, m in scores])


def test_trials_in_one_process_leave_no_traced_graphs_behind(cache_dir):
    """A search worker runs hundreds of trials in one process: each must free its traced functions.

    On TensorFlow, Keras' optimizer used to make its slots inside the first traced step (tf.cond branch
    graphs TensorFlow keeps) and to all-reduce gradients through a custom gradient that TensorFlow's
    process-wide registry keeps forever: 20 MB a trial on CamVid's proxy.
    """
    import gc

    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip("the graphs and the gradient registry are TensorFlow's")
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.framework.func_graph import FuncGraph

    config = _fast(cache_dir, proxy_steps=4, eval_interval=0)
    data = load_proxy_data(config)

    def alive():
        gc.collect()
        graphs = sum(isinstance(o, FuncGraph) for o in gc.get_objects())
        return graphs, len(tf_ops._gradient_registry._registry)

    run_proxy(CELL, config, data)
    after_one = alive()
    for _ in range(2):
        run_proxy(CELL, config, data)
    assert alive() == after_one
