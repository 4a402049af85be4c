"""Xception backbones: DeepLab's aligned Xception-65/71 and keras.applications' Xception.

Also holds the two helpers every backbone shares: `AtrousSchedule` (DeepLab's
rule turning strides beyond the output stride into atrous rates) and
`batch_norm` (DeepLab's backbone batch norm: decay 0.9997, epsilon 1e-3).

**Xception-65 / Xception-71** follow DeepLab's ``core/xception.py``: entry flow
(conv 32 3x3 s2, conv 64 3x3, then Xception modules with 1x1 conv shortcuts),
middle flow of 16 modules [728]x3 with identity shortcuts, exit flow
[728, 1024, 1024] s2 with a conv shortcut and [1536, 1536, 2048] without
shortcut and with ReLU inside the separable convs. A separable conv is
(ReLU) -> depthwise 3x3 -> BN -> pointwise 1x1 -> BN (-> ReLU when the ReLU is
inside). Convs with stride 2 are "aligned": DeepLab's ``fixed_padding`` (pad
``rate`` on each side of a 3x3 kernel) then VALID, so every feature map is
ceil(size / stride) for any input size and output i is centred on input 2i.
Weight decay regularises conv and pointwise kernels, not depthwise kernels
(DeepLab's ``regularize_depthwise=False``).

Layer names are DeepLab's variable scopes without the network scope and with
'/' replaced by '_' (`deeplab_scope_to_layer_name`), e.g. the TF1 variable
``xception_65/entry_flow/block1/unit_1/xception_module/separable_conv1_depthwise/BatchNorm/gamma``
is the ``gamma`` of layer
``entry_flow_block1_unit_1_xception_module_separable_conv1_depthwise_BatchNorm``
(`deeplab_variable_to_keras_weight` gives layer and weight name).
"low_level" is DeepLab's stride-4 decoder end point
``entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise``
(Xception-71: ``entry_flow/block3/...``), the BN output of that pointwise conv
(256 channels, no ReLU, as DeepLab collects it).

**"xception"** is keras.applications.Xception's architecture and layer names
(``block1_conv1`` ... ``block14_sepconv2_act``) with atrous support. It differs
from keras.applications in three documented ways:

1. Every conv uses "same" padding, so maps are ceil(size / stride) for any
   size. keras.applications' first two convs are VALID (224 -> 111 -> 109), so
   its maps are smaller (stride 4: 55 instead of 56 at 224) and its stride-4
   map never equals ceil(size / 4) for any size. Its outputs therefore cannot
   equal ours numerically for any input size (the border effects of VALID vs
   SAME reach every output position through the receptive field); the weights
   are name- and shape-compatible, which the tests check instead.
2. keras.applications leaves its four 1x1 residual convs and their batch
   norms unnamed (auto names such as ``conv2d_3`` that depend on what was
   built before); here they are ``block{2,3,4,13}_residual`` and
   ``block{2,3,4,13}_residual_bn``. `keras_xception_aliases` maps the auto
   names onto these by order.
3. Each max pool whose stride is turned into an atrous rate becomes a 3x3
   stride-1 max pool, dilated by the current rate (`AtrousMaxPooling2D`) when
   that rate is > 1, so os-8/16/32 outputs stay consistent.
"features" is ``block14_sepconv2_act`` (2048 channels); "low_level" is
``block3_sepconv2_bn`` (256 channels, stride 4): the analogue of DeepLab's
choice, the last map of the 256-channel block before its strided step.
Batch norms use DeepLab's decay 0.9997 and epsilon 1e-3 (keras.applications:
0.99 and 1e-3).
"""

import re
from typing import NamedTuple

import keras
from keras import layers, ops

from deeplab_dpc.core.common import BACKBONE_STDDEV, BATCH_NORM_MOMENTUM, kernel_initializer, l2_regularizer

VALID_OUTPUT_STRIDES = (8, 16, 32)
BACKBONE_BATCH_NORM_EPSILON = 1e-3

# DeepLab's stride-4 end points for the decoder (core/feature_extractor.py).
DEEPLAB_LOW_LEVEL_SCOPES = {
    "xception_65": "entry_flow/block2/unit_1/xception_module/separable_conv2_pointwise",
    "xception_71": "entry_flow/block3/unit_1/xception_module/separable_conv2_pointwise",
}
KERAS_XCEPTION_LOW_LEVEL = "block3_sepconv2_bn"
KERAS_XCEPTION_FEATURES = "block14_sepconv2_act"
KERAS_XCEPTION_RESIDUAL_BLOCKS = (2, 3, 4, 13)

