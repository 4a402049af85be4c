"""Keras layers: geometry, DPC, ASPP, decoder; config and .keras round trips.

Backend-neutral (keras.ops + NumPy): ``tests/test_backends.py`` reruns this
file under ``KERAS_BACKEND=jax``.
"""

import pathlib

import keras
import numpy as np
import pytest

from deeplab_dpc.core import geometry
from deeplab_dpc.core.aspp import ASPP
from deeplab_dpc.core.decoder import Decoder
from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
from deeplab_dpc.core.layers import (
    ConvBNReLU,
    Normalize,
    PyramidPooling,
    ResizeLike,
    SeparableConvBNReLU,
    _average_pool_valid_dynamic,
    resize_bilinear_align_corners,
)
from deeplab_dpc.core.spec import CellSpec, SearchSpace

REPO = pathlib.Path(__file__).resolve().parents[2]
PUBLISHED = CellSpec.load(REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json")
MIXED = CellSpec.from_list(
    [
        {"op": "conv", "input": -1, "kernel": 1},
        {"op": "pyramid_pooling", "input": -1, "grid_size": [4, 2]},
        {"op": "conv", "input": 1, "kernel": 3, "rate": [3, 21]},
        {"op": "pyramid_pooling", "input": 0, "grid_size": [1, 1]},
    ]
)


def _numpy(x):
    """A layer's output as NumPy on every backend (``np.asarray`` fails on torch tensors with gradients)."""
    return keras.ops.convert_to_numpy(x)


def _rand(*shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


# ---------------------------------------------------------------- geometry
def test_deeplab_pooling_numbers():
    assert geometry.scale_dimension(513, 1 / 16) == 33
    assert geometry.deeplab_pyramid_pooling_arguments((513, 513), 16, (4, 4)) == ((33, 33), (9, 9))
    assert geometry.pyramid_pooling_window(33, 4) == 9
    assert geometry.deeplab_pyramid_pooling_arguments((769, 769), 16, (8, 2)) == ((49, 49), (7, 25))
    assert geometry.feature_size(360, 16) == 23 and geometry.feature_size(480, 8) == 60


@pytest.mark.parametrize("stride", [8, 16])
def test_pooling_window_from_features_equals_deeplabs_from_crop(stride):
    for crop in range(stride, 1200, 7):
        f = geometry.feature_size(crop, stride)
        assert f == geometry.scale_dimension(crop, 1 / stride)
        for g in (1, 2, 4, 8):
            (resize,), (window,) = (
                x[:1] for x in geometry.deeplab_pyramid_pooling_arguments((crop, crop), stride, (g, g))
            )
            assert (resize, window) == (f, geometry.pyramid_pooling_window(f, g))


def test_rate_multiplier():
    assert geometry.dpc_rate_multiplier(16) == 1 and geometry.dpc_rate_multiplier(8) == 2
    with pytest.raises(ValueError, match="output_stride=32"):
        geometry.dpc_rate_multiplier(32)


# ------------------------------------------------------------------ resize
def test_resize_align_corners_numbers():
    x = np.arange(3, dtype="float32").reshape(1, 3, 1, 1)
    y = _numpy(resize_bilinear_align_corners(x, (5, 1)))
    np.testing.assert_allclose(y.ravel(), [0, 0.5, 1, 1.5, 2])
    # 2x2 -> 3x3: the centre is the mean of the four corners.
    x = np.array([1, 2, 3, 5], "float32").reshape(1, 2, 2, 1)
    y = _numpy(resize_bilinear_align_corners(x, (3, 3)))[0, :, :, 0]
    np.testing.assert_allclose(y, [[1, 1.5, 2], [2, 2.75, 3.5], [3, 4, 5]])
    # Downsampling keeps corners.
    x = _rand(1, 33, 17, 2)
    y = _numpy(resize_bilinear_align_corners(x, (9, 5)))
    np.testing.assert_allclose(y[0, [0, -1]][:, [0, -1]], x[0, [0, -1]][:, [0, -1]], atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="compares with TF's align_corners op")
def test_resize_matches_tensorflow_align_corners():
    import tensorflow as tf

    x = _rand(2, 7, 11, 3)
    for size in [(13, 21), (33, 4), (7, 11), (1, 1)]:
        ref = tf.compat.v1.image.resize_bilinear(x, size, align_corners=True).numpy()
        np.testing.assert_allclose(_numpy(resize_bilinear_align_corners(x, size)), ref, atol=1e-5)


@pytest.mark.parametrize(
    "shape,size",
    [((2, 23, 30, 11), (92, 120)), ((1, 4, 5, 3), (13, 17)), ((2, 1, 1, 2), (3, 4)), ((1, 33, 17, 2), (9, 5))],
)
def test_resize_by_matrix_product_equals_the_gathers(shape, size, monkeypatch):
    """Short axes resize as a product with the interpolation matrix, long ones by gathers: the same map."""
    from deeplab_dpc.core import layers

    x = _rand(*shape, seed=3)
    by_matrix = _numpy(resize_bilinear_align_corners(x, size))
    monkeypatch.setattr(layers, "MATMUL_RESIZE_MAX_INPUT", 0)
    by_gathers = _numpy(resize_bilinear_align_corners(x, size))
    assert by_matrix.shape == (shape[0], *size, shape[3])
    np.testing.assert_allclose(by_matrix, by_gathers, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradients through TensorFlow's tape")
def test_resize_gradients_by_matrix_product_equal_the_gathers(monkeypatch):
    import tensorflow as tf

    from deeplab_dpc.core import layers

    x = tf.constant(_rand(2, 23, 30, 11, seed=4))
    upstream = tf.constant(_rand(2, 92, 120, 11, seed=5))

    def gradient():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = resize_bilinear_align_corners(x, (92, 120))
            loss = tf.reduce_sum(y * upstream)
        return tape.gradient(loss, x).numpy()

    by_matrix = gradient()
    monkeypatch.setattr(layers, "MATMUL_RESIZE_MAX_INPUT", 0)
    by_gathers = gradient()
    # Each input pixel's gradient sums about 16 upstream values of size ~1: float32 rounding ~1e-6 each.
    np.testing.assert_allclose(by_matrix, by_gathers, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------- pooling
def test_pyramid_pooling_window_and_values():
    x = _rand(2, 33, 33, 3)
    dyn = _numpy(_average_pool_valid_dynamic(x, 33, 33, (4, 4)))
    assert dyn.shape == (2, 25, 25, 3)  # 9x9 window, stride 1, VALID
    np.testing.assert_allclose(dyn[1, 3, 5], x[1, 3:12, 5:14].mean(axis=(0, 1)), atol=1e-5)
    static = _numpy(keras.ops.average_pool(x, (9, 9), strides=1, padding="valid"))
    np.testing.assert_allclose(dyn, static, atol=1e-5)


def test_global_pyramid_pooling_is_spatially_constant():
    layer = PyramidPooling(4, grid_size=(1, 1), name="branch0")
    y = _numpy(layer(_rand(2, 9, 13, 5)))
    assert y.shape == (2, 9, 13, 4)
    np.testing.assert_allclose(y, np.broadcast_to(y[:, :1, :1], y.shape), atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="unknown sizes exist only in TF graphs")
def test_pyramid_pooling_with_unknown_sizes_matches_static():
    import tensorflow as tf

    layer = PyramidPooling(8, grid_size=(4, 2), name="branch1")
    x = _rand(1, 23, 30, 6)
    eager = _numpy(layer(x))
    graph = tf.function(lambda t: layer(t), input_signature=[tf.TensorSpec([None, None, None, 6])])
    np.testing.assert_allclose(graph(x).numpy(), eager, atol=1e-5)


# --------------------------------------------------------------------- DPC
def test_dpc_builds_deeplabs_branches():
    cell = DensePredictionCell(PUBLISHED, output_stride=16)
    y = cell(_rand(2, 33, 33, 320))
    assert tuple(y.shape) == (2, 33, 33, 256)
    rates = [layer.depthwise.dilation_rate for layer in cell.branch_layers]
    assert rates == [(1, 6), (18, 15), (6, 3), (1, 1), (6, 21)]
    # Branch 0 reads the 320-channel backbone, branches 1, 3, 4 read branch 0, branch 2 reads branch 1.
    assert [tuple(l.depthwise.kernel.shape) for l in cell.branch_layers] == [(3, 3, 320, 1)] + [(3, 3, 256, 1)] * 4
    assert tuple(cell.projection.conv.kernel.shape) == (1, 1, 5 * 256, 256)
    # The leaf layer names are DeepLab's scopes ("meta_architecture/branch0_depthwise").
    names = {"/".join(w.path.split("/")[-2:]) for w in cell.weights}
    assert {"branch0_depthwise/kernel", "branch0_pointwise_BatchNorm/moving_mean"} <= names
    assert {"concat_projection/kernel", "concat_projection_BatchNorm/moving_variance"} <= names


def test_dpc_output_stride_8_doubles_rates_and_32_is_refused():
    cell = DensePredictionCell(PUBLISHED, output_stride=8)
    assert [l.depthwise.dilation_rate for l in cell.branch_layers][1] == (36, 30)
    with pytest.raises(ValueError, match="output_stride=32"):
        DensePredictionCell(PUBLISHED, output_stride=32)


def test_dpc_wiring_follows_the_spec():
    # Branch 3 reads the 1x1 branch 0 (not the backbone): a different function of the
    # input than a cell where it reads the backbone, with the same parameters.
    cell = DensePredictionCell(MIXED, filters=8, concat_channels=8)
    assert tuple(cell(_rand(1, 17, 17, 5)).shape) == (1, 17, 17, 8)
    assert cell.branch_layers[2].depthwise.dilation_rate == (3, 21)
    assert tuple(cell.branch_layers[3].conv.conv.kernel.shape) == (1, 1, 8, 8)
    assert tuple(cell.branch_layers[1].conv.conv.kernel.shape) == (1, 1, 5, 8)


# Every branch reads a source as wide as the backbone features (8 channels), so
# a cell reading the wrong source still builds and runs: only values tell.
EQUAL_WIDTH = CellSpec.from_list(
    [
        {"op": "conv", "input": -1, "kernel": 3, "rate": [1, 2]},
        {"op": "conv", "input": 0, "kernel": 1},
        {"op": "pyramid_pooling", "input": -1, "grid_size": [2, 2]},
        {"op": "conv", "input": 1, "kernel": 3, "rate": [2, 1]},
        {"op": "conv", "input": 0, "kernel": 1},
    ]
)


def _warm_batch_norms(layer, x):
    """Moving statistics from one batch (momentum 0), so inference is not degenerate."""
    norms = [l for l in layer._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    layer(x, training=True)
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


def test_dpc_each_branch_reads_the_input_its_spec_names():
    filters, n = 8, len(EQUAL_WIDTH.branches)
    cell = DensePredictionCell(EQUAL_WIDTH, filters=filters, concat_channels=n * filters)
    x = _rand(2, 13, 11, filters, seed=3)
    cell(x)
    _warm_batch_norms(cell, x)
    # Identity projection: the cell's inference output is the concat of its branches.
    cell.projection.conv.kernel.assign(np.eye(n * filters, dtype="float32")[None, None])
    bn = cell.projection.bn
    bn.gamma.assign(np.ones(n * filters, "float32"))
    bn.beta.assign(np.zeros(n * filters, "float32"))
    bn.moving_mean.assign(np.zeros(n * filters, "float32"))
    bn.moving_variance.assign(np.full(n * filters, 1 - bn.epsilon, "float32"))
    y = _numpy(cell(x, training=False))
    got = [y[..., i * filters : (i + 1) * filters] for i in range(n)]

    # The spec's wiring, written out by hand: 0 <- x, 1 <- 0, 2 <- x, 3 <- 1, 4 <- 0.
    L = [lambda t, i=i: _numpy(cell.branch_layers[i](t, training=False)) for i in range(n)]
    b0 = L[0](x)
    b1 = L[1](b0)
    b2 = L[2](x)
    b3 = L[3](b1)
    b4 = L[4](b0)
    expected = [b0, b1, b2, b3, b4]
    sources = {-1: x, 0: b0, 1: b1, 2: b2, 3: b3}
    for i, branch in enumerate(EQUAL_WIDTH.branches):
        scale = np.abs(expected[i]).max()
        assert scale > 0.1, f"branch {i} is degenerate ({scale}): the test could not tell sources apart"
        np.testing.assert_allclose(got[i], expected[i], atol=1e-4 * scale, err_msg=f"branch {i}")
        # Reading any other source (the previous branch, the backbone, ...) gives other numbers.
        for j in range(-1, i):
            if j != branch.input:
                wrong = L[i](sources[j])
                assert np.abs(wrong - expected[i]).max() > 0.05 * scale, (i, j)


def test_dpc_inference_is_deterministic_and_training_uses_dropout():
    cell = DensePredictionCell(MIXED, filters=8, concat_channels=8, dropout_rate=0.5)
    x = _rand(2, 9, 9, 4)
    a, b = _numpy(cell(x)), _numpy(cell(x))
    np.testing.assert_array_equal(a, b)
    t1, t2 = _numpy(cell(x, training=True)), _numpy(cell(x, training=True))
    assert not np.allclose(t1, t2)


def test_every_sampled_cell_builds_at_odd_sizes():
    space = SearchSpace()
    for seed in range(4):
        cell = DensePredictionCell(space.sample(seed), filters=8, concat_channels=8)
        assert tuple(cell(_rand(1, 5, 7, 3)).shape) == (1, 5, 7, 8)


# -------------------------------------------------------------- ASPP etc.
def test_aspp_branches_and_rates():
    aspp = ASPP(output_stride=16)
    assert tuple(aspp(_rand(1, 9, 9, 16)).shape) == (1, 9, 9, 256)
    assert [l.depthwise.dilation_rate for l in aspp.atrous] == [(6, 6), (12, 12), (18, 18)]
    assert [l.depthwise.dilation_rate for l in ASPP(output_stride=8).atrous] == [(12, 12), (24, 24), (36, 36)]
    assert ASPP(output_stride=32, atrous_rates=[3]).atrous_rates == [3]
    with pytest.raises(ValueError, match="output_stride=32"):
        ASPP(output_stride=32)
    assert tuple(aspp.projection.conv.kernel.shape) == (1, 1, 5 * 256, 256)


def test_decoder_shapes():
    dec = Decoder(filters=16)
    y = dec([_rand(2, 9, 9, 32), _rand(2, 33, 34, 24)])
    assert tuple(y.shape) == (2, 33, 34, 16)
    assert tuple(dec.conv0.depthwise.kernel.shape) == (3, 3, 32 + 48, 1)


def test_normalize_maps_pixels_to_unit_range():
    y = _numpy(Normalize()(np.array([[[[0, 127.5, 255]]]], "float32")))
    np.testing.assert_allclose(y.ravel(), [-1, 0, 1])


# ------------------------------------------------------ config round trips
LAYERS = [
    lambda: ConvBNReLU(8, weight_decay=1e-4, name="c"),
    lambda: SeparableConvBNReLU(8, kernel_size=3, rate=(2, 3), name="s"),
    lambda: PyramidPooling(8, grid_size=(2, 4), name="p"),
    lambda: DensePredictionCell(MIXED, output_stride=8, filters=8, concat_channels=6, dropout_rate=0.2),
    lambda: ASPP(atrous_rates=[1, 2], filters=8, image_pooling=False),
]


@pytest.mark.parametrize("make", LAYERS)
def test_layer_config_round_trip_gives_equal_outputs(make):
    layer = make()
    x = _rand(2, 11, 13, 5)
    y = _numpy(layer(x))
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(_numpy(clone(x)), y, atol=1e-6)


def test_decoder_config_round_trip():
    dec = Decoder(filters=8, low_level_filters=4)
    clone = Decoder.from_config(dec.get_config())
    assert clone.get_config() == dec.get_config()


def test_model_with_every_layer_saves_and_reloads_as_keras(tmp_path):
    images = keras.Input((None, None, 3))
    x = Normalize()(images)
    low = ConvBNReLU(6, name="low")(x)
    feats = keras.layers.Conv2D(10, 3, strides=4, padding="same", name="stem")(low)
    a = DensePredictionCell(MIXED, filters=8, concat_channels=8)(feats)
    b = ASPP(filters=8, atrous_rates=[2, 3])(feats)
    y = Decoder(filters=8, low_level_filters=4)([keras.layers.Concatenate()([a, b]), low])
    y = ResizeLike(dtype="float32")([keras.layers.Conv2D(3, 1)(y), images])
    model = keras.Model(images, y)
    # Non-trivial batch norm statistics.
    for w in model.weights:
        if "moving" in w.path:
            w.assign(np.random.default_rng(1).uniform(0.5, 1.5, w.shape).astype("float32"))
    x = np.random.default_rng(2).uniform(0, 255, (2, 37, 29, 3)).astype("float32")
    expected = _numpy(model(x))
    assert expected.shape == (2, 37, 29, 3)
    model.save(tmp_path / "m.keras")
    reloaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(_numpy(reloaded(x)), expected, atol=1e-5)


def test_the_fused_batch_norm_trains_as_keras_batch_norm_does():
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the fused op is TensorFlow's; on other backends the layer is Keras' own call")
    import tensorflow as tf

    from deeplab_dpc.core.layers import FusedBatchNormalization

    rng = np.random.default_rng(0)
    x = tf.constant((rng.normal(size=(4, 5, 6, 8)) * 3 + 1).astype("float32"))
    projection = tf.constant(rng.normal(size=(4, 5, 6, 8)).astype("float32"))
    fused, plain = FusedBatchNormalization(momentum=0.9), keras.layers.BatchNormalization(momentum=0.9)
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.gamma.assign(rng.uniform(0.5, 1.5, 8).astype("float32") if layer is fused else fused.gamma)
        layer.beta.assign(np.full(8, 0.2, "float32"))

    def step(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer(x, training=True) * projection)
        return [g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])], loss.numpy()

    (got, got_loss), (want, want_loss) = step(fused), step(plain)
    assert got_loss == pytest.approx(want_loss, rel=1e-5)
    for g, w in zip(got, want):  # float32 rounding of sums over 120 values per channel
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * np.abs(w).max())
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5)
    assert not np.allclose(plain.moving_variance.numpy(), 1.0)  # the update happened (biased variance)
    np.testing.assert_allclose(fused(x, training=False).numpy(), plain(x, training=False).numpy(), rtol=1e-5, atol=1e-5)
    half = tf.cast(x, "float16")  # outside the fused case: Keras' own call
    np.testing.assert_allclose(
        fused(half, training=True).numpy().astype("float32"),
        plain(half, training=True).numpy().astype("float32"),
        atol=1e-2,
    )


def test_only_the_proxy_asks_for_fused_batch_norms():
    from deeplab_dpc.core.layers import FusedBatchNormalization

    spec = [{"op": "pyramid_pooling", "grid_size": [1, 1], "input": -1},
            {"op": "conv", "kernel": 3, "rate": [1, 1], "input": 0}]

    def norms(cell):
        cell.build((None, 6, 8, 16))
        return [l for l in cell._flatten_layers() if isinstance(l, keras.layers.BatchNormalization)]

    plain = norms(DensePredictionCell(spec, filters=8, concat_channels=8))
    fused = norms(DensePredictionCell(spec, filters=8, concat_channels=8, fused_batch_norm=True))
    assert len(plain) == len(fused) == 4  # pooling's conv, separable's two, the projection
    assert not any(isinstance(l, FusedBatchNormalization) for l in plain)
    assert all(isinstance(l, FusedBatchNormalization) for l in fused)
    config = DensePredictionCell(spec, fused_batch_norm=True).get_config()
    assert DensePredictionCell.from_config(config).fused_batch_norm is True
