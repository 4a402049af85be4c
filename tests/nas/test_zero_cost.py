"""Zero-cost proxies: each score against a value computed by hand, the registry, and a cell's scores."""

import math
import re

import keras
import numpy as np
import pytest

from deeplab_dpc.nas import zero_cost
from deeplab_dpc.nas.features import write_arrays
from deeplab_dpc.nas.proxy import ProxyConfig, build_proxy_model, load_proxy_data
from deeplab_dpc.nas.space import published_cell
from deeplab_dpc.training.losses import SegmentationLoss
from tests.nas.test_proxy import _task


def _mse(labels, outputs):
    return keras.ops.mean((outputs - keras.ops.cast(labels, outputs.dtype)) ** 2)


def _dense(weights, use_bias=False):
    """A functional model of bias-free (or biased) Dense layers with the given ``(kernel[, bias])``."""
    inputs = keras.Input((weights[0][0].shape[0],))
    x = inputs
    layers = []
    for values in weights:
        layer = keras.layers.Dense(values[0].shape[1], use_bias=use_bias)
        x = layer(x)
        layers.append((layer, values))
    for layer, values in layers:
        layer.set_weights(list(values))
    return keras.Model(inputs, x)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_grad_norm_and_snip_equal_the_hand_computed_cross_entropy_gradient():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(1, 1, 4, 3)).astype("float32")
    model = keras.Sequential([keras.Input((2, 3, 4)), keras.layers.Conv2D(3, 1, use_bias=False)])
    model.layers[0].set_weights([kernel])
    x = rng.normal(size=(2, 2, 3, 4)).astype("float32")
    labels = rng.integers(0, 3, size=(2, 2, 3)).astype("uint8")
    labels[0, 1, 2] = labels[1, 0, 0] = 255  # ignored: no gradient
    loss = SegmentationLoss(3, ignore_label=255)

    w = kernel[0, 0].astype(np.float64)
    valid = labels != 255
    onehot = np.eye(3)[np.where(valid, labels, 0)]
    dz = (_softmax(x.astype(np.float64) @ w) - onehot) * valid[..., None] / (valid.sum() + 1e-5)
    dw = np.einsum("bhwc,bhwk->ck", x.astype(np.float64), dz)

    assert zero_cost.grad_norm(model, x, labels, loss) == pytest.approx(np.linalg.norm(dw), rel=1e-5)
    assert zero_cost.snip(model, x, labels, loss) == pytest.approx(np.abs(w * dw).sum(), rel=1e-5)
    # Two tensors: the sum of their norms (not the norm of both), and the bias counts.
    kernel2, bias2 = np.diag([1.0, -2.0]).astype("float32"), np.array([0.5, -1.0], "float32")
    two = _dense([(kernel2, bias2)], use_bias=True)
    xs, ys = np.array([[1.0, 2.0]], "float32"), np.array([[0.0, 1.0]], "float32")
    dp = 2 * (xs @ kernel2 + bias2 - ys) / 2  # d mean((p - y)^2) / dp
    expected = np.linalg.norm(xs.T @ dp) + np.linalg.norm(dp.sum(0))
    assert zero_cost.grad_norm(two, xs, ys, _mse) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dtype", ["float64", None])
def test_synflow_of_a_linear_chain_is_its_depth_times_the_flow_and_leaves_the_weights(dtype):
    w1 = np.array([[1.0, -2.0, 0.5, 0.0], [-1.0, 3.0, -0.25, 2.0], [0.5, 0.5, -1.0, 1.0]], "float32")
    w2 = np.array([[2.0, -1.0], [-0.5, 1.0], [1.0, 1.0], [-3.0, 0.25]], "float32")
    model = _dense([(w1,), (w2,)])
    # R = 1^T |W1| |W2| 1; each layer's sum of |W| dR/d|W| is R (R is linear in each layer): 2R.
    expected = 2 * np.sum(np.abs(w1.astype(np.float64)) @ np.abs(w2.astype(np.float64)))
    score = zero_cost.synflow(model, np.zeros((5, 3), "float32"), dtype=dtype)
    assert score == pytest.approx(expected, rel=1e-6)
    kernels = model.get_weights()
    assert np.array_equal(kernels[0], w1) and np.array_equal(kernels[1], w2)  # signs back, bit for bit