_DEEPLAB_NETWORK_SCOPES = ("xception_41", "xception_65", "xception_71")
# TF1 (slim) variable leaf names -> Keras 3 weight names.
_DEEPLAB_TO_KERAS_WEIGHT = {
    "weights": "kernel",
    "depthwise_weights": "kernel",
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
}


class AtrousSchedule:
    """DeepLab's rule for reaching an output stride with atrous convolution.

    Units are visited in order with their nominal stride. Until the running
    stride reaches `output_stride` a unit keeps its stride (rate 1). From then
    on every unit runs with stride 1 at the current rate, and the rate is
    multiplied by the unit's nominal stride for the units after it
    (``stack_blocks_dense`` in DeepLab's xception.py, ``mobilenet_base``).

    Args:
        output_stride: 8, 16 or 32.

    Example:
        >>> s = AtrousSchedule(16)
        >>> [s.step(2) for _ in range(5)] + [s.step(1)]
        [(2, 1), (2, 1), (2, 1), (2, 1), (1, 1), (1, 2)]
    """

    def __init__(self, output_stride):
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise ValueError(
                f"output_stride must be one of {VALID_OUTPUT_STRIDES}, got {output_stride!r}"
            )
        self.output_stride = output_stride
        self.current_stride = 1
        self.rate = 1

    def step(self, stride):
        """Returns ``(stride, rate)`` for the next unit of nominal `stride`."""
        if self.current_stride == self.output_stride:
            rate = self.rate
            self.rate *= stride
            return 1, rate
        self.current_stride *= stride
        return stride, 1


def batch_norm(name):
    """Returns DeepLab's backbone batch norm (decay 0.9997, epsilon 1e-3).

    Args:
        name: layer name.

    Example:
        >>> batch_norm("bn_Conv1").epsilon
        0.001
    """
    return layers.BatchNormalization(
        momentum=BATCH_NORM_MOMENTUM, epsilon=BACKBONE_BATCH_NORM_EPSILON, name=name
    )


class ArgScope(NamedTuple):
    """What slim's arg scope gives every backbone conv: its regulariser and initialiser.

    ``initializer="deeplab"``: truncated normal with stddev 0.09, as
    ``xception_arg_scope`` and mobilenet's ``training_scope`` set for every
    conv, depthwise and pointwise kernel; ``"keras"``: Keras' glorot_uniform.
    ImageNet or checkpoint weights replace either; it matters when a backbone
    trains from scratch.
    """

    regularizer: object
    initializer: str = "deeplab"

    def kernel_initializer(self):
        """A new initialiser (unseeded Keras initialisers repeat their values if shared)."""
        return kernel_initializer(self.initializer, BACKBONE_STDDEV)


def check_unit_depth_multiplier(model_variant, depth_multiplier):
    """Raises ValueError unless `depth_multiplier` is 1.0 (Xception has no width knob).

    Args:
        model_variant: name used in the message.
        depth_multiplier: the requested multiplier.
    """
    if depth_multiplier != 1.0:
        raise ValueError(
            f"depth_multiplier applies to mobilenet_v2 only; {model_variant} needs 1.0, "
            f"got {depth_multiplier!r}"
        )


def deeplab_scope_to_layer_name(scope):
    """Maps a DeepLab (TF1) variable scope to the Keras layer name used here.

    Drops the network scope (``xception_65/`` etc.) when present and joins the
    remaining parts with '_'.

    Args:
        scope: e.g. ``"xception_65/entry_flow/conv1_1/BatchNorm"``.

    Returns:
        The layer name, e.g. ``"entry_flow_conv1_1_BatchNorm"``.

    Example:
        >>> deeplab_scope_to_layer_name(
        ...     "xception_71/exit_flow/block1/unit_1/xception_module/shortcut")
        'exit_flow_block1_unit_1_xception_module_shortcut'
    """
    parts = [p for p in scope.split("/") if p]
    if parts and parts[0] in _DEEPLAB_NETWORK_SCOPES:
        parts = parts[1:]
    if not parts:
        raise ValueError(f"empty DeepLab scope: {scope!r}")
    return "_".join(parts)


