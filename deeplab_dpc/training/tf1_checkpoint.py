"""Restores DeepLab's own TF1 (slim) checkpoints into a model from ``build_deeplab``.

Sources are DeepLab's model-zoo checkpoints: ImageNet / COCO backbones
(``MobilenetV2/...``, ``xception_65/...``, ``xception_71/...``) and whole
trained models (e.g. the Xception-71 DPC Cityscapes model, whose head lives
under ``meta_architecture/``). Variables are matched by their DeepLab names,
one rule per scope (`deeplab_name_to_weight_path`, inverse
`weight_path_to_deeplab_name`):

    DeepLab (TF1) scope                              our weight path (<top layer>/<layer>/<weight>)
    MobilenetV2/Conv[/BatchNorm]                     backbone/Conv1, backbone/bn_Conv1
    MobilenetV2/expanded_conv/<part>[/BatchNorm]     backbone/expanded_conv_<part>[_BN]
    MobilenetV2/expanded_conv_N/<part>[/BatchNorm]   backbone/block_N_<part>[_BN]
                                                     (<part>: expand, depthwise, project)
    xception_{65,71}/<a>/<b>/...                     backbone/<a>_<b>_... (deeplab_scope_to_layer_name)
    meta_architecture/<layer>[/BatchNorm]            dense_prediction_cell/<layer>[_BatchNorm]
    image_pooling|aspp<i>[_depthwise|_pointwise]|concat_projection [/BatchNorm]
                                                     aspp/<layer>[_BatchNorm]
    decoder/<layer>[/BatchNorm]                      decoder/<layer>[_BatchNorm]
    logits/semantic                                  logits

Leaves: ``weights`` / ``depthwise_weights`` -> ``kernel`` (same HWIO / HW,in,1
layout, copied without transposition), ``biases`` -> ``bias``, ``gamma``,
``beta``, ``moving_mean``, ``moving_variance`` unchanged. Anything else
(``.../Momentum`` slots, ``global_step``, ``.../ExponentialMovingAverage``
shadows, MobileNet-v2's ``Conv_1`` and ``Logits`` that DeepLab drops, an
ImageNet classifier) is not a model weight and is reported as ignored.

Only this module needs TensorFlow (to read the checkpoint); it is imported
when a checkpoint is read, so the rest of the package stays backend-free.

Example:
    >>> model = build_deeplab(ModelConfig(num_classes=19, model_variant="xception_71",
    ...                                   dense_prediction_cell=spec, decoder_output_stride=4))
    >>> report = restore_tf1_checkpoint(model, "deeplab_cityscapes_xception71_trainfine/model.ckpt")
    >>> print(format_report(report))
"""

from __future__ import annotations

import glob
import os
import re

import keras
import numpy as np

from deeplab_dpc.core.backbones.xception import deeplab_scope_to_layer_name

# model_variant -> the network scope of its DeepLab checkpoint variables.
NETWORK_SCOPES = {
    "mobilenet_v2": "MobilenetV2",
    "xception_65": "xception_65",
    "xception_71": "xception_71",
}
# Every backbone scope DeepLab writes, to tell a wrong-backbone checkpoint apart.
_KNOWN_NETWORK_SCOPES = ("MobilenetV2", "xception_41", "xception_65", "xception_71")

# slim variable leaf -> Keras weight name.
_LEAF_TO_WEIGHT = {
    "weights": "kernel",
    "depthwise_weights": "kernel",
    "biases": "bias",
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
}

# Heads: DeepLab scope prefix -> our top-level layer. Inside a head a layer
# name is its scope with "/BatchNorm" written "_BatchNorm".
_HEAD_PREFIXES = {
    "meta_architecture": "dense_prediction_cell",
    "decoder": "decoder",
}
_ASPP_SCOPE = re.compile(r"(image_pooling|aspp\d+(_depthwise|_pointwise)?|concat_projection)(/BatchNorm)?")
_HEAD_LAYER_SCOPE = re.compile(r"[A-Za-z0-9_]+(/BatchNorm)?")
_LOGITS_SCOPE = "logits/semantic"
LOGITS_LAYER = "logits"
# DeepLab's get_extra_layer_scopes(last_layers_contain_logits_only=False).
_LAST_LAYERS = ("logits", "aspp", "dense_prediction_cell", "decoder")