def test_synflow_overflow_is_returned_as_inf_in_float32_and_avoided_in_float64():
    w1 = np.full((3, 4), -1e20, "float32")
    w2 = np.full((4, 4), 1e20, "float32")
    w3 = np.full((4, 2), -1e20, "float32")
    model = _dense([(w1,), (w2,), (w3,)])
    x = np.zeros((1, 3), "float32")
    # dR/dW1 = |W2| |W3| 1 = 8e40 overflows float32: returned as inf, not clipped.
    assert zero_cost.synflow(model, x, dtype=None) == math.inf
    assert zero_cost.synflow(model, x) == pytest.approx(3 * (3 * 4 * 4 * 2) * 1e60, rel=1e-6)  # 3 layers: 3R
    assert np.array_equal(model.get_weights()[0], w1)


def _relu_net(seed):
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(3, 4)).astype("float32")
    w2 = rng.normal(size=(4, 3)).astype("float32")
    inputs = keras.Input((2, 2, 3))
    a = keras.layers.ReLU()(keras.layers.Conv2D(4, 1, use_bias=False, name="c1")(inputs))
    b = keras.layers.Activation("relu")(keras.layers.Conv2D(3, 1, use_bias=False, name="c2")(a))
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(b))
    model.get_layer("c1").set_weights([w1[None, None]])
    model.get_layer("c2").set_weights([w2[None, None]])
    return model, w1, w2


def test_naswot_is_the_log_determinant_of_per_image_relu_codes_and_minus_inf_for_twin_images():
    model, w1, w2 = _relu_net(1)
    x = np.random.default_rng(2).normal(size=(4, 2, 2, 3)).astype("float32")
    a1 = np.maximum(x @ w1, 0)
    a2 = np.maximum(a1 @ w2, 0)
    relus = zero_cost.relu_activations(model, x)
    assert len(relus) == 2
    np.testing.assert_allclose(relus[0], a1, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(relus[1], a2, rtol=1e-5, atol=1e-6)
    codes = np.concatenate([(a1 > 0).reshape(4, -1), (a2 > 0).reshape(4, -1)], axis=1).astype(np.float64)
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
    sign, expected = np.linalg.slogdet(kernel)
    assert sign > 0 and kernel[0, 0] == 2 * 2 * (4 + 3)  # every unit of an image agrees with itself
    assert zero_cost.naswot(model, x) == pytest.approx(expected, rel=1e-9)

    twins = x.copy()
    twins[3] = twins[1]
    assert zero_cost.naswot(model, twins) == -math.inf


def _zico_by_hand(w, b, x, y, num_splits):
    """ZiCo of one Dense layer under ``_mse``: per-split gradients, then the formula, in NumPy."""
    grads_w, grads_b = [], []
    for part in np.array_split(np.arange(len(x)), num_splits):
        xs, ys = x[part].astype(np.float64), y[part].astype(np.float64)
        dp = 2 * (xs @ w + b - ys) / ys.size
        grads_w.append(xs.T @ dp)
        grads_b.append(dp.sum(0))
    total = 0.0
    for g in (np.stack(grads_w), np.stack(grads_b)):
        std, mean_abs = g.std(axis=0), np.abs(g).mean(axis=0)
        ratio = np.sum(mean_abs[std != 0] / std[std != 0])
        total += np.log(ratio) if ratio != 0 else 0.0
    return total


@pytest.mark.parametrize("num_splits", [2, 3])
def test_zico_equals_the_formula_on_hand_computed_split_gradients(num_splits):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 2)).astype("float32")
    b = np.array([0.1, -0.2], "float32")
    x = rng.normal(size=(6, 3)).astype("float32")
    x[:, 2] = 0.0  # the kernel's third row has gradient 0 in every split: std 0, skipped
    y = rng.normal(size=(6, 2)).astype("float32")
    model = _dense([(w, b)], use_bias=True)
    expected = _zico_by_hand(w.astype(np.float64), b.astype(np.float64), x, y, num_splits)
    assert math.isfinite(expected)
    assert zero_cost.zico(model, x, y, _mse, num_splits=num_splits) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="num_splits"):
        zero_cost.zico(model, x, y, _mse, num_splits=1)


