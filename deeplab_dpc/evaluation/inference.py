"""Multi-scale and flipped inference, as DeepLab's ``predict_labels_multi_scale``.

For each scale s the image is resized to ``scale_dimension(size, s)``
(bilinear, align corners), the model's logits are resized back to the image
size and turned into probabilities; with ``add_flipped_images`` the mirrored
image is run too and its output mirrored back. Probabilities are averaged
over every scale and flip, then argmax gives the labels. ``keras.ops`` only:
the same function runs eagerly, inside an exported TensorFlow graph, and on
JAX.
"""

from __future__ import annotations

from typing import Sequence

from keras import ops

from deeplab_dpc.core.layers import resize_bilinear_align_corners


def _scaled(size, scale):
    """DeepLab's scale_dimension for a Python or tensor size."""
    if isinstance(size, int):
        return int((size - 1) * scale + 1)
    return ops.cast(ops.cast(size - 1, "float32") * scale + 1.0, "int32")


def predict_probabilities(model, images, scales: Sequence[float] = (1.0,), add_flipped_images: bool = False):
    """Average softmax over scales (and flips) at the images' size.

    Args:
        model: maps images [B, h, w, 3] (0..255) to logits [B, h, w, C].
        images: [B, H, W, 3] float, 0..255.
        scales: inference scales (DeepLab's ``eval_scales``).
        add_flipped_images: also run the left-right mirrored images.

    Returns:
        float32 probabilities [B, H, W, C].
    """
    if not scales:
        raise ValueError("scales must hold at least one scale")
    if any(s <= 0 for s in scales):
        raise ValueError(f"scales must be positive, got {list(scales)}")
    images = ops.cast(images, "float32")
    shape = ops.shape(images)
    height, width = shape[1], shape[2]
    total = None
    count = 0
    for scale in scales:
        if scale == 1.0:
            scaled = images
        else:
            scaled = resize_bilinear_align_corners(images, (_scaled(height, scale), _scaled(width, scale)))
        variants = [(scaled, False)] + ([(ops.flip(scaled, axis=2), True)] if add_flipped_images else [])
        for batch, flipped in variants:
            logits = ops.cast(model(batch, training=False), "float32")
            if scale != 1.0:
                logits = resize_bilinear_align_corners(logits, (height, width))
            probabilities = ops.softmax(logits, axis=-1)
            if flipped:
                probabilities = ops.flip(probabilities, axis=2)
            total = probabilities if total is None else total + probabilities
            count += 1
    return total / float(count)


def predict_labels(model, images, scales: Sequence[float] = (1.0,), add_flipped_images: bool = False):
    """Argmax of ``predict_probabilities``: int32 labels [B, H, W]."""
    probabilities = predict_probabilities(model, images, scales, add_flipped_images)
    return ops.cast(ops.argmax(probabilities, axis=-1), "int32")
