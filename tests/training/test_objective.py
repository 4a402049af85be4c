"""Auxiliary cells and distillation from a teacher in full training (issue 10): losses, runs, export."""

import json
import os

import h5py
import keras
import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import synthetic, train as train_main
from deeplab_dpc.core.layers import resize_bilinear_align_corners
from deeplab_dpc.core.model import ModelConfig, aux_endpoint_strides, build_deeplab, main_head
from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.runs import checkpoint_path, load_model_for_inference
from deeplab_dpc.training import checkpoints, train_lib
from deeplab_dpc.training.config import ResumeMismatch, TrainConfig, check_resume
from deeplab_dpc.training.losses import SegmentationLoss, distillation_loss
from deeplab_dpc.training.objective import TrainingModel, build_training_model
from tests.training.tiny import tiny_train_config

SPEC = CellSpec.from_list(
    [
        {"op": "conv", "kernel": 1, "input": -1},
        {"op": "conv", "kernel": 3, "rate": [1, 3], "input": 0},
        {"op": "pyramid_pooling", "grid_size": [2, 2], "input": 0},
    ]
)
ENDPOINTS = ("block_5_add", "block_12_add")  # MobileNet-v2 at stride 8 and 16
NUM_CLASSES = 3


def _model_config(**overrides):
    fields = dict(
        num_classes=NUM_CLASSES,
        context="dpc",
        dense_prediction_cell=SPEC,
        depth_multiplier=0.35,
        dropout_rate=0.0,
        initializer="keras",
        aux_cell_endpoints=ENDPOINTS,
    )
    fields.update(overrides)
    return ModelConfig(**fields)


def _save_run(directory, config, step=1, seed=0):
    """A train_logdir as training leaves it (model_config.json, a checkpoint with optimizer state), untrained.

    Batch norm statistics are those of one batch, so inference is not degenerate (WORKSPACE.md).
    """
    keras.utils.set_random_seed(seed)
    model = build_deeplab(config, aux_heads=True)
    train_lib.warm_start_batch_norm(model, np.random.default_rng(seed).uniform(0, 255, (2, 64, 64, 3)))
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    model.optimizer.build(model.trainable_variables)
    os.makedirs(directory, exist_ok=True)
    config.save(os.path.join(directory, "model_config.json"))
    model.save_weights(checkpoint_path(str(directory), step))
    return model


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    descriptor = synthetic.write_segnet_folders(root, {"train": 8, "val": 2}, 64, 80, num_classes=NUM_CLASSES)
    return str(root), descriptor


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A teacher of another architecture (ASPP, no auxiliary cells): none of its layers is the student's."""
    directory = tmp_path_factory.mktemp("teacher")
    _save_run(directory, ModelConfig(num_classes=NUM_CLASSES, context="aspp", depth_multiplier=0.35), seed=7)
    return str(directory)


@pytest.fixture(scope="module")
def aux_run(tmp_path_factory):
    """An (untrained) checkpoint of a model with auxiliary cells, as its training run saves it."""
    directory = tmp_path_factory.mktemp("aux_run")
    config = _model_config()
    return directory, config, _save_run(directory, config, seed=3)


@pytest.fixture(scope="module")
def run(dataset, teacher_dir, tmp_path_factory):
    """4 steps with both auxiliary cells and KL distillation, evaluated (main head) at the end."""
    logdir = tmp_path_factory.mktemp("aux_distill_run")
    config = tiny_train_config(
        dataset,
        logdir,
        _model_config(),
        training_number_of_steps=4,
        log_steps=2,
        train_batch_size=2,
        distillation_teacher=teacher_dir,
        distillation_loss="kl",
        distillation_weight=0.5,
        distillation_temperature=2.0,
        eval_split="val",
        eval_interval_steps=4,
        eval_crop_size=(64, 80),
        num_summary_images=0,
    )
    summary = train_lib.train(config, verbose=0)
    return logdir, config, summary


# ----------------------------------------------------------------------------------------------------------
# The model: auxiliary heads in training only.