# MobileNet-v2: slim scope <-> keras.applications layer name.
_SLIM_MOBILENET = re.compile(r"MobilenetV2/(Conv|expanded_conv(?:_(\d+))?/(expand|depthwise|project))(/BatchNorm)?")
_KERAS_MOBILENET = re.compile(r"(?:Conv1|bn_Conv1|(expanded_conv|block_(\d+))_(expand|depthwise|project)(_BN)?)")

# Xception-65/71 layer names (deeplab_scope_to_layer_name of DeepLab's scopes).
_KERAS_XCEPTION = re.compile(
    r"(entry_flow|middle_flow|exit_flow)_(?:(conv1_\d+)|(block\d+)_(unit_\d+)_xception_module_"
    r"(separable_conv\d+_(?:depthwise|pointwise)|shortcut))(_BatchNorm)?"
)


def _split_leaf(name):
    scope, _, leaf = name.split(":")[0].rpartition("/")
    return scope, leaf


def _mobilenet_layer(scope):
    """Slim ``MobilenetV2/...`` scope -> keras.applications layer name, or None."""
    match = _SLIM_MOBILENET.fullmatch(scope)
    if not match:
        return None
    op, number, part, batch_norm = match.groups()
    if op == "Conv":
        return "bn_Conv1" if batch_norm else "Conv1"
    if number is None:
        if part == "expand":  # the first block has no expansion conv
            return None
        prefix = "expanded_conv_"
    elif int(number) == 0:  # slim never writes expanded_conv_0
        return None
    else:
        prefix = f"block_{int(number)}_"
    return f"{prefix}{part}{'_BN' if batch_norm else ''}"


def _mobilenet_scope(layer):
    """keras.applications MobileNet-v2 layer name -> slim scope, or None."""
    match = _KERAS_MOBILENET.fullmatch(layer)
    if not match:
        return None
    if layer in ("Conv1", "bn_Conv1"):
        op = "Conv"
    else:
        block, number, part, _ = match.groups()
        if block == "expanded_conv" and part == "expand":
            return None
        op = f"expanded_conv{'' if number is None else '_' + number}/{part}"
    batch_norm = layer == "bn_Conv1" or layer.endswith("_BN")
    return f"MobilenetV2/{op}{'/BatchNorm' if batch_norm else ''}"


def _xception_scope(layer, network):
    """Xception-65/71 layer name -> DeepLab scope under `network`, or None."""
    match = _KERAS_XCEPTION.fullmatch(layer)
    if not match:
        return None
    flow, conv, block, unit, op, batch_norm = match.groups()
    parts = [network, flow] + ([conv] if conv else [block, unit, "xception_module", op])
    return "/".join(parts) + ("/BatchNorm" if batch_norm else "")


def deeplab_name_to_weight_path(name, model_variant=None):
    """Maps a DeepLab TF1 variable name to our weight path, or None if it is no model weight.

    Our weight path is ``<top-level layer>/<layer>/<weight>`` (``logits/<weight>``
    for the logits conv), as `model_weight_paths` lists them.

    Args:
        name: e.g. ``"MobilenetV2/expanded_conv_3/expand/BatchNorm/moving_mean"``
            (a trailing ``":0"`` is ignored).
        model_variant: the model's backbone; when given, backbone variables of
            another network (e.g. ``xception_71/...`` for ``xception_65``) map
            to None.

    Returns:
        The weight path, or None for optimizer slots, ``global_step``, EMA
        shadows and scopes that are not part of a DeepLab model here.

    Example:
        >>> deeplab_name_to_weight_path("MobilenetV2/expanded_conv_3/expand/BatchNorm/moving_mean")
        'backbone/block_3_expand_BN/moving_mean'
        >>> deeplab_name_to_weight_path("meta_architecture/branch0_depthwise/depthwise_weights")
        'dense_prediction_cell/branch0_depthwise/kernel'
        >>> deeplab_name_to_weight_path("logits/semantic/weights/Momentum") is None
        True
    """
    scope, leaf = _split_leaf(name)
    weight = _LEAF_TO_WEIGHT.get(leaf)
    if weight is None or not scope:
        return None
    network, _, rest = scope.partition("/")
    if network in _KNOWN_NETWORK_SCOPES:
        if model_variant is not None and NETWORK_SCOPES.get(model_variant) != network:
            return None
        if network == "MobilenetV2":
            layer = _mobilenet_layer(scope)
        elif rest:
            layer = deeplab_scope_to_layer_name(scope)
            if _xception_scope(layer, network) != scope:
                return None
        else:
            return None
        if layer is None or (leaf == "depthwise_weights") != layer.endswith("depthwise"):
            return None
        return f"backbone/{layer}/{weight}"
    if scope == _LOGITS_SCOPE:
        return f"{LOGITS_LAYER}/{weight}" if leaf in ("weights", "biases") else None
    if network in _HEAD_PREFIXES:
        top = _HEAD_PREFIXES[network]
    elif _ASPP_SCOPE.fullmatch(scope):
        top, rest = "aspp", scope
    else:
        return None
    if not _HEAD_LAYER_SCOPE.fullmatch(rest) or leaf == "biases":
        return None
    layer = rest.replace("/BatchNorm", "_BatchNorm")
    if (leaf == "depthwise_weights") != layer.endswith("_depthwise"):
        return None
    return f"{top}/{layer}/{weight}"


