"""Atrous Spatial Pyramid Pooling (DeepLab v3), the human-designed baseline."""

from __future__ import annotations

import keras
from keras import ops

from deeplab_dpc.core.common import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, separable_stddevs
from deeplab_dpc.core.geometry import dpc_rate_multiplier
from deeplab_dpc.core.layers import (
    ConvBNReLU,
    SeparableConvBNReLU,
    resize_bilinear_align_corners,
    seeded_dropout,
)

DEFAULT_ATROUS_RATES = (6, 12, 18)  # at output stride 16


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class ASPP(keras.layers.Layer):
    """DeepLab v3 ASPP as DeepLab's ``extract_features`` builds it.

    Branches, concatenated in this order: image pooling (global mean ->
    1x1 conv -> BN -> ReLU -> resize back), ``aspp0`` (1x1 conv), and one
    3x3 atrous separable conv per rate (``aspp1``..). Then
    ``concat_projection`` (1x1 conv -> BN -> ReLU) and dropout (keep 0.9).

    Args:
        output_stride: 8 or 16 when ``atrous_rates`` is None.
        atrous_rates: rates of the separable branches. None: (6, 12, 18) at
            output stride 16, doubled at 8. Given explicitly, used as is
            (DeepLab's ``--atrous_rates``), at any output stride.
        filters: channels of every branch and of the projection (256).
        dropout_rate: dropout after the projection (1 - keep_prob).
        image_pooling: include the image-level pooling branch.
        weight_decay, batch_norm_momentum, batch_norm_epsilon: as elsewhere.
        initializer: "deeplab" (separable convs: truncated normal 0.33 / 0.06)
            or "keras" (glorot_uniform); 1x1 convs are Xavier uniform in both.

    Example:
        >>> ASPP(output_stride=16)(np.zeros((1, 33, 33, 320), "float32")).shape
        (1, 33, 33, 256)
    """

    def __init__(
        self,
        output_stride=16,
        atrous_rates=None,
        filters=256,
        dropout_rate=0.1,
        image_pooling=True,
        weight_decay=4e-5,
        batch_norm_momentum=BATCH_NORM_MOMENTUM,
        batch_norm_epsilon=BATCH_NORM_EPSILON,
        initializer="deeplab",
        **kwargs,
    ):
        kwargs.setdefault("name", "aspp")
        super().__init__(**kwargs)
        self.output_stride = int(output_stride)
        if atrous_rates is None:
            multiplier = dpc_rate_multiplier(self.output_stride)
            atrous_rates = [r * multiplier for r in DEFAULT_ATROUS_RATES]
        self.atrous_rates = [int(r) for r in atrous_rates]
        if any(r < 1 for r in self.atrous_rates):
            raise ValueError(f"atrous_rates must be positive, got {self.atrous_rates}")
        self.filters = int(filters)
        self.dropout_rate = float(dropout_rate)
        self.image_pooling = bool(image_pooling)
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
        self.pool_conv = ConvBNReLU(self.filters, name="image_pooling", **common) if self.image_pooling else None
        self.conv1x1 = ConvBNReLU(self.filters, name="aspp0", **common)
        self.atrous = [
            SeparableConvBNReLU(self.filters, 3, rate, name=f"aspp{i + 1}", **common, **separable)
            for i, rate in enumerate(self.atrous_rates)
        ]
        self.projection = ConvBNReLU(self.filters, name="concat_projection", **common)
        self.dropout = seeded_dropout(self.dropout_rate, name="concat_projection_dropout")

    def _branches(self):
        return ([self.pool_conv] if self.image_pooling else []) + [self.conv1x1, *self.atrous]

    def build(self, input_shape):
        for layer in self._branches():
            layer.build(input_shape)
        self.projection.build((*input_shape[:-1], self.filters * len(self._branches())))

    def call(self, features, training=None):
        shape = ops.shape(features)
        outputs = []
        if self.image_pooling:
            pooled = ops.mean(features, axis=(1, 2), keepdims=True)
            pooled = self.pool_conv(pooled, training=training)
            outputs.append(resize_bilinear_align_corners(pooled, (shape[1], shape[2])))
        outputs.append(self.conv1x1(features, training=training))
        outputs.extend(layer(features, training=training) for layer in self.atrous)
        x = self.projection(ops.concatenate(outputs, axis=-1), training=training)
        return self.dropout(x, training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            output_stride=self.output_stride,
            atrous_rates=list(self.atrous_rates),
            filters=self.filters,
            dropout_rate=self.dropout_rate,
            image_pooling=self.image_pooling,
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            initializer=self.initializer,
        )
        return config
