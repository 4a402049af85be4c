"""The augmentation parameters and size arithmetic of DeepLab's preprocessing, shared by both pipelines.

One pure definition (Python and NumPy) that the TensorFlow implementation
(``preprocess.preprocess_sample``, inside tf.data) and the NumPy/OpenCV one
(``numpy_loader.preprocess_numpy``) both read, so they cannot drift: the
validated ``PreprocessConfig`` (crop, scale range and its discrete scale set,
resize to range, ignore label), the pad value, the flip probability, and the
float32 size arithmetic of the random scale and of ``resize_to_range``.
``preprocess.py`` documents the steps and DeepLab's reference.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

MEAN_PIXEL = 127.5
"""Pad value of images: the mean pixel, 0 after mapping 0-255 to [-1, 1]."""

FLIP_PROBABILITY = 0.5
"""Chance of the left-right flip of a training sample (image and label together)."""


def _positive_int_or_none(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Preprocessing settings, validated on construction.

    Args:
        crop_size: ``(height, width)`` of the output (training crop, or the
            evaluation pad size). An int means a square crop.
        min_scale_factor: smallest random scale (training only).
        max_scale_factor: largest random scale.
        scale_factor_step_size: spacing of the discrete scale set; 0 draws the
            scale uniformly from ``[min, max)``.
        ignore_label: label value padded in, ignored by loss and metrics.
        is_training: random scale, random crop and flip when True; pad only
            when False.
        min_resize_value: resize so that the shorter side is this long
            (DeepLab's ``resize_to_range``); None: no such resize.
        max_resize_value: ... unless the longer side then exceeds this; then
            the longer side becomes this long.
        resize_factor: make resized sides a multiple of this plus one.

    Example:
        >>> config = PreprocessConfig(crop_size=(360, 480))
        >>> config.scale_factors
        (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)
        >>> PreprocessConfig(crop_size=(361, 481), is_training=False).is_training
        False
    """

    crop_size: tuple[int, int]
    min_scale_factor: float = 0.5
    max_scale_factor: float = 2.0
    scale_factor_step_size: float = 0.25
    ignore_label: int = 255
    is_training: bool = True
    min_resize_value: int | None = None
    max_resize_value: int | None = None
    resize_factor: int | None = None

    def __post_init__(self):
        crop = self.crop_size
        if isinstance(crop, (int, np.integer)) and not isinstance(crop, bool):
            crop = (crop, crop)
        try:
            crop = tuple(crop)
        except TypeError:
            raise ValueError(f"crop_size must be (height, width), got {self.crop_size!r}") from None
        if len(crop) != 2 or any(
            isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in crop
        ):
            raise ValueError(f"crop_size must be two integers (height, width), got {self.crop_size!r}")
        if min(crop) < 1:
            raise ValueError(f"crop_size must be at least 1 on each side, got {self.crop_size!r}")
        object.__setattr__(self, "crop_size", (int(crop[0]), int(crop[1])))

        for name in ("min_scale_factor", "max_scale_factor", "scale_factor_step_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.min_scale_factor <= 0:
            raise ValueError(f"min_scale_factor must be > 0, got {self.min_scale_factor}")
        if self.min_scale_factor > self.max_scale_factor:
            raise ValueError(
                f"min_scale_factor ({self.min_scale_factor}) must be <= "
                f"max_scale_factor ({self.max_scale_factor})"
            )
        if self.scale_factor_step_size < 0:
            raise ValueError(f"scale_factor_step_size must be >= 0, got {self.scale_factor_step_size}")

        if isinstance(self.ignore_label, bool) or not isinstance(self.ignore_label, (int, np.integer)):
            raise ValueError(f"ignore_label must be an integer, got {self.ignore_label!r}")
        if not 0 <= self.ignore_label < 2**31:
            raise ValueError(f"ignore_label must be in [0, 2**31), got {self.ignore_label}")
        object.__setattr__(self, "ignore_label", int(self.ignore_label))
        if not isinstance(self.is_training, (bool, np.bool_)):
            raise ValueError(f"is_training must be a bool, got {self.is_training!r}")
        object.__setattr__(self, "is_training", bool(self.is_training))

        for name in ("min_resize_value", "max_resize_value", "resize_factor"):
            object.__setattr__(self, name, _positive_int_or_none(name, getattr(self, name)))
        if (
            self.min_resize_value is not None
            and self.max_resize_value is not None
            and self.min_resize_value > self.max_resize_value
        ):
            raise ValueError(
                f"min_resize_value ({self.min_resize_value}) must be <= "
                f"max_resize_value ({self.max_resize_value})"
            )
        if self.resize_factor is not None and self.min_resize_value is None and self.max_resize_value is None:
            raise ValueError("resize_factor needs min_resize_value or max_resize_value")

    @property
    def scale_factors(self) -> tuple[float, ...] | None:
        """The discrete scale set, or None when scales are drawn continuously."""
        lo, hi, step = self.min_scale_factor, self.max_scale_factor, self.scale_factor_step_size
        if lo == hi:
            return (lo,)
        if step == 0:
            return None
        num = int(math.floor((hi - lo) / step + 1 + 1e-6))
        return tuple(lo + i * step for i in range(num))

    @property
    def resizes_to_range(self) -> bool:
        return self.min_resize_value is not None or self.max_resize_value is not None

    def replace(self, **changes) -> "PreprocessConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------------
# Size arithmetic (float32, as DeepLab); the TF path computes the same with tensors.


def scaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """``int(side * scale)`` computed in float32, as DeepLab's random scale."""
    s = np.float32(scale)
    return int(np.float32(height) * s), int(np.float32(width) * s)


def resize_to_range_size(
    height: int,
    width: int,
    min_size: int | None = None,
    max_size: int | None = None,
    factor: int | None = None,
) -> tuple[int, int]:
    """Output size of DeepLab's ``resize_to_range`` (float32 arithmetic).

    The shorter side becomes ``min_size`` unless the longer side would then
    exceed ``max_size``, in which case the longer side becomes ``max_size``;
    with ``factor`` both sides are rounded up to a multiple of ``factor`` plus
    one (``max_size`` first lowered so that the rounding cannot exceed it).
    Without ``min_size`` (an extension; DeepLab requires it) images are only
    shrunk to fit ``max_size``.
    """
    f32 = np.float32
    h, w = f32(height), f32(width)
    if min_size is not None:
        large_scale = f32(min_size) / min(h, w)
        new = (int(np.ceil(h * large_scale)), int(np.ceil(w * large_scale)))
    else:
        new = (int(height), int(width))
    if max_size is not None:
        top = f32(max_size)
        if factor is not None:
            top = top + (f32(factor) - (top - f32(1)) % f32(factor)) % f32(factor) - f32(factor)
        if f32(max(new)) > top:
            small_scale = top / max(h, w)
            new = tuple(min(int(np.ceil(side * small_scale)), int(top)) for side in (h, w))
    if factor is not None:
        new = tuple(n + (factor - (n - 1) % factor) % factor for n in new)
    return new