def test_aux_heads_are_in_the_training_model_only():
    config = _model_config()
    training = build_deeplab(config, aux_heads=True)
    names = [layer.name for layer in training.layers]
    for endpoint in ENDPOINTS:
        assert {f"aux_cell_{endpoint}", f"aux_logits_{endpoint}", f"aux_upsample_logits_{endpoint}"} <= set(
            names
        )
    inference = main_head(training)
    plain = build_deeplab(config)
    for model in (inference, plain):
        assert not [layer.name for layer in model.layers if layer.name.startswith("aux_")]
        assert len(model.outputs) == 1
    assert len(inference.weights) == len(plain.weights)
    aux_weights = {
        id(w) for name in names if name.startswith("aux_") for w in training.get_layer(name).weights
    }
    assert aux_weights and not aux_weights & {id(w) for w in inference.weights}
    assert len(training.weights) == len(inference.weights) + len(aux_weights)
    images = np.random.default_rng(0).uniform(0, 255, (1, 65, 65, 3)).astype("float32")
    outputs = training(images)
    assert len(outputs) == 3 and all(tuple(o.shape) == (1, 65, 65, NUM_CLASSES) for o in outputs)
    np.testing.assert_array_equal(np.asarray(inference(images)), np.asarray(outputs[0]))
    # Each copy of the cell reads its endpoint with rates scaled to its stride (8: doubled).
    assert aux_endpoint_strides(config) == {"block_5_add": 8, "block_12_add": 16}
    assert training.get_layer("aux_cell_block_5_add").branch_layers[1].rate == (2, 6)
    assert training.get_layer("aux_cell_block_12_add").branch_layers[1].rate == (1, 3)
    assert training.get_layer("dense_prediction_cell").branch_layers[1].rate == (1, 3)


def test_aspp_aux_cell_scales_explicit_rates_and_bad_endpoints_name_the_field():
    config = ModelConfig(
        num_classes=NUM_CLASSES,
        context="aspp",
        atrous_rates=(3, 6),
        depth_multiplier=0.35,
        aux_cell_endpoints=("block_5_add",),
    )
    training = build_deeplab(config, aux_heads=True)
    assert training.get_layer("aux_cell_block_5_add").atrous_rates == [6, 12]
    assert training.get_layer("aspp").atrous_rates == [3, 6]
    for endpoints, message in [
        (("block_2_add",), "'block_2_add' is at stride 4"),
        (("block_16_project_BN",), "the backbone's features layer"),
        (("nope",), "'nope' is not a layer of the mobilenet_v2 backbone"),
    ]:
        with pytest.raises(ValueError, match=f"^aux_cell_endpoints: .*{message}"):
            aux_endpoint_strides(_model_config(aux_cell_endpoints=endpoints))
    with pytest.raises(ValueError, match="aux_cell_endpoints=.*context='none'"):
        ModelConfig(num_classes=NUM_CLASSES, context="none", aux_cell_endpoints=("block_5_add",))
    with pytest.raises(ValueError, match="must be distinct"):
        _model_config(aux_cell_endpoints=("block_5_add", "block_5_add"))


# ----------------------------------------------------------------------------------------------------------
# Losses, by hand.


def _softmax_ce(labels, logits, num_classes, ignore_label=255):
    """DeepLab's loss in NumPy: mean cross entropy over pixels whose label is a class."""
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p = log_p - np.log(np.exp(log_p).sum(-1, keepdims=True))
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    picked = np.take_along_axis(log_p, np.where(valid, labels, 0)[..., None], -1)[..., 0]
    return -(picked * valid).sum() / (valid.sum() + 1e-5)


def test_total_loss_is_main_plus_weighted_aux_losses_plus_weight_decay(dataset, tmp_path):
    config = tiny_train_config(dataset, tmp_path, _model_config(), aux_loss_weight=0.3)
    loss = SegmentationLoss(NUM_CLASSES, 255)
    keras.utils.set_random_seed(0)
    model = build_training_model(config, loss)
    assert isinstance(model, TrainingModel) and model.objective.teacher is None
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 33, 33, 1)).astype("int32")
    labels[0, :5] = 255  # ignored pixels
    outputs = [np.asarray(o) for o in model(images)]
    # No two heads agree: each has its own weights.
    assert not np.allclose(outputs[1], outputs[2]) and not np.allclose(outputs[0], outputs[1])
    per_head = [_softmax_ce(labels[..., 0], o, NUM_CLASSES) for o in outputs]
    decay = 0.0
    for layer in model._flatten_layers():
        if getattr(layer, "kernel_regularizer", None) is not None:
            decay += float(np.asarray(layer.kernel_regularizer(layer.kernel)))
        if getattr(layer, "depthwise_regularizer", None) is not None:
            decay += float(np.asarray(layer.depthwise_regularizer(layer.depthwise_kernel)))
    assert decay > 0
    expected = per_head[0] + 0.3 * (per_head[1] + per_head[2]) + decay
    total = float(np.asarray(model.compute_loss(images, labels, model(images))))
    assert total == pytest.approx(expected, rel=1e-5)
    # The regulariser sum is the model's own (aux heads decayed like the main head).
    assert float(np.asarray(keras.ops.sum(model.losses))) == pytest.approx(decay, rel=1e-5)
    assert any(name.startswith("aux_") for name in _decayed_layer_names(model))


