"""mIoU on hand-made confusion matrices; multi-scale and flipped inference."""

import keras
import numpy as np
import pytest

from deeplab_dpc.evaluation.inference import predict_labels, predict_probabilities
from deeplab_dpc.evaluation.metrics import ConfusionMatrix, mean_iou, per_class_iou


def test_iou_by_hand():
    labels = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    preds = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = ConfusionMatrix(3, ignore_label=255)
    cm.update(labels, preds)
    # The ignored pixel (predicted 2) counts nowhere.
    np.testing.assert_array_equal(cm.matrix, [[1, 1, 0], [0, 3, 0], [1, 0, 1]])
    # class 0: tp 1, union 1+1+1 = 3; class 1: tp 3, union 3+1 = 4; class 2: tp 1, union 2.
    np.testing.assert_allclose(cm.per_class_iou(), [1 / 3, 3 / 4, 1 / 2])
    assert cm.mean_iou() == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)


def test_absent_classes_are_left_out_of_the_mean():
    # Class 2 never appears in labels or predictions: no IoU, not a zero.
    matrix = np.array([[4, 0, 0], [1, 5, 0], [0, 0, 0]])
    iou = per_class_iou(matrix)
    assert np.isnan(iou[2])
    assert mean_iou(matrix) == pytest.approx((4 / 5 + 5 / 6) / 2)
    # A class predicted but never labelled is present, with IoU 0.
    matrix = np.array([[3, 1], [0, 0]])
    np.testing.assert_allclose(per_class_iou(matrix), [3 / 4, 0.0])


def test_accumulation_over_batches_equals_one_pass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, (4, 9, 9))
    labels[0, 0] = 255
    preds = rng.integers(0, 5, (4, 9, 9))
    whole = ConfusionMatrix(5)
    whole.update(labels, preds)
    parts = ConfusionMatrix(5)
    for i in range(4):
        parts.update(labels[i], preds[i])
    np.testing.assert_array_equal(whole.matrix, parts.matrix)
    assert whole.matrix.sum() == 4 * 81 - 9


def test_confusion_counts_each_labelled_pixel_once_and_skips_the_rest():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 7, (3, 11, 13)).astype(np.uint8)  # 5 and 6: not classes of a 5-class matrix
    labels[0, :2] = 255  # the ignore label
    preds = rng.integers(0, 5, (3, 11, 13)).astype(np.int32)
    expected = np.zeros((5, 5), np.int64)
    for label, pred in zip(labels.ravel(), preds.ravel()):
        if label < 5:
            expected[label, pred] += 1
    matrix = ConfusionMatrix(5)
    matrix.update(labels, preds)
    np.testing.assert_array_equal(matrix.matrix, expected)
    # A prediction outside the classes is an error only where the pixel is labelled (row 0: ignored).
    preds[0, 0, 0] = 9
    matrix.update(labels, preds)
    np.testing.assert_array_equal(matrix.matrix, 2 * expected)
    preds[1, 0, 0] = 9
    with pytest.raises(ValueError, match="predictions outside 0..4"):
        matrix.update(labels[1:2][:, :1, :1] * 0, preds[1:2][:, :1, :1])


def test_metric_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ in size"):
        cm.update(np.zeros(4), np.zeros(5))
    with pytest.raises(ValueError, match="predictions outside 0..2"):
        cm.update(np.zeros(4), np.full(4, 3))


