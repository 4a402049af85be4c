"""mIoU from a confusion matrix accumulated over a whole split (as DeepLab).

NumPy only. Pixels whose label is the ignore label (or outside
``0..num_classes-1``) are excluded. A class that never appears, neither in
the labels nor in the predictions, has no IoU (NaN) and is left out of the
mean, like ``tf.metrics.mean_iou`` does.
"""

from __future__ import annotations

import numpy as np


class ConfusionMatrix:
    """Accumulates ``matrix[label, prediction]`` pixel counts.

    Args:
        num_classes: number of classes.
        ignore_label: label value excluded from the counts.

    Example:
        >>> cm = ConfusionMatrix(3, ignore_label=255)
        >>> cm.update(labels, predictions)
        >>> cm.mean_iou()
    """

    def __init__(self, num_classes: int, ignore_label: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    def update(self, labels, predictions) -> None:
        """Adds a batch; ``labels`` and ``predictions`` have the same number of pixels."""
        labels = np.asarray(labels).reshape(-1)
        predictions = np.asarray(predictions).reshape(-1)
        if labels.shape != predictions.shape:
            raise ValueError(f"labels ({labels.size} pixels) and predictions ({predictions.size}) differ in size")
        c = self.num_classes
        valid = (labels != self.ignore_label) & (labels >= 0) & (labels < c)
        if np.any(valid & ((predictions < 0) | (predictions >= c))):
            raise ValueError(f"predictions outside 0..{c - 1}")
        # One pass, no copies of the valid pixels: the others counted in a bin past the c x c matrix
        # (3-4x faster than indexing with the mask: the proxy's evaluation runs it on every val image).
        index = np.where(valid, labels.astype(np.int32) * c + predictions.astype(np.int32), c * c)
        self.matrix += np.bincount(index, minlength=c * c + 1)[: c * c].reshape(c, c)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.matrix += other.matrix

    def per_class_iou(self) -> np.ndarray:
        """IoU per class; NaN for classes absent from labels and predictions."""
        return per_class_iou(self.matrix)

    def mean_iou(self) -> float:
        return mean_iou(self.matrix)

    def pixel_accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def per_class_iou(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, true_positive / union, np.nan)


def mean_iou(matrix: np.ndarray) -> float:
    iou = per_class_iou(matrix)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")
