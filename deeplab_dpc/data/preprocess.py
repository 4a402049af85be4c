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

The configuration, the flip probability and the size arithmetic are
``augmentation.py``'s (pure Python/NumPy), shared with the TF-free loader
(``numpy_loader.py``); this module imports TensorFlow only inside its
functions.
"""

from __future__ import annotations

from typing import Any, Mapping

from deeplab_dpc.data.augmentation import (  # noqa: F401 (the config is also imported from here)
    FLIP_PROBABILITY,
    MEAN_PIXEL,
    PreprocessConfig,
    resize_to_range_size,
    scaled_size,
)

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
        flip = tf.random.stateless_uniform([], flip_seed) < FLIP_PROBABILITY
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