def test_distillation_adds_its_weighted_loss_against_the_frozen_teacher(dataset, teacher_dir, tmp_path):
    config = tiny_train_config(
        dataset,
        tmp_path,
        _model_config(aux_cell_endpoints=()),
        distillation_teacher=teacher_dir,
        distillation_loss="mse",
        distillation_weight=0.5,
    )
    model = build_training_model(config, SegmentationLoss(NUM_CLASSES, 255))
    assert isinstance(model, TrainingModel) and len(model.outputs) == 1
    teacher = model.objective.teacher
    assert teacher.get_layer("aspp") is not None and not teacher.trainable_weights
    assert not {id(w) for w in teacher.weights} & {id(w) for w in model.weights}  # not the student's
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (2, 33, 33, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, (2, 33, 33, 1)).astype("int32")
    labels[1, :, :7] = 255
    student, teacher_logits = np.asarray(model(images)), np.asarray(teacher(images))
    decay = float(np.asarray(keras.ops.sum(model.losses)))
    expected = (
        _softmax_ce(labels[..., 0], student, NUM_CLASSES)
        + 0.5 * _mse_by_hand(labels[..., 0], student, teacher_logits, NUM_CLASSES)
        + decay
    )
    total = float(np.asarray(model.compute_loss(images, labels, model(images))))
    assert total == pytest.approx(expected, rel=1e-5)
    # A training step changes the student, not the teacher (weights and batch norm statistics).
    before = [np.asarray(w).copy() for w in teacher.weights]
    student_before = np.asarray(model.get_layer("logits").kernel).copy()
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model.train_on_batch(images, labels)
    for old, new in zip(before, teacher.weights):
        np.testing.assert_array_equal(old, np.asarray(new))
    assert not np.allclose(student_before, np.asarray(model.get_layer("logits").kernel))


def _decayed_layer_names(model):
    return [
        top.name
        for top in model.layers
        if any(getattr(layer, "kernel_regularizer", None) is not None for layer in top._flatten_layers())
    ]


def _kl_by_hand(labels, student, teacher, t, num_classes, ignore_label=255):
    def log_softmax(x):
        x = x.astype(np.float64) / t
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    log_pt, log_ps = log_softmax(teacher), log_softmax(student)
    per_pixel = (np.exp(log_pt) * (log_pt - log_ps)).sum(-1) * t * t
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    return (per_pixel * valid).sum() / (valid.sum() + 1e-5)


def _mse_by_hand(labels, student, teacher, num_classes, ignore_label=255):
    per_pixel = ((student.astype(np.float64) - teacher) ** 2).mean(-1)
    valid = (labels != ignore_label) & (labels >= 0) & (labels < num_classes)
    return (per_pixel * valid).sum() / (valid.sum() + 1e-5)


