"""DeepLab's segmentation loss (``utils/train_utils.add_softmax_cross_entropy_loss_for_each_scale``).

Softmax cross entropy per pixel, logits resized (bilinear, align corners) to
the label size when they differ; pixels with the ignore label get weight 0;
optional per-class weights; the sum is divided by the number of pixels with
non-zero weight. With ``top_k_percent_pixels < 1`` only the hardest fraction
of the batch's pixels count (online hard example mining), divided by the
number of non-zero losses among them.

``distillation_loss`` compares a student's logits with a teacher's on the
same pixels (the ignore label excluded the same way): mean squared error of
the logits, or Hinton et al.'s KL divergence of temperature-softened
probabilities scaled by T^2.
"""

from __future__ import annotations

import keras
from keras import ops

from deeplab_dpc.core.layers import resize_bilinear_align_corners

_EPSILON = 1e-5
DISTILLATION_LOSSES = ("mse", "kl")


def _labels_and_logits(y_true, y_pred):
    """int32 labels [b, h, w] and float32 logits resized (align corners) to them when sizes differ."""
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:
        labels = labels[..., 0]
    logits = ops.cast(y_pred, "float32")
    label_shape = ops.shape(labels)
    if tuple(logits.shape[1:3]) != tuple(labels.shape[1:3]) or None in tuple(labels.shape[1:3]):
        logits = resize_bilinear_align_corners(logits, (label_shape[1], label_shape[2]))
    return labels, logits


def _valid_pixels(labels, num_classes, ignore_label):
    """Pixels that carry a loss: not the ignore label, and a class in [0, num_classes)."""
    valid = ops.logical_and(ops.not_equal(labels, ignore_label), labels < num_classes)
    return ops.logical_and(valid, labels >= 0)


def pixel_cross_entropy(labels, logits, num_classes):
    """Softmax cross entropy of each pixel: ``logsumexp(logits) - logits[label]``, labels in [0, num_classes).

    Keras' ``sparse_categorical_crossentropy(from_logits=True)`` computes the same; written out (the
    maximum subtracted without a gradient, the label's logit picked by a one-hot product) its forward and
    backward pass take 0.55-0.6x the time of TensorFlow's fused ``SparseSoftmaxCrossEntropyWithLogits`` on
    this project's CPU (the proxy's 8x92x120x11 loss grid: 3.9 vs 6.6 ms), with equal values and
    gradients within float32 rounding (tested). ``logits`` may be a NumPy array on every backend (an array
    minus a torch tensor raises).
    """
    logits = ops.convert_to_tensor(logits)
    shifted = logits - ops.stop_gradient(ops.max(logits, axis=-1, keepdims=True))
    log_normalizer = ops.log(ops.sum(ops.exp(shifted), axis=-1))
    picked = ops.sum(shifted * ops.one_hot(labels, num_classes, dtype=shifted.dtype), axis=-1)
    return log_normalizer - picked


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class SegmentationLoss(keras.losses.Loss):
    """Pixel-wise softmax cross entropy that skips the ignore label.

    Args:
        num_classes: number of classes; labels >= num_classes other than the
            ignore label are an error in the data and are also ignored.
        ignore_label: label value that carries no loss.
        class_weights: optional list of ``num_classes`` weights.
        top_k_percent_pixels: fraction of the hardest pixels to keep (1.0: all).

    Example:
        >>> model.compile(loss=SegmentationLoss(19, ignore_label=255), ...)
    """

    def __init__(
        self,
        num_classes,
        ignore_label=255,
        class_weights=None,
        top_k_percent_pixels=1.0,
        name="segmentation_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        if class_weights is not None:
            class_weights = [float(w) for w in class_weights]
            if len(class_weights) != self.num_classes:
                raise ValueError(
                    f"class_weights has {len(class_weights)} values, expected num_classes={self.num_classes}"
                )
            if min(class_weights) < 0:
                raise ValueError(f"class_weights must be >= 0, got {class_weights}")
        self.class_weights = class_weights
        if not 0.0 < top_k_percent_pixels <= 1.0:
            raise ValueError(f"top_k_percent_pixels must be in (0, 1], got {top_k_percent_pixels}")
        self.top_k_percent_pixels = float(top_k_percent_pixels)

    def call(self, y_true, y_pred):
        labels, logits = _labels_and_logits(y_true, y_pred)
        valid = _valid_pixels(labels, self.num_classes, self.ignore_label)
        safe_labels = ops.where(valid, labels, 0)
        pixel_losses = pixel_cross_entropy(safe_labels, logits, self.num_classes)
        weights = ops.cast(valid, "float32")
        if self.class_weights is not None:
            weights = weights * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe_labels)
        weighted = ops.reshape(pixel_losses * weights, (-1,))
        if self.top_k_percent_pixels < 1.0:
            num_pixels = weighted.shape[0]
            if num_pixels is None:
                num_pixels = ops.shape(weighted)[0]
                k = ops.maximum(ops.cast(ops.cast(num_pixels, "float32") * self.top_k_percent_pixels, "int32"), 1)
            else:
                k = max(int(num_pixels * self.top_k_percent_pixels), 1)
            top, _ = ops.top_k(weighted, k)
            return ops.sum(top) / (ops.sum(ops.cast(ops.not_equal(top, 0.0), "float32")) + _EPSILON)
        normalizer = ops.sum(ops.cast(ops.not_equal(ops.reshape(weights, (-1,)), 0.0), "float32")) + _EPSILON
        return ops.sum(weighted) / normalizer

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            class_weights=self.class_weights,
            top_k_percent_pixels=self.top_k_percent_pixels,
        )
        return config