def weight_path_to_deeplab_name(path, model_variant):
    """Maps our weight path to the DeepLab TF1 variable name (inverse of `deeplab_name_to_weight_path`).

    Args:
        path: ``<top-level layer>/<layer>/<weight>``, e.g. ``"backbone/Conv1/kernel"``.
        model_variant: a key of `NETWORK_SCOPES` (the backbone's network scope).

    Returns:
        The DeepLab variable name, e.g. ``"MobilenetV2/Conv/weights"``.

    Raises:
        ValueError: `path` has no DeepLab counterpart (the message names it).

    Example:
        >>> weight_path_to_deeplab_name("backbone/block_1_depthwise/kernel", "mobilenet_v2")
        'MobilenetV2/expanded_conv_1/depthwise/depthwise_weights'
        >>> weight_path_to_deeplab_name("aspp/aspp0_BatchNorm/gamma", "xception_65")
        'aspp0/BatchNorm/gamma'
    """
    network = _network_scope(model_variant)
    parts = path.split("/")
    if parts[0] == LOGITS_LAYER and len(parts) == 2 and parts[1] in ("kernel", "bias"):
        return f"{_LOGITS_SCOPE}/{'weights' if parts[1] == 'kernel' else 'biases'}"
    if len(parts) != 3:
        raise ValueError(f"weight path {path!r} has no DeepLab TF1 name")
    top, layer, weight = parts
    scope = None
    if top == "backbone":
        if network == "MobilenetV2":
            scope = _mobilenet_scope(layer)
        else:
            scope = _xception_scope(layer, network)
    elif top in ("aspp", "dense_prediction_cell", "decoder"):
        prefix = {"aspp": "", "dense_prediction_cell": "meta_architecture/", "decoder": "decoder/"}[top]
        scope = prefix + re.sub(r"_BatchNorm$", "/BatchNorm", layer)
    if scope is None or weight not in ("kernel", "gamma", "beta", "moving_mean", "moving_variance"):
        raise ValueError(f"weight path {path!r} has no DeepLab TF1 name")
    if weight == "kernel":
        leaf = "depthwise_weights" if layer.endswith("depthwise") else "weights"
    else:
        leaf = weight
    name = f"{scope}/{leaf}"
    if deeplab_name_to_weight_path(name, model_variant) != path:
        raise ValueError(f"weight path {path!r} has no DeepLab TF1 name")
    return name


def _network_scope(model_variant):
    if model_variant not in NETWORK_SCOPES:
        raise ValueError(
            f"no DeepLab TF1 checkpoints exist for model_variant={model_variant!r}; "
            f"valid: {sorted(NETWORK_SCOPES)}"
        )
    return NETWORK_SCOPES[model_variant]


def _leaf_layers(layer):
    """Layers holding weights of their own under `layer` (descending into models and sublayers)."""
    if isinstance(layer, keras.Model):
        for sub in layer.layers:
            yield from _leaf_layers(sub)
        return
    children = list(layer._flatten_layers(include_self=False, recursive=False))
    if not children:
        if layer.weights:
            yield layer
        return
    for child in children:
        yield from _leaf_layers(child)