def test_distillation_losses_equal_numpy_and_skip_ignored_pixels():
    rng = np.random.default_rng(3)
    student = rng.normal(0, 2, (2, 9, 7, 4)).astype("float32")
    teacher = rng.normal(0, 2, (2, 9, 7, 4)).astype("float32")
    labels = rng.integers(0, 4, (2, 9, 7)).astype("int32")
    labels[:, :3] = 255  # ignore label
    labels[1, 5] = 9  # not a class: ignored too
    for kind, t, by_hand in [
        ("mse", 1.0, _mse_by_hand(labels, student, teacher, 4)),
        ("kl", 1.0, _kl_by_hand(labels, student, teacher, 1.0, 4)),
        ("kl", 3.0, _kl_by_hand(labels, student, teacher, 3.0, 4)),
    ]:
        got = float(np.asarray(distillation_loss(labels[..., None], student, teacher, kind, 4, 255, t)))
        assert got == pytest.approx(by_hand, rel=1e-5), (kind, t)
    # Only valid pixels count: changing the teacher where labels are ignored changes nothing.
    changed = teacher.copy()
    changed[:, :3] += 100.0
    for kind in ("mse", "kl"):
        a = float(np.asarray(distillation_loss(labels, student, teacher, kind, 4, 255, 2.0)))
        b = float(np.asarray(distillation_loss(labels, student, changed, kind, 4, 255, 2.0)))
        assert a == pytest.approx(b, rel=1e-6) and a > 0
    # Equal logits: no loss; T^2 scaling: the KL of tiny differences barely depends on T.
    assert float(np.asarray(distillation_loss(labels, student, student, "kl", 4, 255, 2.0))) == pytest.approx(
        0, abs=1e-6
    )
    near = student + rng.normal(0, 1e-2, student.shape).astype("float32")
    kl_t4 = float(np.asarray(distillation_loss(labels, student, near, "kl", 4, 255, 4.0)))
    kl_t8 = float(np.asarray(distillation_loss(labels, student, near, "kl", 4, 255, 8.0)))
    assert kl_t8 == pytest.approx(kl_t4, rel=0.2)


def test_teacher_logits_of_another_size_are_resized_to_the_students():
    rng = np.random.default_rng(4)
    student = rng.normal(0, 1, (1, 9, 9, 3)).astype("float32")
    small_teacher = rng.normal(0, 1, (1, 5, 5, 3)).astype("float32")
    labels = rng.integers(0, 3, (1, 9, 9)).astype("int32")
    resized = np.asarray(resize_bilinear_align_corners(small_teacher, (9, 9)))
    got = float(np.asarray(distillation_loss(labels, student, small_teacher, "mse", 3)))
    assert got == pytest.approx(_mse_by_hand(labels, student, resized, 3), rel=1e-5)
    with pytest.raises(ValueError, match="distillation_loss='l1' is unknown"):
        distillation_loss(labels, student, student, "l1", 3)


# ----------------------------------------------------------------------------------------------------------
# The checkpoint of a run with auxiliary cells: inference and export.


def test_checkpoint_of_an_aux_run_loads_for_inference_without_the_heads(aux_run):
    directory, config, training = aux_run
    inference, model_config = load_model_for_inference(str(directory))
    assert model_config == config
    assert not [layer.name for layer in inference.layers if layer.name.startswith("aux_")]
    # Every variable is the checkpoint's (not another head's of the same shape).
    by_path = {w.path: np.asarray(w) for w in training.weights}
    assert len(inference.weights) < len(by_path)
    for weight in inference.weights:
        np.testing.assert_array_equal(np.asarray(weight), by_path[weight.path])
    images = np.random.default_rng(5).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    expected = np.asarray(training(images)[0])
    np.testing.assert_array_equal(np.asarray(inference(images)), expected)
    assert len(np.unique(expected.argmax(-1))) > 1  # not a constant prediction


def test_exported_model_has_no_aux_heads_and_predicts_as_the_inference_model(aux_run, tmp_path):
    tf = pytest.importorskip("tensorflow")
    from deeplab_dpc.export import export_lib

    directory, _, training = aux_run
    export_path = tmp_path / "export" / "1"
    export_lib.run_export(
        export_lib.ExportConfig(
            checkpoint_path=str(directory),
            export_path=str(export_path),
            save_probabilities=True,
        )
    )
    loaded = tf.saved_model.load(str(export_path))
    inference, _ = load_model_for_inference(str(directory))
    exported = loaded.model_variables
    assert len(exported) == len(inference.variables) < len(training.variables)
    assert sorted(tuple(v.shape) for v in exported) == sorted(tuple(v.shape) for v in inference.variables)
    assert not [v.name for v in exported if "aux_" in v.name]
    # The SavedModel's variables are the inference model's values, not the auxiliary heads'.
    values = sorted(float(np.asarray(v).sum()) for v in inference.variables)
    np.testing.assert_allclose(sorted(float(v.numpy().sum()) for v in exported), values, rtol=1e-6)
    images = np.random.default_rng(6).integers(0, 256, (2, 64, 80, 3), dtype=np.uint8)
    out = loaded.signatures["serving_default"](images=tf.constant(images))
    probabilities = np.asarray(keras.ops.softmax(inference(images.astype("float32")), axis=-1))
    np.testing.assert_allclose(out["semantic_probabilities"].numpy(), probabilities, atol=1e-4)
    np.testing.assert_array_equal(out["semantic_predictions"].numpy(), probabilities.argmax(-1))


