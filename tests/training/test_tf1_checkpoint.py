"""Restoring DeepLab's TF1 (slim, name-based) checkpoints into build_deeplab models.

Each test writes a real V1 name-based checkpoint (``tf.compat.v1.train.Saver``
in a ``tf.Graph``) under DeepLab's variable names, with values taken from a
randomised model of ours, and restores it into a fresh model.
"""

import os
import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: E402
from deeplab_dpc.core.spec import CellSpec  # noqa: E402
from deeplab_dpc.training.tf1_checkpoint import (  # noqa: E402
    deeplab_name_to_weight_path,
    format_report,
    infer_model_variant,
    model_weight_paths,
    resolve_checkpoint_path,
    restore_tf1_checkpoint,
    weight_path_to_deeplab_name,
)

# A cell with every op type: separable conv, pyramid pooling, 1x1 conv on a branch.
SPEC = CellSpec.from_list([
    {"op": "conv", "kernel": 3, "rate": [1, 6], "input": -1},
    {"op": "pyramid_pooling", "grid_size": [1, 2], "input": -1},
    {"op": "conv", "kernel": 1, "input": 0},
])
IMAGES = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype("float32")
STEP = 30000


def _mobilenet(num_classes=5):
    return build_deeplab(ModelConfig(
        num_classes=num_classes, depth_multiplier=0.35, dense_prediction_cell=SPEC,
        decoder_output_stride=4,
    ))


def _randomise(model, seed):
    """Random values of every weight's shape (BN statistics included), kept well scaled."""
    rng = np.random.default_rng(seed)
    for path, variable in model_weight_paths(model).items():
        shape = tuple(variable.shape)
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = np.prod(shape[:2]) if path.split("/")[-2].endswith("depthwise") else np.prod(shape[:-1])
            value = rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)
        elif leaf in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        variable.assign(value.astype("float32"))


def _deeplab_variables(model, variant, keep=lambda name: True):
    """{DeepLab name: value} of `model`'s weights."""
    out = {}
    for path, variable in model_weight_paths(model).items():
        name = weight_path_to_deeplab_name(path, variant)
        if keep(name):
            out[name] = np.asarray(variable.numpy())
    return out


def write_tf1_checkpoint(directory, variables, step=STEP):
    """Writes `variables` ({name: array}) as a TF1 name-based checkpoint; returns its prefix."""
    os.makedirs(directory, exist_ok=True)
    with tf.Graph().as_default():
        feeds, var_list = {}, {}
        for i, (name, value) in enumerate(variables.items()):
            value = np.asarray(value)
            placeholder = tf.compat.v1.placeholder(tf.as_dtype(value.dtype), value.shape)
            var_list[name] = tf.compat.v1.Variable(placeholder, name=f"v{i}")
            feeds[placeholder] = value
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
            return saver.save(sess, os.path.join(directory, "model.ckpt"), global_step=step)


def _with_training_state(variables, num_slots=8):
    """Adds what DeepLab's train checkpoints also hold: Momentum slots, global_step, an EMA shadow.

    Slots are written for the first `num_slots` variables and the logits only:
    building graph-mode variables is slow, and a few slots show the point.
    """
    out = dict(variables)
    for i, (name, value) in enumerate(variables.items()):
        if i < num_slots or name.startswith("logits/"):
            out[f"{name}/Momentum"] = np.zeros_like(value)
    first = next(iter(variables))
    out[f"{first}/ExponentialMovingAverage"] = variables[first]
    out["global_step"] = np.array(STEP, dtype=np.int64)
    return out


def _values(model):
    return {path: np.asarray(v.numpy()) for path, v in model_weight_paths(model).items()}


@pytest.fixture(scope="module")
def mobilenet_source(tmp_path_factory):
    """(randomised model, its outputs, {DeepLab name: value}, train-checkpoint directory)."""
    model = _mobilenet()
    _randomise(model, seed=1)
    variables = _deeplab_variables(model, "mobilenet_v2")
    directory = str(tmp_path_factory.mktemp("mnv2_train"))
    write_tf1_checkpoint(directory, _with_training_state(variables))
    return model, np.asarray(model(IMAGES, training=False)), variables, directory


