"""Backbones: output sizes, DeepLab's atrous rule, atrous consistency, keras.applications parity.

Runs under both backends: ``KERAS_BACKEND=jax python -m pytest tests/core/test_backbones.py``.
"""

import functools
import math

import keras
import numpy as np
import pytest

from deeplab_dpc.core.backbones import BACKBONES, build_backbone, load_backbone_weights
from deeplab_dpc.core.backbones.mobilenet_v2 import make_divisible
from deeplab_dpc.core.backbones.xception import (
    AtrousMaxPooling2D,
    AtrousSchedule,
    deeplab_scope_to_layer_name,
    deeplab_variable_to_keras_weight,
)

# (features channels, low_level channels) at depth multiplier 1.
CHANNELS = {
    "mobilenet_v2": (320, 144),
    "xception_65": (2048, 256),
    "xception_71": (2048, 256),
    "xception": (2048, 256),
}
SIZES = [(513, 513), (769, 769), (360, 480), (97, 131), (1, 1)]
# 65 and 97 are 32k + 1: every stride-2 layer sees an odd size, the case in
# which "same" padding is aligned and atrous outputs subsample exactly.
SMALL = (65, 97)


@functools.lru_cache(maxsize=None)
def _backbone(variant, output_stride):
    """One shared build per (variant, output stride); tests must not rely on its weights."""
    return build_backbone(variant, output_stride)