# ----------------------------------------------------------------------------------------------------------
# A run with auxiliary cells and distillation (slow: ~50 s on 2 busy cores, most of it tracing the step).


@pytest.mark.slow
def test_run_checkpoints_the_student_only_evaluates_the_main_head_and_exports(run, dataset, tmp_path):
    from deeplab_dpc.data.batches import DataConfig
    from deeplab_dpc.evaluation import eval_lib

    logdir, config, summary = run
    assert summary["step"] == 4 and [s for s, _ in checkpoints.list_checkpoints(str(logdir))] == [2, 4]
    saved = json.loads((logdir / "train_config.json").read_text())
    assert (saved["distillation_loss"], saved["distillation_weight"], saved["distillation_temperature"]) == (
        "kl",
        0.5,
        2.0,
    )
    assert saved["model"]["aux_cell_endpoints"] == list(ENDPOINTS)
    assert TrainConfig.from_dict(saved) == config
    # The checkpoint holds the student's variables (auxiliary heads included), none of the ASPP teacher's.
    training = build_deeplab(config.model, aux_heads=True)
    with h5py.File(checkpoint_path(str(logdir), 4), "r") as f:
        layers = f["layers"]
        stored = []
        layers.visititems(lambda name, obj: stored.append(name) if isinstance(obj, h5py.Dataset) else None)
        assert not [name for name in layers if "aspp" in name]
    assert len(stored) == len(training.weights)
    # Every inference variable is the checkpoint's, and predictions equal the training model's main output.
    training.load_weights(checkpoint_path(str(logdir), 4))
    inference, model_config = load_model_for_inference(str(logdir))
    assert model_config == config.model
    assert not [layer.name for layer in inference.layers if layer.name.startswith("aux_")]
    by_path = {w.path: np.asarray(w) for w in training.weights}
    for weight in inference.weights:
        np.testing.assert_array_equal(np.asarray(weight), by_path[weight.path])
    images = np.random.default_rng(5).uniform(0, 255, (1, 64, 80, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(inference(images)), np.asarray(training(images)[0]))
    # The mIoU logged during training is what eval computes on the checkpoint (the main head's).
    root, descriptor = dataset
    eval_config = eval_lib.EvalConfig(
        checkpoint_dir=str(logdir),
        eval_logdir=str(logdir / "eval"),
        data=DataConfig(dataset=descriptor, dataset_dir=root, dataset_format="folder:segnet"),
        eval_split="val",
        eval_crop_size=(64, 80),
    )
    result = eval_lib.evaluate_checkpoint(eval_config, checkpoint_path(str(logdir), 4))
    assert result["miou"] == pytest.approx(summary["history"][-1]["val_miou"], abs=1e-6)
    # The export holds the inference model's variables: no auxiliary head, no teacher.
    tf = pytest.importorskip("tensorflow")
    from deeplab_dpc.export import export_lib

    export_lib.run_export(
        export_lib.ExportConfig(checkpoint_path=str(logdir), export_path=str(tmp_path / "e"))
    )
    exported = tf.saved_model.load(str(tmp_path / "e")).model_variables
    assert sorted(tuple(v.shape) for v in exported) == sorted(tuple(v.shape) for v in inference.variables)


@pytest.mark.slow
def test_a_trained_aux_run_can_warm_start_a_plain_run(run, dataset, tmp_path):
    """tf_initial_checkpoint from an auxiliary-cell run: shared layers are copied, its aux heads ignored."""
    logdir, _, _ = run
    config = tiny_train_config(
        dataset, tmp_path, _model_config(aux_cell_endpoints=()), tf_initial_checkpoint=str(logdir)
    )
    model = train_lib.build_and_compile(config)
    assert not isinstance(model, TrainingModel)
    report = train_lib.initialize_from_checkpoint(model, config)
    assert not report["missing"] and report["ignored"] == []  # the source is the inference model: no aux
    assert "logits/kernel" in report["restored"]


# ----------------------------------------------------------------------------------------------------------
# Flags, validation and resuming.


def _flags(*args):
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", *args])
    return fv


def _base(dataset, logdir):
    root, descriptor = dataset
    return [
        f"--dataset={descriptor}",
        f"--dataset_dir={root}",
        "--dataset_format=folder",
        f"--train_logdir={logdir}",
        "--dense_prediction_cell_json=experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json",
        "--depth_multiplier=0.35",
    ]


def test_flags_become_the_train_config(dataset, teacher_dir, tmp_path):
    config = train_main.config_from_flags(_flags(*_base(dataset, tmp_path)))
    assert config.model.aux_cell_endpoints == () and config.distillation_weight == 0
    assert config.distillation_teacher is None
    config = train_main.config_from_flags(
        _flags(
            *_base(dataset, tmp_path),
            "--aux_cell_endpoints=block_5_add,block_12_add",
            "--aux_loss_weight=0.4",
            f"--distillation_teacher={teacher_dir}",
            "--distillation_loss=kl",
            "--distillation_weight=0.25",
            "--distillation_temperature=3",
        )
    )
    assert config.model.aux_cell_endpoints == ENDPOINTS and config.aux_loss_weight == 0.4
    assert (config.distillation_teacher, config.distillation_loss) == (teacher_dir, "kl")
    assert (config.distillation_weight, config.distillation_temperature) == (0.25, 3.0)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--aux_cell_endpoints=block_2_add"], "^--aux_cell_endpoints: 'block_2_add' is at stride 4"),
        (["--aux_cell_endpoints=no_such_layer"], "^--aux_cell_endpoints: 'no_such_layer' is not a layer"),
        (["--aux_loss_weight=0.3"], "--aux_loss_weight needs --aux_cell_endpoints"),
        (["--aux_cell_endpoints=block_5_add", "--aux_loss_weight=-1"], "^--aux_loss_weight must be >= 0"),
        (["--distillation_weight=0.5"], "^--distillation_weight=0.5 needs distillation_teacher"),
        (
            ["--distillation_teacher=/no/such/run", "--distillation_weight=1"],
            "^--distillation_teacher=/no/such/run: checkpoint_path=/no/such/run does not exist",
        ),
        (["--distillation_temperature=0"], "^--distillation_temperature must be positive"),
    ],
)
def test_bad_flags_name_the_flag(dataset, tmp_path, args, message):
    with pytest.raises(app.UsageError, match=message):
        train_main.config_from_flags(_flags(*_base(dataset, tmp_path), *args))


