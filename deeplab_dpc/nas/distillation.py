"""The proxy trainer's loss with distillation: cross entropy on the labels plus a term against a teacher.

A proxy trial's targets are packed into one float tensor, because Keras hands a loss one ``y_true``:
channel 0 holds the label, channels 1.. the teacher's logits at the same pixel (``pack_targets``, from
the feature cache's ``teacher_logits``). The cell's logits, at the feature grid, are resized (bilinear,
align corners, as the model resizes them) to the targets' grid, then

    loss = cross_entropy(labels, logits) + weight * distillation(logits, teacher)

with ``distillation`` one of

* ``mse``: ``mean_c (s_c - t_c)^2`` per pixel (logit matching, Ba & Caruana);
* ``kl``: ``T^2 * sum_c p_c (log p_c - log q_c)`` per pixel, ``p = softmax(t / T)``,
  ``q = softmax(s / T)`` (Hinton et al.: T^2 keeps the gradients' size as T changes),

averaged over the pixels whose label is a class (the ignore label and padding carry no term, as they
carry no cross entropy). Imported by the proxy trainer when a trial runs (Keras).

Example:
    >>> loss = ProxyDistillationLoss(11, 255, weight=0.5, kind="kl", temperature=2.0)
    >>> value = loss(pack_targets(labels, teacher_logits), cell_logits)  # doctest: +SKIP
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from deeplab_dpc.core.layers import resize_bilinear_align_corners
from deeplab_dpc.training.losses import DISTILLATION_LOSSES, SegmentationLoss, distillation_loss



def pack_targets(labels: np.ndarray, teacher_logits: np.ndarray) -> np.ndarray:
    """Labels ``[B, H, W]`` and teacher logits ``[B, H, W, C]`` -> float32 ``[B, H, W, 1 + C]``."""
    return np.concatenate(
        [np.asarray(labels, np.float32)[..., None], np.asarray(teacher_logits, np.float32)], axis=-1
    )


class ProxyDistillationLoss(keras.losses.Loss):
    """``SegmentationLoss`` on the packed labels plus ``weight`` times a distillation term.

    Not registered for serialisation: a proxy model is never saved with its loss.

    Args:
        num_classes: classes of the labels and of the teacher's logits.
        ignore_label: label without a loss (neither term).
        weight: weight of the distillation term.
        kind: ``kl`` or ``mse`` (see the module doc).
        temperature: softening of ``kl``.
    """

    def __init__(
        self,
        num_classes,
        ignore_label=255,
        weight=1.0,
        kind="kl",
        temperature=1.0,
        name="distillation_loss",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        if kind not in DISTILLATION_LOSSES:
            raise ValueError(f"distillation_loss={kind!r} is unknown; valid: {list(DISTILLATION_LOSSES)}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.weight = float(weight)
        self.kind = kind
        self.temperature = float(temperature)
        self.segmentation = SegmentationLoss(self.num_classes, self.ignore_label)

    def call(self, y_true, y_pred):
        targets = ops.cast(y_true, "float32")
        labels = targets[..., 0]
        teacher = targets[..., 1:]
        logits = ops.cast(y_pred, "float32")
        grid = tuple(targets.shape[1:3])
        if tuple(logits.shape[1:3]) != grid or None in grid:
            shape = ops.shape(targets)
            logits = resize_bilinear_align_corners(logits, (shape[1], shape[2]))
        cross_entropy = self.segmentation.call(labels, logits)  # logits at the label grid: no resize
        return cross_entropy + self.weight * self.distillation(labels, logits, teacher)

    def distillation(self, labels, logits, teacher):
        """The distillation term averaged over the labelled pixels (logits at the labels' grid):
        full training's ``losses.distillation_loss``."""
        return distillation_loss(
            labels, logits, teacher, self.kind, self.num_classes, self.ignore_label, self.temperature
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            num_classes=self.num_classes,
            ignore_label=self.ignore_label,
            weight=self.weight,
            kind=self.kind,
            temperature=self.temperature,
        )
        return config
