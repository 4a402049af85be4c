"""Polyak averaging in full training (``ema_decay``): the average a step leaves, what is evaluated and
saved, and an interrupted run resuming both the raw weights and the average exactly."""

import json

import h5py
import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import synthetic, train as train_main
from deeplab_dpc.core.model import ModelConfig
from deeplab_dpc.data.batches import DataConfig
from deeplab_dpc.runs import load_model_for_inference
from deeplab_dpc.training import checkpoints, train_lib
from deeplab_dpc.training.config import ResumeMismatch, TrainConfig, check_resume
from tests.training.tiny import tiny_train_config

DECAY = 0.6  # low, so that a few steps leave the average far from the raw weights


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_ema")
    descriptor = synthetic.write_segnet_folders(root, {"train": 8, "val": 2}, 48, 48, num_classes=3)
    return str(root), descriptor


def _config(dataset, logdir, **kw):
    model = ModelConfig(
        num_classes=3, context="aspp", depth_multiplier=0.35, dropout_rate=0.0, initializer="keras"
    )
    fields = dict(train_crop_size=(48, 48), base_learning_rate=0.05, training_number_of_steps=6, log_steps=2)
    fields.update(kw)
    return tiny_train_config(dataset, logdir, model, **fields)


def _recording(monkeypatch):
    """Patches the monitor to record the raw trainable weights after every step, the weights each
    evaluation sees, and those around each epoch end; returns the three lists."""
    monitor = train_lib._Monitor
    steps, evaluated, around = [], [], []
    after_step, epoch_end, evaluate = (
        monitor.on_train_batch_end,
        monitor.on_epoch_end,
        monitor._evaluate_current,
    )

    def weights(model):
        return [keras_numpy(v) for v in model.trainable_variables]

    def record_step(self, batch, logs=None):
        after_step(self, batch, logs)  # TensorFlow runs this synchronously, after the step's update
        steps.append(weights(self.model))

    def record_epoch_end(self, epoch, logs=None):
        before = weights(self.model)
        epoch_end(self, epoch, logs)
        around.append((before, weights(self.model)))

    def record_evaluation(self, step):
        evaluated.append((step, weights(self.model)))
        return evaluate(self, step)

    monkeypatch.setattr(monitor, "on_train_batch_end", record_step)
    monkeypatch.setattr(monitor, "on_epoch_end", record_epoch_end)
    monkeypatch.setattr(monitor, "_evaluate_current", record_evaluation)
    return steps, evaluated, around


def keras_numpy(variable):
    import keras

    return np.array(keras.ops.convert_to_numpy(variable))


def _average(raw_steps, decay):
    """a_1 = w_1, a_t = decay a_(t-1) + (1 - decay) w_t, in NumPy (float64)."""
    average = [w.astype(np.float64) for w in raw_steps[0]]
    for raw in raw_steps[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, raw)]
    return average


def _optimizer_average(config, checkpoint):
    """The moving average a checkpoint's optimizer variables hold (loaded into a compiled model)."""
    model = train_lib.build_and_compile(config)
    model.load_weights(checkpoint)
    with train_lib.averaged_weights(model):
        return [keras_numpy(v) for v in model.trainable_variables]


@pytest.mark.slow  # ~45 s on 2 shared cores
def test_the_average_is_the_hand_computed_one_and_the_final_checkpoint_holds_it(
    dataset, tmp_path, monkeypatch
):
    from deeplab_dpc.evaluation import eval_lib

    root, descriptor = dataset
    config = _config(
        dataset,
        tmp_path / "ema",
        ema_decay=DECAY,
        eval_split="val",
        eval_interval_steps=2,
        eval_crop_size=(48, 48),
        keep_checkpoint_max=10,
        num_summary_images=0,
    )
    raw_steps, evaluated, around = _recording(monkeypatch)
    summary = train_lib.train(config, verbose=0)
    assert summary["step"] == 6 and len(raw_steps) == 6
    expected = _average(raw_steps, DECAY)

    # The final checkpoint's weights are the average of the six steps' raw weights, not the raw weights.
    final, _ = load_model_for_inference(str(tmp_path / "ema"))
    got = [keras_numpy(v) for v in final.trainable_variables]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    moved = [not np.allclose(g, w, rtol=1e-3, atol=1e-5) for g, w in zip(got, raw_steps[-1])]
    assert sum(moved) > len(moved) // 2

    # An intermediate checkpoint holds step 4's raw weights, and the average of steps 1-4 in its optimizer.
    step4 = checkpoints.checkpoint_path(str(tmp_path / "ema"), 4)
    intermediate, _ = load_model_for_inference(step4)
    for g, w in zip((keras_numpy(v) for v in intermediate.trainable_variables), raw_steps[3]):
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7)
    for g, e in zip(_optimizer_average(config, step4), _average(raw_steps[:4], DECAY)):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)

    # Each evaluation saw the average of the steps so far; training went on from the raw weights.
    assert [step for step, _ in evaluated] == [2, 4, 6] and len(around) == 3
    for step, seen in evaluated:
        for g, e in zip(seen, _average(raw_steps[:step], DECAY)):
            np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    for (before, after), step in zip(around, (2, 4, 6)):
        for b, a, w in zip(before, after, raw_steps[step - 1]):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(b, w)

    # The in-training score is the average's: eval on the final checkpoint reproduces it.
    values = {r["step"]: r["val_miou"] for r in summary["history"] if "val_miou" in r}
    assert list(values) == [2, 4, 6]
    eval_config = eval_lib.EvalConfig(
        checkpoint_dir=str(tmp_path / "ema"),
        eval_logdir=str(tmp_path / "eval"),
        data=DataConfig(dataset=descriptor, dataset_dir=root, dataset_format="folder:segnet"),
        eval_split="val",
        eval_crop_size=(48, 48),
    )
    (latest,) = eval_lib.run_evaluation(eval_config)
    assert latest["step"] == 6 and latest["miou"] == pytest.approx(values[6], abs=1e-6)


