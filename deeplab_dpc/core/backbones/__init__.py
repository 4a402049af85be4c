"""Backbones (feature extractors) and the registry the model builder uses.

Every backbone is a functional keras.Model taking images already scaled to
[-1, 1] and returning ``{"features": stride-`output_stride` map, "low_level":
stride-4 map for the decoder}``; every map is ceil(size / stride) per side for
any input size. Strides beyond `output_stride` become atrous rates, exactly as
in DeepLab (`AtrousSchedule`).

Variants, with their "features" / "low_level" layers and channels:

* ``mobilenet_v2``: ``block_16_project_BN`` (320) / ``block_2_depthwise_relu``
  (144); channels scale with `depth_multiplier` (keras ``alpha``).
* ``xception_65``: exit-flow output (2048) / DeepLab's
  ``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise`` (256).
* ``xception_71``: exit-flow output (2048) / DeepLab's
  ``entry_flow/block3/unit_1/xception_module/separable_conv2_pointwise`` (256).
* ``xception`` (keras.applications.Xception layout): ``block14_sepconv2_act``
  (2048) / ``block3_sepconv2_bn`` (256).

ImageNet weights: `load_backbone_weights` (keras.applications models or files
for mobilenet_v2 and xception; DeepLab TF1 checkpoints for xception_65/71).
"""

from deeplab_dpc.core.backbones.mobilenet_v2 import mobilenet_v2
from deeplab_dpc.core.backbones.weights import imagenet_source, load_backbone_weights
from deeplab_dpc.core.backbones.xception import (
    VALID_OUTPUT_STRIDES,
    keras_xception,
    xception_65,
    xception_71,
)

BACKBONES = {
    "mobilenet_v2": mobilenet_v2,
    "xception_65": xception_65,
    "xception_71": xception_71,
    "xception": keras_xception,
}


def build_backbone(model_variant, output_stride=16, *, depth_multiplier=1.0,
                   weight_decay=4e-5, initializer="deeplab", input_shape=(None, None, 3), name=None):
    """Builds the backbone `model_variant`.

    Args:
        model_variant: a key of `BACKBONES`.
        output_stride: 8, 16 or 32.
        depth_multiplier: width multiplier (mobilenet_v2 only; others need 1.0).
        weight_decay: DeepLab weight decay (slim convention, see
            `deeplab_dpc.core.common.l2_regularizer`).
        initializer: "deeplab" (DeepLab's arg scopes: truncated normal, stddev
            0.09) or "keras" (glorot_uniform); see ``core/common.py``.
        input_shape: (height, width, 3); None for any size.
        name: model name (default: `model_variant`).

    Returns:
        A functional keras.Model with outputs ``{"features", "low_level"}``.

    Raises:
        ValueError: unknown `model_variant` (the message lists the valid
            ones), `output_stride` not in (8, 16, 32), or a `depth_multiplier`
            the variant does not support.

    Example:
        >>> backbone = build_backbone("mobilenet_v2", 16, input_shape=(513, 513, 3))
        >>> backbone.output["features"].shape
        (None, 33, 33, 320)
    """
    if model_variant not in BACKBONES:
        raise ValueError(f"unknown model_variant {model_variant!r}; valid: {sorted(BACKBONES)}")
    return BACKBONES[model_variant](
        output_stride, depth_multiplier=depth_multiplier, weight_decay=weight_decay,
        initializer=initializer, input_shape=input_shape, name=name,
    )


__all__ = [
    "BACKBONES",
    "VALID_OUTPUT_STRIDES",
    "build_backbone",
    "imagenet_source",
    "load_backbone_weights",
]
