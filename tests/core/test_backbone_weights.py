"""load_backbone_weights: by-name copying from models and files, shape checks, reports."""

import functools

import keras
import numpy as np
import pytest

from deeplab_dpc.core.backbones import build_backbone, imagenet_source, load_backbone_weights
from deeplab_dpc.core.backbones.mobilenet_v2 import FEATURES_LAYER

ALPHA = 0.35  # small and fast; layer names and order do not depend on alpha


def _randomize(model, seed=0):
    """Every weight (kernels, BN parameters and moving statistics) set to fresh random values."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in model.get_weights()])
    return model


@functools.lru_cache(maxsize=None)
def _keras_mobilenet_v2(alpha=ALPHA, include_top=False):
    model = keras.applications.MobileNetV2(
        weights=None, include_top=include_top, alpha=alpha, input_shape=(96, 96, 3)
    )
    return _randomize(model)


def _assert_copied(backbone, source, report):
    """Every loaded layer holds exactly the source layer's values."""
    assert report["loaded"]
    for name in report["loaded"]:
        for ours, theirs in zip(backbone.get_layer(name).get_weights(),
                                source.get_layer(name).get_weights()):
            np.testing.assert_array_equal(ours, theirs)


def _weighted_layer_names(model):
    return [layer.name for layer in model.layers if layer.weights]


def test_load_from_model_object():
    source = _keras_mobilenet_v2()
    backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=ALPHA)
    report = load_backbone_weights(backbone, source)
    assert report["loaded"] == _weighted_layer_names(backbone)
    assert report["loaded"][0] == "Conv1" and report["loaded"][-1] == FEATURES_LAYER
    assert report["missing"] == [] and report["shape_mismatch"] == []
    assert report["unused"] == ["Conv_1", "Conv_1_bn"]  # DeepLab drops the 1x1 to 1280
    _assert_copied(backbone, source, report)


@pytest.mark.parametrize("include_top", [False, True])
def test_load_from_keras3_weights_h5(tmp_path, include_top):
    source = _keras_mobilenet_v2(include_top=include_top)
    path = tmp_path / "mobilenet_v2.weights.h5"
    source.save_weights(path)
    backbone = build_backbone("mobilenet_v2", 8, depth_multiplier=ALPHA)
    report = load_backbone_weights(backbone, path, strict=True)
    assert report["missing"] == []
    expected_unused = ["Conv_1", "Conv_1_bn"] + (["predictions"] if include_top else [])
    assert report["unused"] == expected_unused
    _assert_copied(backbone, source, report)


def test_load_from_keras_and_legacy_h5_files(tmp_path):
    source = _keras_mobilenet_v2()
    source.save(tmp_path / "source.keras")
    source.save(tmp_path / "source.h5")  # Keras 2 layout, as keras.applications' downloads
    for path in (tmp_path / "source.keras", str(tmp_path / "source.h5")):
        backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=ALPHA)
        report = load_backbone_weights(backbone, path, strict=True)
        assert report["unused"] == ["Conv_1", "Conv_1_bn"], path
        _assert_copied(backbone, source, report)


def test_keras_xception_weights_file_maps_unnamed_residuals(tmp_path):
    source = _randomize(keras.applications.Xception(weights=None, include_top=False,
                                                    input_shape=(71, 71, 3)))
    path = tmp_path / "xception.weights.h5"
    source.save_weights(path)
    backbone = build_backbone("xception", 16)
    report = load_backbone_weights(backbone, path, strict=True)
    assert report["unused"] == [] and report["missing"] == []
    assert len(report["loaded"]) == len(_weighted_layer_names(source))
    unnamed_convs = [
        layer for layer in source.layers
        if isinstance(layer, keras.layers.Conv2D) and not layer.name.startswith("block")
    ]
    for block, conv in zip((2, 3, 4, 13), unnamed_convs):
        np.testing.assert_array_equal(
            backbone.get_layer(f"block{block}_residual").get_weights()[0], conv.get_weights()[0]
        )


def test_shape_mismatch_raises_naming_layer_and_shapes_and_changes_nothing():
    backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=1.0)
    before = backbone.get_layer("Conv1").get_weights()[0].copy()
    with pytest.raises(ValueError) as error:
        load_backbone_weights(backbone, _keras_mobilenet_v2(alpha=0.5))
    message = str(error.value)
    assert "'Conv1'" in message and "(3, 3, 3, 32)" in message and "(3, 3, 3, 16)" in message
    assert "'block_16_project'" in message
    np.testing.assert_array_equal(backbone.get_layer("Conv1").get_weights()[0], before)


def test_missing_layers_reported_and_strict_raises():
    backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=ALPHA)
    inputs = keras.Input((None, None, 3))
    conv1 = keras.layers.Conv2D(16, 3, use_bias=False, name="Conv1")
    partial = keras.Model(inputs, keras.layers.Dense(4, name="head")(conv1(inputs)))
    _randomize(partial)
    report = load_backbone_weights(backbone, partial)
    assert report["loaded"] == ["Conv1"] and report["unused"] == ["head"]
    assert report["missing"] == _weighted_layer_names(backbone)[1:]
    np.testing.assert_array_equal(backbone.get_layer("Conv1").get_weights()[0],
                                  conv1.get_weights()[0])
    with pytest.raises(ValueError, match="strict"):
        load_backbone_weights(backbone, partial, strict=True)


def test_deeplab_xception_has_no_keras_imagenet_weights():
    for variant in ("xception_65", "xception_71"):
        with pytest.raises(ValueError, match="tf_initial_checkpoint"):
            imagenet_source(variant)
    with pytest.raises(ValueError, match="mobilenet_v2"):
        imagenet_source("resnet_50")


def test_bad_sources_raise(tmp_path):
    backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=ALPHA)
    with pytest.raises(ValueError, match="must be a keras.Model"):
        load_backbone_weights(backbone, tmp_path / "weights.npz")