# --- the name mapping, both ways, on DeepLab's own names --------------------------------

NAMES = [
    ("mobilenet_v2", "MobilenetV2/Conv/weights", "backbone/Conv1/kernel"),
    ("mobilenet_v2", "MobilenetV2/Conv/BatchNorm/gamma", "backbone/bn_Conv1/gamma"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv/depthwise/depthwise_weights", "backbone/expanded_conv_depthwise/kernel"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv/depthwise/BatchNorm/beta", "backbone/expanded_conv_depthwise_BN/beta"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv/project/weights", "backbone/expanded_conv_project/kernel"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv_1/expand/weights", "backbone/block_1_expand/kernel"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv_1/depthwise/depthwise_weights", "backbone/block_1_depthwise/kernel"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv_3/expand/BatchNorm/moving_mean", "backbone/block_3_expand_BN/moving_mean"),
    ("mobilenet_v2", "MobilenetV2/expanded_conv_16/project/BatchNorm/moving_variance",
     "backbone/block_16_project_BN/moving_variance"),
    ("xception_65", "xception_65/entry_flow/conv1_1/weights", "backbone/entry_flow_conv1_1/kernel"),
    ("xception_65", "xception_65/entry_flow/conv1_2/BatchNorm/gamma", "backbone/entry_flow_conv1_2_BatchNorm/gamma"),
    ("xception_65", "xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise/depthwise_weights",
     "backbone/entry_flow_block1_unit_1_xception_module_separable_conv1_depthwise/kernel"),
    ("xception_65",
     "xception_65/middle_flow/block1/unit_16/xception_module/separable_conv3_pointwise/BatchNorm/moving_variance",
     "backbone/middle_flow_block1_unit_16_xception_module_separable_conv3_pointwise_BatchNorm/moving_variance"),
    ("xception_71", "xception_71/exit_flow/block1/unit_1/xception_module/shortcut/weights",
     "backbone/exit_flow_block1_unit_1_xception_module_shortcut/kernel"),
    ("xception_71", "meta_architecture/branch0_depthwise/depthwise_weights",
     "dense_prediction_cell/branch0_depthwise/kernel"),
    ("xception_71", "meta_architecture/branch1_pointwise/BatchNorm/beta",
     "dense_prediction_cell/branch1_pointwise_BatchNorm/beta"),
    ("mobilenet_v2", "meta_architecture/branch2/BatchNorm/gamma", "dense_prediction_cell/branch2_BatchNorm/gamma"),
    ("xception_71", "meta_architecture/concat_projection/weights", "dense_prediction_cell/concat_projection/kernel"),
    ("xception_65", "concat_projection/weights", "aspp/concat_projection/kernel"),
    ("xception_65", "aspp0/BatchNorm/gamma", "aspp/aspp0_BatchNorm/gamma"),
    ("xception_65", "image_pooling/weights", "aspp/image_pooling/kernel"),
    ("xception_65", "aspp1_depthwise/depthwise_weights", "aspp/aspp1_depthwise/kernel"),
    ("xception_65", "aspp3_pointwise/BatchNorm/moving_mean", "aspp/aspp3_pointwise_BatchNorm/moving_mean"),
    ("xception_71", "decoder/decoder_conv0_depthwise/depthwise_weights", "decoder/decoder_conv0_depthwise/kernel"),
    ("xception_71", "decoder/decoder_conv1_pointwise/BatchNorm/beta", "decoder/decoder_conv1_pointwise_BatchNorm/beta"),
    ("xception_71", "decoder/feature_projection0/weights", "decoder/feature_projection0/kernel"),
    ("xception_71", "logits/semantic/weights", "logits/kernel"),
    ("xception_71", "logits/semantic/biases", "logits/bias"),
]


@pytest.mark.parametrize("variant,name,path", NAMES)
def test_name_mapping_both_ways(variant, name, path):
    assert deeplab_name_to_weight_path(name, variant) == path
    assert deeplab_name_to_weight_path(name) == path
    assert weight_path_to_deeplab_name(path, variant) == name


