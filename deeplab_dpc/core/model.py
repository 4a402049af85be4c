"""``build_deeplab``: images (0..255) -> logits at the input size.

images -> Normalize -> backbone (``features`` at the output stride,
``low_level`` at stride 4) -> context module (DPC | ASPP | none) -> optional
v3+ decoder -> 1x1 logits -> bilinear resize (align corners) to the input.

Sub-model and layer names (``backbone``, ``dense_prediction_cell`` / ``aspp``,
``decoder``, ``logits``) are what ``model_stats`` groups by.

Auxiliary cells (Nekrasov et al. 2019, intermediate supervision): with
``ModelConfig.aux_cell_endpoints``, ``build_deeplab(config, aux_heads=True)``
also reads those backbone layers, each through its own copy of the context
module (``aux_cell_<layer>``), 1x1 logits (``aux_logits_<layer>``) and resize
(``aux_upsample_logits_<layer>``): the training model, outputs
``[logits, aux logits...]``. ``main_head`` gives its inference model (the
first output, sharing every layer); checkpoints of such a run load into the
training model's layout, which ``runs.load_model_for_inference`` builds.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras

from deeplab_dpc.core import geometry
from deeplab_dpc.core.aspp import ASPP
from deeplab_dpc.core.backbones import BACKBONES, build_backbone
from deeplab_dpc.core.common import INITIALIZERS, LOGITS_STDDEV, l2_regularizer, truncated_normal
from deeplab_dpc.core.decoder import Decoder
from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell
from deeplab_dpc.core.layers import Normalize, ResizeLike
from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.fileio import write_json

CONTEXTS = ("dpc", "aspp", "none")
DECODER_OUTPUT_STRIDES = (None, 4)
AUX_ENDPOINT_STRIDES = (8, 16)  # the context module's rates are defined at these strides (geometry)
_AUX_KEY = "aux/"  # backbone output keys of the auxiliary endpoints
_STRIDE_PROBE = 64  # input side used to measure an endpoint's stride (a multiple of 32)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a DeepLab model's architecture.

    Written next to checkpoints so evaluation and export rebuild the same
    model. Validated on construction; errors name the field (the flag of the
    same name in the entry points).

    Args:
        num_classes: number of output classes.
        model_variant: a key of ``backbones.BACKBONES``.
        output_stride: 8, 16 or 32 (32 only without a context module's rates).
        context: "dpc", "aspp" or "none".
        dense_prediction_cell: the cell, required when context is "dpc".
        atrous_rates: ASPP rates; None for DeepLab's defaults.
        decoder_output_stride: None (no decoder) or 4.
        depth_multiplier: MobileNet-v2 width multiplier.
        weight_decay: DeepLab's weight decay.
        dropout_rate: context module dropout (1 - keep_prob).
        last_layer_gradient_multiplier: scales the logits layer's gradients
            (DeepLab's flag of that name); the forward pass is unchanged.
        initializer: "deeplab" (DeepLab's kernel initialisers: backbone 0.09,
            separable convs 0.33 / 0.06 truncated normal) or "keras"
            (glorot_uniform). Trained or ImageNet weights replace either; from
            scratch on short budgets "keras" trains faster (BENCHMARKS.md). The
            logits start from a truncated normal of 0.01 in both.
        drop_path_keep_prob: ScheduledDropPath's final keep probability in the
            Dense Prediction Cell (1: off; ``DensePredictionCell``).
        drop_path_steps: steps over which it falls from 1 (the training run's
            length; ``train`` sets it from ``training_number_of_steps``).
        aux_cell_endpoints: backbone layer names (e.g. MobileNet-v2's
            ``block_5_add`` at stride 8, ``block_12_add`` at 16) that each get
            an auxiliary head in training: a copy of the context module (own
            weights, rates scaled to the layer's stride, which must be 8 or
            16) and its own logits. Inference models have none of them
            (``main_head``); ``aux_endpoint_strides`` checks the names.
    """

    num_classes: int
    model_variant: str = "mobilenet_v2"
    output_stride: int = 16
    context: str = "dpc"
    dense_prediction_cell: CellSpec | None = None
    atrous_rates: tuple[int, ...] | None = None
    decoder_output_stride: int | None = None
    depth_multiplier: float = 1.0
    weight_decay: float = 4e-5
    dropout_rate: float = 0.1
    last_layer_gradient_multiplier: float = 1.0
    initializer: str = "deeplab"
    drop_path_keep_prob: float = 1.0
    drop_path_steps: int = 0
    aux_cell_endpoints: tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
        if self.model_variant not in BACKBONES:
            raise ValueError(f"model_variant={self.model_variant!r} is unknown; valid: {sorted(BACKBONES)}")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={self.output_stride} must be 8, 16 or 32")
        if self.context not in CONTEXTS:
            raise ValueError(f"context={self.context!r} is unknown; valid: {list(CONTEXTS)}")
        if self.context == "dpc":
            if self.dense_prediction_cell is None:
                raise ValueError("context='dpc' needs dense_prediction_cell (a cell spec JSON)")
            geometry.dpc_rate_multiplier(self.output_stride)
        elif self.dense_prediction_cell is not None:
            raise ValueError(f"dense_prediction_cell is given but context={self.context!r}")
        if self.context == "aspp" and self.atrous_rates is None:
            geometry.dpc_rate_multiplier(self.output_stride)
        if self.decoder_output_stride not in DECODER_OUTPUT_STRIDES:
            raise ValueError(
                f"decoder_output_stride={self.decoder_output_stride} is not supported; valid: {list(DECODER_OUTPUT_STRIDES)}"
            )
        if self.initializer not in INITIALIZERS:
            raise ValueError(f"initializer={self.initializer!r} is unknown; valid: {list(INITIALIZERS)}")
        if self.atrous_rates is not None:
            object.__setattr__(self, "atrous_rates", tuple(int(r) for r in self.atrous_rates))
        if not 0.0 < self.drop_path_keep_prob <= 1.0:
            raise ValueError(f"drop_path_keep_prob={self.drop_path_keep_prob} must be in (0, 1]")
        if self.drop_path_keep_prob < 1.0:
            if self.context != "dpc":
                raise ValueError(
                    f"drop_path_keep_prob={self.drop_path_keep_prob} drops Dense Prediction Cell branches; "
                    f"context={self.context!r} has none"
                )
            if self.drop_path_steps < 1:
                raise ValueError(f"drop_path_steps={self.drop_path_steps} must be positive with drop path")
        self._check_aux_cell_endpoints()

    def _check_aux_cell_endpoints(self):
        """Normalises ``aux_cell_endpoints`` to a tuple of names; what needs no model is checked here."""
        endpoints = self.aux_cell_endpoints
        if isinstance(endpoints, str):
            endpoints = [endpoints]
        endpoints = tuple(str(e).strip() for e in (endpoints or ()))
        object.__setattr__(self, "aux_cell_endpoints", endpoints)
        if not endpoints:
            return
        if "" in endpoints or len(set(endpoints)) != len(endpoints):
            raise ValueError(f"aux_cell_endpoints={list(endpoints)} must be distinct, non-empty layer names")
        if self.context == "none":
            raise ValueError(
                f"aux_cell_endpoints={list(endpoints)}: an auxiliary cell copies the context module, and "
                "context='none' has none; use context 'dpc' or 'aspp'"
            )

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["dense_prediction_cell"] = self.dense_prediction_cell.to_list() if self.dense_prediction_cell else None
        out["atrous_rates"] = list(self.atrous_rates) if self.atrous_rates is not None else None
        out["aux_cell_endpoints"] = list(self.aux_cell_endpoints)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        data = dict(data)
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        if data.get("dense_prediction_cell") is not None:
            data["dense_prediction_cell"] = CellSpec.from_list(data["dense_prediction_cell"])
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        """Writes the config as JSON atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ModelConfig":
        with open(path, encoding="utf-8") as f:
            try:
                return cls.from_dict(json.load(f))
            except (ValueError, TypeError) as e:
                raise ValueError(f"{path}: {e}") from None


@keras.saving.register_keras_serializable(package="deeplab_dpc")
class Logits(keras.layers.Conv2D):
    """The 1x1 logits conv (with bias), whose gradients are scaled by ``gradient_multiplier``.

    The kernel and bias enter the graph as ``m * w - stop_gradient((m - 1) * w)``:
    the value is ``w``, the gradient ``m`` times larger, on every backend.
    """

    def __init__(self, filters, gradient_multiplier=1.0, **kwargs):
        kwargs.setdefault("kernel_size", 1)
        kwargs.setdefault("kernel_initializer", truncated_normal(LOGITS_STDDEV))
        super().__init__(filters, **kwargs)
        self.gradient_multiplier = float(gradient_multiplier)

    def call(self, inputs):
        m = self.gradient_multiplier
        if m == 1.0:
            return super().call(inputs)
        kernel = m * self.kernel - keras.ops.stop_gradient((m - 1.0) * self.kernel)
        bias = m * self.bias - keras.ops.stop_gradient((m - 1.0) * self.bias)
        outputs = keras.ops.conv(inputs, keras.ops.cast(kernel, inputs.dtype), strides=1, padding="valid")
        return outputs + keras.ops.cast(bias, inputs.dtype)

    def get_config(self):
        config = super().get_config()
        config.update(gradient_multiplier=self.gradient_multiplier)
        return config


def build_context(config: ModelConfig, stride: int | None = None, name: str | None = None):
    """The context layer for ``config`` (None for context 'none').

    Args:
        config: the model config.
        stride: the stride of the features it reads (default: the output
            stride). An auxiliary cell on stride-8 features of an output
            stride 16 model doubles its atrous rates, so every copy sees the
            same context in image pixels: the DPC's rates follow the stride
            (``dpc_rate_multiplier``), explicit ASPP ``atrous_rates`` (given at
            the output stride) are scaled by ``output_stride // stride``.
        name: the layer's name (default: ``dense_prediction_cell`` / ``aspp``).
    """
    stride = config.output_stride if stride is None else int(stride)
    named = {"name": name} if name else {}
    if config.context == "dpc":
        return DensePredictionCell(
            config.dense_prediction_cell,
            output_stride=stride,
            dropout_rate=config.dropout_rate,
            weight_decay=config.weight_decay,
            initializer=config.initializer,
            drop_path_keep_prob=config.drop_path_keep_prob,
            drop_path_steps=config.drop_path_steps,
            **named,
        )
    if config.context == "aspp":
        rates = config.atrous_rates
        if rates is not None and stride != config.output_stride:
            rates = tuple(r * (config.output_stride // stride) for r in rates)
        return ASPP(
            output_stride=stride,
            atrous_rates=rates,
            dropout_rate=config.dropout_rate,
            weight_decay=config.weight_decay,
            initializer=config.initializer,
            **named,
        )
    return None


def backbone_of(config: ModelConfig) -> keras.Model:
    """The backbone ``config`` names, as the sub-model ``backbone`` of ``build_deeplab``."""
    return build_backbone(
        config.model_variant,
        output_stride=config.output_stride,
        depth_multiplier=config.depth_multiplier,
        weight_decay=config.weight_decay,
        initializer=config.initializer,
        name="backbone",
    )


def aux_endpoint_strides(config: ModelConfig, backbone: keras.Model | None = None) -> dict[str, int]:
    """The stride of each ``aux_cell_endpoints`` layer in the backbone.

    Measured by running the backbone symbolically on a 64 x 64 input (no
    weights are computed with), so atrous blocks count at ``output_stride``.

    Args:
        config: the model config.
        backbone: its backbone (``backbone_of(config)``); built when None.

    Raises:
        ValueError naming ``aux_cell_endpoints``: a name is not a layer of the
            backbone, is the layer of its ``features`` output, or is not a
            feature map at stride 8 or 16.
    """
    if not config.aux_cell_endpoints:
        return {}
    backbone = backbone if backbone is not None else backbone_of(config)
    names = {layer.name for layer in backbone.layers}
    features = backbone.output["features"]
    tensors = []
    for endpoint in config.aux_cell_endpoints:
        if endpoint not in names:
            raise ValueError(
                f"aux_cell_endpoints: {endpoint!r} is not a layer of the {config.model_variant} backbone "
                f"(e.g. {_example_endpoints(config.model_variant)}; "
                "all: model.get_layer('backbone').summary())"
            )
        tensor = backbone.get_layer(endpoint).output
        if tensor is features:
            raise ValueError(
                f"aux_cell_endpoints: {endpoint!r} is the backbone's features layer, which the main context "
                "module already reads; name an intermediate layer"
            )
        tensors.append(tensor)
    probe = keras.Model(backbone.input, tensors)
    specs = probe.compute_output_spec(keras.KerasTensor((1, _STRIDE_PROBE, _STRIDE_PROBE, 3)))
    strides = {}
    for endpoint, spec in zip(config.aux_cell_endpoints, specs):
        if len(spec.shape) != 4:
            raise ValueError(
                f"aux_cell_endpoints: {endpoint!r} does not output a feature map (shape {spec.shape})"
            )
        stride = _STRIDE_PROBE // spec.shape[1]
        if stride not in AUX_ENDPOINT_STRIDES:
            raise ValueError(
                f"aux_cell_endpoints: {endpoint!r} is at stride {stride} "
                f"(output_stride={config.output_stride}); "
                f"an auxiliary cell reads features at stride {' or '.join(map(str, AUX_ENDPOINT_STRIDES))}, "
                "where the context module's rates are defined"
            )
        strides[endpoint] = stride
    return strides


def _example_endpoints(model_variant: str) -> str:
    if model_variant == "mobilenet_v2":
        return "block_5_add (stride 8), block_12_add (stride 16)"
    return "a layer of the backbone at stride 8 or 16"


def main_head(model: keras.Model) -> keras.Model:
    """The inference model of a training model with auxiliary heads: its first output only.

    The returned model shares every layer (and variable) with ``model`` and
    holds none of the auxiliary heads; a single-output model is returned as is.
    """
    if len(model.outputs) == 1:
        return model
    return keras.Model(model.input, model.outputs[0], name=model.name)


def build_deeplab(
    config: ModelConfig, input_shape=(None, None, 3), name=None, aux_heads=False
) -> keras.Model:
    """Builds the segmentation model.

    Args:
        config: a ``ModelConfig``.
        input_shape: (height, width, 3); None sizes accept any image size.
        name: the model's name.
        aux_heads: also build the auxiliary heads of ``config.aux_cell_endpoints``
            (the training model, and the layout of its checkpoints). Without
            endpoints this changes nothing.

    Returns:
        A ``keras.Model`` from images with values in 0..255 (any dtype) to
        float32 logits of shape [batch, height, width, num_classes]; with
        ``aux_heads`` and endpoints, the list ``[logits, aux logits...]`` (one
        per endpoint, in order, each at the input size).

    Example:
        >>> spec = CellSpec.load("experiments/specs/dense_prediction_cell_branch5_top1_cityscapes.json")
        >>> model = build_deeplab(ModelConfig(num_classes=19, dense_prediction_cell=spec))
    """
    images = keras.Input(shape=input_shape, name="images")
    x = Normalize(name="normalize")(images)
    backbone = backbone_of(config)
    aux_strides = aux_endpoint_strides(config, backbone) if aux_heads else {}
    if aux_strides:  # the same layers, with the endpoints as extra outputs
        extra = {_AUX_KEY + e: backbone.get_layer(e).output for e in config.aux_cell_endpoints}
        backbone = keras.Model(backbone.input, {**backbone.output, **extra}, name=backbone.name)
    endpoints = backbone(x)
    features = endpoints["features"]
    context = build_context(config)
    if context is not None:
        features = context(features)
    if config.decoder_output_stride is not None:
        features = Decoder(weight_decay=config.weight_decay, initializer=config.initializer)([features, endpoints["low_level"]])
    logits = Logits(
        config.num_classes,
        gradient_multiplier=config.last_layer_gradient_multiplier,
        kernel_regularizer=l2_regularizer(config.weight_decay),
        name="logits",
    )(features)
    logits = ResizeLike(name="upsample_logits", dtype="float32")([logits, images])
    name = name or f"deeplab_{config.model_variant}_{config.context}"
    if not aux_strides:
        return keras.Model(images, logits, name=name)
    outputs = [logits]
    # Built after the main head, so its initial weights are those of the same run without auxiliary cells.
    for endpoint, stride in aux_strides.items():
        cell = build_context(config, stride=stride, name=f"aux_cell_{endpoint}")
        aux = cell(endpoints[_AUX_KEY + endpoint])
        aux = Logits(
            config.num_classes,
            gradient_multiplier=config.last_layer_gradient_multiplier,
            kernel_regularizer=l2_regularizer(config.weight_decay),
            name=f"aux_logits_{endpoint}",
        )(aux)
        outputs.append(ResizeLike(name=f"aux_upsample_logits_{endpoint}", dtype="float32")([aux, images]))
    return keras.Model(images, outputs, name=name)
