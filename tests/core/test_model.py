"""build_deeplab and ModelConfig: shapes, validation, config and .keras round trips."""

import math
import pathlib

import keras
import numpy as np
import pytest

from deeplab_dpc.core.model import ModelConfig, build_deeplab
from deeplab_dpc.core.spec import CellSpec

REPO = pathlib.Path(__file__).resolve().parents[2]
SPEC = CellSpec.load(REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json")


def _config(**kw):
    kw.setdefault("num_classes", 11)
    if kw.get("context", "dpc") == "dpc":
        kw.setdefault("dense_prediction_cell", SPEC)
    return ModelConfig(**kw)


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize("size", [(513, 513), (769, 769), (360, 480)])
def test_symbolic_shapes_at_paper_sizes(output_stride, size):
    model = build_deeplab(_config(output_stride=output_stride, decoder_output_stride=4), input_shape=(*size, 3))
    cell = model.get_layer("dense_prediction_cell")
    expected = tuple(math.ceil(s / output_stride) for s in size)
    assert tuple(cell.output.shape) == (None, *expected, 256)
    decoder = model.get_layer("decoder")
    assert tuple(decoder.output.shape) == (None, *(math.ceil(s / 4) for s in size), 256)
    assert tuple(model.output.shape) == (None, *size, 11)


def _float64_copy(model, config):
    """The same model (weights and batch norm statistics) computing in float64."""
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        copy = build_deeplab(config)
    finally:
        keras.config.set_dtype_policy(policy)
    copy.set_weights(model.get_weights())
    return copy


def _float32_rounding_bound(model64, images):
    """How far one float32 evaluation of the model may be from its exact logits (max over ``images``).

    Backward error analysis of a dot product (Higham, Accuracy and Stability of Numerical Algorithms,
    2nd ed., section 3.1): a float32 sum of n products w_j x_j is the exact sum with each w_j scaled by
    (1 + theta_j), |theta_j| <= n u in the worst case (u = 2**-24), and |theta_j| ~ sqrt(n) u for
    roundings of random sign (Higham and Mary, SIAM J. Sci. Comput. 41(5), 2019), in whatever order
    the kernel adds. So the float64 model with each kernel weight scaled by 1 +- sqrt(fan_in) u (random
    signs; fan_in: kh*kw*c_in of a convolution, kh*kw of a depthwise one) moves the logits as far as
    float32's accumulation does, carried through this model's layers and batch norm gains. What this
    leaves out is of the same order or less (each activation's rounding to float32, batch norm's
    affine, adds, the 4-term bilinear resizes, the image pooling's mean): the bound is twice the move.
    """
    u = np.finfo(np.float32).eps / 2
    signs = np.random.default_rng(0)
    reference = np.asarray(model64(images), "float64")
    exact = model64.get_weights()
    kernels = 0
    for layer in model64._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.DepthwiseConv2D):  # each channel on its own: a kh x kw window
            fan_in = math.prod(layer.kernel.shape[:2])
        elif isinstance(layer, keras.layers.Conv2D):
            fan_in = math.prod(layer.kernel.shape[:-1])
        else:
            continue
        w = keras.ops.convert_to_numpy(layer.kernel)
        layer.kernel.assign(w * (1 + math.sqrt(fan_in) * u * signs.choice([-1.0, 1.0], w.shape)))
        kernels += 1
    assert kernels == sum(v.path.endswith("kernel") for v in model64.weights)  # no layer left exact
    try:
        return 2 * float(np.abs(np.asarray(model64(images), "float64") - reference).max())
    finally:
        model64.set_weights(exact)


