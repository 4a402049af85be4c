"""Copies pretrained (e.g. ImageNet) weights into a backbone, matching layers by name.

Sources: a keras.Model (e.g. ``imagenet_source("mobilenet_v2")`` on a machine
with internet), or a file saved from one:

* ``.keras``: the whole model; loaded with ``keras.saving.load_model``.
* legacy HDF5 (``.h5``, Keras 2 layout with ``layer_names``): the format of
  keras.applications' own downloads (``~/.keras/models/*_no_top.h5``); read by
  layer name.
* Keras 3 ``.weights.h5`` (``model.save_weights``): this format stores
  weights by layer *type and position* (``layers/conv2d_3/vars/0``), not by
  layer name. Such a file is read through the layout of the
  keras.applications model of the backbone's family (MobileNetV2 or
  Xception, any width: the layer order does not depend on ``alpha``), so it
  must have been saved from that keras.applications model. For anything
  else save a ``.keras`` file.

keras.applications.Xception's unnamed residual layers are renamed by order
(`keras_xception_aliases`). DeepLab's TF1 checkpoints (Xception-65/71) are not
handled here: they come through ``tf_initial_checkpoint`` and
`deeplab_scope_to_layer_name`.
"""

import os
import re

import h5py
import keras
import numpy as np

from deeplab_dpc.core.backbones.mobilenet_v2 import FEATURES_LAYER as MOBILENET_FEATURES
from deeplab_dpc.core.backbones.xception import (
    KERAS_XCEPTION_FEATURES,
    check_unit_depth_multiplier,
    keras_xception_aliases,
)

_DEEPLAB_ONLY = ("xception_65", "xception_71")


def _keras_application(model_variant, depth_multiplier, *, weights, include_top):
    """The keras.applications model whose layer names `model_variant` shares."""
    if model_variant == "mobilenet_v2":
        return keras.applications.MobileNetV2(
            input_shape=(224, 224, 3), alpha=depth_multiplier, include_top=include_top,
            weights=weights,
        )
    check_unit_depth_multiplier(model_variant, depth_multiplier)
    return keras.applications.Xception(include_top=include_top, weights=weights)


def imagenet_source(model_variant, depth_multiplier=1.0):
    """Builds the keras.applications model with ImageNet weights (downloads them).

    Needs internet on first use (keras caches the file under ~/.keras/models).
    Save the result with ``.save("x.keras")`` to use it offline later.

    Args:
        model_variant: "mobilenet_v2" or "xception".
        depth_multiplier: MobileNetV2 ``alpha`` (0.35, 0.5, 0.75, 1.0, 1.3, 1.4
            have ImageNet weights).

    Returns:
        keras.applications.MobileNetV2 / Xception, ``include_top=False``.

    Example:
        >>> backbone = build_backbone("mobilenet_v2", 16)
        >>> load_backbone_weights(backbone, imagenet_source("mobilenet_v2"))["missing"]
        []
    """
    if model_variant in _DEEPLAB_ONLY:
        raise ValueError(
            f"keras.applications has no ImageNet weights for {model_variant}; use DeepLab's "
            f"TF1 ImageNet checkpoint ({model_variant}_imagenet from DeepLab's model zoo) "
            "through tf_initial_checkpoint."
        )
    if model_variant not in ("mobilenet_v2", "xception"):
        from deeplab_dpc.core.backbones import BACKBONES

        raise ValueError(
            f"unknown model_variant {model_variant!r}; valid: {sorted(BACKBONES)}"
        )
    return _keras_application(model_variant, depth_multiplier, weights="imagenet",
                              include_top=False)


def _leaf_layers(model):
    """Layers of `model`, descending into nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def _model_weights(model):
    return {layer.name: layer.get_weights() for layer in _leaf_layers(model) if layer.weights}


def _hdf5_string_list(group, name):
    """A list attribute of a legacy Keras HDF5 group (long ones are split: name0, name1...)."""
    if name in group.attrs:
        values = list(group.attrs[name])
    else:
        values, chunk = [], 0
        while f"{name}{chunk}" in group.attrs:
            values.extend(group.attrs[f"{name}{chunk}"])
            chunk += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _legacy_h5_weights(group):
    """{layer name: arrays} from a Keras 2 style HDF5 weights group."""
    weights = {}
    for layer_name in _hdf5_string_list(group, "layer_names"):
        layer_group = group[layer_name]
        names = _hdf5_string_list(layer_group, "weight_names")
        if names:
            weights[layer_name] = [np.asarray(layer_group[n]) for n in names]
    return weights


def _snake_case(class_name):
    """Keras' ``to_snake_case``: "DepthwiseConv2D" -> "depthwise_conv2d"."""
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _weights_file_keys(model):
    """The ``layers/<key>`` each layer of `model` has in a Keras 3 .weights.h5 file."""
    used = {}
    keys = []
    for layer in model.layers:
        base = _snake_case(type(layer).__name__)
        used[base] = used.get(base, -1) + 1
        keys.append(f"{base}_{used[base]}" if used[base] else base)
    return keys