def deeplab_variable_to_keras_weight(variable_name):
    """Maps a DeepLab TF1 variable name to ``(layer_name, keras_weight_name)``.

    Args:
        variable_name: e.g. ``"xception_65/entry_flow/conv1_1/weights"``
            (a trailing ``":0"`` is ignored).

    Returns:
        ``(layer name, weight name)``, the weight name being one of ``kernel``,
        ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``; the weight
        is ``layer.<weight name>``. Kernels keep TF1's layout (HWIO; depthwise
        HW,in,1), so values copy without transposition.

    Example:
        >>> deeplab_variable_to_keras_weight("xception_65/entry_flow/conv1_1/BatchNorm/beta")
        ('entry_flow_conv1_1_BatchNorm', 'beta')
    """
    scope, _, leaf = variable_name.split(":")[0].rpartition("/")
    if leaf not in _DEEPLAB_TO_KERAS_WEIGHT:
        raise ValueError(
            f"unknown DeepLab variable {variable_name!r}; known leaves: "
            f"{sorted(_DEEPLAB_TO_KERAS_WEIGHT)}"
        )
    return deeplab_scope_to_layer_name(scope), _DEEPLAB_TO_KERAS_WEIGHT[leaf]


def keras_xception_aliases(layer_names):
    """Maps keras.applications.Xception's unnamed residual layers to our names.

    keras.applications builds the 1x1 residual convs of blocks 2, 3, 4 and 13
    and their batch norms without names, so they get auto names
    (``conv2d``/``conv2d_7``, ``batch_normalization_3``...) that depend on
    what was built before. In model order they are the residuals of blocks
    2, 3, 4, 13.

    Args:
        layer_names: the source model's layer names, in model order.

    Returns:
        ``{auto name: our name}``; empty unless the names contain
        ``block14_sepconv2`` and exactly four auto-named convs and batch norms.

    Example:
        >>> keras_xception_aliases(["block1_conv1", "conv2d_4", "batch_normalization_4"])
        {}
    """
    if "block14_sepconv2" not in layer_names:
        return {}
    convs = [n for n in layer_names if re.fullmatch(r"conv2d(_\d+)?", n)]
    norms = [n for n in layer_names if re.fullmatch(r"batch_normalization(_\d+)?", n)]
    if len(convs) != len(KERAS_XCEPTION_RESIDUAL_BLOCKS) or len(norms) != len(convs):
        return {}
    aliases = {}
    for block, conv, norm in zip(KERAS_XCEPTION_RESIDUAL_BLOCKS, convs, norms):
        aliases[conv] = f"block{block}_residual"
        aliases[norm] = f"block{block}_residual_bn"
    return aliases


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class AtrousMaxPooling2D(layers.Layer):
    """Max pooling with stride 1, a dilated window and "same" padding.

    The window is `pool_size` x `pool_size` taps spaced `rate` apart; padded
    positions never win (they are -inf), as in "same" max pooling. This is
    what a stride-2 max pool becomes once its stride is turned into an atrous
    rate (Keras' MaxPooling2D has no dilation).

    Args:
        rate: int >= 1, spacing of the window taps.
        pool_size: int, taps per side (3 in Xception).
        **kwargs: standard Layer arguments (name, dtype...).

    Example:
        >>> pool = AtrousMaxPooling2D(rate=2, name="block13_pool")
        >>> pool(keras.ops.zeros((1, 9, 9, 4))).shape
        (1, 9, 9, 4)
    """

    def __init__(self, rate, pool_size=3, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate
        self.pool_size = pool_size

    def call(self, inputs):
        total = (self.pool_size - 1) * self.rate
        before = total // 2
        padded = ops.pad(
            inputs,
            [[0, 0], [before, total - before], [before, total - before], [0, 0]],
            constant_values=float("-inf"),
        )
        out = None
        for i in range(self.pool_size):
            rows = slice(i * self.rate, (i * self.rate - total) or None)
            for j in range(self.pool_size):
                cols = slice(j * self.rate, (j * self.rate - total) or None)
                window = padded[:, rows, cols, :]
                out = window if out is None else ops.maximum(out, window)
        return out

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "pool_size": self.pool_size}


