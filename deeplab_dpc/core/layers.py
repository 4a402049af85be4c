"""Building blocks shared by the context modules, the decoder and the model.

Every layer is a real ``keras.layers.Layer`` subclass (no Lambda) written with
``keras.ops`` only, so it runs on the TensorFlow, JAX and PyTorch backends and
reloads from the ``.keras`` format. Layer names follow DeepLab's variable
scopes with "/" written "_" (``branch0_depthwise``,
``branch0_depthwise_BatchNorm``), so TF1 checkpoints map by a simple rule.
"""

from __future__ import annotations

import random

import keras
from keras import ops

from deeplab_dpc.core.common import (
    BATCH_NORM_EPSILON,
    BATCH_NORM_MOMENTUM,
    DEPTHWISE_STDDEV,
    POINTWISE_STDDEV,
    l2_regularizer,
    truncated_normal,
)
from deeplab_dpc.core.geometry import interpolation_matrix

_PACKAGE = "deeplab_dpc"


# An axis whose input is at most this long is resized by a matrix product (below); longer ones gather.
MATMUL_RESIZE_MAX_INPUT = 64


def resize_bilinear_align_corners(x, size):
    """Bilinear resize of NHWC ``x`` to ``size`` with ``align_corners=True``.

    DeepLab resizes with ``tf.image.resize_bilinear(..., align_corners=True)``
    everywhere; Keras' resize has no such mode. ``size`` may hold Python ints
    or scalar tensors (unknown sizes in a TensorFlow graph).

    Each axis is one linear map. Where its input and output lengths are known
    ints and the input is short (at most ``MATMUL_RESIZE_MAX_INPUT``: logits
    and features, not images) it is a product with the ``[out, in]``
    interpolation matrix, whose gradient is another product; otherwise two
    gathers and a blend, whose gradient is a scatter (``UnsortedSegmentSum`` on
    TensorFlow). Both compute the same weights, equal within float32 rounding
    (tested); the product is 1.7x (logits to the proxy's loss grid) to 2.7x (to
    a 360x480 image) faster forward and backward on this project's CPU.

    Args:
        x: a [batch, height, width, channels] tensor.
        size: (height, width) of the output.
    """
    x = _interpolate_axis(x, size[0], axis=1)
    return _interpolate_axis(x, size[1], axis=2)


def _interpolate_axis(x, out_size, axis):
    in_size = ops.shape(x)[axis]
    if isinstance(in_size, int) and isinstance(out_size, int):
        if in_size == out_size:
            return x
        if in_size <= MATMUL_RESIZE_MAX_INPUT:
            return _interpolate_axis_matmul(x, in_size, out_size, axis)
    in_f = ops.cast(in_size, "float32")
    out_f = ops.cast(out_size, "float32")
    scale = ops.where(out_f > 1.0, (in_f - 1.0) / ops.maximum(out_f - 1.0, 1.0), 0.0)
    position = ops.cast(ops.arange(out_size), "float32") * scale
    low = ops.minimum(ops.cast(ops.floor(position), "int32"), ops.cast(in_size, "int32") - 1)
    high = ops.minimum(low + 1, ops.cast(in_size, "int32") - 1)
    weight = ops.cast(position - ops.cast(low, "float32"), x.dtype)
    weight = ops.reshape(weight, (1, -1, 1, 1) if axis == 1 else (1, 1, -1, 1))
    a = ops.take(x, low, axis=axis)
    b = ops.take(x, high, axis=axis)
    return a + (b - a) * weight