def test_a_teacher_with_other_classes_is_refused_naming_the_flag(dataset, tmp_path):
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    ModelConfig(num_classes=5, context="none").save(teacher / "model_config.json")
    (teacher / "ckpt-00000001.weights.h5").write_bytes(b"")  # only its config is read
    with pytest.raises(app.UsageError, match=r"^--distillation_teacher=.*predicts 5 classes.*num_classes=3"):
        train_main.config_from_flags(
            _flags(
                *_base(dataset, tmp_path / "run"),
                f"--distillation_teacher={teacher}",
                "--distillation_weight=1",
            )
        )
    with pytest.raises(
        app.UsageError, match="^--distillation_teacher=.* is unused: distillation_weight is 0"
    ):
        train_main.config_from_flags(
            _flags(*_base(dataset, tmp_path / "run"), f"--distillation_teacher={teacher}")
        )


def test_old_configs_resume_and_the_new_fields_are_not_resumable(dataset, teacher_dir, tmp_path):
    config = tiny_train_config(dataset, tmp_path, _model_config(aux_cell_endpoints=()))
    saved = config.to_dict()
    for name in (
        "aux_loss_weight",
        "distillation_teacher",
        "distillation_loss",
        "distillation_weight",
        "distillation_temperature",
    ):
        del saved[name]
    del saved["model"]["aux_cell_endpoints"]
    (tmp_path / "train_config.json").write_text(json.dumps(saved))
    assert check_resume(config, has_checkpoints=True) is False  # a file from before issue 10: unchanged
    for new, flag in [
        (tiny_train_config(dataset, tmp_path, _model_config()), "aux_cell_endpoints: \\[\\] -> "),
        (
            tiny_train_config(dataset, tmp_path, config.model, aux_loss_weight=0.3),
            "aux_loss_weight: 0.15 -> 0.3",
        ),
        (
            tiny_train_config(
                dataset, tmp_path, config.model, distillation_teacher=teacher_dir, distillation_weight=0.5
            ),
            "distillation_weight: 0.0 -> 0.5",
        ),
    ]:
        with pytest.raises(ResumeMismatch, match=flag):
            check_resume(new, has_checkpoints=True)