def _aligned_padding(x, kernel_size, stride, rate, name):
    """DeepLab's ``fixed_padding`` for strided convs: returns (x, conv padding)."""
    if stride == 1:
        return x, "same"
    total = (kernel_size - 1) * rate
    before = total // 2
    pad = (before, total - before)
    return layers.ZeroPadding2D((pad, pad), name=name)(x), "valid"


# ---------------------------------------------------------------------------
# DeepLab's aligned Xception-65 / Xception-71.


class XceptionBlock(NamedTuple):
    """One DeepLab ``xception_block``: `num_units` identical Xception modules."""

    scope: str
    depths: tuple
    skip: str  # "conv", "sum" or "none"
    num_units: int
    stride: int
    activation_inside: bool = False


def _deeplab_blocks(entry_flow):
    """Xception blocks for entry-flow (depth, stride) pairs + DeepLab's middle/exit flow."""
    blocks = [
        XceptionBlock(f"entry_flow/block{i + 1}", (depth,) * 3, "conv", 1, stride)
        for i, (depth, stride) in enumerate(entry_flow)
    ]
    return blocks + [
        XceptionBlock("middle_flow/block1", (728,) * 3, "sum", 16, 1),
        XceptionBlock("exit_flow/block1", (728, 1024, 1024), "conv", 1, 2),
        XceptionBlock("exit_flow/block2", (1536, 1536, 2048), "none", 1, 1, True),
    ]


XCEPTION_BLOCKS = {
    "xception_65": _deeplab_blocks([(128, 2), (256, 2), (728, 2)]),
    "xception_71": _deeplab_blocks([(128, 2), (256, 1), (256, 2), (728, 1), (728, 2)]),
}


def _conv_bn_relu(x, filters, stride, scope, args):
    """DeepLab's ``conv2d_same`` 3x3 + BatchNorm + ReLU under `scope`."""
    name = deeplab_scope_to_layer_name(scope)
    x, padding = _aligned_padding(x, 3, stride, 1, f"{name}_pad")
    x = layers.Conv2D(
        filters, 3, strides=stride, padding=padding, use_bias=False,
        kernel_initializer=args.kernel_initializer(), kernel_regularizer=args.regularizer, name=name,
    )(x)
    x = batch_norm(f"{name}_BatchNorm")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _separable_conv(x, depth, stride, rate, activation_inside, scope, args):
    """DeepLab's split ``separable_conv2d_same``: depthwise+BN, pointwise+BN."""
    name = deeplab_scope_to_layer_name(scope)
    if not activation_inside:
        x = layers.ReLU(name=f"{name}_input_relu")(x)
    x, padding = _aligned_padding(x, 3, stride, rate, f"{name}_depthwise_pad")
    x = layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=rate, padding=padding, use_bias=False,
        depthwise_initializer=args.kernel_initializer(), name=f"{name}_depthwise",
    )(x)
    x = batch_norm(f"{name}_depthwise_BatchNorm")(x)
    if activation_inside:
        x = layers.ReLU(name=f"{name}_depthwise_relu")(x)
    x = layers.Conv2D(
        depth, 1, use_bias=False, kernel_initializer=args.kernel_initializer(),
        kernel_regularizer=args.regularizer, name=f"{name}_pointwise"
    )(x)
    x = batch_norm(f"{name}_pointwise_BatchNorm")(x)
    if activation_inside:
        x = layers.ReLU(name=f"{name}_pointwise_relu")(x)
    return x


def _xception_module(x, block, stride, rate, scope, args, end_points):
    """DeepLab's ``xception_module``: three separable convs + shortcut."""
    scope = f"{scope}/xception_module"
    name = deeplab_scope_to_layer_name(scope)
    residual = x
    for i, depth in enumerate(block.depths):
        conv_scope = f"{scope}/separable_conv{i + 1}"
        residual = _separable_conv(
            residual, depth, stride if i == 2 else 1, rate, block.activation_inside,
            conv_scope, args,
        )
        end_points[f"{conv_scope}_pointwise"] = residual
    if block.skip == "conv":
        shortcut = layers.Conv2D(
            block.depths[-1], 1, strides=stride, use_bias=False,
            kernel_initializer=args.kernel_initializer(),
            kernel_regularizer=args.regularizer, name=f"{name}_shortcut",
        )(x)
        shortcut = batch_norm(f"{name}_shortcut_BatchNorm")(shortcut)
        return layers.Add(name=f"{name}_add")([residual, shortcut])
    if block.skip == "sum":
        return layers.Add(name=f"{name}_add")([residual, x])
    return residual


