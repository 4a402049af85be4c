"""Parameters and multiply-adds of a DeepLab model, computed analytically from layer shapes.

Nothing is profiled or timed: every number is a closed-form function of
kernel sizes, channel counts and spatial sizes, so the counts are exact and
reproducible on any machine.

Conventions
-----------

MACs (multiply-accumulates, one multiply plus one add; FLOPs ~= 2 x MACs):

* A convolution counts at its OUTPUT spatial size:

  - ``Conv2D`` kh x kw, Cin -> Cout, groups G, output H x W:
    ``H * W * kh * kw * (Cin / G) * Cout``;
  - ``DepthwiseConv2D`` kh x kw, Cin channels, depth multiplier M, output
    H x W: ``H * W * kh * kw * Cin * M``;
  - a separable conv is its depthwise plus its pointwise (1x1) conv, both at
    the output size;
  - the atrous (dilation) rate does NOT change the count: a dilated kernel
    has the same number of taps;
  - ``Conv2DTranspose`` counts at its INPUT size (each input cell scatters
    one kernel);
  - ``Dense`` counts ``Cin * Cout`` per output position.

* Batch norm, activations (ReLU, ReLU6), biases, pooling (average, global
  mean), bilinear resizing, padding, additions, concatenation, dropout and
  input normalisation count 0 MACs: they are cheap elementwise or memory
  operations next to the convolutions. Non-layer operations in a functional
  graph (``keras.ops`` called on symbolic tensors) also count 0, and a layer
  with weights but no formula here counts its Keras parameters and 0 MACs
  (it is listed in ``uncounted``).

* Pyramid pooling (``PyramidPooling``): its 1x1 conv runs on the POOLED map.
  For f feature cells and grid g the window is ``w = (f - 1) // g + 1``
  (``geometry.pyramid_pooling_window``), applied with stride 1 and VALID
  padding, so the pooled map has ``f - w + 1`` cells per axis. ASPP's image
  pooling conv runs on a 1 x 1 map.

Parameters:

* Every weight counts, including batch norm's moving mean and variance
  (non-trainable): a conv has ``kh * kw * Cin/G * Cout`` weights (+ Cout if
  it has a bias), a depthwise conv ``kh * kw * Cin * M`` (+ Cin * M), a batch
  norm over C channels ``4 * C`` (gamma, beta, moving mean, moving variance).
  This equals Keras' ``count_params()``.
* ``trainable_params`` is reported separately: the same minus the moving
  statistics (a batch norm has ``2 * C`` trainable weights), and 0 for layers
  whose ``trainable`` is False.

Grouping (``model_statistics``): ``backbone`` (every layer of the backbone
model), ``context`` (the DPC or ASPP: per ``branches`` and the
``concat_projection`` separately), ``decoder`` (``feature_projection0``,
``decoder_conv0``, ``decoder_conv1``), ``logits`` (the final 1x1 conv, with
bias). Input normalisation and the final upsampling are free.

The backbone is counted by walking its functional graph with a concrete input
shape (1, height, width, 3): each layer's output shape comes from its
``compute_output_spec``, so "same" padding at stride s gives ceil(n / s) and
any explicit padding or VALID convolution is followed exactly. The walk uses
Keras' ``Functional._run_through_graph`` (the same routine Keras uses for
``compute_output_spec``).

Example:
    >>> from deeplab_dpc.core.model import ModelConfig
    >>> from deeplab_dpc.core.spec import CellSpec
    >>> spec = CellSpec.load("experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json")
    >>> stats = model_statistics(ModelConfig(num_classes=19, dense_prediction_cell=spec), (1025, 2049))
    >>> stats["feature_map_size"]
    [65, 129]
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Sequence

import keras

from deeplab_dpc.core import geometry
from deeplab_dpc.core.spec import BACKBONE_INPUT, PYRAMID_POOLING, CellSpec

if TYPE_CHECKING:  # The model module needs the backbones; import it only when used.
    from deeplab_dpc.core.model import ModelConfig

CONVENTIONS = (
    "MACs: convolutions and dense layers at their output size (transposed convs at their input size), "
    "dilation does not change the count; batch norm, activations, pooling, resizing, padding, add, "
    "concat count 0. Params: every weight incl. batch norm moving statistics (= Keras count_params); "
    "trainable_params excludes the moving statistics."
)


# --------------------------------------------------------------------- counts
@dataclasses.dataclass(frozen=True)
class Count:
    """Parameters, trainable parameters and multiply-adds of a part of a model."""

    params: int = 0
    trainable: int = 0
    macs: int = 0

    def __add__(self, other: "Count") -> "Count":
        return Count(self.params + other.params, self.trainable + other.trainable, self.macs + other.macs)

    def frozen(self) -> "Count":
        """The same count for a layer that is not trainable."""
        return Count(self.params, 0, self.macs)


def total(counts: Sequence[Count]) -> Count:
    out = Count()
    for c in counts:
        out = out + c
    return out


def area(size: Sequence[int]) -> int:
    """Number of positions of a spatial size (h, w), or of any tuple of spatial dims."""
    return math.prod(int(s) for s in size)


def _pair(value) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    a, b = value
    return (int(a), int(b))


# ------------------------------------------------------ per-layer formulas
def conv2d(out_size, kernel, cin: int, cout: int, bias: bool = False, groups: int = 1) -> Count:
    """A convolution: ``kh*kw*Cin/G*Cout`` (+Cout) params, ``H*W*kh*kw*Cin/G*Cout`` MACs."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    if cin % groups:
        raise ValueError(f"cin={cin} is not divisible by groups={groups}")
    weights = area(kernel) * (cin // groups) * cout
    params = weights + (cout if bias else 0)
    return Count(params, params, area(out_size) * weights)


def depthwise_conv2d(out_size, kernel, cin: int, multiplier: int = 1, bias: bool = False) -> Count:
    """A depthwise conv: ``kh*kw*Cin*M`` (+Cin*M) params, ``H*W*kh*kw*Cin*M`` MACs (any rate)."""
    kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    weights = area(kernel) * cin * multiplier
    params = weights + (cin * multiplier if bias else 0)
    return Count(params, params, area(out_size) * weights)


def batch_norm(channels: int, center: bool = True, scale: bool = True) -> Count:
    """Batch norm: gamma, beta (trainable) and moving mean, variance; 0 MACs."""
    trainable = channels * (int(center) + int(scale))
    return Count(trainable + 2 * channels, trainable, 0)


def dense(out_positions: int, cin: int, cout: int, bias: bool = True) -> Count:
    params = cin * cout + (cout if bias else 0)
    return Count(params, params, out_positions * cin * cout)


# ------------------------------------------------------------- DeepLab blocks
def conv_bn_relu(out_size, cin: int, cout: int) -> Count:
    """``ConvBNReLU``: 1x1 conv (no bias) + batch norm."""
    return conv2d(out_size, 1, cin, cout) + batch_norm(cout)


def separable_conv_bn_relu(out_size, kernel, cin: int, cout: int) -> Count:
    """``SeparableConvBNReLU``: depthwise (no bias) + BN + pointwise 1x1 (no bias) + BN."""
    return (
        depthwise_conv2d(out_size, kernel, cin)
        + batch_norm(cin)
        + conv2d(out_size, 1, cin, cout)
        + batch_norm(cout)
    )


def pooled_size(feature_size, grid) -> tuple[int, int]:
    """Size of the pooled map of ``PyramidPooling``: ``f - w + 1`` with window ``w = (f-1)//g + 1``."""
    return tuple(
        int(f) - geometry.pyramid_pooling_window(int(f), int(g)) + 1 for f, g in zip(feature_size, _pair(grid))
    )


def pyramid_pooling(feature_size, grid, cin: int, cout: int) -> Count:
    """``PyramidPooling``: average pool (free) -> 1x1 conv + BN on the pooled map -> resize (free)."""
    return conv_bn_relu(pooled_size(feature_size, grid), cin, cout)


def dense_prediction_cell(
    spec: CellSpec, feature_size, cin: int, filters: int = 256, concat_channels: int = 256
) -> dict[str, Any]:
    """Counts of a ``DensePredictionCell`` on features of ``feature_size`` x ``cin``.

    Returns:
        ``{"branches": [Count per branch], "concat_projection": Count, "total": Count}``;
        the projection maps ``filters * len(branches)`` channels to ``concat_channels``.
    """
    branches = []
    for branch in spec.branches:
        branch_cin = cin if branch.input == BACKBONE_INPUT else filters
        if branch.op == PYRAMID_POOLING:
            count = pyramid_pooling(feature_size, branch.grid_size, branch_cin, filters)
        elif branch.is_separable:
            count = separable_conv_bn_relu(feature_size, branch.kernel, branch_cin, filters)
        else:
            count = conv_bn_relu(feature_size, branch_cin, filters)
        branches.append(count)
    projection = conv_bn_relu(feature_size, filters * len(branches), concat_channels)
    return {"branches": branches, "concat_projection": projection, "total": total(branches) + projection}


def aspp(feature_size, cin: int, num_atrous: int = 3, filters: int = 256, image_pooling: bool = True) -> dict[str, Any]:
    """Counts of ``ASPP``: [image_pooling (1x1 conv on a 1x1 map)], aspp0 (1x1), aspp1.. (3x3 separable).

    Returns:
        ``{"branch_names": [...], "branches": [Count], "concat_projection": Count, "total": Count}``.
    """
    names, branches = [], []
    if image_pooling:
        names.append("image_pooling")
        branches.append(conv_bn_relu((1, 1), cin, filters))
    names.append("aspp0")
    branches.append(conv_bn_relu(feature_size, cin, filters))
    for i in range(num_atrous):
        names.append(f"aspp{i + 1}")
        branches.append(separable_conv_bn_relu(feature_size, 3, cin, filters))
    projection = conv_bn_relu(feature_size, filters * len(branches), filters)
    return {
        "branch_names": names,
        "branches": branches,
        "concat_projection": projection,
        "total": total(branches) + projection,
    }


def decoder(
    low_level_size, context_channels: int, low_level_channels: int, filters: int = 256, low_level_filters: int = 48
) -> dict[str, Count]:
    """Counts of the v3+ ``Decoder``; every conv runs at the low-level size."""
    parts = {
        "feature_projection0": conv_bn_relu(low_level_size, low_level_channels, low_level_filters),
        "decoder_conv0": separable_conv_bn_relu(low_level_size, 3, context_channels + low_level_filters, filters),
        "decoder_conv1": separable_conv_bn_relu(low_level_size, 3, filters, filters),
    }
    parts["total"] = total(list(parts.values()))
    return parts


def logits(out_size, cin: int, num_classes: int) -> Count:
    """The final 1x1 conv, with bias."""
    return conv2d(out_size, 1, cin, num_classes, bias=True)


# --------------------------------------------------------- generic Keras walk
@dataclasses.dataclass
class LayerCount:
    """One call of one layer in a walked model."""

    name: str
    class_name: str
    count: Count
    output_shape: tuple | None


@dataclasses.dataclass
class ModelCount:
    """Result of ``count_model``: totals, one entry per layer call, and the output shapes."""

    total: Count
    layers: list[LayerCount]
    output_shapes: Any
    uncounted: list[str]  # layers with weights but no MAC formula (their params are counted)


def _shape(x) -> tuple:
    return tuple(x.shape)


def _channels_last(layer) -> bool:
    return getattr(layer, "data_format", "channels_last") != "channels_first"


def _spatial(shape: tuple, channels_last: bool) -> tuple:
    return tuple(shape[1:-1]) if channels_last else tuple(shape[2:])


def _channels(shape: tuple, channels_last: bool) -> int:
    return int(shape[-1] if channels_last else shape[1])


_CONV = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_DEPTHWISE = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_TRANSPOSE = (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)


def layer_count(layer, input_shapes: list[tuple], output_shapes: list[tuple]) -> Count | None:
    """Analytical count of one layer call from its input and output shapes.

    Returns None for a layer with weights and no formula here (the caller then
    takes its parameters from Keras and counts 0 MACs). Layers without weights
    (activations, pooling, padding, add, concat, resize, ...) count 0.
    """
    # Imported here: the DeepLab layers, so a full ``build_deeplab`` model walks too.
    from deeplab_dpc.core.aspp import ASPP
    from deeplab_dpc.core.decoder import Decoder
    from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
    from deeplab_dpc.core.layers import ConvBNReLU, PyramidPooling, SeparableConvBNReLU

    x = input_shapes[0] if input_shapes else None
    y = output_shapes[0] if output_shapes else None
    last = _channels_last(layer)
    if isinstance(layer, _CONV):
        return conv2d(_spatial(y, last), layer.kernel_size, _channels(x, last), layer.filters, layer.use_bias, layer.groups)
    if isinstance(layer, _DEPTHWISE):
        return depthwise_conv2d(
            _spatial(y, last), layer.kernel_size, _channels(x, last), layer.depth_multiplier, layer.use_bias
        )
    if isinstance(layer, _SEPARABLE):
        cin, mid = _channels(x, last), _channels(x, last) * layer.depth_multiplier
        return depthwise_conv2d(_spatial(y, last), layer.kernel_size, cin, layer.depth_multiplier) + conv2d(
            _spatial(y, last), 1, mid, layer.filters, layer.use_bias
        )
    if isinstance(layer, _TRANSPOSE):
        # Each input cell scatters a kernel: count at the input size.
        return conv2d(_spatial(x, last), layer.kernel_size, _channels(x, last), layer.filters, layer.use_bias)
    if isinstance(layer, keras.layers.Dense):
        return dense(area(y[1:-1]), int(x[-1]), layer.units, layer.use_bias)
    if isinstance(layer, keras.layers.BatchNormalization):
        axes = layer.axis if isinstance(layer.axis, (list, tuple)) else [layer.axis]
        return batch_norm(area(x[a] for a in axes), layer.center, layer.scale)
    if isinstance(layer, ConvBNReLU):
        return conv_bn_relu(y[1:-1], int(x[-1]), layer.filters)
    if isinstance(layer, SeparableConvBNReLU):
        return separable_conv_bn_relu(y[1:-1], layer.kernel_size, int(x[-1]), layer.filters)
    if isinstance(layer, PyramidPooling):
        return pyramid_pooling(x[1:-1], layer.grid_size, int(x[-1]), layer.filters)
    if isinstance(layer, DensePredictionCell):
        return dense_prediction_cell(layer.spec, x[1:-1], int(x[-1]), layer.filters, layer.concat_channels)["total"]
    if isinstance(layer, ASPP):
        return aspp(x[1:-1], int(x[-1]), len(layer.atrous_rates), layer.filters, layer.image_pooling)["total"]
    if isinstance(layer, Decoder):
        context, low_level = input_shapes
        return decoder(low_level[1:-1], int(context[-1]), int(low_level[-1]), layer.filters, layer.low_level_filters)[
            "total"
        ]
    if not layer.weights:
        return Count()
    return None


def _is_functional(layer) -> bool:
    return hasattr(layer, "_run_through_graph") and hasattr(layer, "_nodes_by_depth")


def count_model(model: keras.Model, input_shape) -> ModelCount:
    """Walks a functional (or Sequential) Keras model at a concrete input shape.

    Args:
        model: a built functional or Sequential model (nested models are walked).
        input_shape: the full input shape, batch included, e.g. (1, 513, 513, 3);
            a list of shapes for a model with several inputs.

    Returns:
        A ``ModelCount``. Parameters of a layer called several times count once,
        its MACs once per call.
    """
    if input_shape and isinstance(input_shape[0], (list, tuple)):  # One shape per input.
        inputs = [keras.KerasTensor(tuple(s), dtype=t.dtype) for s, t in zip(input_shape, model.inputs)]
    else:
        inputs = keras.KerasTensor(tuple(input_shape), dtype=model.inputs[0].dtype)
    records: list[LayerCount] = []
    uncounted: list[str] = []
    seen: set[int] = set()
    outputs = _walk(model, inputs, records, uncounted, seen)
    shapes = keras.tree.map_structure(_shape, outputs)
    return ModelCount(total([r.count for r in records]), records, shapes, uncounted)


def _walk(model, inputs, records, uncounted, seen):
    if isinstance(model, keras.Sequential):
        x = inputs
        for layer in model.layers:
            x = _record(layer, (x,), {}, records, uncounted, seen)
        return x
    if not _is_functional(model):
        raise TypeError(f"{model.name}: expected a functional or Sequential model, got {type(model).__name__}")

    def operation_fn(op):
        return lambda *args, **kwargs: _record(op, args, kwargs, records, uncounted, seen)

    return model._run_through_graph(inputs, operation_fn=operation_fn)


def _record(layer, args, kwargs, records, uncounted, seen):
    if _is_functional(layer) or isinstance(layer, keras.Sequential):
        return _walk(layer, args[0] if len(args) == 1 else list(args), records, uncounted, seen)
    outputs = layer.compute_output_spec(*args, **kwargs)
    in_shapes = [_shape(t) for t in keras.tree.flatten(args) if isinstance(t, keras.KerasTensor)]
    out_shapes = [_shape(t) for t in keras.tree.flatten(outputs)]
    count = layer_count(layer, in_shapes, out_shapes) if isinstance(layer, keras.layers.Layer) else Count()
    if count is None:
        uncounted.append(layer.name)
        trainable = sum(math.prod(w.shape) for w in layer.trainable_weights)
        count = Count(layer.count_params(), trainable, 0)
    if not getattr(layer, "trainable", True):
        count = count.frozen()
    if id(layer) in seen:  # A shared layer: its weights are already counted.
        count = Count(0, 0, count.macs)
    seen.add(id(layer))
    records.append(LayerCount(layer.name, type(layer).__name__, count, out_shapes[0] if out_shapes else None))
    return outputs


# --------------------------------------------------------------- whole model
def _split(tree) -> tuple[Any, Any, Any]:
    """A tree of Counts -> (params, trainable params, MACs) trees of ints."""
    if isinstance(tree, Count):
        return tree.params, tree.trainable, tree.macs
    if isinstance(tree, dict):
        parts = {k: _split(v) for k, v in tree.items()}
        return tuple({k: v[i] for k, v in parts.items()} for i in range(3))
    if isinstance(tree, (list, tuple)):
        parts = [_split(v) for v in tree]
        return tuple([v[i] for v in parts] for i in range(3))
    raise TypeError(f"not a count tree: {tree!r}")


def model_statistics(config: "ModelConfig", crop_size: tuple[int, int], backbone: keras.Model | None = None) -> dict:
    """Parameters and MACs of the DeepLab model ``config`` on a ``crop_size`` image.

    Args:
        config: a ``ModelConfig``.
        crop_size: (height, width) of the input image.
        backbone: the backbone model to count; None builds it with
            ``build_backbone`` from ``config`` (as ``build_deeplab`` does). It
            must output a dict with "features" and "low_level".

    Returns:
        A JSON-able dict: the config's architecture fields, ``crop_size``,
        ``output_stride``, ``feature_map_size`` [h, w], ``feature_channels``,
        ``low_level_size``, ``low_level_channels``, ``context_branches`` (a
        description per branch), and ``params`` / ``trainable_params`` /
        ``macs``, each ``{"total", "backbone", "context": {"total",
        "branches": [per branch], "concat_projection"}, "decoder": {"total",
        ...parts}, "logits"}``, plus ``summary`` (millions of params, billions
        of MACs) and ``conventions``.
    """
    from deeplab_dpc.core.model import build_context

    height, width = (int(s) for s in crop_size)
    if height < 1 or width < 1:
        raise ValueError(f"crop_size must be positive, got {tuple(crop_size)}")
    if backbone is None:
        from deeplab_dpc.core.model import backbone_of

        backbone = backbone_of(config)
    walked = count_model(backbone, (1, height, width, 3))
    features_shape = walked.output_shapes["features"]
    low_level_shape = walked.output_shapes["low_level"]
    feature_size, feature_channels = tuple(features_shape[1:3]), int(features_shape[3])
    low_level_size, low_level_channels = tuple(low_level_shape[1:3]), int(low_level_shape[3])

    context_layer = build_context(config)  # Read sizes from the layer: no duplicated defaults.
    branch_info: list[dict] = []
    if config.context == "dpc":
        context = dense_prediction_cell(
            config.dense_prediction_cell,
            feature_size,
            feature_channels,
            context_layer.filters,
            context_layer.concat_channels,
        )
        for i, branch in enumerate(config.dense_prediction_cell.branches):
            info = {"name": f"branch{i}", "op": branch.op_key(), "input": branch.input}
            if branch.is_separable:
                info["rate"] = [r * context_layer.rate_multiplier for r in branch.rate]
            if branch.op == PYRAMID_POOLING:
                info["window"] = [geometry.pyramid_pooling_window(f, g) for f, g in zip(feature_size, branch.grid_size)]
                info["conv_size"] = list(pooled_size(feature_size, branch.grid_size))
            else:
                info["conv_size"] = list(feature_size)
            branch_info.append(info)
        context_channels = context_layer.concat_channels
    elif config.context == "aspp":
        context = aspp(
            feature_size,
            feature_channels,
            len(context_layer.atrous_rates),
            context_layer.filters,
            context_layer.image_pooling,
        )
        names = context.pop("branch_names")
        rates = [None] * (len(names) - len(context_layer.atrous_rates)) + list(context_layer.atrous_rates)
        for name, rate in zip(names, rates):
            info = {"name": name, "op": "conv1x1" if rate is None else "sep3x3", "input": -1}
            if rate is not None:
                info["rate"] = [rate, rate]
            info["conv_size"] = [1, 1] if name == "image_pooling" else list(feature_size)
            branch_info.append(info)
        context_channels = context_layer.filters
    else:
        context = {"branches": [], "concat_projection": Count(), "total": Count()}
        context_channels = feature_channels
    context = {"total": context.pop("total"), **context}

    if config.decoder_output_stride is not None:
        from deeplab_dpc.core.decoder import Decoder

        dec_layer = Decoder()
        dec = decoder(low_level_size, context_channels, low_level_channels, dec_layer.filters, dec_layer.low_level_filters)
        dec = {"total": dec.pop("total"), **dec}
        logits_size, logits_cin = low_level_size, dec_layer.filters
    else:
        dec = {"total": Count()}
        logits_size, logits_cin = feature_size, context_channels
    head = logits(logits_size, logits_cin, config.num_classes)

    tree = {
        "total": walked.total + context["total"] + dec["total"] + head,
        "backbone": walked.total,
        "context": context,
        "decoder": dec,
        "logits": head,
    }
    params, trainable, macs = _split(tree)
    parts = ("total", "backbone", "context", "decoder", "logits")
    summary = {
        "params_M": {k: round(_top(params[k]) / 1e6, 4) for k in parts},
        "macs_B": {k: round(_top(macs[k]) / 1e9, 4) for k in parts},
    }
    return {
        "model_variant": config.model_variant,
        "context": config.context,
        "decoder_output_stride": config.decoder_output_stride,
        "num_classes": config.num_classes,
        "depth_multiplier": config.depth_multiplier,
        "crop_size": [height, width],
        "output_stride": config.output_stride,
        "feature_map_size": list(feature_size),
        "feature_channels": feature_channels,
        "low_level_size": list(low_level_size),
        "low_level_channels": low_level_channels,
        "logits_size": list(logits_size),
        "context_branches": branch_info,
        "params": params,
        "trainable_params": trainable,
        "macs": macs,
        "summary": summary,
        "uncounted_backbone_layers": walked.uncounted,
        "conventions": CONVENTIONS,
    }


def _top(value) -> int:
    return value["total"] if isinstance(value, dict) else value
