"""MobileNet-v2 backbone as DeepLab uses it, with keras.applications layer names.

The layers, their order and their names are keras.applications.MobileNetV2's
(``Conv1``, ``bn_Conv1``, ``expanded_conv_depthwise``, ``block_1_expand`` ...
``block_16_project_BN``), so ImageNet weights of a keras.applications model
map onto it by name, and `depth_multiplier` has keras' ``alpha`` semantics
(``_make_divisible`` to multiples of 8). Differences, all from DeepLab:

* It stops after the last inverted-residual block: "features" is
  ``block_16_project_BN`` (320 channels at multiplier 1), with no final 1x1
  conv to 1280 (DeepLab's ``final_endpoint='layer_18'``).
* "low_level" is DeepLab's decoder end point ``layer_4/depthwise_output`` =
  ``block_2_depthwise_relu`` (stride 4, 144 channels at multiplier 1).
* Strides beyond `output_stride` become atrous rates (`AtrousSchedule`).
* Stride-2 depthwise convs use "same" padding instead of keras'
  ``ZeroPadding2D(correct_pad)`` + VALID (so there are no ``block_*_pad``
  layers; they hold no weights). On a static input size the two are the same
  computation; on a dynamic (None) size keras' padding gives floor instead of
  ceil on odd sizes. Maps are ceil(size / stride) for any size. As in DeepLab
  with ``use_explicit_padding=False``, a stride-2 layer on an even-sized map
  samples odd positions, so atrous outputs subsample the os-32 output
  exactly only when every stride-2 layer sees an odd size (e.g. 513, 65, 97).
* The residual of a block is added when its input and output widths match
  and its *nominal* stride is 1 (keras' rule), whatever the output stride, so
  the architecture does not depend on the output stride. (DeepLab tests the
  stride after atrous conversion; the two differ only for multipliers below
  about 0.19, where a converted stride-2 block has equal widths.)
* Batch norms use DeepLab's decay 0.9997 (keras: 0.999), epsilon 1e-3.
* Kernels start from DeepLab's ``training_scope`` initialiser, truncated
  normal with stddev 0.09 (keras: glorot_uniform).
  Weight decay regularises the 1x1 and first 3x3 conv kernels, not the
  depthwise kernels (DeepLab's default).
"""

import keras
from keras import layers

from deeplab_dpc.core.backbones.xception import ArgScope, AtrousSchedule, batch_norm
from deeplab_dpc.core.common import l2_regularizer

FEATURES_LAYER = "block_16_project_BN"
LOW_LEVEL_BLOCK = 2  # DeepLab's layer_4 = block_2; its depthwise_output is the end point.
LOW_LEVEL_LAYER = f"block_{LOW_LEVEL_BLOCK}_depthwise_relu"

# (expansion, filters, stride) of inverted-residual blocks 0..16.
INVERTED_RESIDUAL_BLOCKS = (
    (1, 16, 1),
    (6, 24, 2), (6, 24, 1),
    (6, 32, 2), (6, 32, 1), (6, 32, 1),
    (6, 64, 2), (6, 64, 1), (6, 64, 1), (6, 64, 1),
    (6, 96, 1), (6, 96, 1), (6, 96, 1),
    (6, 160, 2), (6, 160, 1), (6, 160, 1),
    (6, 320, 1),
)


def make_divisible(value, divisor=8, min_value=None):
    """Rounds `value` to a multiple of `divisor`, never more than 10% down.

    Same as keras.applications' (and slim's) ``_make_divisible``.

    Args:
        value: the unrounded channel count.
        divisor: the multiple.
        min_value: lower bound (default `divisor`).

    Example:
        >>> make_divisible(32 * 0.35), make_divisible(int(24 * 0.5))
        (16, 16)
    """
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _inverted_residual(x, block_id, expansion, filters, stride, alpha, schedule, args):
    """keras.applications' ``_inverted_res_block`` with DeepLab's atrous rule.

    Returns (block output, depthwise output).
    """
    in_channels = x.shape[-1]
    out_channels = make_divisible(int(filters * alpha))
    prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
    layer_stride, rate = schedule.step(stride)
    h = x
    if block_id:
        h = layers.Conv2D(
            expansion * in_channels, 1, use_bias=False, kernel_initializer=args.kernel_initializer(),
            kernel_regularizer=args.regularizer,
            name=f"{prefix}expand",
        )(h)
        h = batch_norm(f"{prefix}expand_BN")(h)
        h = layers.ReLU(6.0, name=f"{prefix}expand_relu")(h)
    h = layers.DepthwiseConv2D(
        3, strides=layer_stride, dilation_rate=rate, padding="same", use_bias=False,
        depthwise_initializer=args.kernel_initializer(), name=f"{prefix}depthwise",
    )(h)
    h = batch_norm(f"{prefix}depthwise_BN")(h)
    depthwise_output = h = layers.ReLU(6.0, name=f"{prefix}depthwise_relu")(h)
    h = layers.Conv2D(
        out_channels, 1, use_bias=False, kernel_initializer=args.kernel_initializer(),
        kernel_regularizer=args.regularizer, name=f"{prefix}project"
    )(h)
    h = batch_norm(f"{prefix}project_BN")(h)
    if in_channels == out_channels and stride == 1:
        h = layers.Add(name=f"{prefix}add")([x, h])
    return h, depthwise_output


def mobilenet_v2(output_stride=16, *, depth_multiplier=1.0, weight_decay=4e-5, initializer="deeplab",
                 input_shape=(None, None, 3), name=None):
    """MobileNet-v2 backbone (DeepLab's feature extractor, keras layer names).

    Args:
        output_stride: 8, 16 or 32; strides beyond it become atrous rates.
        depth_multiplier: keras.applications ``alpha`` (> 0).
        weight_decay: DeepLab weight decay on non-depthwise conv kernels.
        input_shape: (height, width, 3) of images already scaled to [-1, 1].
        name: model name (default ``"mobilenet_v2"``).

    Returns:
        A functional keras.Model with outputs ``{"features": block_16_project_BN
        (ceil(h/os), ceil(w/os), 320 * alpha), "low_level":
        block_2_depthwise_relu (ceil(h/4), ceil(w/4), 144 * alpha)}``.

    Example:
        >>> backbone = mobilenet_v2(output_stride=8, input_shape=(513, 513, 3))
        >>> backbone.output["features"].shape, backbone.output["low_level"].shape
        ((None, 65, 65, 320), (None, 129, 129, 144))
    """
    if depth_multiplier <= 0:
        raise ValueError(f"depth_multiplier must be > 0, got {depth_multiplier!r}")
    schedule = AtrousSchedule(output_stride)
    args = ArgScope(l2_regularizer(weight_decay), initializer)
    images = keras.Input(shape=input_shape, name="images")
    x = layers.Conv2D(
        make_divisible(32 * depth_multiplier), 3, strides=schedule.step(2)[0], padding="same",
        use_bias=False, kernel_initializer=args.kernel_initializer(),
        kernel_regularizer=args.regularizer, name="Conv1",
    )(images)
    x = batch_norm("bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)
    for block_id, (expansion, filters, stride) in enumerate(INVERTED_RESIDUAL_BLOCKS):
        x, depthwise_output = _inverted_residual(
            x, block_id, expansion, filters, stride, depth_multiplier, schedule, args
        )
        if block_id == LOW_LEVEL_BLOCK:
            low_level = depthwise_output
    return keras.Model(
        images, {"features": x, "low_level": low_level}, name=name or "mobilenet_v2"
    )
