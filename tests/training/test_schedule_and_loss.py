"""DeepLab's learning-rate policies and segmentation loss, by hand-computed numbers."""

import math

import keras
import numpy as np
import pytest

from deeplab_dpc.training.losses import SegmentationLoss, pixel_cross_entropy
from deeplab_dpc.training.schedules import DeepLabSchedule


def _lr(schedule, step):
    return float(keras.ops.convert_to_numpy(schedule(step)))


def test_poly_policy():
    s = DeepLabSchedule("poly", 0.01, 1000, learning_power=0.9)
    assert _lr(s, 0) == pytest.approx(0.01)
    assert _lr(s, 500) == pytest.approx(0.01 * 0.5**0.9, rel=1e-5)
    assert _lr(s, 1000) == pytest.approx(0.0, abs=1e-9)
    assert _lr(s, 5000) == pytest.approx(0.0, abs=1e-9)  # clamped after the end


def test_step_policy_and_slow_start():
    s = DeepLabSchedule("step", 0.1, 10000, learning_rate_decay_step=100, learning_rate_decay_factor=0.5)
    assert [_lr(s, k) for k in (0, 99, 100, 250)] == pytest.approx([0.1, 0.1, 0.05, 0.025])
    slow = DeepLabSchedule("poly", 0.01, 1000, slow_start_step=10, slow_start_learning_rate=1e-4)
    assert _lr(slow, 5) == pytest.approx(1e-4)
    assert _lr(slow, 10) == pytest.approx(0.01 * (1 - 10 / 1000) ** 0.9, rel=1e-5)
    linear = DeepLabSchedule("poly", 0.01, 1000, slow_start_step=10, slow_start_learning_rate=0.0,
                             slow_start_burnin_type="linear")
    assert _lr(linear, 5) == pytest.approx(0.5 * 0.01 * (1 - 5 / 1000) ** 0.9, rel=1e-5)


def test_schedule_errors_and_config():
    with pytest.raises(ValueError, match="learning_policy='cosine'"):
        DeepLabSchedule("cosine", 0.01, 10)
    with pytest.raises(ValueError, match="training_number_of_steps"):
        DeepLabSchedule("poly", 0.01, 0)
    s = DeepLabSchedule("step", 0.2, 50, learning_rate_decay_step=7)
    assert DeepLabSchedule.from_config(s.get_config()).get_config() == s.get_config()


def _ce(logits, label):
    z = np.asarray(logits, np.float64)
    return math.log(np.exp(z).sum()) - z[label]


def test_loss_ignores_the_ignore_label_and_averages_the_rest():
    logits = np.array([[[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]]], "float32")
    labels = np.array([[[[0], [2]], [[255], [1]]]], "int32")
    loss = float(SegmentationLoss(3, 255)(labels, logits))
    expected = (_ce([2, 0, 0], 0) + _ce([0, 1, 0], 2) + _ce([1, 1, 1], 1)) / 3
    assert loss == pytest.approx(expected, rel=1e-5)


def test_pixel_cross_entropy_equals_keras_and_survives_large_logits():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7, 11)).astype("float32") * 4
    logits[0, 0, 0] += 1000.0  # exp would overflow without the maximum subtracted
    labels = rng.integers(0, 11, size=(2, 5, 7)).astype("int32")
    ours = np.asarray(pixel_cross_entropy(labels, logits, 11))
    z = logits.astype(np.float64)
    reference = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
    reference -= np.take_along_axis(z, labels[..., None], -1)[..., 0]
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-4)
    keras_losses = np.asarray(keras.ops.sparse_categorical_crossentropy(labels, logits, from_logits=True))
    np.testing.assert_allclose(ours, keras_losses, rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="gradients through TensorFlow's tape")
def test_pixel_cross_entropy_gradient_is_softmax_minus_one_hot():
    import tensorflow as tf

    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(2, 5, 7, 11)).astype("float32") * 4)
    labels = rng.integers(0, 11, size=(2, 5, 7)).astype("int32")
    with tf.GradientTape() as tape:
        tape.watch(logits)
        loss = tf.reduce_sum(pixel_cross_entropy(labels, logits, 11))
    expected = tf.nn.softmax(logits).numpy() - np.eye(11, dtype="float32")[labels]
    np.testing.assert_allclose(tape.gradient(loss, logits).numpy(), expected, atol=1e-6)


def test_an_ignore_label_inside_the_classes_is_ignored_too():
    logits = np.array([[[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]]], "float32")
    labels = np.array([[[[0], [2]], [[9], [1]]]], "int32")  # ignore 0; 9 is no class
    loss = float(SegmentationLoss(3, ignore_label=0)(labels, logits))
    assert loss == pytest.approx((_ce([0, 1, 0], 2) + _ce([1, 1, 1], 1)) / 2, rel=1e-5)


def test_class_weights_and_top_k():
    logits = np.array([[[[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 0.0]]]], "float32")
    labels = np.array([[[[0], [0], [1], [1]]]], "int32")
    losses = [_ce([2, 0], 0), _ce([0, 2], 0), _ce([1, 0], 1), _ce([0, 0], 1)]
    weighted = float(SegmentationLoss(2, class_weights=[1.0, 3.0])(labels, logits))
    assert weighted == pytest.approx((losses[0] + losses[1] + 3 * losses[2] + 3 * losses[3]) / 4, rel=1e-5)
    top = float(SegmentationLoss(2, top_k_percent_pixels=0.5)(labels, logits))
    assert top == pytest.approx(sum(sorted(losses)[-2:]) / 2, rel=1e-5)


def test_logits_are_upsampled_to_the_label_size():
    logits = np.zeros((1, 2, 2, 3), "float32")
    logits[..., 1] = 5.0
    labels = np.ones((1, 5, 5, 1), "int32")
    assert float(SegmentationLoss(3)(labels, logits)) == pytest.approx(_ce([0, 5, 0], 1), rel=1e-5)


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="class_weights has 2 values, expected num_classes=3"):
        SegmentationLoss(3, class_weights=[1, 2])
    with pytest.raises(ValueError, match="top_k_percent_pixels"):
        SegmentationLoss(3, top_k_percent_pixels=0.0)