def _h5_arrays(path):
    """Every array of a weights file (model and optimizer variables) by its path in the file."""
    out = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: out.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None
        )
    return out


@pytest.mark.slow  # ~95 s on 2 shared cores: three training sessions
def test_an_interrupted_ema_run_resumes_the_weights_and_the_average_exactly(dataset, tmp_path, monkeypatch):
    def config(logdir):
        return _config(
            dataset,
            logdir,
            ema_decay=DECAY,
            keep_checkpoint_max=10,
            data=DataConfig(
                dataset=dataset[1],
                dataset_dir=dataset[0],
                dataset_format="folder:segnet",
                loader="numpy",
                num_workers=1,
            ),  # a resumed run continues the data order
        )

    train_lib.train(config(tmp_path / "whole"), verbose=0)

    original = train_lib._Monitor.on_train_batch_end

    def die_at_3(self, batch, logs=None):
        original(self, batch, logs)
        if self._step() == 3:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(train_lib._Monitor, "on_train_batch_end", die_at_3)
    with pytest.raises(KeyboardInterrupt):
        train_lib.train(config(tmp_path / "resumed"), verbose=0)
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path / "resumed"))] == [2]
    monkeypatch.undo()
    assert train_lib.train(config(tmp_path / "resumed"), verbose=0)["resumed_from"] == 2

    for step in (4, 6):  # step 4: raw weights and the optimizer's average; step 6: the final average
        whole = _h5_arrays(checkpoints.checkpoint_path(str(tmp_path / "whole"), step))
        resumed = _h5_arrays(checkpoints.checkpoint_path(str(tmp_path / "resumed"), step))
        assert sorted(whole) == sorted(resumed) and any(k.startswith("optimizer") for k in whole)
        for key in whole:
            np.testing.assert_allclose(
                resumed[key], whole[key], rtol=1e-5, atol=1e-7, err_msg=f"{step}: {key}"
            )
    # The optimizer's variables include the average: twice as many as without EMA (momentum and average).
    n_trainable = len(load_model_for_inference(str(tmp_path / "whole"))[0].trainable_variables)
    optimizer_keys = [k for k in whole if k.startswith("optimizer")]
    assert len(optimizer_keys) >= 2 * n_trainable + 1


def test_ema_decay_is_a_flag_validated_and_not_changeable_on_resume(dataset, tmp_path):
    root, descriptor = dataset
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    base = [
        f"--dataset={descriptor}",
        f"--dataset_dir={root}",
        "--dataset_format=folder",
        f"--train_logdir={tmp_path}",
        "--context=aspp",
    ]
    fv(["train", *base, "--ema_decay=0.999"])
    config = train_main.config_from_flags(fv)
    assert config.ema_decay == 0.999
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", *base])
    assert train_main.config_from_flags(fv).ema_decay is None
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", *base, "--ema_decay=1.5"])
    with pytest.raises(app.UsageError, match=r"--ema_decay=1.5 must be in \(0, 1\)"):
        train_main.config_from_flags(fv)

    # Resuming: a saved run from before the field existed is a run without EMA; turning it on is refused.
    plain = _config(dataset, tmp_path)
    plain.save(str(tmp_path))
    saved = json.loads((tmp_path / "train_config.json").read_text())
    del saved["ema_decay"]
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert not check_resume(plain, has_checkpoints=True)
    with pytest.raises(ResumeMismatch, match="ema_decay: null -> 0.99"):
        check_resume(_config(dataset, tmp_path, ema_decay=0.99), has_checkpoints=True)