def distillation_loss(
    labels, student_logits, teacher_logits, kind, num_classes, ignore_label=255, temperature=1.0
):
    """Knowledge distillation: how far the student's logits are from the teacher's, per valid pixel.

    The teacher's logits are resized (bilinear, align corners) to the
    student's size when they differ, then both to the labels' size as
    ``SegmentationLoss`` does; the teacher gets no gradient. Pixels whose
    label is the ignore label (or no class) carry no loss, and the sum is
    divided by the number of the others (+1e-5, as ``SegmentationLoss``).
    Class weights and hard pixel mining do not apply.

    Args:
        labels: [batch, h, w] or [batch, h, w, 1] integer labels (only their
            validity is used).
        student_logits, teacher_logits: [batch, h', w', num_classes] logits.
        kind: "mse": the mean over classes of ``(student - teacher)^2``;
            "kl": ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``
            (Hinton et al. 2015: T^2 keeps the gradients' size as T changes).
        num_classes: number of classes (labels outside [0, num_classes) are ignored).
        ignore_label: the label that carries no loss.
        temperature: T of "kl" (1: plain probabilities); unused by "mse".

    Returns:
        A float32 scalar.
    """
    if kind not in DISTILLATION_LOSSES:
        raise ValueError(f"distillation_loss={kind!r} is unknown; valid: {list(DISTILLATION_LOSSES)}")
    student = ops.cast(student_logits, "float32")
    teacher = ops.stop_gradient(ops.cast(teacher_logits, "float32"))
    if tuple(teacher.shape[1:3]) != tuple(student.shape[1:3]) or None in tuple(student.shape[1:3]):
        student_shape = ops.shape(student)
        teacher = resize_bilinear_align_corners(teacher, (student_shape[1], student_shape[2]))
    labels, student = _labels_and_logits(labels, student)
    _, teacher = _labels_and_logits(labels, teacher)
    weights = ops.cast(_valid_pixels(labels, num_classes, ignore_label), "float32")
    if kind == "mse":
        pixel_losses = ops.mean(ops.square(student - teacher), axis=-1)
    else:
        t = float(temperature)
        teacher_log_p = ops.log_softmax(teacher / t, axis=-1)
        student_log_p = ops.log_softmax(student / t, axis=-1)
        pixel_losses = ops.sum(ops.exp(teacher_log_p) * (teacher_log_p - student_log_p), axis=-1) * (t * t)
    return ops.sum(pixel_losses * weights) / (ops.sum(weights) + _EPSILON)