def model_weight_paths(model):
    """``{weight path: variable}`` for every weight of `model`, in model order.

    The path is ``<top-level layer>/<layer>/<weight name>``, e.g.
    ``backbone/Conv1/kernel``, ``dense_prediction_cell/branch0_depthwise/kernel``,
    ``decoder/feature_projection0_BatchNorm/gamma``; a top-level layer with
    weights of its own is ``<layer>/<weight name>`` (``logits/kernel``).

    Raises:
        ValueError: two weights would share a path.
    """
    paths = {}
    for top in model.layers:
        if not top.weights:
            continue
        for leaf in _leaf_layers(top):
            for variable in leaf.weights:
                path = f"{top.name}/{variable.name}" if leaf is top else f"{top.name}/{leaf.name}/{variable.name}"
                if path in paths:
                    raise ValueError(f"two weights of the model share the path {path!r}")
                paths[path] = variable
    return paths


def infer_model_variant(model):
    """The DeepLab backbone of a `build_deeplab` model, from its backbone's layer names.

    Raises:
        ValueError: no ``backbone`` sub-model, or one without DeepLab TF1 checkpoints.
    """
    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise ValueError("the model has no 'backbone' layer; pass model_variant") from None
    names = {layer.name for layer in backbone.layers}
    if "Conv1" in names and "block_16_project" in names:
        return "mobilenet_v2"
    if "entry_flow_conv1_1" in names:
        entry_blocks = {n.split("_")[2] for n in names if n.startswith("entry_flow_block")}
        return {3: "xception_65", 5: "xception_71"}.get(len(entry_blocks)) or _unknown_backbone(names)
    return _unknown_backbone(names)


def _unknown_backbone(names):
    raise ValueError(
        "the model's backbone is none of the DeepLab TF1 backbones "
        f"{sorted(NETWORK_SCOPES)} (e.g. keras.applications' 'xception' has no DeepLab "
        "checkpoint); pass model_variant if it is one"
    )


def resolve_checkpoint_path(path):
    """A TF1 checkpoint prefix from a prefix, a ``.index``/``.data-*`` file or a directory.

    A directory resolves to its latest checkpoint (``tf.train.latest_checkpoint``,
    i.e. its ``checkpoint`` file) or, without one (as in DeepLab's model-zoo
    tarballs), to its only ``*.index`` prefix, or the one with the highest step.

    Raises:
        FileNotFoundError: nothing to read at `path`.
    """
    import tensorflow as tf

    path = os.fspath(path)
    if os.path.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            prefixes = [p[: -len(".index")] for p in glob.glob(os.path.join(path, "*.index"))]

            def step(prefix):
                match = re.search(r"-(\d+)$", prefix)
                return (int(match.group(1)) if match else -1, prefix)

            latest = max(prefixes, key=step) if prefixes else None
        if latest is None:
            raise FileNotFoundError(f"no TF1 checkpoint in directory {path}")
        return latest
    match = re.fullmatch(r"(.*)\.(index|meta|data-\d+-of-\d+)", path)
    if match:
        path = match.group(1)
    if not (glob.glob(glob.escape(path) + ".index") or os.path.isfile(path)):
        raise FileNotFoundError(f"no TF1 checkpoint at {path} (expected {path}.index)")
    return path