@pytest.mark.parametrize("variant,name", [
    (None, "global_step"),
    (None, "logits/semantic/weights/Momentum"),
    (None, "MobilenetV2/expanded_conv_2/expand/weights/Momentum"),
    (None, "MobilenetV2/Conv/weights/ExponentialMovingAverage"),
    (None, "MobilenetV2/Conv_1/weights"),  # the 1x1 to 1280 that DeepLab drops
    (None, "MobilenetV2/Logits/Conv2d_1c_1x1/biases"),
    (None, "MobilenetV2/expanded_conv/expand/weights"),  # block 0 has no expansion
    (None, "MobilenetV2/expanded_conv_0/project/weights"),
    (None, "MobilenetV2/expanded_conv/depthwise/weights"),  # a depthwise kernel is depthwise_weights
    (None, "xception_65/logits/weights"),  # the ImageNet classifier
    ("xception_71", "xception_65/entry_flow/conv1_1/weights"),  # another network
    ("mobilenet_v2", "xception_65/entry_flow/conv1_1/weights"),
    (None, "aspp0/biases"),
    (None, "some_other_scope/weights"),
])
def test_non_model_variables_map_to_none(variant, name):
    assert deeplab_name_to_weight_path(name, variant) is None


def test_every_weight_has_a_unique_deeplab_name_that_maps_back(mobilenet_source):
    model = mobilenet_source[0]
    names = {path: weight_path_to_deeplab_name(path, "mobilenet_v2") for path in model_weight_paths(model)}
    assert len(set(names.values())) == len(names)
    assert all(deeplab_name_to_weight_path(n, "mobilenet_v2") == p for p, n in names.items())
    # slim's numbering: Conv, expanded_conv (no expand), expanded_conv_1 .. _16.
    scopes = {re.sub(r"/(expand|depthwise|project|BatchNorm|weights|depthwise_weights|gamma|beta|moving_\w+)\b.*", "", n)
              for n in names.values() if n.startswith("MobilenetV2/")}
    assert scopes == {"MobilenetV2/Conv", "MobilenetV2/expanded_conv"} | {
        f"MobilenetV2/expanded_conv_{i}" for i in range(1, 17)}
    assert "MobilenetV2/expanded_conv/expand/weights" not in names.values()
    with pytest.raises(ValueError, match="no DeepLab TF1 checkpoints exist for model_variant='xception'"):
        weight_path_to_deeplab_name("backbone/block1_conv1/kernel", "xception")
    with pytest.raises(ValueError, match="has no DeepLab TF1 name"):
        weight_path_to_deeplab_name("backbone/not_a_layer/kernel", "mobilenet_v2")
    assert infer_model_variant(model) == "mobilenet_v2"


# --- restoring MobileNet-v2 + DPC + decoder ---------------------------------------------

def test_restore_whole_model_from_directory(mobilenet_source):
    source, expected, variables, directory = mobilenet_source
    model = _mobilenet()
    assert not np.allclose(np.asarray(model(IMAGES, training=False)), expected)

    report = restore_tf1_checkpoint(model, directory)  # a directory -> its latest checkpoint
    assert report["checkpoint"] == os.path.join(directory, f"model.ckpt-{STEP}")
    weights = model_weight_paths(model)
    # (a) every weight restored, equal to the checkpoint value under its DeepLab name.
    assert report["restored"] == list(weights) and report["missing"] == [] and report["skipped"] == []
    reader = tf.train.load_checkpoint(report["checkpoint"])
    for path, variable in weights.items():
        np.testing.assert_array_equal(variable.numpy(), reader.get_tensor(weight_path_to_deeplab_name(path, "mobilenet_v2")))
    np.testing.assert_array_equal(
        model.get_layer("backbone").get_layer("block_3_expand_BN").moving_mean.numpy(),
        reader.get_tensor("MobilenetV2/expanded_conv_3/expand/BatchNorm/moving_mean"))
    np.testing.assert_array_equal(
        model.get_layer("dense_prediction_cell").branch_layers[0].depthwise.kernel.numpy(),
        reader.get_tensor("meta_architecture/branch0_depthwise/depthwise_weights"))
    # (b) the same outputs as the model whose weights were written.
    np.testing.assert_allclose(np.asarray(model(IMAGES, training=False)), expected, rtol=1e-5, atol=1e-5)
    # (d) optimizer slots, global_step and EMA shadows are ignored and reported.
    ignored = set(report["ignored"])
    slots = {f"{n}/Momentum" for n in list(variables)[:8]} | {"logits/semantic/weights/Momentum",
                                                             "logits/semantic/biases/Momentum"}
    assert ignored == slots | {"global_step", f"{next(iter(variables))}/ExponentialMovingAverage"}
    text = format_report(report)
    assert f"restored {len(weights)} weights: backbone/Conv1/kernel" in text
    assert "missing 0" in text and "skipped 0" in text
    assert f"ignored {len(ignored)} checkpoint variables: " in text and "more)" in text