def _randomize_batch_norms(model, seed=0):
    """Random, non-trivial BN parameters and moving statistics (kernels keep their random init)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, c),  # gamma
                rng.normal(0.0, 0.2, c),  # beta
                rng.normal(0.0, 0.2, c),  # moving_mean
                rng.uniform(0.5, 2.0, c),  # moving_variance
            ])


def _images(height, width, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (1, height, width, 3)).astype("float32")


def _run(model, images):
    return {k: keras.ops.convert_to_numpy(v) for k, v in model(images, training=False).items()}


def _assert_close(actual, expected):
    """Equal up to float32 rounding, relative to the magnitude of `expected`."""
    scale = float(np.abs(expected).max())
    assert scale > 1e-3, "degenerate reference output"
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * max(scale, 1.0))


@pytest.mark.parametrize("output_stride", [8, 16, 32])
@pytest.mark.parametrize("variant", list(BACKBONES))
def test_output_sizes_are_ceil_of_size_over_stride(variant, output_stride):
    backbone = _backbone(variant, output_stride)
    features_channels, low_level_channels = CHANNELS[variant]
    for height, width in SIZES:
        spec = backbone.compute_output_spec(keras.KerasTensor((2, height, width, 3)))
        assert tuple(spec["features"].shape) == (
            2, math.ceil(height / output_stride), math.ceil(width / output_stride),
            features_channels,
        ), (height, width)
        assert tuple(spec["low_level"].shape) == (
            2, math.ceil(height / 4), math.ceil(width / 4), low_level_channels,
        ), (height, width)


@pytest.mark.parametrize("variant", ["mobilenet_v2", "xception"])
def test_static_input_shape_gives_static_output_shapes(variant):
    backbone = build_backbone(variant, 8, input_shape=(360, 480, 3))
    assert backbone.output["features"].shape == (None, 45, 60, CHANNELS[variant][0])
    assert backbone.output["low_level"].shape == (None, 90, 120, CHANNELS[variant][1])


@pytest.mark.parametrize("alpha", [0.35, 1.4])
def test_mobilenet_v2_depth_multiplier_channels(alpha):
    backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=alpha)
    block_1_width = make_divisible(int(24 * alpha))
    assert backbone.output["features"].shape[-1] == make_divisible(int(320 * alpha))
    assert backbone.output["low_level"].shape[-1] == 6 * block_1_width
    assert backbone.get_layer("Conv1").filters == make_divisible(32 * alpha)


def test_atrous_schedule_follows_deeplab():
    # Units: conv s2, then blocks with strides 1, 2, 2, 2, 1, 2, 1.
    strides = [2, 1, 2, 2, 2, 1, 2, 1]
    expected = {
        32: [(2, 1), (1, 1), (2, 1), (2, 1), (2, 1), (1, 1), (2, 1), (1, 1)],
        16: [(2, 1), (1, 1), (2, 1), (2, 1), (2, 1), (1, 1), (1, 1), (1, 2)],
        8: [(2, 1), (1, 1), (2, 1), (2, 1), (1, 1), (1, 2), (1, 2), (1, 4)],
    }
    for output_stride, steps in expected.items():
        schedule = AtrousSchedule(output_stride)
        assert [schedule.step(s) for s in strides] == steps


def _strides_and_rates(model, names):
    configs = {name: model.get_layer(name).get_config() for name in names}
    return {
        name: (config["strides"][0], config["dilation_rate"][0])
        for name, config in configs.items()
    }


@pytest.mark.parametrize(
    "output_stride, expected",
    [
        (32, {1: (2, 1), 6: (2, 1), 12: (1, 1), 13: (2, 1), 14: (1, 1), 16: (1, 1)}),
        (16, {1: (2, 1), 6: (2, 1), 12: (1, 1), 13: (1, 1), 14: (1, 2), 16: (1, 2)}),
        (8, {1: (2, 1), 6: (1, 1), 7: (1, 2), 12: (1, 2), 13: (1, 2), 14: (1, 4), 16: (1, 4)}),
    ],
)
def test_mobilenet_v2_strides_become_rates(output_stride, expected):
    backbone = _backbone("mobilenet_v2", output_stride)
    names = {block: f"block_{block}_depthwise" for block in expected}
    found = _strides_and_rates(backbone, names.values())
    assert {block: found[name] for block, name in names.items()} == expected
    # 1x1 convs never dilate.
    assert backbone.get_layer("block_16_project").get_config()["dilation_rate"] == (1, 1)


def _xception_unit(block, unit=1):
    return f"{block}_unit_{unit}_xception_module"


_CONV2_POINTWISE_BN = "_separable_conv2_pointwise_BatchNorm"


@pytest.mark.parametrize(
    "output_stride, expected",
    [
        # (entry block3 conv3, middle unit 16 conv2, exit block1 conv3, exit block2 conv1)
        (32, [(2, 1), (1, 1), (2, 1), (1, 1)]),
        (16, [(2, 1), (1, 1), (1, 1), (1, 2)]),
        (8, [(1, 1), (1, 2), (1, 2), (1, 4)]),
    ],
)
def test_xception_65_strides_become_rates(output_stride, expected):
    backbone = _backbone("xception_65", output_stride)
    names = [
        f"{_xception_unit('entry_flow_block3')}_separable_conv3_depthwise",
        f"{_xception_unit('middle_flow_block1', 16)}_separable_conv2_depthwise",
        f"{_xception_unit('exit_flow_block1')}_separable_conv3_depthwise",
        f"{_xception_unit('exit_flow_block2')}_separable_conv1_depthwise",
    ]
    found = _strides_and_rates(backbone, names)
    assert [found[name] for name in names] == expected
    shortcut = backbone.get_layer(f"{_xception_unit('exit_flow_block1')}_shortcut")
    assert shortcut.get_config()["strides"] == ((2, 2) if output_stride == 32 else (1, 1))
    # Aligned padding: a stride-2 depthwise conv is preceded by explicit (1, 1) padding.
    pad = backbone.get_layer(f"{_xception_unit('entry_flow_block1')}_separable_conv3_depthwise_pad")
    assert pad.get_config()["padding"] == ((1, 1), (1, 1))


def test_xception_71_entry_flow_strides():
    backbone = _backbone("xception_71", 16)
    strides = [
        backbone.get_layer(f"{_xception_unit(f'entry_flow_block{b}')}_shortcut").strides[0]
        for b in range(1, 6)
    ]
    assert strides == [2, 1, 2, 1, 2]


def test_keras_xception_pools_become_atrous():
    backbone = _backbone("xception", 8)
    assert backbone.get_layer("block4_pool").get_config()["strides"] == (1, 1)
    assert backbone.get_layer("block5_sepconv1").get_config()["dilation_rate"] == (2, 2)
    pool13 = backbone.get_layer("block13_pool")
    assert isinstance(pool13, AtrousMaxPooling2D) and pool13.rate == 2
    assert backbone.get_layer("block14_sepconv1").get_config()["dilation_rate"] == (4, 4)
    assert _backbone("xception", 16).get_layer("block13_pool").get_config()["strides"] == (1, 1)


@pytest.mark.parametrize("variant", list(BACKBONES))
def test_atrous_consistency(variant):
    """os-8/16 outputs, subsampled, equal the os-32 output of the same weights."""
    nets = {os_: _backbone(variant, os_) for os_ in (32, 16, 8)}
    _randomize_batch_norms(nets[32])
    for output_stride in (16, 8):
        nets[output_stride].set_weights(nets[32].get_weights())
    images = _images(*SMALL)
    outputs = {os_: _run(net, images) for os_, net in nets.items()}
    reference = outputs[32]["features"]
    for output_stride, out in outputs.items():
        features = out["features"]
        assert features.shape == (
            1, math.ceil(SMALL[0] / output_stride), math.ceil(SMALL[1] / output_stride),
            CHANNELS[variant][0],
        )
        step = 32 // output_stride
        _assert_close(features[:, ::step, ::step], reference)
        _assert_close(out["low_level"], outputs[32]["low_level"])
    assert np.isfinite(reference).all() and reference.std() > 1e-3


def _keras_probe(model, layer_names):
    return keras.Model(model.input, [model.get_layer(n).output for n in layer_names])


@pytest.mark.parametrize("alpha, size", [(1.0, 224), (0.5, 96)])
def test_mobilenet_v2_os32_equals_keras_applications(alpha, size):
    reference = keras.applications.MobileNetV2(
        weights=None, include_top=False, input_shape=(size, size, 3), alpha=alpha
    )
    _randomize_batch_norms(reference, seed=1)
    ours = build_backbone("mobilenet_v2", 32, depth_multiplier=alpha)
    report = load_backbone_weights(ours, reference, strict=True)
    assert report["unused"] == ["Conv_1", "Conv_1_bn"]
    probe = _keras_probe(reference, ["block_16_project_BN", "block_2_depthwise_relu"])
    images = _images(size, size, seed=2)
    expected_features, expected_low = (keras.ops.convert_to_numpy(t) for t in probe(images))
    out = _run(ours, images)
    assert out["features"].shape == (1, math.ceil(size / 32), math.ceil(size / 32),
                                     make_divisible(int(320 * alpha)))
    _assert_close(out["features"], expected_features)
    _assert_close(out["low_level"], expected_low)


def test_keras_xception_is_weight_compatible_but_pads_differently():
    """keras.applications.Xception's weights load by name; its VALID entry convs shrink maps."""
    reference = keras.applications.Xception(weights=None, include_top=False,
                                            input_shape=(224, 224, 3))
    ours = _backbone("xception", 32)
    report = load_backbone_weights(ours, reference, strict=True)
    assert report["unused"] == [] and report["missing"] == []
    assert len(report["loaded"]) == len([layer for layer in ours.layers if layer.weights])
    residuals = [layer for layer in reference.layers
                 if isinstance(layer, keras.layers.Conv2D) and not layer.name.startswith("block")]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(ours.get_layer("block13_residual").kernel),
        keras.ops.convert_to_numpy(residuals[-1].kernel),
    )
    # The documented size difference: keras' stride-4 map is 55 at 224, ours ceil(224/4).
    assert reference.get_layer("block3_sepconv2_bn").output.shape[1] == 55
    spec = ours.compute_output_spec(keras.KerasTensor((1, 224, 224, 3)))
    assert spec["low_level"].shape[1] == 56 and spec["features"].shape[1] == 7