def test_zico_skips_tensors_without_gradient():
    # Positive inputs into negative weights: the ReLU is dead, both kernels get gradient 0 and only the
    # output bias is left: score = log sum_k mean|g_k| / std(g_k).
    inputs = keras.Input((2,))
    dead = keras.layers.Dense(2, use_bias=False, kernel_initializer="zeros")
    outputs = keras.layers.Dense(2)(keras.layers.ReLU()(dead(inputs)))
    model = keras.Model(inputs, outputs)
    dead.set_weights([-np.ones((2, 2), "float32")])
    x = np.abs(np.random.default_rng(4).normal(size=(4, 2))).astype("float32") + 0.1
    y = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 1.0], [-1.0, 5.0]], "float32")
    grads = np.stack([-2 * y[:2].sum(0) / 4, -2 * y[2:].sum(0) / 4])  # outputs are the bias, 0
    expected = np.log(np.sum(np.abs(grads).mean(0) / grads.std(0)))
    assert zero_cost.zico(model, x, y, _mse) == pytest.approx(expected, rel=1e-5)


def test_the_registry_and_score_cell_name_the_valid_scores(tmp_path):
    assert sorted(zero_cost.SCORES) == ["grad_norm", "naswot", "snip", "synflow", "zico"]
    with pytest.raises(KeyError, match="valid: .*'grad_norm'.*'zico'"):
        zero_cost.SCORES["jacov"]
    config = ProxyConfig(cache_dir=str(tmp_path))
    valid = re.escape("'jacov'; valid: ['grad_norm', 'naswot', 'snip', 'synflow', 'zico']")
    with pytest.raises(ValueError, match=valid):
        zero_cost.score_cell(published_cell(), config, None, names=("synflow", "jacov"))


def test_every_score_refuses_another_backend(monkeypatch):
    model = _dense([(np.ones((2, 2), "float32"),)])
    x = np.ones((2, 2), "float32")
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    for name, score in zero_cost.SCORES.items():
        args = (model, x, x, _mse) if name in zero_cost.NEEDS_LABELS else (model, x)
        with pytest.raises(ValueError, match="'jax'"):
            score(*args)


def test_the_proxy_cells_relus_are_all_found_and_scoring_changes_no_variable(tmp_path):
    spec = published_cell()
    config = ProxyConfig(cache_dir=str(tmp_path), proxy_filters=8)
    keras.utils.set_random_seed(0)
    model = build_proxy_model(spec, config, (6, 8, 16), 3, 16)
    x = np.random.default_rng(5).normal(size=(4, 6, 8, 16)).astype("float32")
    labels = np.random.default_rng(6).integers(0, 3, size=(4, 24, 32)).astype("uint8")
    before = [v.numpy().copy() for v in model.variables]

    # ReLUs are ops.relu calls inside the cell's blocks, not layers: 2 per separable conv, 1 per other
    # branch, 1 after the projection.
    expected = sum(2 if b.is_separable else 1 for b in spec.branches) + 1
    assert len(zero_cost.relu_activations(model, x)) == expected
    loss = SegmentationLoss(3)
    assert math.isfinite(zero_cost.grad_norm(model, x, labels, loss))  # a training-mode pass
    assert math.isfinite(zero_cost.naswot(model, x))
    # The float64 copy holds the model's weights: float32 on the model itself agrees.
    assert zero_cost.synflow(model, x) == pytest.approx(zero_cost.synflow(model, x, dtype=None), rel=1e-4)
    for variable, value in zip(model.variables, before):
        assert np.array_equal(variable.numpy(), value), variable.path


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero_cost_cache")
    for split, n, seed in (("train", 12, 0), ("val", 4, 1)):
        features, labels = _task(n, seed)
        write_arrays(str(root), split, features, labels, num_classes=3, shard_size=8)
    return str(root)


def test_score_cell_gives_finite_scores_equal_for_equal_seeds(cache_dir):
    config = ProxyConfig(cache_dir=cache_dir, batch_size=4, proxy_filters=8)
    data = load_proxy_data(config)
    first = zero_cost.score_cell(published_cell(), config, data)
    second = zero_cost.score_cell(published_cell(), config, data)
    names = sorted(zero_cost.SCORES)
    assert sorted(first["seconds"]) == names and first["cpu_seconds"] > 0
    for name in names:
        assert math.isfinite(first[name]), (name, first[name])
        assert first[name] == second[name], name
    other = zero_cost.score_cell(published_cell(), config, data, names=("synflow",), seed=1)
    assert sorted(other) == ["cpu_seconds", "seconds", "synflow"]
    assert other["synflow"] != first["synflow"]  # the seed is the initial weights

    with pytest.raises(ValueError, match="batch_size=13 is more than the 12 training examples"):
        zero_cost.score_cell(published_cell(), config, data, batch_size=13)
    with pytest.raises(ValueError, match="load_proxy_data"):
        zero_cost.score_cell(published_cell(), ProxyConfig(cache_dir=cache_dir, eval_split="train"), data)