def test_initialize_last_layer_false_keeps_logits(mobilenet_source):
    _, _, variables, directory = mobilenet_source
    model = _mobilenet(num_classes=3)  # the checkpoint's logits have 5 classes
    before = _values(model)
    prefix = os.path.join(directory, f"model.ckpt-{STEP}")
    report = restore_tf1_checkpoint(model, prefix + ".index", initialize_last_layer=False)
    assert report["skipped"] == ["logits/kernel", "logits/bias"]
    assert report["missing"] == []
    assert {"logits/semantic/weights", "logits/semantic/biases"} <= set(report["ignored"])
    after = _values(model)
    for path in ("logits/kernel", "logits/bias"):
        np.testing.assert_array_equal(after[path], before[path])
    for path in report["restored"]:
        np.testing.assert_array_equal(after[path], variables[weight_path_to_deeplab_name(path, "mobilenet_v2")])
    assert len(report["restored"]) == len(after) - 2
    assert "skipped 2 weights (initialize_last_layer=False): logits/kernel, logits/bias" in format_report(report)


def test_initialize_last_layer_false_with_all_last_layers(mobilenet_source):
    _, _, _, directory = mobilenet_source
    model = _mobilenet(num_classes=3)
    report = restore_tf1_checkpoint(model, directory, initialize_last_layer=False,
                                    last_layers_contain_logits_only=False)
    assert all(p.startswith("backbone/") for p in report["restored"])
    assert {p.split("/")[0] for p in report["skipped"]} == {"dense_prediction_cell", "decoder", "logits"}
    assert report["missing"] == []


def test_shape_mismatch_raises_naming_both_and_changes_nothing(mobilenet_source):
    _, _, _, directory = mobilenet_source
    model = _mobilenet(num_classes=3)
    before = _values(model)
    with pytest.raises(ValueError) as error:
        restore_tf1_checkpoint(model, directory)
    message = str(error.value)
    assert "'logits/semantic/weights' has shape (1, 1, 256, 5)" in message
    assert "'logits/kernel' has shape (1, 1, 256, 3)" in message
    assert "'logits/semantic/biases' has shape (5,)" in message and "'logits/bias' has shape (3,)" in message
    assert "initialize_last_layer=False" in message
    after = _values(model)
    assert all(np.array_equal(after[p], before[p]) for p in before)


def test_backbone_only_checkpoint(mobilenet_source, tmp_path):
    source, _, variables, _ = mobilenet_source
    imagenet = {n: v for n, v in variables.items() if n.startswith("MobilenetV2/")}
    # What an ImageNet checkpoint also holds: the final 1x1 conv and the classifier.
    imagenet["MobilenetV2/Conv_1/weights"] = np.zeros((1, 1, 112, 1280), "float32")
    imagenet["MobilenetV2/Logits/Conv2d_1c_1x1/weights"] = np.zeros((1, 1, 1280, 1001), "float32")
    imagenet["MobilenetV2/Logits/Conv2d_1c_1x1/biases"] = np.zeros((1001,), "float32")
    prefix = write_tf1_checkpoint(str(tmp_path), _with_training_state(imagenet))

    model = _mobilenet(num_classes=3)
    report = restore_tf1_checkpoint(model, prefix)
    weights = model_weight_paths(model)
    assert report["restored"] == [p for p in weights if p.startswith("backbone/")]
    assert report["missing"] == [p for p in weights if not p.startswith("backbone/")]
    assert {p.split("/")[0] for p in report["missing"]} == {"dense_prediction_cell", "decoder", "logits"}
    assert {"MobilenetV2/Conv_1/weights", "MobilenetV2/Logits/Conv2d_1c_1x1/biases", "global_step"} <= set(report["ignored"])
    # The backbone computes exactly what the source backbone computes.
    features = model.get_layer("backbone")(IMAGES / 127.5 - 1.0, training=False)
    reference = source.get_layer("backbone")(IMAGES / 127.5 - 1.0, training=False)
    np.testing.assert_allclose(np.asarray(features["features"]), np.asarray(reference["features"]), rtol=1e-5, atol=1e-5)
    assert "missing" in format_report(report)


