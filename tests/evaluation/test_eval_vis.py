"""eval and vis entry points on a saved run: numbers, files, flag checks."""

import json
import os

import cv2
import keras
import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import eval as eval_main, synthetic, vis as vis_main
from deeplab_dpc.core.model import ModelConfig, build_deeplab
from deeplab_dpc.evaluation import eval_lib, vis_lib
from deeplab_dpc.evaluation.inference import predict_labels
from deeplab_dpc.evaluation.metrics import ConfusionMatrix
from deeplab_dpc.runs import checkpoint_path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A generated dataset and a train_logdir holding a model config and one checkpoint."""
    root = tmp_path_factory.mktemp("data")
    descriptor = synthetic.write_segnet_folders(root, {"val": 3}, 48, 64, num_classes=3)
    logdir = tmp_path_factory.mktemp("run")
    config = ModelConfig(num_classes=3, context="aspp", depth_multiplier=0.35, decoder_output_stride=4)
    config.save(logdir / "model_config.json")
    keras.utils.set_random_seed(0)  # one model every run: its scores below are the same each time
    model = build_deeplab(config)
    calibrate_batch_norm(model, np.random.default_rng(0).uniform(0, 255, (4, 48, 64, 3)).astype("float32"))
    model.save_weights(checkpoint_path(str(logdir), 7))
    return str(root), descriptor, str(logdir), model


def calibrate_batch_norm(model, images):
    """Moving statistics from one batch, so an untrained model's logits are O(1), not ~0
    (untrained BN in inference mode does not normalise, and 50 layers shrink activations to nothing)."""
    from deeplab_dpc.training.train_lib import warm_start_batch_norm

    warm_start_batch_norm(model, images)
    assert np.asarray(model(images)).std() > 0.01


def _flags(module, *args):
    fv = flags.FlagValues()
    module.define_flags(fv)
    fv(["prog", *args])
    return fv


def _common(run):
    root, descriptor, logdir, _ = run
    return [f"--checkpoint_dir={logdir}", f"--dataset={descriptor}", f"--dataset_dir={root}", "--dataset_format=folder"]


def test_eval_miou_equals_a_confusion_matrix_of_the_model(run, tmp_path):
    root, _, _, model = run
    config = eval_main.config_from_flags(
        _flags(eval_main, *_common(run), f"--eval_logdir={tmp_path}", "--eval_crop_size=48,64")
    )
    [results] = eval_lib.run_evaluation(config)
    expected = ConfusionMatrix(3)
    for name in open(os.path.join(root, "val.txt")).read().split():
        image = cv2.imread(os.path.join(root, "val", name))[:, :, ::-1].astype("float32")
        label = cv2.imread(os.path.join(root, "valannot", name), cv2.IMREAD_GRAYSCALE)
        expected.update(label, np.argmax(np.asarray(model(image[None])), axis=-1)[0])
    assert results["step"] == 7
    # eval's compiled graph and this eager call may break a near-tie argmax differently on a pixel or two.
    assert results["miou"] == pytest.approx(expected.mean_iou(), abs=1e-3)
    assert results["num_pixels"] == 3 * 48 * 64
    written = json.loads((tmp_path / "latest.json").read_text())
    assert written["miou"] == results["miou"] and (tmp_path / "eval-00000007.json").is_file()
    assert set(written["per_class_iou"]) == {"background", "shape1", "shape2"}


def test_eval_with_scales_and_flips_equals_a_confusion_matrix_of_that_inference(run, tmp_path):
    root, _, _, model = run
    config = eval_main.config_from_flags(
        _flags(eval_main, *_common(run), f"--eval_logdir={tmp_path}", "--eval_crop_size=48,64",
               "--eval_scales=0.75,1.0,1.25", "--add_flipped_images")
    )
    [results] = eval_lib.run_evaluation(config)
    assert results["eval_scales"] == [0.75, 1.0, 1.25] and results["add_flipped_images"]
    multi, single = ConfusionMatrix(3), ConfusionMatrix(3)
    changed = 0
    for name in open(os.path.join(root, "val.txt")).read().split():
        image = cv2.imread(os.path.join(root, "val", name))[:, :, ::-1].astype("float32")
        label = cv2.imread(os.path.join(root, "valannot", name), cv2.IMREAD_GRAYSCALE)
        labels = np.asarray(predict_labels(model, image[None], (0.75, 1.0, 1.25), True))[0]
        plain = np.argmax(np.asarray(model(image[None])), axis=-1)[0]
        multi.update(label, labels)
        single.update(label, plain)
        changed += int((labels != plain).sum())
    # As above, eval's compiled graph (its batch, its kernels) and these eager calls may break a
    # near-tie argmax differently: a flipped pixel moves the mIoU by about 1e-4 (a class's union
    # is thousands of the 9216 pixels); 1e-3 allows a few, far below what the scales change (0.015).
    assert results["miou"] == pytest.approx(multi.mean_iou(), abs=1e-3)
    assert results["num_pixels"] == 3 * 48 * 64
    # The scales and flips were used: they change predictions, and the single-scale mIoU is not the result.
    assert changed > 0
    assert results["miou"] != pytest.approx(single.mean_iou(), abs=1e-2)


def test_model_flags_are_read_from_the_run_and_contradictions_refused(run):
    config = eval_main.config_from_flags(_flags(eval_main, *_common(run), "--decoder_output_stride=4"))
    assert config.eval_logdir.endswith("eval")
    with pytest.raises(app.UsageError, match=r"--model_variant=xception_65 contradicts .*model_variant=mobilenet_v2"):
        eval_main.config_from_flags(_flags(eval_main, *_common(run), "--model_variant=xception_65"))
    with pytest.raises(app.UsageError, match="--output_stride=8 contradicts"):
        vis_main.config_from_flags(_flags(vis_main, *_common(run), "--output_stride=8"))
    with pytest.raises(app.UsageError, match="no model_config.json"):
        eval_main.config_from_flags(_flags(eval_main, *_common(run)[1:], "--checkpoint_dir=/tmp"))
    with pytest.raises(app.UsageError, match="--dataset_dir=/missing does not exist"):
        eval_main.config_from_flags(_flags(eval_main, _common(run)[0], "--dataset_dir=/missing"))


def test_vis_writes_pngs_named_after_the_images(run, tmp_path):
    root, _, _, model = run
    config = vis_main.config_from_flags(
        _flags(vis_main, *_common(run), f"--vis_logdir={tmp_path}", "--vis_crop_size=48,64",
               "--also_save_raw_predictions")
    )
    names = vis_lib.visualize(config)
    assert names == ["val_00000", "val_00001", "val_00002"]
    raw = cv2.imread(str(tmp_path / "raw_segmentation_results" / "val_00001.png"), cv2.IMREAD_GRAYSCALE)
    image = cv2.imread(os.path.join(root, "val", "val_00001.png"))[:, :, ::-1].astype("float32")
    np.testing.assert_array_equal(raw, np.argmax(np.asarray(model(image[None])), axis=-1)[0])
    colour = cv2.imread(str(tmp_path / "segmentation_results" / "val_00001_prediction.png"))[:, :, ::-1]
    assert colour.shape == (48, 64, 3)
    from deeplab_dpc.data.colormaps import get_colormap

    np.testing.assert_array_equal(colour, get_colormap("pascal")[raw])
    assert (tmp_path / "segmentation_results" / "val_00002_ground_truth.png").is_file()


def test_cityscapes_raw_ids_map_back_to_label_ids():
    table = vis_lib.CITYSCAPES_TRAIN_ID_TO_LABEL_ID
    assert len(table) == 19 and table[0] == 7 and table[13] == 26 and table[18] == 33