def restore_tf1_checkpoint(model, checkpoint_path, *, initialize_last_layer=True,
                           last_layers_contain_logits_only=True, model_variant=None):
    """Copies the variables of a DeepLab TF1 checkpoint into `model` by name.

    Every shape is checked before anything is copied, so a failed call leaves
    `model` unchanged.

    Args:
        model: a model from ``build_deeplab`` (top-level layers ``backbone``,
            ``dense_prediction_cell`` | ``aspp``, ``decoder``, ``logits``).
        checkpoint_path: the checkpoint prefix (``.../model.ckpt-30000``), one
            of its files, or a directory (its latest checkpoint).
        initialize_last_layer: False skips the last layers (DeepLab's flag of
            the same name), e.g. to fine-tune on a dataset with another
            number of classes; they keep their values and are not
            shape-checked.
        last_layers_contain_logits_only: True (DeepLab's default): the last
            layers are the logits only; False: also the context module and
            the decoder, so only the backbone is restored.
        model_variant: the backbone (a key of `NETWORK_SCOPES`); None infers
            it from the model's backbone layers.

    Returns:
        ``{"checkpoint": resolved prefix, "restored": [weight paths copied],
        "skipped": [weight paths left as they were by initialize_last_layer],
        "missing": [weight paths with no checkpoint variable], "ignored":
        [checkpoint variables not copied: optimizer slots, global_step, EMA
        shadows, layers the model lacks, skipped last layers]}``; weight paths
        as in `model_weight_paths`, in model order; ignored sorted.

    Raises:
        FileNotFoundError: no checkpoint at `checkpoint_path`.
        ValueError: shapes differ (the message names every such checkpoint
            variable and model weight with both shapes), or the checkpoint's
            backbone is another network than the model's.

    Example:
        >>> report = restore_tf1_checkpoint(model, "xception_65_imagenet/model.ckpt")
        >>> report["missing"][:1]  # an ImageNet checkpoint has no head
        ['aspp/image_pooling/kernel']
    """
    import tensorflow as tf

    model_variant = model_variant or infer_model_variant(model)
    network = _network_scope(model_variant)
    prefix = resolve_checkpoint_path(checkpoint_path)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    weights = model_weight_paths(model)

    networks = {name.split("/")[0] for name in shapes} & set(_KNOWN_NETWORK_SCOPES)
    if networks and network not in networks:
        raise ValueError(
            f"{prefix}: the checkpoint's backbone is {sorted(networks)} but the model's "
            f"is {model_variant} (variables under {network}/)"
        )

    last_layers = () if initialize_last_layer else (
        (LOGITS_LAYER,) if last_layers_contain_logits_only else _LAST_LAYERS
    )
    skipped = [path for path in weights if path.split("/")[0] in last_layers]
    sources = {}  # weight path -> checkpoint variable
    for name in sorted(shapes):
        path = deeplab_name_to_weight_path(name, model_variant)
        if path is None or path not in weights or path.split("/")[0] in last_layers:
            continue
        if path in sources:
            raise ValueError(f"{prefix}: variables {sources[path]!r} and {name!r} both map to {path!r}")
        sources[path] = name

    mismatches = []
    for path, name in sources.items():
        expected, found = tuple(weights[path].shape), tuple(shapes[name])
        if expected != found:
            mismatches.append(
                f"checkpoint variable {name!r} has shape {found}, model weight {path!r} has shape {expected}"
            )
    if mismatches:
        hint = ""
        if any(m.startswith(f"checkpoint variable '{_LOGITS_SCOPE}/") for m in mismatches):
            hint = "\n(num_classes differs? pass initialize_last_layer=False to keep the model's logits)"
        raise ValueError(
            f"{prefix}: {len(mismatches)} shape mismatch(es):\n" + "\n".join(mismatches) + hint
        )

    for path, name in sources.items():
        variable = weights[path]
        variable.assign(np.asarray(reader.get_tensor(name)).astype(variable.dtype))
    used = set(sources.values())
    return {
        "checkpoint": prefix,
        "restored": [path for path in weights if path in sources],
        "skipped": skipped,
        "missing": [path for path in weights if path not in sources and path not in skipped],
        "ignored": sorted(name for name in shapes if name not in used),
    }


def format_report(report, max_names=5):
    """A few log lines: the checkpoint, then each list's count and first `max_names` names.

    Example:
        >>> print(format_report(report))
        TF1 checkpoint /ckpt/model.ckpt-30000
          restored 305 weights: backbone/Conv1/kernel, backbone/bn_Conv1/gamma, ... (+303 more)
          skipped 2 weights (initialize_last_layer=False): logits/kernel, logits/bias
          missing 0 weights without a checkpoint variable
          ignored 612 checkpoint variables: MobilenetV2/Conv/BatchNorm/beta/Momentum, ... (+611 more)
    """
    labels = {
        "restored": "weights",
        "skipped": "weights (initialize_last_layer=False)",
        "missing": "weights without a checkpoint variable",
        "ignored": "checkpoint variables",
    }
    lines = [f"{report.get('kind', 'TF1 checkpoint')} {report.get('checkpoint', '?')}"]
    for key, label in labels.items():
        names = report.get(key, [])
        line = f"  {key} {len(names)} {label}"
        if names:
            shown = ", ".join(names[:max_names])
            more = f", ... (+{len(names) - max_names} more)" if len(names) > max_names else ""
            line += f": {shown}{more}"
        lines.append(line)
    return "\n".join(lines)
