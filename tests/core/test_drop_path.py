"""ScheduledDropPath in the Dense Prediction Cell: its schedule, its masks, identity at inference."""

import keras
import numpy as np
import pytest

from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
from deeplab_dpc.core.spec import CellSpec

SPEC = CellSpec.from_list(
    [
        {"op": "conv", "kernel": 1, "input": -1},
        {"op": "conv", "kernel": 3, "rate": [1, 6], "input": 0},
        {"op": "pyramid_pooling", "grid_size": [1, 1], "input": -1},
    ]
)
FEATURES = np.random.default_rng(0).normal(size=(4, 5, 6, 8)).astype("float32")


def cell(**kw):
    layer = DensePredictionCell(SPEC, filters=4, concat_channels=4, dropout_rate=0.0, **kw)
    layer(FEATURES)  # build
    return layer


def test_keep_probability_falls_linearly_to_its_final_value_then_stays():
    layer = cell(drop_path_keep_prob=0.7, drop_path_steps=100, seed=1)
    keeps = [float(layer.drop_path_keep(t)) for t in (0, 25, 50, 100, 400)]
    np.testing.assert_allclose(keeps, [1.0, 0.925, 0.85, 0.7, 0.7], rtol=1e-6)


def test_training_calls_advance_the_schedule_and_inference_calls_do_not():
    layer = cell(drop_path_keep_prob=0.5, drop_path_steps=10, seed=1)
    for _ in range(3):
        layer(FEATURES, training=True)
    layer(FEATURES, training=False)
    assert float(layer.drop_path_step.numpy()) == 3.0


def test_identity_at_inference():
    dropping = cell(drop_path_keep_prob=0.5, drop_path_steps=10, seed=1)
    plain = cell()
    for _ in range(20):  # deep into the schedule: keep 0.5
        dropping(FEATURES, training=True)
    for a, b in zip(dropping.branch_layers + [dropping.projection], plain.branch_layers + [plain.projection]):
        b.set_weights(a.get_weights())  # weights and batch norm statistics after training
    numpy = keras.ops.convert_to_numpy
    np.testing.assert_allclose(
        numpy(dropping(FEATURES, training=False)), numpy(plain(FEATURES, training=False)), atol=1e-6
    )


def test_masks_drop_whole_examples_at_the_keep_rate_and_rescale_the_kept():
    layer = cell(drop_path_keep_prob=0.7, drop_path_steps=1, seed=3)
    x = keras.ops.ones((4000, 2, 2, 3))
    out = keras.ops.convert_to_numpy(layer._drop_path(x, keras.ops.convert_to_tensor(0.7)))
    per_example = out.reshape(4000, -1)
    assert np.all((per_example == 0).all(axis=1) | np.isclose(per_example, 1 / 0.7).all(axis=1))
    assert abs((per_example[:, 0] > 0).mean() - 0.7) < 0.03


def test_off_by_default_with_no_extra_variables_and_the_config_round_trips():
    plain = cell()
    assert not plain.uses_drop_path and not [w for w in plain.weights if "drop_path" in w.path]
    dropping = cell(drop_path_keep_prob=0.6, drop_path_steps=50, seed=2)
    again = DensePredictionCell.from_config(dropping.get_config())
    assert (again.drop_path_keep_prob, again.drop_path_steps, again.seed) == (0.6, 50, 2)
    with pytest.raises(ValueError, match="drop_path_steps"):
        DensePredictionCell(SPEC, drop_path_keep_prob=0.5)
    with pytest.raises(ValueError, match="drop_path_keep_prob"):
        DensePredictionCell(SPEC, drop_path_keep_prob=0.0, drop_path_steps=5)
