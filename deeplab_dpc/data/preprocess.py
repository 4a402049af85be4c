"""DeepLab's input preprocessing: resize to range, random scale, pad, crop, flip.

Follows ``research/deeplab/input_preprocess.py`` step by step; one sample
dictionary in, one out:

1. ``image`` becomes float32 in 0-255 (the network maps it to [-1, 1]),
   ``label`` int32.
2. Optional resize to a range (``min_resize_value`` / ``max_resize_value`` /
   ``resize_factor``, DeepLab's ``resize_to_range``); the resized image becomes
   ``original_image``.
3. Training only: random scale, one value drawn uniformly from the discrete
   set ``min, min + step, ..., max`` (``step == 0``: uniform in
   ``[min, max)``); the new size is ``int(side * scale)``; bilinear for the
   image, nearest neighbour for the label. A scale that leaves the size
   unchanged skips the resize.
4. Pad at the bottom and right up to the crop size: the image with the mean
   pixel ``127.5`` (so it becomes 0 after the network's normalisation), the
   label with ``ignore_label``.
5. Training: a random crop, the same offsets for image and label.
   Evaluation: no random crop; as in DeepLab the padded image is taken at
   offset (0, 0), so an evaluation crop size at least the image size (DeepLab
   uses e.g. 1025x2049 for 1024x2048 Cityscapes) means "pad only". A larger
   image is cut to its top-left ``crop_size`` part (DeepLab fails there
   instead); the evaluation entry points should choose the crop size so this
   never happens.
6. Training: left-right flip of image and label together with p = 0.5.

Deviations from DeepLab (deliberate, documented):

* Resizing uses TF2's ``tf.image.resize`` (half-pixel centres, no antialias)
  rather than TF1's ``align_corners=True``. Half-pixel centres are what
  OpenCV's ``INTER_LINEAR`` computes, so the NumPy loader
  (``numpy_loader.py``) reproduces these sizes exactly and these values to
  within float rounding (labels bit-exact, images within 5e-3 on 0-255), and a
  nearest-neighbour upscale by 2 repeats every label pixel exactly.
* Randomness comes from stateless ops driven by a per-example ``seed``
  (shape ``[2]``), split into one seed each for scale, crop and flip: the same
  seed gives the same output eagerly and inside ``tf.data``.
* The number of discrete scales is ``floor((max - min) / step + 1 + 1e-6)``
  rather than DeepLab's ``int(...)``, which loses the maximum to float
  rounding for steps such as 0.1.
* ``resize_to_range`` clamps the longer side to ``max_resize_value``: DeepLab's
  ``ceil(side * max / longest)`` can exceed it by one through float rounding
  (a 100 limit gives a 101-pixel side for some image sizes).
* Only DeepLab's augmentations; colour jitter, rotations and overlays found in
  some forks are not part of the paper's recipe.

The configuration and the size arithmetic here are plain Python/NumPy and this
module imports TensorFlow only inside the TF functions, so the TF-free loader
(``numpy_loader.py``) shares them.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

MEAN_PIXEL = 127.5
"""Pad value of images: the mean pixel, 0 after mapping 0-255 to [-1, 1]."""

_FLIP_PROBABILITY = 0.5


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
# Size arithmetic shared by the TF and NumPy paths (float32, as DeepLab).


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


# ---------------------------------------------------------------------------
# TensorFlow implementation.


def _tf_resize_to_range_size(height, width, config: PreprocessConfig):
    """TF twin of ``resize_to_range_size`` (same float32 operations)."""
    import tensorflow as tf

    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    if config.min_resize_value is not None:
        large_scale = tf.constant(config.min_resize_value, tf.float32) / tf.minimum(h, w)
        new = tf.cast(tf.math.ceil(tf.stack([h * large_scale, w * large_scale])), tf.int32)
    else:
        new = tf.cast(tf.stack([height, width]), tf.int32)
    factor = config.resize_factor
    if config.max_resize_value is not None:
        top = tf.constant(config.max_resize_value, tf.float32)
        if factor is not None:
            f = tf.constant(factor, tf.float32)
            top = top + tf.math.floormod(f - tf.math.floormod(top - 1.0, f), f) - f
        small_scale = top / tf.maximum(h, w)
        small = tf.minimum(
            tf.cast(tf.math.ceil(tf.stack([h * small_scale, w * small_scale])), tf.int32), tf.cast(top, tf.int32)
        )
        new = tf.cond(tf.cast(tf.reduce_max(new), tf.float32) > top, lambda: small, lambda: new)
    if factor is not None:
        new = new + tf.math.floormod(factor - tf.math.floormod(new - 1, factor), factor)
    return new


def _resize_pair(image, label, size):
    """Bilinear image, nearest label, both to ``size`` (skipped if unchanged)."""
    import tensorflow as tf

    old = tf.shape(image)[:2]

    def resize():
        new_image = tf.image.resize(image, size, method="bilinear")
        if label is None:
            return new_image, None
        return new_image, tf.image.resize(label, size, method="nearest")

    if label is None:
        return tf.cond(tf.reduce_all(tf.equal(old, size)), lambda: image, lambda: resize()[0]), None
    return tf.cond(tf.reduce_all(tf.equal(old, size)), lambda: (image, label), resize)


def _to_uint8(image):
    import tensorflow as tf

    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8)


def preprocess_sample(
    sample: Mapping[str, Any], config: PreprocessConfig, seed=None
) -> dict[str, Any]:
    """Preprocesses one sample dictionary with TensorFlow ops.

    Works eagerly and inside ``tf.data`` (graph mode); the image size may be
    unknown until run time.

    Args:
        sample: ``image`` uint8 ``[H, W, 3]``; optional ``label`` (integer,
            ``[H, W, 1]``; required for training); optional passthrough keys
            ``image_name`` (string), ``height`` and ``width`` (filled from the
            image when absent).
        config: the ``PreprocessConfig``.
        seed: int tensor of shape ``[2]`` driving the stateless random ops
            (training). The same seed gives the same output. None draws one
            from TensorFlow's stateful generator (not reproducible).

    Returns:
        A new dict: ``image`` float32 ``[crop_h, crop_w, 3]`` in 0-255,
        ``label`` int32 ``[crop_h, crop_w, 1]`` (if the sample had one),
        ``image_name``, ``height``, ``width``, and for evaluation
        (``is_training=False``) ``original_image`` uint8 (the resized image
        when resizing to a range, otherwise the input).
    """
    import tensorflow as tf

    if "image" not in sample:
        raise ValueError(f"sample has no 'image' key (keys: {sorted(sample)})")
    label = sample.get("label")
    if config.is_training and label is None:
        raise ValueError("training preprocessing needs a 'label' in the sample")

    image_in = tf.convert_to_tensor(sample["image"])
    if image_in.shape.rank is not None and image_in.shape.rank != 3:
        raise ValueError(f"'image' must be [height, width, 3], got shape {image_in.shape}")
    image = tf.cast(image_in, tf.float32)
    if label is not None:
        label = tf.convert_to_tensor(label)
        if label.shape.rank == 2:
            label = label[..., tf.newaxis]
        if label.shape.rank is not None and label.shape.rank != 3:
            raise ValueError(f"'label' must be [height, width, 1], got shape {label.shape}")
        label = tf.cast(label, tf.int32)
        tf.debugging.assert_equal(
            tf.shape(image)[:2], tf.shape(label)[:2], message="image and label sizes differ"
        )

    out: dict[str, Any] = {}
    shape = tf.shape(image)
    out["image_name"] = tf.convert_to_tensor(sample.get("image_name", ""), tf.string)
    out["height"] = tf.cast(sample["height"], tf.int32) if "height" in sample else shape[0]
    out["width"] = tf.cast(sample["width"], tf.int32) if "width" in sample else shape[1]

    original_image = image_in
    if config.resizes_to_range:
        size = _tf_resize_to_range_size(shape[0], shape[1], config)
        image, label = _resize_pair(image, label, size)
        original_image = image

    crop_h, crop_w = config.crop_size
    if config.is_training:
        if seed is None:
            seed = tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int64)
        seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        scale_seed, crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 3))

        factors = config.scale_factors
        if factors is None:
            scale = tf.random.stateless_uniform(
                [], scale_seed, config.min_scale_factor, config.max_scale_factor, tf.float32
            )
        elif len(factors) == 1:
            scale = tf.constant(factors[0], tf.float32)
        else:
            index = tf.random.stateless_uniform([], scale_seed, 0, len(factors), tf.int32)
            scale = tf.gather(tf.constant(factors, tf.float32), index)
        shape = tf.shape(image)
        new_size = tf.cast(tf.cast(shape[:2], tf.float32) * scale, tf.int32)
        image, label = _resize_pair(image, label, new_size)

    # Pad bottom/right to at least the crop size.
    shape = tf.shape(image)
    pad_h = tf.maximum(crop_h - shape[0], 0)
    pad_w = tf.maximum(crop_w - shape[1], 0)
    paddings = [[0, pad_h], [0, pad_w], [0, 0]]
    image = tf.pad(image, paddings, constant_values=MEAN_PIXEL)
    if label is not None:
        label = tf.pad(label, paddings, constant_values=config.ignore_label)

    if config.is_training:
        shape = tf.shape(image)
        row_seed, col_seed = tf.unstack(tf.random.experimental.stateless_split(crop_seed, 2))
        top = tf.random.stateless_uniform([], row_seed, 0, shape[0] - crop_h + 1, tf.int32)
        left = tf.random.stateless_uniform([], col_seed, 0, shape[1] - crop_w + 1, tf.int32)
        image = image[top : top + crop_h, left : left + crop_w]
        label = label[top : top + crop_h, left : left + crop_w]
        flip = tf.random.stateless_uniform([], flip_seed) < _FLIP_PROBABILITY
        image, label = tf.cond(
            flip,
            lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
            lambda: (image, label),
        )
    else:
        image = image[:crop_h, :crop_w]
        if label is not None:
            label = label[:crop_h, :crop_w]
        out["original_image"] = _to_uint8(original_image)

    image = tf.ensure_shape(image, [crop_h, crop_w, 3])
    out["image"] = image
    if label is not None:
        out["label"] = tf.ensure_shape(label, [crop_h, crop_w, 1])
    return out
