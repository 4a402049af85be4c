"""Kernels start as DeepLab's: every scope's initialiser, and it survives get_config."""

import math

import keras
import numpy as np
import pytest

from deeplab_dpc.core.aspp import ASPP
from deeplab_dpc.core.backbones import build_backbone
from deeplab_dpc.core.decoder import Decoder
from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
from deeplab_dpc.core.layers import ConvBNReLU, SeparableConvBNReLU
from deeplab_dpc.core.model import ModelConfig, build_deeplab
from deeplab_dpc.core.spec import CellSpec

# A normal truncated at two standard deviations keeps this fraction of its stddev.
TRUNCATED = math.sqrt(1 - 2 * 2 * math.exp(-2) / math.sqrt(2 * math.pi) / (math.erf(2 / math.sqrt(2))))

SPEC = CellSpec.from_list(
    [
        {"op": "conv", "kernel": 3, "rate": [1, 6], "input": -1},
        {"op": "conv", "kernel": 1, "input": 0},
        {"op": "pyramid_pooling", "grid_size": [2, 2], "input": -1},
    ]
)


def _std(weight):
    return float(np.std(keras.ops.convert_to_numpy(weight)))


def _glorot_std(kernel):
    *receptive, fan_in, fan_out = kernel.shape
    k = int(np.prod(receptive))
    return math.sqrt(2.0 / (k * fan_in + k * fan_out))


def _assert_truncated_normal(weight, stddev):
    values = keras.ops.convert_to_numpy(weight)
    assert np.abs(values).max() <= 2 * stddev + 1e-6, weight.path
    assert _std(weight) == pytest.approx(stddev * TRUNCATED, rel=0.1), weight.path


def _kernels(layer):
    return {w.path: w for w in layer.weights if w.path.endswith("kernel")}


def test_truncation_constant_is_what_keras_draws():
    draws = keras.initializers.TruncatedNormal(stddev=1.0, seed=0)((200_000,))
    assert float(np.std(keras.ops.convert_to_numpy(draws))) == pytest.approx(TRUNCATED, abs=0.005)


def test_values_beyond_two_stddevs_are_drawn_again(monkeypatch):
    """Keras' PyTorch backend leaves about 4e-6 of its truncated normal's values beyond the bound: the
    initialiser it gets there draws those again and keeps the others."""
    from deeplab_dpc.core.common import RedrawnTruncatedNormal, truncated_normal

    assert isinstance(truncated_normal(0.5), RedrawnTruncatedNormal) == (keras.backend.backend() == "torch")
    first = np.array([0.1, 3.0, -0.5, -2.5, 1.9, 2.0], "float32")  # as torch's draw: two beyond 2
    monkeypatch.setattr(
        keras.initializers.TruncatedNormal, "__call__", lambda self, shape, dtype=None: keras.ops.array(first)
    )
    values = keras.ops.convert_to_numpy(RedrawnTruncatedNormal(stddev=1.0, seed=0)((6,)))
    assert np.abs(values).max() <= 2.0
    kept = [0, 2, 4, 5]
    np.testing.assert_array_equal(values[kept], first[kept])
    assert values[1] != 3.0 and values[3] != -2.5


def test_separable_conv_uses_deeplab_stddevs():
    layer = SeparableConvBNReLU(256, kernel_size=3, rate=2, name="branch0")
    layer.build((None, 9, 9, 320))
    _assert_truncated_normal(layer.depthwise.kernel, 0.33)
    _assert_truncated_normal(layer.pointwise.kernel, 0.06)