def _deeplab_xception(model_variant, output_stride, depth_multiplier, weight_decay,
                      input_shape, name, initializer="deeplab"):
    check_unit_depth_multiplier(model_variant, depth_multiplier)
    schedule = AtrousSchedule(output_stride)
    args = ArgScope(l2_regularizer(weight_decay), initializer)
    images = keras.Input(shape=input_shape, name="images")
    x = _conv_bn_relu(images, 32, schedule.step(2)[0], "entry_flow/conv1_1", args)
    x = _conv_bn_relu(x, 64, schedule.step(1)[0], "entry_flow/conv1_2", args)
    end_points = {}
    for block in XCEPTION_BLOCKS[model_variant]:
        for unit in range(block.num_units):
            stride, rate = schedule.step(block.stride)
            x = _xception_module(
                x, block, stride, rate, f"{block.scope}/unit_{unit + 1}", args,
                end_points,
            )
    outputs = {
        "features": x,
        "low_level": end_points[DEEPLAB_LOW_LEVEL_SCOPES[model_variant]],
    }
    return keras.Model(images, outputs, name=name or model_variant)


def xception_65(output_stride=16, *, depth_multiplier=1.0, weight_decay=4e-5, initializer="deeplab",
                input_shape=(None, None, 3), name=None):
    """DeepLab's aligned Xception-65 backbone.

    Args:
        output_stride: 8, 16 or 32; strides beyond it become atrous rates.
        depth_multiplier: must be 1.0.
        weight_decay: DeepLab weight decay on conv and pointwise kernels.
        input_shape: (height, width, 3) of images already scaled to [-1, 1].
        name: model name (default ``"xception_65"``).

    Returns:
        A functional keras.Model with outputs ``{"features": (ceil(h/os),
        ceil(w/os), 2048), "low_level": (ceil(h/4), ceil(w/4), 256)}``.

    Example:
        >>> backbone = xception_65(output_stride=16)
        >>> out = backbone(keras.ops.zeros((1, 65, 97, 3)))
        >>> out["features"].shape, out["low_level"].shape
        ((1, 5, 7, 2048), (1, 17, 25, 256))
    """
    return _deeplab_xception("xception_65", output_stride, depth_multiplier, weight_decay,
                             input_shape, name, initializer)


def xception_71(output_stride=16, *, depth_multiplier=1.0, weight_decay=4e-5, initializer="deeplab",
                input_shape=(None, None, 3), name=None):
    """DeepLab's aligned Xception-71 backbone (entry flow strides 2/1/2/1/2).

    Args:
        output_stride: 8, 16 or 32; strides beyond it become atrous rates.
        depth_multiplier: must be 1.0.
        weight_decay: DeepLab weight decay on conv and pointwise kernels.
        input_shape: (height, width, 3) of images already scaled to [-1, 1].
        name: model name (default ``"xception_71"``).

    Returns:
        A functional keras.Model with outputs ``{"features": (ceil(h/os),
        ceil(w/os), 2048), "low_level": (ceil(h/4), ceil(w/4), 256)}``.

    Example:
        >>> backbone = xception_71(output_stride=8, input_shape=(513, 513, 3))
        >>> backbone.output["features"].shape
        (None, 65, 65, 2048)
    """
    return _deeplab_xception("xception_71", output_stride, depth_multiplier, weight_decay,
                             input_shape, name, initializer)


# ---------------------------------------------------------------------------
# keras.applications.Xception architecture with atrous support.


def _keras_sepconv(x, filters, rate, name, args):
    """keras.applications' SeparableConv2D + BN (``{name}`` and ``{name}_bn``)."""
    x = layers.SeparableConv2D(
        filters, 3, padding="same", dilation_rate=rate, use_bias=False,
        depthwise_initializer=args.kernel_initializer(), pointwise_initializer=args.kernel_initializer(),
        pointwise_regularizer=args.regularizer, name=name,
    )(x)
    return batch_norm(f"{name}_bn")(x)


