"""Analytical parameter and MAC counts: hand-worked cases and consistency with Keras."""

import math

import keras
import numpy as np
import pytest

from deeplab_dpc.analysis import stats
from deeplab_dpc.analysis.stats import Count
from deeplab_dpc.core import model as model_module
from deeplab_dpc.core.aspp import ASPP
from deeplab_dpc.core.decoder import Decoder
from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
from deeplab_dpc.core.spec import CellSpec

PUBLISHED = "experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json"


def _built_params(layer, input_shape):
    layer.build(input_shape)
    return layer.count_params(), sum(math.prod(w.shape) for w in layer.trainable_weights)


# ------------------------------------------------------------- formulas
def test_conv2d_formula():
    # 3x3, 8 -> 4, output 5x5: 3*3*8*4 = 288 weights; 25 * 288 = 7200 MACs.
    assert stats.conv2d((5, 5), 3, 8, 4) == Count(288, 288, 7200)
    assert stats.conv2d((5, 5), 3, 8, 4, bias=True) == Count(292, 292, 7200)
    # groups 2: 3*3*(8/2)*4 = 144.
    assert stats.conv2d((5, 5), 3, 8, 4, groups=2) == Count(144, 144, 3600)


def test_depthwise_and_batch_norm_formulas():
    # 3x3 depthwise on 8 channels at 5x5: 72 weights, 25 * 72 = 1800 MACs.
    assert stats.depthwise_conv2d((5, 5), 3, 8) == Count(72, 72, 1800)
    assert stats.depthwise_conv2d((5, 5), (3, 3), 8, multiplier=2, bias=True) == Count(160, 160, 3600)
    # BN: gamma, beta, moving mean, moving variance; 2*C trainable; no MACs.
    assert stats.batch_norm(8) == Count(32, 16, 0)
    assert stats.batch_norm(8, center=True, scale=False) == Count(24, 8, 0)


def test_pooled_size():
    # 9 cells, grid 4: window (9-1)//4+1 = 3, pooled 9-3+1 = 7; 13 cells, grid 2: window 7, pooled 7.
    assert stats.pooled_size((9, 13), (4, 2)) == (7, 7)
    # Grid 1: a window over everything, a 1x1 pooled map.
    assert stats.pooled_size((33, 65), (1, 1)) == (1, 1)


# ------------------------------------------------- hand-worked DPC / ASPP
def test_dpc_one_1x1_branch_by_hand():
    spec = CellSpec.from_list([{"op": "conv", "kernel": 1, "input": -1}])
    out = stats.dense_prediction_cell(spec, (5, 5), cin=8, filters=4, concat_channels=4)
    # Branch: conv 8*4 = 32 + BN 4*4 = 16 -> 48 params, 32 + 2*4 = 40 trainable, 5*5*8*4 = 800 MACs.
    assert out["branches"] == [Count(48, 40, 800)]
    # Projection 4 -> 4: conv 16 + BN 16 = 32, trainable 16 + 8 = 24, 25*4*4 = 400 MACs.
    assert out["concat_projection"] == Count(32, 24, 400)
    assert out["total"] == Count(80, 64, 1200)
    cell = DensePredictionCell(spec, output_stride=16, filters=4, concat_channels=4)
    assert _built_params(cell, (1, 5, 5, 8)) == (80, 64)


def test_pyramid_pooling_branch_by_hand():
    spec = CellSpec.from_list([{"op": "pyramid_pooling", "grid_size": [4, 4], "input": -1}])
    out = stats.dense_prediction_cell(spec, (9, 9), cin=8, filters=4, concat_channels=4)
    # Window 3, pooled 7x7: conv MACs 7*7*8*4 = 1568; params 8*4 + 4*4 = 48.
    assert out["branches"] == [Count(48, 40, 1568)]
    # The projection runs at the feature size: 9*9*4*4 = 1296 MACs.
    assert out["concat_projection"] == Count(32, 24, 1296)
    cell = DensePredictionCell(spec, output_stride=16, filters=4, concat_channels=4)
    assert _built_params(cell, (1, 9, 9, 8)) == (80, 64)