def test_atrous_max_pooling_matches_brute_force():
    rate, size = 2, (7, 6)
    x = np.random.default_rng(3).normal(size=(2, *size, 3)).astype("float32")
    out = keras.ops.convert_to_numpy(AtrousMaxPooling2D(rate=rate)(x))
    expected = np.empty_like(x)
    for i in range(size[0]):
        for j in range(size[1]):
            rows = [r for r in (i - rate, i, i + rate) if 0 <= r < size[0]]
            cols = [c for c in (j - rate, j, j + rate) if 0 <= c < size[1]]
            expected[:, i, j] = x[:, rows][:, :, cols].max(axis=(1, 2))
    np.testing.assert_array_equal(out, expected)


def test_backbone_reloads_from_keras_file(tmp_path):
    inputs = keras.Input((None, None, 8))
    tiny = keras.Model(inputs, AtrousMaxPooling2D(rate=3, name="pool")(inputs))
    tiny.save(tmp_path / "tiny.keras")
    assert keras.saving.load_model(tmp_path / "tiny.keras").get_layer("pool").rate == 3
    backbone = build_backbone("mobilenet_v2", 8, depth_multiplier=0.35)
    _randomize_batch_norms(backbone)
    backbone.save(tmp_path / "backbone.keras")
    reloaded = keras.saving.load_model(tmp_path / "backbone.keras")
    images = _images(33, 47)
    for key, value in _run(backbone, images).items():
        np.testing.assert_allclose(_run(reloaded, images)[key], value, atol=1e-6)