def _keras_max_pool(x, stride, rate, name):
    if rate == 1:
        return layers.MaxPooling2D(3, strides=stride, padding="same", name=name)(x)
    return AtrousMaxPooling2D(rate=rate, name=name)(x)


def _keras_strided_block(x, block, depths, schedule, args, input_relu=True):
    """Blocks 2/3/4/13: [ReLU, sepconv, BN] x2, max pool s2, + 1x1 s2 residual.

    Returns (block output, BN output before the pool).
    """
    stride, rate = schedule.step(2)
    residual = layers.Conv2D(
        depths[-1], 1, strides=stride, use_bias=False, kernel_initializer=args.kernel_initializer(),
            kernel_regularizer=args.regularizer,
        name=f"block{block}_residual",
    )(x)
    residual = batch_norm(f"block{block}_residual_bn")(residual)
    for i, depth in enumerate(depths):
        if i or input_relu:
            x = layers.ReLU(name=f"block{block}_sepconv{i + 1}_act")(x)
        x = _keras_sepconv(x, depth, rate, f"block{block}_sepconv{i + 1}", args)
    pre_pool = x
    x = _keras_max_pool(x, stride, rate, f"block{block}_pool")
    return layers.Add(name=f"block{block}_add")([x, residual]), pre_pool


def keras_xception(output_stride=16, *, depth_multiplier=1.0, weight_decay=4e-5, initializer="deeplab",
                   input_shape=(None, None, 3), name=None):
    """keras.applications.Xception's architecture and layer names, with atrous support.

    See the module docstring for the three differences to keras.applications
    (padding, residual layer names, atrous max pools). Input: images in
    [-1, 1] (keras.applications' "tf" preprocessing).

    Args:
        output_stride: 8, 16 or 32; strides beyond it become atrous rates.
        depth_multiplier: must be 1.0.
        weight_decay: DeepLab weight decay on conv and pointwise kernels.
        input_shape: (height, width, 3).
        name: model name (default ``"xception"``).

    Returns:
        A functional keras.Model with outputs ``{"features":
        block14_sepconv2_act (ceil(h/os), ceil(w/os), 2048), "low_level":
        block3_sepconv2_bn (ceil(h/4), ceil(w/4), 256)}``.

    Example:
        >>> backbone = keras_xception(output_stride=16, input_shape=(224, 224, 3))
        >>> backbone.output["features"].shape
        (None, 14, 14, 2048)
    """
    check_unit_depth_multiplier("xception", depth_multiplier)
    schedule = AtrousSchedule(output_stride)
    args = ArgScope(l2_regularizer(weight_decay), initializer)
    images = keras.Input(shape=input_shape, name="images")
    x = images
    for i, (filters, stride) in enumerate([(32, 2), (64, 1)]):
        prefix = f"block1_conv{i + 1}"
        x = layers.Conv2D(
            filters, 3, strides=schedule.step(stride)[0], padding="same", use_bias=False,
            kernel_initializer=args.kernel_initializer(),
            kernel_regularizer=args.regularizer, name=prefix,
        )(x)
        x = batch_norm(f"{prefix}_bn")(x)
        x = layers.ReLU(name=f"{prefix}_act")(x)
    x, _ = _keras_strided_block(x, 2, (128, 128), schedule, args, input_relu=False)
    x, low_level = _keras_strided_block(x, 3, (256, 256), schedule, args)
    x, _ = _keras_strided_block(x, 4, (728, 728), schedule, args)
    for block in range(5, 13):
        _, rate = schedule.step(1)
        residual = x
        for i in range(3):
            x = layers.ReLU(name=f"block{block}_sepconv{i + 1}_act")(x)
            x = _keras_sepconv(x, 728, rate, f"block{block}_sepconv{i + 1}", args)
        x = layers.Add(name=f"block{block}_add")([x, residual])
    x, _ = _keras_strided_block(x, 13, (728, 1024), schedule, args)
    _, rate = schedule.step(1)
    for i, depth in enumerate((1536, 2048)):
        x = _keras_sepconv(x, depth, rate, f"block14_sepconv{i + 1}", args)
        x = layers.ReLU(name=f"block14_sepconv{i + 1}_act")(x)
    return keras.Model(
        images, {"features": x, "low_level": low_level}, name=name or "xception"
    )