def test_forward_pass_at_camvid_size_with_any_size_input():
    config = _config(context="aspp", decoder_output_stride=4)
    model = build_deeplab(config)
    images = np.random.default_rng(0).integers(0, 256, (1, 360, 480, 3)).astype("uint8")
    logits = np.asarray(model(images))
    assert logits.shape == (1, 360, 480, 11) and logits.dtype == np.float32
    # Same model, another size; uint8 pixels mean the same as their float32 values,
    # and each image of a batch is predicted as it would be alone (inference mode).
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (2, 97, 131, 3)).astype("uint8")
    # Untrained batch norm in inference mode shrinks logits to ~1e-7: warm it first.
    from deeplab_dpc.training.train_lib import warm_start_batch_norm

    warm_start_batch_norm(model, small.astype("float32"))
    batch = np.asarray(model(small))
    assert batch.shape == (2, 97, 131, 11)
    scale = np.abs(batch).max()
    assert scale > 1e-3, f"logits ~{scale}: the comparisons below would be vacuous"
    np.testing.assert_allclose(np.asarray(model(small.astype("float32"))), batch, rtol=0, atol=1e-6 * scale)
    # Alone and in a batch, oneDNN adds each layer's products in other orders: the two agree to float32
    # rounding, not bit for bit. Each is checked against the float64 logits of its own image, within
    # the rounding bound of one float32 evaluation (above); so the two are within twice that. Measured
    # (2 cores): the bound ~1.3e-3 of the logits' scale, float32's own error 0.1-0.2 of the bound, one
    # image alone vs in a batch 1e-3 of it (up to 3e-5 of the scale, 2% of it, on other machines).
    model64 = _float64_copy(model, config)
    exact = np.asarray(model64(small.astype("float64")), "float64")
    bound = _float32_rounding_bound(model64, small.astype("float64"))
    # The bound is far below what tells two images apart: mixed-up batch elements, or an error of
    # 1% of the logits, fail.
    assert 0 < bound < 0.01 * np.abs(exact[0] - exact[1]).max(), (bound, scale)
    np.testing.assert_allclose(batch, exact, rtol=0, atol=bound)
    for i in range(2):
        alone = np.asarray(model(small[i : i + 1]))[0]
        np.testing.assert_allclose(alone, exact[i], rtol=0, atol=bound)
        np.testing.assert_allclose(alone, batch[i], rtol=0, atol=2 * bound)


@pytest.mark.parametrize("variant", ["xception_65", "xception_71"])
def test_xception_models_build_and_run(variant):
    model = build_deeplab(_config(model_variant=variant, decoder_output_stride=4))
    assert np.asarray(model(np.zeros((1, 65, 49, 3), "float32"))).shape == (1, 65, 49, 11)


def test_no_context_model():
    model = build_deeplab(_config(context="none"))
    assert model.get_layer("logits").kernel.shape == (1, 1, 320, 11)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(model_variant="resnet_50"), "model_variant='resnet_50' is unknown; valid: .*mobilenet_v2"),
        (dict(output_stride=32), "output_stride=32"),
        (dict(output_stride=4), "output_stride=4 must be 8, 16 or 32"),
        (dict(context="dpc", dense_prediction_cell=None), "needs dense_prediction_cell"),
        (dict(context="aspp", dense_prediction_cell=SPEC), "dense_prediction_cell is given but context='aspp'"),
        (dict(context="aspp", output_stride=32), "output_stride=32"),
        (dict(context="nas"), "context='nas' is unknown"),
        (dict(decoder_output_stride=8), "decoder_output_stride=8 is not supported"),
        (dict(num_classes=0), "num_classes must be a positive integer"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _config(**kwargs)


def test_aspp_at_output_stride_32_with_explicit_rates():
    config = _config(context="aspp", output_stride=32, atrous_rates=[2, 4])
    assert config.atrous_rates == (2, 4)


def test_config_file_round_trip(tmp_path):
    config = _config(output_stride=8, decoder_output_stride=4, weight_decay=1e-4)
    config.save(tmp_path / "model_config.json")
    assert ModelConfig.load(tmp_path / "model_config.json") == config
    (tmp_path / "bad.json").write_text('{"num_classes": 3, "backbone": "x"}')
    with pytest.raises(ValueError, match=r"bad\.json: unknown model config keys: \['backbone'\]"):
        ModelConfig.load(tmp_path / "bad.json")


def test_weight_decay_is_deeplabs_on_every_non_depthwise_kernel():
    model = build_deeplab(_config(context="aspp", weight_decay=1e-3))
    model(np.zeros((1, 33, 33, 3), "float32"))
    kernels = [w for w in model.weights if w.path.endswith("/kernel") and "depthwise" not in w.path]
    # MobileNet-v2: Conv1, expanded_conv_project, 16 x (expand, project); ASPP: 6; logits: 1.
    assert len(kernels) == len(model.losses) == 1 + 1 + 32 + 6 + 1
    expected = sum(1e-3 / 2 * float(np.sum(np.square(w.numpy()))) for w in kernels)
    np.testing.assert_allclose(float(sum(model.losses)), expected, rtol=1e-4)
    model0 = build_deeplab(_config(context="aspp", weight_decay=0.0))
    model0(np.zeros((1, 33, 33, 3), "float32"))
    assert len(model0.losses) == 0


def test_full_model_saves_and_reloads_as_keras(tmp_path):
    model = build_deeplab(_config(decoder_output_stride=4, num_classes=5))
    rng = np.random.default_rng(0)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
    images = rng.uniform(0, 255, (2, 67, 45, 3)).astype("float32")
    expected = np.asarray(model(images))
    model.save(tmp_path / "deeplab.keras")
    reloaded = keras.saving.load_model(tmp_path / "deeplab.keras")
    np.testing.assert_allclose(np.asarray(reloaded(images)), expected, atol=1e-4)