def test_dilation_does_not_change_the_count():
    counts = []
    for rate in ([1, 1], [1, 6], [18, 15]):
        spec = CellSpec.from_list([{"op": "conv", "kernel": 3, "rate": rate, "input": -1}])
        counts.append(stats.dense_prediction_cell(spec, (5, 5), cin=8, filters=4, concat_channels=4)["branches"][0])
    # depthwise 3*3*8 = 72, BN 4*8 = 32, pointwise 8*4 = 32, BN 4*4 = 16 -> 152 params;
    # trainable 72 + 16 + 32 + 8 = 128; MACs 25*72 + 25*32 = 1800 + 800 = 2600.
    assert counts == [Count(152, 128, 2600)] * 3


def test_chained_branch_reads_filters_channels():
    spec = CellSpec.from_list(
        [
            {"op": "conv", "kernel": 1, "input": -1},
            {"op": "conv", "kernel": 3, "rate": [1, 6], "input": 0},
        ]
    )
    out = stats.dense_prediction_cell(spec, (5, 5), cin=8, filters=4, concat_channels=4)
    # Branch 1 reads branch 0 (4 channels): dw 36 + BN 16 + pw 16 + BN 16 = 84; MACs 25*(36+16) = 1300.
    assert out["branches"][1] == Count(84, 36 + 8 + 16 + 8, 1300)
    # Projection 2*4 = 8 -> 4: 32 + 16 = 48 params, 25*32 = 800 MACs.
    assert out["concat_projection"] == Count(48, 40, 800)
    assert out["total"].params == 48 + 84 + 48
    cell = DensePredictionCell(spec, output_stride=16, filters=4, concat_channels=4)
    assert _built_params(cell, (1, 5, 5, 8))[0] == 180


def test_aspp_by_hand():
    out = stats.aspp((5, 5), cin=8, num_atrous=3, filters=4)
    assert out["branch_names"] == ["image_pooling", "aspp0", "aspp1", "aspp2", "aspp3"]
    # Image pooling: 1x1 conv on a 1x1 map: 8*4 = 32 MACs, 48 params.
    # aspp0: 48 params, 25*32 = 800 MACs; each separable 152 params, 2600 MACs (as above).
    assert [c.params for c in out["branches"]] == [48, 48, 152, 152, 152]
    assert [c.macs for c in out["branches"]] == [32, 800, 2600, 2600, 2600]
    # Projection 5*4 = 20 -> 4: 80 + 16 = 96 params, 25*80 = 2000 MACs.
    assert out["concat_projection"] == Count(96, 88, 2000)
    assert out["total"].params == 48 + 48 + 3 * 152 + 96 == 648
    assert out["total"].macs == 32 + 800 + 3 * 2600 + 2000 == 10632
    layer = ASPP(atrous_rates=[1, 2, 3], filters=4)
    assert _built_params(layer, (1, 5, 5, 8)) == (648, out["total"].trainable)
    no_pool = stats.aspp((5, 5), cin=8, num_atrous=3, filters=4, image_pooling=False)
    assert no_pool["total"].params == 48 + 3 * 152 + (16 * 4 + 16)


def test_decoder_by_hand():
    out = stats.decoder((9, 9), context_channels=4, low_level_channels=6, filters=4, low_level_filters=2)
    # feature_projection0 6 -> 2: 12 + 8 = 20 params; 81*12 = 972 MACs.
    assert out["feature_projection0"] == Count(20, 16, 972)
    # decoder_conv0 on 4 + 2 = 6 channels: dw 54 + BN 24 + pw 24 + BN 16 = 118; 81*(54+24) = 6318.
    assert out["decoder_conv0"] == Count(118, 54 + 12 + 24 + 8, 6318)
    # decoder_conv1 4 -> 4: dw 36 + BN 16 + pw 16 + BN 16 = 84; 81*(36+16) = 4212.
    assert out["decoder_conv1"] == Count(84, 36 + 8 + 16 + 8, 4212)
    assert out["total"] == out["feature_projection0"] + out["decoder_conv0"] + out["decoder_conv1"]
    layer = Decoder(filters=4, low_level_filters=2)
    assert _built_params(layer, [(1, 5, 5, 4), (1, 9, 9, 6)]) == (222, out["total"].trainable)