class _PositionModel(keras.Model):
    """Logits that depend on position and colour, so flips and scales matter."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(3, 3, padding="same", kernel_initializer=keras.initializers.RandomNormal(seed=1))

    def call(self, images, training=False):
        return self.conv(images / 255.0)


def _images():
    return np.random.default_rng(0).uniform(0, 255, (2, 17, 23, 3)).astype("float32")


def test_single_scale_no_flip_equals_plain_inference():
    model = _PositionModel()
    images = _images()
    expected = np.argmax(np.asarray(model(images)), axis=-1)
    np.testing.assert_array_equal(np.asarray(predict_labels(model, images, [1.0], False)), expected)


def test_flipping_twice_is_the_identity_and_flip_averages():
    model = _PositionModel()
    images = _images()
    flipped = np.asarray(keras.ops.flip(keras.ops.flip(images, axis=2), axis=2))
    np.testing.assert_array_equal(flipped, images)
    p = np.asarray(predict_probabilities(model, images, [1.0], True))
    plain = np.asarray(keras.ops.softmax(model(images), axis=-1))
    mirrored = np.asarray(keras.ops.softmax(model(images[:, :, ::-1]), axis=-1))[:, :, ::-1]
    np.testing.assert_allclose(p, (plain + mirrored) / 2, atol=1e-6)


def _resize_align_corners(x, size):
    """NumPy bilinear resize with align_corners=True: output i samples input i * (in - 1) / (out - 1)."""

    def axis_weights(n_in, n_out):
        pos = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = np.minimum(np.floor(pos).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, (pos - lo)[:, None]

    (r0, r1, fr), (c0, c1, fc) = axis_weights(x.shape[1], size[0]), axis_weights(x.shape[2], size[1])
    rows = x[:, r0] * (1 - fr[None, :, :, None]) + x[:, r1] * fr[None, :, :, None]
    return rows[:, :, c0] * (1 - fc[None, None]) + rows[:, :, c1] * fc[None, None]


def _softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_multi_scale_averages_probabilities_at_image_size():
    conv = _PositionModel()
    images = _images()  # 17 x 23
    seen = []

    def model(batch, training=False):
        return 10.0 * conv(batch)  # logits of a few units: averaging logits or probabilities differs

    def recording(batch, training=False):
        seen.append(tuple(batch.shape[1:3]))
        return model(batch, training=training)

    p = np.asarray(predict_probabilities(recording, images, [0.5, 1.0, 1.75], False))
    # DeepLab's scale_dimension: int((size - 1) * scale + 1).
    assert seen == [(9, 12), (17, 23), (29, 39)]
    # Reference: resize the image (align corners), run, resize logits back, softmax, average.
    expected = []
    for size in seen:
        logits = np.asarray(model(_resize_align_corners(images, size).astype("float32")))
        expected.append(_softmax(_resize_align_corners(logits, (17, 23))))
    np.testing.assert_allclose(p, np.mean(expected, axis=0), atol=1e-5)
    # (Averaging logits instead, or resizing half-pixel, misses this by > 0.1.)
    # The scales change the answer: the average is not the single-scale probabilities.
    single = np.asarray(predict_probabilities(model, images, [1.0], False))
    assert np.abs(p - single).max() > 0.1  # measured 0.39
    with pytest.raises(ValueError, match="scales must be positive"):
        predict_probabilities(model, images, [0.0])


JAX_SCRIPT = """
import json
import numpy as np
import keras
from deeplab_dpc.core.model import ModelConfig, build_deeplab
from deeplab_dpc.evaluation.eval_lib import make_predict_fn
from deeplab_dpc.evaluation.inference import predict_labels

model = build_deeplab(ModelConfig(num_classes=4, context="aspp", depth_multiplier=0.35))
images = np.random.default_rng(0).uniform(0, 255, (2, 40, 56, 3)).astype("float32")
predict = make_predict_fn(model, (1.0,), True)
before = np.asarray(predict(images))
same = bool((before == np.asarray(predict_labels(model, images, (1.0,), True))).all())
logits = model.get_layer("logits")
kernel, bias = logits.get_weights()
logits.set_weights([np.zeros_like(kernel), np.arange(4, dtype=bias.dtype)])  # class 3 everywhere
after = np.asarray(predict(images))
print(json.dumps({"same": same, "shape": list(before.shape), "after": np.unique(after).tolist()}))
"""


@pytest.mark.skipif(__import__("importlib").util.find_spec("jax") is None, reason="JAX is not installed")
def test_jax_compiled_prediction_equals_eager_and_follows_new_weights():
    import json
    import os
    import pathlib
    import subprocess
    import sys

    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", JAX_SCRIPT], cwd=pathlib.Path(__file__).resolve().parents[2],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["same"] and result["shape"] == [2, 40, 56]
    assert result["after"] == [3], "the compiled function must read the weights at call time"