def test_weight_decay_regularizes_conv_but_not_depthwise_kernels():
    backbone = _backbone("xception_65", 16)  # weight_decay 4e-5: Keras L2(2e-5)
    unit = _xception_unit("entry_flow_block1")
    pointwise = backbone.get_layer(f"{unit}_separable_conv1_pointwise")
    depthwise = backbone.get_layer(f"{unit}_separable_conv1_depthwise")
    assert pointwise.kernel_regularizer.l2 == pytest.approx(2e-5)
    assert depthwise.depthwise_regularizer is None
    unregularized = build_backbone("mobilenet_v2", 16, weight_decay=0.0)
    assert unregularized.get_layer("Conv1").kernel_regularizer is None


def test_deeplab_scope_to_layer_name():
    assert deeplab_scope_to_layer_name("xception_65/entry_flow/conv1_1/BatchNorm") == (
        "entry_flow_conv1_1_BatchNorm"
    )
    assert deeplab_scope_to_layer_name("middle_flow/block1/unit_16/xception_module/shortcut") == (
        "middle_flow_block1_unit_16_xception_module_shortcut"
    )
    with pytest.raises(ValueError):
        deeplab_scope_to_layer_name("xception_65/")


@pytest.mark.parametrize(
    "variant, variable, shape",
    [
        ("xception_65", "xception_65/entry_flow/conv1_1/weights", (3, 3, 3, 32)),
        ("xception_65", "xception_65/entry_flow/conv1_2/BatchNorm/moving_variance", (64,)),
        ("xception_65", "xception_65/entry_flow/block1/unit_1/xception_module/"
                        "separable_conv1_depthwise/depthwise_weights", (3, 3, 64, 1)),
        ("xception_65", "xception_65/entry_flow/block2/unit_1/xception_module/"
                        "separable_conv2_pointwise/BatchNorm/gamma:0", (256,)),
        ("xception_65", "xception_65/middle_flow/block1/unit_16/xception_module/"
                        "separable_conv3_pointwise/weights", (1, 1, 728, 728)),
        ("xception_65", "xception_65/exit_flow/block1/unit_1/xception_module/shortcut/weights",
         (1, 1, 728, 1024)),
        ("xception_65", "xception_65/exit_flow/block2/unit_1/xception_module/"
                        "separable_conv3_pointwise/BatchNorm/beta", (2048,)),
        ("xception_71", "xception_71/entry_flow/block5/unit_1/xception_module/"
                        "shortcut/BatchNorm/moving_mean", (728,)),
    ],
)
def test_deeplab_variables_map_onto_layers(variant, variable, shape):
    layer_name, weight_name = deeplab_variable_to_keras_weight(variable)
    weight = getattr(_backbone(variant, 16).get_layer(layer_name), weight_name)
    assert tuple(weight.shape) == shape


@pytest.mark.parametrize(
    "variant, layer_name",
    [
        ("mobilenet_v2", "block_2_depthwise_relu"),
        ("xception_65", _xception_unit("entry_flow_block2") + _CONV2_POINTWISE_BN),
        ("xception_71", _xception_unit("entry_flow_block3") + _CONV2_POINTWISE_BN),
        ("xception", "block3_sepconv2_bn"),
    ],
)
def test_low_level_end_points(variant, layer_name):
    backbone = _backbone(variant, 16)
    assert backbone.output["low_level"] is backbone.get_layer(layer_name).output


def test_unknown_variant_lists_valid_names():
    with pytest.raises(ValueError, match="resnet_50") as error:
        build_backbone("resnet_50")
    for name in BACKBONES:
        assert name in str(error.value)


@pytest.mark.parametrize("output_stride", [4, 12, 64])
def test_bad_output_stride_names_the_flag(output_stride):
    with pytest.raises(ValueError, match="output_stride"):
        build_backbone("mobilenet_v2", output_stride)


@pytest.mark.parametrize("variant", ["xception_65", "xception_71", "xception"])
def test_depth_multiplier_only_for_mobilenet_v2(variant):
    with pytest.raises(ValueError, match="depth_multiplier"):
        build_backbone(variant, 16, depth_multiplier=0.5)
    with pytest.raises(ValueError, match="depth_multiplier"):
        build_backbone("mobilenet_v2", 16, depth_multiplier=0.0)