def test_checkpoint_of_another_backbone_raises(mobilenet_source, tmp_path):
    prefix = write_tf1_checkpoint(str(tmp_path), {
        "xception_65/entry_flow/conv1_1/weights": np.zeros((3, 3, 3, 32), "float32"),
        "global_step": np.array(1, np.int64),
    })
    with pytest.raises(ValueError, match=r"backbone is \['xception_65'\] but the model's is mobilenet_v2"):
        restore_tf1_checkpoint(mobilenet_source[0], prefix)  # raises before copying anything


def test_resolve_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint_path(tmp_path)
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint_path(tmp_path / "model.ckpt")
    prefix = write_tf1_checkpoint(str(tmp_path), {"a/weights": np.zeros((2,), "float32")}, step=7)
    assert resolve_checkpoint_path(prefix + ".data-00000-of-00001") == prefix
    os.remove(tmp_path / "checkpoint")  # model-zoo tarballs have no checkpoint state file
    assert resolve_checkpoint_path(tmp_path) == prefix


# --- Xception-65/71 ---------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["xception_65", pytest.param("xception_71", marks=pytest.mark.slow)])
def test_xception_backbone_names_round_trip(variant):
    """Every Xception weight has a DeepLab name that maps back, as xception.py's own helper reads it."""
    from deeplab_dpc.core.backbones import build_backbone
    from deeplab_dpc.core.backbones.xception import deeplab_variable_to_keras_weight

    backbone = build_backbone(variant, 16, name="backbone")
    names = set()
    for layer in backbone.layers:
        for variable in layer.weights:
            path = f"backbone/{layer.name}/{variable.name}"
            name = weight_path_to_deeplab_name(path, variant)
            assert name.startswith(f"{variant}/") and name not in names
            names.add(name)
            assert deeplab_name_to_weight_path(name, variant) == path
            assert deeplab_variable_to_keras_weight(name) == (layer.name, variable.name)
            assert name.endswith("/depthwise_weights") == (layer.name.endswith("_depthwise"))
    assert len(names) == len(backbone.weights)
    assert f"{variant}/exit_flow/block2/unit_1/xception_module/separable_conv3_pointwise/BatchNorm/gamma" in names


@pytest.mark.slow  # ~40 s on 2 busy cores: three 41M-parameter models, two 165 MB checkpoints
def test_xception_65_aspp_decoder(tmp_path):
    def build(num_classes):
        return build_deeplab(ModelConfig(num_classes=num_classes, model_variant="xception_65", context="aspp",
                                         decoder_output_stride=4))

    source = build(3)
    _randomise(source, seed=2)
    images = IMAGES[:, :17, :21]
    expected = np.asarray(source(images, training=False))
    variables = _deeplab_variables(source, "xception_65")
    assert "xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise/depthwise_weights" in variables
    assert {"image_pooling/weights", "aspp0/BatchNorm/gamma", "aspp3_pointwise/weights",
            "concat_projection/BatchNorm/moving_variance", "decoder/feature_projection0/weights",
            "logits/semantic/biases"} <= set(variables)
    # A whole-model train checkpoint, with Momentum slots, global_step and an EMA shadow.
    train_dir = str(tmp_path / "train")
    write_tf1_checkpoint(train_dir, _with_training_state(variables))

    model = build(3)
    assert infer_model_variant(model) == "xception_65"
    report = restore_tf1_checkpoint(model, train_dir)
    weights = model_weight_paths(model)
    assert report["restored"] == list(weights) and report["missing"] == [] and report["skipped"] == []
    assert "global_step" in report["ignored"] and "logits/semantic/weights/Momentum" in report["ignored"]
    np.testing.assert_array_equal(
        model.get_layer("backbone").get_layer("entry_flow_conv1_1").kernel.numpy(),
        variables["xception_65/entry_flow/conv1_1/weights"])
    np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, rtol=1e-4, atol=1e-4)

    # An ImageNet-style backbone-only checkpoint, plus its classifier.
    imagenet = {n: v for n, v in variables.items() if n.startswith("xception_65/")}
    imagenet["xception_65/logits/weights"] = np.zeros((1, 1, 2048, 1001), "float32")
    backbone_prefix = write_tf1_checkpoint(str(tmp_path / "imagenet"), imagenet, step=0)
    report = restore_tf1_checkpoint(build(3), backbone_prefix, initialize_last_layer=False)
    assert report["restored"] == [p for p in weights if p.startswith("backbone/")]
    assert {p.split("/")[0] for p in report["missing"]} == {"aspp", "decoder"}
    assert report["skipped"] == ["logits/kernel", "logits/bias"]
    assert report["ignored"] == ["xception_65/logits/weights"]