def test_logits_by_hand():
    # 1x1 conv with bias, 4 -> 3 classes at 5x5: 12 + 3 = 15 params, 25*12 = 300 MACs.
    assert stats.logits((5, 5), 4, 3) == Count(15, 15, 300)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_published_cell_params_equal_keras(output_stride):
    spec = CellSpec.load(PUBLISHED)
    out = stats.dense_prediction_cell(spec, (65, 129), cin=320)
    cell = DensePredictionCell(spec, output_stride=output_stride)
    assert _built_params(cell, (1, 65, 129, 320)) == (out["total"].params, out["total"].trainable)
    # Five separable branches: branch 0 reads 320 channels, the others 256.
    area = 65 * 129
    sep320 = area * (9 * 320 + 320 * 256)
    sep256 = area * (9 * 256 + 256 * 256)
    assert out["branches"][0].macs == sep320
    assert [b.macs for b in out["branches"][1:]] == [sep256] * 4
    assert out["concat_projection"].macs == area * 1280 * 256


def test_aspp_default_params_equal_keras():
    out = stats.aspp((33, 33), cin=320, num_atrous=3)
    assert _built_params(ASPP(output_stride=16), (1, 33, 33, 320)) == (out["total"].params, out["total"].trainable)


# ----------------------------------------------------------- Keras walk
def _tiny_backbone():
    images = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(images)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    low = keras.layers.ReLU(name="stem_relu")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", dilation_rate=2, use_bias=False, name="dw")(low)
    x = keras.layers.Conv2D(4, 1, name="pw")(x)  # with bias
    return keras.Model(images, {"features": x, "low_level": low})


def test_walk_by_hand():
    model = _tiny_backbone()
    walked = stats.count_model(model, (1, 9, 9, 3))
    # "same", stride 2: ceil(9/2) = 5. stem 3*3*3*8 = 216 params, 25*216 = 5400 MACs; BN 32 (16 trainable);
    # dw 3*3*8 = 72, 25*72 = 1800 MACs (dilation free); pw 8*4 + 4 = 36, 25*32 = 800 MACs.
    assert walked.total == Count(216 + 32 + 72 + 36, 216 + 16 + 72 + 36, 5400 + 1800 + 800)
    assert walked.total.params == model.count_params()
    assert walked.output_shapes == {"features": (1, 5, 5, 4), "low_level": (1, 5, 5, 8)}
    assert walked.uncounted == []
    by_name = {r.name: r.count.macs for r in walked.layers}
    assert by_name == {"stem": 5400, "stem_bn": 0, "stem_relu": 0, "dw": 1800, "pw": 800}
    # 10x10 gives the same 5x5 map; 17x17 gives 9x9: MACs scale by 81/25.
    assert stats.count_model(model, (1, 10, 10, 3)).total == walked.total
    assert stats.count_model(model, (1, 17, 17, 3)).total.macs == 8000 * 81 // 25


def test_walk_shared_frozen_nested_and_sequential():
    inner = keras.Sequential([keras.Input((None, None, 4)), keras.layers.Conv2D(4, 1, use_bias=False, name="seq_conv")])
    shared = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="shared")
    frozen = keras.layers.Conv2D(4, 1, use_bias=False, name="frozen")
    frozen.trainable = False
    x = keras.Input((None, None, 4))
    y = shared(shared(x))
    y = inner(frozen(y))
    y = keras.layers.Dense(2, name="head")(y)
    model = keras.Model(x, y)
    walked = stats.count_model(model, (1, 6, 6, 4))
    # shared: 3*3*4*4 = 144 params once, 2 * 36*144 MACs; frozen and seq_conv 16 params, 36*16 MACs each;
    # Dense 4*2 + 2 = 10 params, 36*8 MACs.
    assert walked.total == Count(144 + 16 + 16 + 10, 144 + 16 + 10, 2 * 36 * 144 + 2 * 36 * 16 + 36 * 8)
    assert walked.total.params == model.count_params()
    assert [r.name for r in walked.layers] == ["shared", "shared", "frozen", "seq_conv", "head"]


def test_walk_unknown_weighted_layer_counts_params_only():
    x = keras.Input((None, None, 4))
    y = keras.layers.LayerNormalization(name="ln")(x)
    model = keras.Model(x, y)
    walked = stats.count_model(model, (1, 3, 3, 4))
    assert walked.total == Count(8, 8, 0)
    assert walked.uncounted == ["ln"]


def test_walk_two_inputs():
    a, b = keras.Input((None, None, 2)), keras.Input((None, None, 3))
    y = keras.layers.Conv2D(4, 1, use_bias=False, name="conv")(keras.layers.Concatenate(name="cat")([a, b]))
    walked = stats.count_model(keras.Model([a, b], y), [(1, 4, 4, 2), (1, 4, 4, 3)])
    # Concat is free; 1x1 conv 5 -> 4 at 4x4: 20 params, 16*20 = 320 MACs.
    assert walked.total == Count(20, 20, 320)
    assert walked.output_shapes == (1, 4, 4, 4)