def _interpolate_axis_matmul(x, in_size, out_size, axis):
    """``_interpolate_axis`` as ``matrix @ x`` over the axis: the rows before it are a batch of matrices."""
    matrix = ops.convert_to_tensor(interpolation_matrix(in_size, out_size), dtype=x.dtype)
    shape = ops.shape(x)
    if axis == 1:  # [b, h, w*c]: one [out, h] @ [h, w*c] per image
        y = ops.matmul(matrix, ops.reshape(x, (-1, in_size, shape[2] * shape[3])))
        return ops.reshape(y, (-1, out_size, shape[2], shape[3]))
    y = ops.matmul(matrix, ops.reshape(x, (-1, in_size, shape[3])))  # [b*h, w, c]: one per image row
    return ops.reshape(y, (-1, shape[1], out_size, shape[3]))


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Normalize(keras.layers.Layer):
    """Maps pixel values 0..255 to [-1, 1] (DeepLab's ``_preprocess_zero_mean_unit_range``).

    Accepts integer or float images; the output is in the layer's compute dtype.

    Example:
        >>> Normalize()(np.array([[[[0, 127.5, 255]]]]))  # -> [[[[-1, 0, 1]]]]
    """

    def call(self, images):
        return ops.cast(images, self.compute_dtype) / 127.5 - 1.0


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ResizeLike(keras.layers.Layer):
    """Resizes the first input bilinearly (align corners) to the height and width of the second.

    Example:
        >>> logits = ResizeLike(dtype="float32")([logits, images])
    """

    def call(self, inputs):
        x, reference = inputs
        shape = ops.shape(reference)
        return ops.cast(resize_bilinear_align_corners(x, (shape[1], shape[2])), self.compute_dtype)

    def compute_output_shape(self, input_shapes):
        x_shape, ref_shape = input_shapes
        return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' ``BatchNormalization``, trained in one fused op where it can be.

    In training, on TensorFlow, for 4-D float32 channels-last inputs without a mask, renorm or
    synchronisation, the batch statistics, the normalisation and their gradients are TensorFlow's
    ``FusedBatchNormV3`` (oneDNN on CPU) instead of about ten elementwise ops each way: about 3x
    faster on the proxy's 8x23x30x64 activations. The moving statistics get the same update
    (Keras' biased batch variance: the fused op returns the unbiased one, rescaled here). Values
    and gradients equal Keras' layer within float32 rounding (tested); anything else is Keras'
    own ``call``.
    """

    def call(self, inputs, training=None, mask=None):
        if not (
            training
            and self.trainable
            and mask is None
            and not self.renorm
            and not self.synchronized
            and self.scale
            and self.center
            and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) == "float32"
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # noqa: PLC0415  (TensorFlow backend only)

        outputs, mean, unbiased, *_ = tf.compat.v1.nn.fused_batch_norm(
            inputs, self.gamma, self.beta, epsilon=self.epsilon, data_format="NHWC", is_training=True
        )
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], "float32")
        variance = unbiased * ((count - 1.0) / tf.maximum(count, 1.0))
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)


def seeded_dropout(rate, name):
    """``keras.layers.Dropout(rate)`` whose masks come from its own seed on every backend.

    An unseeded Dropout draws its masks from Keras' layer seed on TensorFlow and JAX, but from
    torch's global generator on the PyTorch backend (Keras' fast path there), so two cells in one
    program (the proxy's ``run_proxy_group``) drew each other's masks, not those each draws alone.
    The seed is drawn as Keras draws an unseeded layer's (Python's ``random``, when the rate is
    above 0), so on TensorFlow and JAX the masks are the ones an unseeded layer gives.
    """
    seed = random.randint(1, int(1e9)) if rate > 0 else None
    return keras.layers.Dropout(rate, seed=seed, name=name)


class _Block(keras.layers.Layer):
    """Base of the conv blocks: weight decay and batch norm arguments, and their config."""

    def __init__(
        self,
        filters,
        weight_decay=4e-5,
        batch_norm_momentum=BATCH_NORM_MOMENTUM,
        batch_norm_epsilon=BATCH_NORM_EPSILON,
        fused_batch_norm=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.weight_decay = float(weight_decay)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.fused_batch_norm = bool(fused_batch_norm)

    def _batch_norm(self, name):
        kind = FusedBatchNormalization if self.fused_batch_norm else keras.layers.BatchNormalization
        return kind(
            momentum=self.batch_norm_momentum,
            epsilon=self.batch_norm_epsilon,
            name=name,
            dtype=self.dtype_policy,
        )

    def _conv1x1(self, filters, name, use_bias=False, kernel_initializer="glorot_uniform"):
        return keras.layers.Conv2D(
            filters,
            1,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=l2_regularizer(self.weight_decay),
            name=name,
            dtype=self.dtype_policy,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            fused_batch_norm=self.fused_batch_norm,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvBNReLU(_Block):
    """1x1 conv (no bias) -> batch norm -> ReLU, as slim's ``conv2d`` in DeepLab's arg scope.

    The kernel starts from slim's default initialiser, Xavier uniform (Keras'
    glorot_uniform), as DeepLab's 1x1 convs in the DPC, ASPP and decoder do.
    Sublayers are named ``<name>`` (conv) and ``<name>_BatchNorm``.

    Args:
        filters: output channels.
        weight_decay: DeepLab's weight decay for the kernel.
        batch_norm_momentum, batch_norm_epsilon: batch norm settings.

    Example:
        >>> ConvBNReLU(256, name="aspp0")(features)
    """

    def __init__(self, filters, **kwargs):
        super().__init__(filters, **kwargs)
        self.conv = self._conv1x1(self.filters, name=self.name)
        self.bn = self._batch_norm(f"{self.name}_BatchNorm")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))

    def call(self, x, training=None):
        return ops.relu(self.bn(self.conv(x), training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SeparableConvBNReLU(_Block):
    """DeepLab's ``split_separable_conv2d``: depthwise kxk with atrous rate -> BN -> ReLU
    -> pointwise 1x1 -> BN -> ReLU.

    The depthwise kernel has no weight decay (as in DeepLab). Kernels start
    as DeepLab's: truncated normal with stddev 0.33 (depthwise) and 0.06
    (pointwise). Keras' glorot_uniform would give a 3x3 depthwise kernel a
    stddev of ~0.03 on 320 channels, whose output variance (~1e-3) is the size
    of batch norm's epsilon. Sublayers:
    ``<name>_depthwise``, ``<name>_depthwise_BatchNorm``, ``<name>_pointwise``,
    ``<name>_pointwise_BatchNorm``.

    Args:
        filters: output channels of the pointwise conv.
        kernel_size: (kh, kw) or an int.
        rate: (rh, rw) atrous rate or an int.
        depthwise_stddev: stddev of the depthwise kernel's truncated normal
            (None: Keras' glorot_uniform).
        pointwise_stddev: stddev of the pointwise kernel's truncated normal
            (None: Keras' glorot_uniform).
        weight_decay, batch_norm_momentum, batch_norm_epsilon: as in ``ConvBNReLU``.

    Example:
        >>> SeparableConvBNReLU(256, kernel_size=3, rate=(1, 6), name="branch0")(features)
    """

    def __init__(
        self,
        filters,
        kernel_size=3,
        rate=1,
        depthwise_stddev=DEPTHWISE_STDDEV,
        pointwise_stddev=POINTWISE_STDDEV,
        **kwargs,
    ):
        super().__init__(filters, **kwargs)
        self.kernel_size = _as_pair(kernel_size)
        self.rate = _as_pair(rate)
        self.depthwise_stddev = None if depthwise_stddev is None else float(depthwise_stddev)
        self.pointwise_stddev = None if pointwise_stddev is None else float(pointwise_stddev)
        self.depthwise = keras.layers.DepthwiseConv2D(
            self.kernel_size,
            padding="same",
            dilation_rate=self.rate,
            use_bias=False,
            depthwise_initializer=_initializer(self.depthwise_stddev),
            name=f"{self.name}_depthwise",
            dtype=self.dtype_policy,
        )
        self.depthwise_bn = self._batch_norm(f"{self.name}_depthwise_BatchNorm")
        self.pointwise = self._conv1x1(
            self.filters,
            name=f"{self.name}_pointwise",
            kernel_initializer=_initializer(self.pointwise_stddev),
        )
        self.pointwise_bn = self._batch_norm(f"{self.name}_pointwise_BatchNorm")

    def build(self, input_shape):
        self.depthwise.build(input_shape)
        self.depthwise_bn.build(input_shape)
        self.pointwise.build(input_shape)
        self.pointwise_bn.build(self.compute_output_shape(input_shape))

    def call(self, x, training=None):
        x = ops.relu(self.depthwise_bn(self.depthwise(x), training=training))
        return ops.relu(self.pointwise_bn(self.pointwise(x), training=training))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            kernel_size=list(self.kernel_size),
            rate=list(self.rate),
            depthwise_stddev=self.depthwise_stddev,
            pointwise_stddev=self.pointwise_stddev,
        )
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PyramidPooling(_Block):
    """Average pooling to a grid -> 1x1 conv -> BN -> ReLU -> bilinear resize back.

    The window is ``(f - 1) // g + 1`` cells for ``f`` feature cells and grid
    ``g`` (DeepLab's window when the crop is the input; see ``geometry``),
    applied with stride 1 and VALID padding; the result is resized to the
    feature size with align corners. Sizes unknown while tracing a
    TensorFlow graph are handled with an integral image, which gives the
    same numbers.

    Args:
        filters: output channels.
        grid_size: (gh, gw).
        weight_decay, batch_norm_momentum, batch_norm_epsilon: as in ``ConvBNReLU``.

    Example:
        >>> PyramidPooling(256, grid_size=(4, 4), name="branch2")(features)
    """

    def __init__(self, filters, grid_size=(1, 1), **kwargs):
        super().__init__(filters, **kwargs)
        self.grid_size = _as_pair(grid_size)
        self.conv = ConvBNReLU(
            self.filters,
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            fused_batch_norm=self.fused_batch_norm,
            name=self.name,
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, x, training=None):
        shape = ops.shape(x)
        height, width = shape[1], shape[2]
        if isinstance(height, int) and isinstance(width, int):
            window = (
                (height - 1) // self.grid_size[0] + 1,
                (width - 1) // self.grid_size[1] + 1,
            )
            pooled = ops.average_pool(x, window, strides=1, padding="valid")
        else:
            pooled = _average_pool_valid_dynamic(x, height, width, self.grid_size)
        y = self.conv(pooled, training=training)
        return resize_bilinear_align_corners(y, (height, width))

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=list(self.grid_size))
        return config


def _average_pool_valid_dynamic(x, height, width, grid_size):
    """VALID average pooling, stride 1, window from the (tensor) feature size."""
    kh = (height - 1) // grid_size[0] + 1
    kw = (width - 1) // grid_size[1] + 1
    dtype = x.dtype
    s = ops.cumsum(ops.cumsum(ops.cast(x, "float32"), axis=1), axis=2)
    s = ops.pad(s, [[0, 0], [1, 0], [1, 0], [0, 0]])
    oh = height - kh + 1
    ow = width - kw + 1
    total = (
        s[:, kh : kh + oh, kw : kw + ow]
        - s[:, 0:oh, kw : kw + ow]
        - s[:, kh : kh + oh, 0:ow]
        + s[:, 0:oh, 0:ow]
    )
    return ops.cast(total / ops.cast(kh * kw, "float32"), dtype)


def _initializer(stddev):
    return keras.initializers.GlorotUniform() if stddev is None else truncated_normal(stddev)


def _as_pair(value):
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))