# --- training from a TF1 checkpoint ----------------------------------------------------

def test_training_from_a_tf1_checkpoint_keeps_its_batch_norm_statistics(mobilenet_source, tmp_path, monkeypatch):
    """At step 0 the backbone's moving statistics are the checkpoint's; the cell's and decoder's are warm-started.

    The batch norm warm start runs after the restore; warm-starting every layer
    (as before) replaced the pretrained statistics by one batch's.
    """
    from deeplab_dpc import synthetic
    from deeplab_dpc.data.batches import DataConfig
    from deeplab_dpc.training import train_lib
    from deeplab_dpc.training.config import TrainConfig

    variables = mobilenet_source[2]
    prefix = write_tf1_checkpoint(str(tmp_path / "imagenet"), {n: v for n, v in variables.items()
                                                               if n.startswith("MobilenetV2/")})
    root = tmp_path / "data"
    descriptor = synthetic.write_segnet_folders(root, {"train": 4}, 33, 33, num_classes=3)
    config = TrainConfig(
        model=ModelConfig(num_classes=3, depth_multiplier=0.35, dense_prediction_cell=SPEC, decoder_output_stride=4),
        data=DataConfig(dataset=descriptor, dataset_dir=str(root), dataset_format="folder:segnet"),
        train_logdir=str(tmp_path / "run"), train_crop_size=(33, 33), train_batch_size=2, min_scale_factor=1.0,
        max_scale_factor=1.0, training_number_of_steps=1, log_steps=1, save_interval_secs=0,
        tf_initial_checkpoint=prefix, initialize_last_layer=False,
    )
    at_step_0 = {}
    begin = train_lib._Monitor.on_train_begin

    def record_statistics(self, logs=None):  # after initialisation and warm start, before the first step
        at_step_0.update({p: np.array(v.numpy()) for p, v in model_weight_paths(self.model).items()
                          if p.endswith(("/moving_mean", "/moving_variance"))})
        begin(self, logs)

    monkeypatch.setattr(train_lib._Monitor, "on_train_begin", record_statistics)
    summary = train_lib.train(config, verbose=0)
    assert summary["step"] == 1

    restored = [p for p in at_step_0 if p.startswith("backbone/")]
    fresh = [p for p in at_step_0 if not p.startswith("backbone/")]
    assert set(restored) <= set(summary["initialization"]["restored"])
    assert len(restored) == 2 * 51 and len(fresh) > 0  # MobileNet-v2 (without Conv_1) has 51 batch norms
    for path in restored:  # the checkpoint's values, exactly
        np.testing.assert_array_equal(at_step_0[path], variables[weight_path_to_deeplab_name(path, "mobilenet_v2")],
                                      err_msg=path)
    for path in fresh:  # not Keras' 0 / 1 start: one batch's statistics
        start = 0.0 if path.endswith("moving_mean") else 1.0
        assert np.abs(at_step_0[path] - start).max() > 1e-3, path