def test_one_by_one_conv_keeps_xavier_uniform():
    layer = ConvBNReLU(256, name="aspp0")
    layer.build((None, 9, 9, 320))
    kernel = layer.conv.kernel
    limit = math.sqrt(3) * _glorot_std(kernel)
    values = keras.ops.convert_to_numpy(kernel)
    assert np.abs(values).max() <= limit
    assert _std(kernel) == pytest.approx(_glorot_std(kernel), rel=0.05)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (DensePredictionCell(SPEC, output_stride=16), (None, 9, 9, 320)),
        (ASPP(output_stride=16), (None, 9, 9, 320)),
        (Decoder(), [(None, 9, 9, 256), (None, 33, 33, 144)]),
    ],
    ids=["dpc", "aspp", "decoder"],
)
def test_context_and_decoder_scopes(layer, shape):
    layer.build(shape)
    kernels = _kernels(layer)
    assert kernels
    for path, kernel in kernels.items():
        if "depthwise" in path:
            _assert_truncated_normal(kernel, 0.33)
        elif "pointwise" in path:
            _assert_truncated_normal(kernel, 0.06)
        else:
            assert _std(kernel) == pytest.approx(_glorot_std(kernel), rel=0.1), path


def test_separable_stddevs_round_trip_through_config():
    layer = SeparableConvBNReLU(64, kernel_size=3, rate=1, depthwise_stddev=0.5, pointwise_stddev=0.02)
    clone = SeparableConvBNReLU.from_config(layer.get_config())
    assert (clone.depthwise_stddev, clone.pointwise_stddev) == (0.5, 0.02)
    clone.build((None, 7, 7, 128))
    _assert_truncated_normal(clone.depthwise.kernel, 0.5)
    _assert_truncated_normal(clone.pointwise.kernel, 0.02)
    cell = DensePredictionCell.from_config(DensePredictionCell(SPEC).get_config())
    assert cell.branch_layers[0].depthwise_stddev == 0.33


@pytest.mark.parametrize("variant", ["mobilenet_v2", "xception_65"])
def test_backbone_arg_scope_stddev(variant):
    backbone = build_backbone(variant, output_stride=16, input_shape=(65, 65, 3))
    kernels = [w for w in backbone.weights if w.path.endswith("kernel")]
    assert len(kernels) > 30
    for kernel in kernels:
        if int(np.prod(kernel.shape)) >= 1000:  # enough draws for a stable stddev
            _assert_truncated_normal(kernel, 0.09)


def test_logits_and_equal_shaped_layers_differ():
    model = build_deeplab(ModelConfig(num_classes=5, dense_prediction_cell=SPEC), input_shape=(65, 65, 3))
    _assert_truncated_normal(model.get_layer("logits").kernel, 0.01)
    # One initialiser instance per layer: equal shapes must not mean equal weights.
    backbone = model.get_layer("backbone")
    a = keras.ops.convert_to_numpy(backbone.get_layer("block_14_project").kernel)
    b = keras.ops.convert_to_numpy(backbone.get_layer("block_15_project").kernel)
    assert not np.allclose(a, b)


def test_keras_initializer_option_restores_glorot_everywhere_but_the_logits():
    config = ModelConfig(num_classes=5, dense_prediction_cell=SPEC, decoder_output_stride=4, initializer="keras")
    model = build_deeplab(config, input_shape=(65, 65, 3))
    for layer in (model.get_layer("dense_prediction_cell"), model.get_layer("decoder")):
        for path, kernel in _kernels(layer).items():
            assert _std(kernel) == pytest.approx(_glorot_std(kernel), rel=0.1), path
    depthwise = model.get_layer("backbone").get_layer("block_3_depthwise").kernel  # [3, 3, 144, 1]
    assert _std(depthwise) == pytest.approx(_glorot_std(depthwise), rel=0.1)
    _assert_truncated_normal(model.get_layer("logits").kernel, 0.01)
    assert ModelConfig.from_dict(config.to_dict()) == config
    cell = DensePredictionCell.from_config(model.get_layer("dense_prediction_cell").get_config())
    assert cell.initializer == "keras" and cell.branch_layers[0].depthwise_stddev is None


def test_unknown_initializer_names_the_field():
    with pytest.raises(ValueError, match="initializer='he'.*deeplab"):
        ModelConfig(num_classes=5, dense_prediction_cell=SPEC, initializer="he")
