"""The DeepLab v3+ decoder: refine the context features with stride-4 features."""

from __future__ import annotations

import keras
from keras import ops

from deeplab_dpc.core.common import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, separable_stddevs
from deeplab_dpc.core.layers import ConvBNReLU, SeparableConvBNReLU, resize_bilinear_align_corners


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class Decoder(keras.layers.Layer):
    """DeepLab v3+ ``refine_by_decoder``.

    The low-level features are projected to ``low_level_filters`` channels
    (``feature_projection0``: 1x1 conv -> BN -> ReLU); the context features
    are resized to their size (bilinear, align corners) and concatenated in
    front of them; two 3x3 separable convs of ``filters`` channels follow
    (``decoder_conv0``, ``decoder_conv1``).

    Call it on ``[context_features, low_level_features]``.

    Args:
        filters: channels of the decoder convs (256).
        low_level_filters: channels of the low-level projection (48).
        weight_decay, batch_norm_momentum, batch_norm_epsilon: as elsewhere.
        initializer: "deeplab" (separable convs: truncated normal 0.33 / 0.06)
            or "keras" (glorot_uniform); 1x1 convs are Xavier uniform in both.

    Example:
        >>> Decoder()([np.zeros((1, 33, 33, 256)), np.zeros((1, 129, 129, 24))]).shape
        (1, 129, 129, 256)
    """

    def __init__(
        self,
        filters=256,
        low_level_filters=48,
        weight_decay=4e-5,
        batch_norm_momentum=BATCH_NORM_MOMENTUM,
        batch_norm_epsilon=BATCH_NORM_EPSILON,
        initializer="deeplab",
        **kwargs,
    ):
        kwargs.setdefault("name", "decoder")
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.low_level_filters = int(low_level_filters)
        self.weight_decay = float(weight_decay)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.initializer = str(initializer)
        separable = dict(zip(("depthwise_stddev", "pointwise_stddev"), separable_stddevs(self.initializer)))
        common = dict(
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            dtype=self.dtype_policy,
        )
        self.projection = ConvBNReLU(self.low_level_filters, name="feature_projection0", **common)
        self.conv0 = SeparableConvBNReLU(self.filters, 3, 1, name="decoder_conv0", **common, **separable)
        self.conv1 = SeparableConvBNReLU(self.filters, 3, 1, name="decoder_conv1", **common, **separable)

    def build(self, input_shape):
        context_shape, low_level_shape = input_shape
        self.projection.build(low_level_shape)
        concat = (*low_level_shape[:-1], context_shape[-1] + self.low_level_filters)
        self.conv0.build(concat)
        self.conv1.build((*low_level_shape[:-1], self.filters))

    def call(self, inputs, training=None):
        context, low_level = inputs
        low_level = self.projection(low_level, training=training)
        shape = ops.shape(low_level)
        context = resize_bilinear_align_corners(context, (shape[1], shape[2]))
        x = ops.concatenate([ops.cast(context, low_level.dtype), low_level], axis=-1)
        x = self.conv0(x, training=training)
        return self.conv1(x, training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[1][:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            low_level_filters=self.low_level_filters,
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            initializer=self.initializer,
        )
        return config