def _keras_family(backbone):
    names = {layer.name for layer in _leaf_layers(backbone)}
    if MOBILENET_FEATURES in names:
        return "mobilenet_v2"
    if KERAS_XCEPTION_FEATURES in names:
        return "xception"
    raise ValueError(
        "Keras 3 .weights.h5 files store weights by layer position, not name; their layout "
        "is known here only for keras.applications MobileNetV2 and Xception backbones. "
        "Save the source model as .keras instead."
    )


def _keras3_h5_weights(group, backbone):
    """{layer name: arrays} from a Keras 3 .weights.h5 saved from a keras.applications model."""
    template = _keras_application(_keras_family(backbone), 1.0, weights=None, include_top=True)
    names = dict(zip(_weights_file_keys(template), (layer.name for layer in template.layers)))
    # Model order (as the template lists layers), then any keys the template lacks.
    keys = [key for key in names if key in group] + [key for key in group if key not in names]
    weights = {}
    for key in keys:
        variables = group[key].get("vars", {})
        if len(variables):
            arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
            weights[names.get(key, key)] = arrays
    return weights


def _read_source(source, backbone):
    """{source layer name: list of arrays} for a model or a file path."""
    if isinstance(source, keras.Model):
        weights = _model_weights(source)
    else:
        path = os.fspath(source)
        if path.endswith(".keras"):
            weights = _model_weights(keras.saving.load_model(path, compile=False))
        elif path.endswith(".h5") or path.endswith(".hdf5"):
            with h5py.File(path, "r") as f:
                group = f["model_weights"] if "model_weights" in f else f
                if _hdf5_string_list(group, "layer_names"):
                    weights = _legacy_h5_weights(group)
                elif "layers" in f:
                    weights = _keras3_h5_weights(f["layers"], backbone)
                else:
                    raise ValueError(f"{path}: not a Keras weights file")
        else:
            raise ValueError(f"weights source must be a keras.Model, .keras or .h5 file: {path}")
    aliases = keras_xception_aliases(list(weights))
    return {aliases.get(name, name): arrays for name, arrays in weights.items()}


def load_backbone_weights(backbone, source, *, strict=False):
    """Copies weights from `source` into the layers of `backbone` with the same name.

    Every weight's shape is checked before anything is copied, so a failed
    call leaves `backbone` unchanged.

    Args:
        backbone: the keras.Model to fill (e.g. from `build_backbone`).
        source: a keras.Model, or a path to a ``.keras`` / ``.h5`` /
            ``.weights.h5`` file (see the module docstring).
        strict: if True, raise when a backbone layer with weights is absent
            from the source.

    Returns:
        ``{"loaded": [layer names copied], "missing": [backbone layers with
        weights absent from the source], "unused": [source layers with
        weights the backbone lacks], "shape_mismatch": []}`` (always empty on
        return: a mismatch raises).

    Raises:
        ValueError: a layer's weight shapes differ (the message names every
            such layer and both shapes), or `strict` and something is missing.

    Example:
        >>> backbone = build_backbone("mobilenet_v2", 16, depth_multiplier=0.5)
        >>> report = load_backbone_weights(backbone, "mobilenet_v2_0.5.keras")
        >>> report["unused"]  # the 1x1 conv to 1280 that DeepLab drops
        ['Conv_1', 'Conv_1_bn']
    """
    source_weights = _read_source(source, backbone)
    report = {"loaded": [], "missing": [], "unused": [], "shape_mismatch": []}
    to_copy = []
    backbone_names = set()
    for layer in _leaf_layers(backbone):
        if not layer.weights:
            continue
        backbone_names.add(layer.name)
        values = source_weights.get(layer.name)
        if values is None:
            report["missing"].append(layer.name)
            continue
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(v.shape) for v in values]
        if expected != found:
            report["shape_mismatch"].append(
                f"layer {layer.name!r}: backbone shapes {expected}, source shapes {found}"
            )
        else:
            to_copy.append((layer, values))
    report["unused"] = [name for name in source_weights if name not in backbone_names]
    if report["shape_mismatch"]:
        raise ValueError(
            f"{len(report['shape_mismatch'])} layer(s) differ in weight shapes between "
            "backbone and source:\n" + "\n".join(report["shape_mismatch"])
        )
    if strict and report["missing"]:
        raise ValueError(
            f"strict: {len(report['missing'])} backbone layer(s) have no weights in the "
            f"source: {report['missing']}"
        )
    for layer, values in to_copy:
        layer.set_weights(values)
        report["loaded"].append(layer.name)
    return report
