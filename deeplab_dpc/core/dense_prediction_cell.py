"""The Dense Prediction Cell (Chen et al. 2018) as a Keras layer, built from a spec.

The same layer serves the end-to-end model and the proxy trainer on cached
backbone features, so it is cheap to construct: one sublayer per branch, all
made in ``__init__`` from the spec.
"""

from __future__ import annotations

import keras
from keras import ops

from deeplab_dpc.core.common import BATCH_NORM_EPSILON, BATCH_NORM_MOMENTUM, separable_stddevs
from deeplab_dpc.core.geometry import dpc_rate_multiplier
from deeplab_dpc.core.layers import ConvBNReLU, PyramidPooling, SeparableConvBNReLU, seeded_dropout
from deeplab_dpc.core.spec import PYRAMID_POOLING, CellSpec


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class DensePredictionCell(keras.layers.Layer):
    """A Dense Prediction Cell, as DeepLab's ``DensePredictionCell.build_cell``.

    Branch i applies its op to the backbone features (input -1) or to branch
    j's output: 1x1 conv -> BN -> ReLU; separable conv (depthwise with rate
    ``rate * 16 / output_stride`` -> BN -> ReLU -> pointwise -> BN -> ReLU);
    or pyramid pooling. Every branch output is concatenated, dropped out
    (keep 0.9) and projected by a 1x1 conv -> BN -> ReLU.

    ScheduledDropPath (NASNet, Zoph et al. 2018), with ``drop_path_keep_prob``
    below 1: in training, each branch output of each example is kept with
    probability ``keep(t) = 1 - t / drop_path_steps * (1 - drop_path_keep_prob)``
    (t: the layer's own count of training calls, a checkpointed variable, so a
    resumed run continues the schedule) and divided by it when kept, else
    zeroed; at inference the cell is unchanged. A branch that later branches
    read is dropped for them too, as NASNet drops a path.

    Sublayer names follow DeepLab's scopes: ``branch{i}`` (1x1 conv, pooling
    conv), ``branch{i}_depthwise`` / ``branch{i}_pointwise`` (separable),
    ``concat_projection``.

    Args:
        spec: a ``CellSpec``, or DeepLab's JSON structure (a list of dicts).
        output_stride: 8 or 16, the stride of the features the cell reads.
        filters: channels of every branch (DeepLab's ``reduction_size``, 256).
        concat_channels: channels of the projection (256).
        dropout_rate: dropout on the concatenated features (1 - keep_prob).
        weight_decay: DeepLab's weight decay.
        batch_norm_momentum, batch_norm_epsilon: batch norm settings.
        fused_batch_norm: train the batch norms with ``layers.FusedBatchNormalization`` (the proxy's
            choice: the same values, one fused op on TensorFlow).
        initializer: "deeplab" (separable convs: truncated normal 0.33 / 0.06)
            or "keras" (glorot_uniform); 1x1 convs are Xavier uniform in both.
        drop_path_keep_prob: the keep probability ScheduledDropPath reaches at
            ``drop_path_steps`` (1: off, and the layer has no extra variables).
        drop_path_steps: training steps over which the keep probability falls
            linearly from 1 (the run's length).
        seed: seed of the drop-path masks.

    Example:
        >>> spec = CellSpec.load("experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json")
        >>> cell = DensePredictionCell(spec, output_stride=16)
        >>> cell(np.zeros((1, 33, 33, 320), "float32")).shape
        (1, 33, 33, 256)
    """

    def __init__(
        self,
        spec,
        output_stride=16,
        filters=256,
        concat_channels=256,
        dropout_rate=0.1,
        weight_decay=4e-5,
        batch_norm_momentum=BATCH_NORM_MOMENTUM,
        batch_norm_epsilon=BATCH_NORM_EPSILON,
        initializer="deeplab",
        drop_path_keep_prob=1.0,
        drop_path_steps=0,
        seed=None,
        fused_batch_norm=False,
        **kwargs,
    ):
        kwargs.setdefault("name", "dense_prediction_cell")
        super().__init__(**kwargs)
        self.spec = spec if isinstance(spec, CellSpec) else CellSpec.from_list(spec)
        self.output_stride = int(output_stride)
        self.rate_multiplier = dpc_rate_multiplier(self.output_stride)
        self.filters = int(filters)
        self.concat_channels = int(concat_channels)
        self.dropout_rate = float(dropout_rate)
        self.weight_decay = float(weight_decay)
        self.batch_norm_momentum = float(batch_norm_momentum)
        self.batch_norm_epsilon = float(batch_norm_epsilon)
        self.initializer = str(initializer)
        self.drop_path_keep_prob = float(drop_path_keep_prob)
        self.drop_path_steps = int(drop_path_steps)
        self.seed = seed
        self.fused_batch_norm = bool(fused_batch_norm)
        if not 0.0 < self.drop_path_keep_prob <= 1.0:
            raise ValueError(f"drop_path_keep_prob={self.drop_path_keep_prob} must be in (0, 1]")
        if self.drop_path_keep_prob < 1.0 and self.drop_path_steps < 1:
            raise ValueError(
                f"drop_path_steps={self.drop_path_steps}: ScheduledDropPath needs the training steps "
                "its keep probability falls over"
            )
        self.seed_generator = keras.random.SeedGenerator(seed) if self.uses_drop_path else None
        separable = dict(zip(("depthwise_stddev", "pointwise_stddev"), separable_stddevs(self.initializer)))
        common = dict(
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            fused_batch_norm=self.fused_batch_norm,
            dtype=self.dtype_policy,
        )
        self.branch_layers = []
        for i, branch in enumerate(self.spec.branches):
            name = f"branch{i}"
            if branch.op == PYRAMID_POOLING:
                layer = PyramidPooling(self.filters, branch.grid_size, name=name, **common)
            elif branch.is_separable:
                rate = tuple(r * self.rate_multiplier for r in branch.rate)
                layer = SeparableConvBNReLU(
                    self.filters, branch.kernel, rate, name=name, **common, **separable
                )
            else:
                layer = ConvBNReLU(self.filters, name=name, **common)
            self.branch_layers.append(layer)
        self.dropout = seeded_dropout(self.dropout_rate, name="concat_projection_dropout")
        self.projection = ConvBNReLU(self.concat_channels, name="concat_projection", **common)

    @property
    def uses_drop_path(self) -> bool:
        return self.drop_path_keep_prob < 1.0

    def build(self, input_shape):
        if self.uses_drop_path:
            self.drop_path_step = self.add_weight(
                name="drop_path_step", shape=(), initializer="zeros", trainable=False, dtype="float32"
            )
        branch_shape = (*input_shape[:-1], self.filters)
        for branch, layer in zip(self.spec.branches, self.branch_layers):
            layer.build(input_shape if branch.input < 0 else branch_shape)
        self.projection.build((*input_shape[:-1], self.filters * len(self.branch_layers)))

    def drop_path_keep(self, step):
        """The keep probability after ``step`` training calls (a tensor or a number)."""
        fraction = ops.minimum(ops.cast(step, "float32") / float(self.drop_path_steps), 1.0)
        return 1.0 - fraction * (1.0 - self.drop_path_keep_prob)

    def _drop_path(self, x, keep):
        batch = ops.shape(x)[0]
        noise = keras.random.uniform((batch, 1, 1, 1), seed=self.seed_generator, dtype="float32")
        mask = ops.cast(noise < keep, x.dtype)
        return x * mask / ops.cast(keep, x.dtype)

    def call(self, features, training=None):
        outputs = []
        drop = bool(training) and self.uses_drop_path
        if drop:
            keep = self.drop_path_keep(self.drop_path_step)
            self.drop_path_step.assign(self.drop_path_step + 1.0)
        for branch, layer in zip(self.spec.branches, self.branch_layers):
            source = features if branch.input < 0 else outputs[branch.input]
            out = layer(source, training=training)
            outputs.append(self._drop_path(out, keep) if drop else out)
        x = ops.concatenate(outputs, axis=-1) if len(outputs) > 1 else outputs[0]
        x = self.dropout(x, training=training)
        return self.projection(x, training=training)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.concat_channels)

    def get_config(self):
        config = super().get_config()
        config.update(
            spec=self.spec.to_list(),
            output_stride=self.output_stride,
            filters=self.filters,
            concat_channels=self.concat_channels,
            dropout_rate=self.dropout_rate,
            weight_decay=self.weight_decay,
            batch_norm_momentum=self.batch_norm_momentum,
            batch_norm_epsilon=self.batch_norm_epsilon,
            initializer=self.initializer,
            drop_path_keep_prob=self.drop_path_keep_prob,
            drop_path_steps=self.drop_path_steps,
            seed=self.seed,
            fused_batch_norm=self.fused_batch_norm,
        )
        return config
