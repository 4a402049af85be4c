"""End-to-end training with a Dense Prediction Cell (the other training tests use ASPP).

MobileNet-v2 (depth 0.35) + DeepLab's published Cityscapes cell + the decoder
(DeepLab's Cityscapes DPC model), trained by
``train_lib.train`` on generated data: the loss falls, every branch of the cell
learns, and the checkpoint reloads into a model that predicts the same labels.
"""

import json
import pathlib

import keras
import numpy as np
import pytest

from deeplab_dpc import synthetic
from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
from deeplab_dpc.core.model import ModelConfig, build_deeplab
from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.training import checkpoints, train_lib
from tests.training.tiny import tiny_train_config

REPO = pathlib.Path(__file__).resolve().parents[2]
SPECS = REPO / "experiments" / "specs"
PUBLISHED = CellSpec.load(SPECS / "dense_prediction_cell_branch5_top1_cityscapes.json")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_dpc")
    descriptor = synthetic.write_segnet_folders(root, {"train": 16}, 64, 80, num_classes=3)
    return str(root), descriptor


def _config(dataset, logdir, steps):
    model = ModelConfig(
        num_classes=3,
        context="dpc",
        dense_prediction_cell=PUBLISHED,
        decoder_output_stride=4,
        depth_multiplier=0.35,
        dropout_rate=0.0,
    )
    return tiny_train_config(dataset, logdir, model, training_number_of_steps=steps)


def _cell_kernels(model):
    cell = model.get_layer("dense_prediction_cell")
    return {w.path: keras.ops.convert_to_numpy(w) for w in cell.trainable_weights if w.path.endswith("kernel")}


def test_dpc_training_lowers_the_loss_and_trains_every_branch(dataset, tmp_path, monkeypatch):
    built = {}
    original = train_lib.build_and_compile

    def capture(config):
        model = original(config)
        built["model"], built["initial"] = model, _cell_kernels(model)
        return model

    monkeypatch.setattr(train_lib, "build_and_compile", capture)
    config = _config(dataset, tmp_path, steps=40)
    summary = train_lib.train(config, verbose=0)

    losses = [r["loss"] for r in summary["history"]]
    assert summary["step"] == 40 and len(losses) == 8
    # Measured: 1.16 -> 0.43 (0.37x); without the decoder a 64x64 crop gives
    # the cell 4x4 features and neither DPC nor ASPP gets below 0.7x in 40 steps.
    assert losses[-1] < 0.6 * losses[0], losses

    # The model trained is the published cell: five separable branches with its rates.
    model = built["model"]
    cell = model.get_layer("dense_prediction_cell")
    assert isinstance(cell, DensePredictionCell) and cell.spec == PUBLISHED
    assert [layer.depthwise.dilation_rate for layer in cell.branch_layers] == [
        (1, 6), (18, 15), (6, 3), (1, 1), (6, 21)
    ]
    # Every branch's depthwise and pointwise kernels moved: gradients reach all
    # five branches through their wiring (0 <- x, 1 <- 0, 2 <- 1, 3 <- 0, 4 <- 0)
    # and the concat (branches 2, 3, 4 are leaves, read by the concat alone).
    trained = _cell_kernels(model)
    assert trained.keys() == built["initial"].keys()
    for i in range(len(PUBLISHED.branches)):
        for part in ("depthwise", "pointwise"):
            (path,) = [p for p in trained if f"/branch{i}_{part}/" in p]
            before, after = built["initial"][path], trained[path]
            change = np.abs(after - before).max() / np.abs(before).max()
            # Measured 0.02-0.4; weight decay alone moves a kernel < 1e-3 in 40 steps.
            assert change > 1e-2, (path, change)

    # The run's model_config.json carries the cell; its checkpoint reloads into a
    # model built from that file alone and predicts exactly what the trained one does.
    saved = ModelConfig.from_dict(json.loads((tmp_path / "model_config.json").read_text()))
    assert saved == config.model and saved.dense_prediction_cell == PUBLISHED
    (step, path), *_ = checkpoints.list_checkpoints(str(tmp_path))[::-1]
    assert step == 40
    reloaded = build_deeplab(saved)
    reloaded.load_weights(path)
    images = synthetic.make_dataset(2, 64, 64, 3, seed=7)[0].astype("float32")
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    got = keras.ops.convert_to_numpy(reloaded(images, training=False))
    np.testing.assert_allclose(got, expected, atol=1e-4 * np.abs(expected).max())