@pytest.fixture(scope="module")
def mobilenet_v2():
    return keras.applications.MobileNetV2(weights=None, include_top=False, input_shape=(None, None, 3))


def test_keras_mobilenet_v2_params_and_macs(mobilenet_v2):
    walked = stats.count_model(mobilenet_v2, (1, 224, 224, 3))
    assert walked.uncounted == []
    assert walked.total.params == mobilenet_v2.count_params()
    assert walked.total.trainable == sum(math.prod(w.shape) for w in mobilenet_v2.trainable_weights)
    # The published figure for MobileNet-v2 1.0 at 224 is ~300M MACs (with the classifier's 1.3M).
    assert 295e6 < walked.total.macs < 301e6


def test_keras_mobilenet_v2_macs_scale_with_area(mobilenet_v2):
    small = stats.count_model(mobilenet_v2, (1, 64, 96, 3))
    large = stats.count_model(mobilenet_v2, (1, 128, 192, 3))
    # Every map is exactly twice as large per side (sizes divisible by 32): MACs x4, params unchanged.
    assert large.total.macs == 4 * small.total.macs
    assert large.total.params == small.total.params
    pairs = list(zip(small.layers, large.layers))
    one_by_one = [
        (s, l)
        for (s, l) in pairs
        if s.class_name == "Conv2D" and mobilenet_v2.get_layer(s.name).kernel_size == (1, 1)
    ]
    assert one_by_one
    for s, l in one_by_one:
        h, w = s.output_shape[1:3]
        cin = mobilenet_v2.get_layer(s.name).input.shape[-1]
        assert s.count.macs == h * w * cin * mobilenet_v2.get_layer(s.name).filters
        assert l.count.macs * (h * w) == s.count.macs * np.prod(l.output_shape[1:3])


# ------------------------------------------------------ whole DeepLab model
def _config(**kwargs):
    kwargs.setdefault("num_classes", 19)
    if kwargs.get("context", "dpc") == "dpc":
        kwargs.setdefault("dense_prediction_cell", CellSpec.load(PUBLISHED))
    return model_module.ModelConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(context="aspp", decoder_output_stride=4),
        dict(context="none", output_stride=32),
    ],
    ids=["dpc", "aspp_decoder", "none_os32"],
)
def test_model_statistics_match_keras(kwargs):
    config = _config(**kwargs)
    crop = (97, 129)
    deeplab = model_module.build_deeplab(config)
    out = stats.model_statistics(config, crop, backbone=deeplab.get_layer("backbone"))
    assert out["params"]["total"] == deeplab.count_params()
    assert out["trainable_params"]["total"] == sum(math.prod(w.shape) for w in deeplab.trainable_weights)
    assert out["feature_map_size"] == [math.ceil(97 / config.output_stride), math.ceil(129 / config.output_stride)]
    assert out["uncounted_backbone_layers"] == []
    # Parts add up.
    for key in ("params", "trainable_params", "macs"):
        tree = out[key]
        assert tree["total"] == tree["backbone"] + tree["context"]["total"] + tree["decoder"]["total"] + tree["logits"]
        assert tree["context"]["total"] == sum(tree["context"]["branches"]) + tree["context"]["concat_projection"]
    # The generic walk of the whole model gives the same totals.
    whole = stats.count_model(deeplab, (1, *crop, 3))
    assert whole.total.params == out["params"]["total"]
    assert whole.total.macs == out["macs"]["total"]
    assert whole.output_shapes == (1, *crop, 19)


@pytest.mark.slow
@pytest.mark.parametrize("model_variant", ["xception_65", "xception_71", "xception"])
def test_model_statistics_match_keras_xception(model_variant):
    config = _config(model_variant=model_variant, decoder_output_stride=4)
    crop = (65, 97)
    deeplab = model_module.build_deeplab(config)
    out = stats.model_statistics(config, crop, backbone=deeplab.get_layer("backbone"))
    assert out["params"]["total"] == deeplab.count_params()
    assert out["uncounted_backbone_layers"] == []
    whole = stats.count_model(deeplab, (1, *crop, 3))
    assert (whole.total.params, whole.total.macs) == (out["params"]["total"], out["macs"]["total"])
