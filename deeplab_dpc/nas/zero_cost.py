"""Zero-cost proxies: scores of an untrained Dense Prediction Cell from one minibatch, no training.

A proxy trial trains a cell for hundreds of steps; a zero-cost score looks at the network once, at
initialisation, and predicts how well it will train. Each score is a plain function of a built Keras
model and a batch (NumPy arrays) and returns a Python float, higher meaning predicted better (as in the
papers):

* ``grad_norm``: ``sum_t ||dL/dW_t||_2`` over the trainable weight tensors ``W_t``
  (Abdelfattah et al., ICLR 2021, "Zero-Cost Proxies for Lightweight NAS").
* ``snip``: ``sum |W * dL/dW|`` over every trainable weight: the first-order change of the loss
  when the weight is removed (Lee et al., ICLR 2019; as a NAS proxy, Abdelfattah et al.).
* ``synflow``: the weights made absolute, an all-ones input, ``R = sum(f(1))``;
  ``sum |W| * dR/d|W|``: synaptic flow, data-free (Tanaka et al., NeurIPS 2020; as a NAS proxy,
  Abdelfattah et al.). Batch norm in inference mode, computed in float64 on a copy of the model.
* ``naswot``: NAS without training (Mellor et al., ICML 2021): every ReLU's on/off pattern per
  example, ``K = C C^T + (1 - C)(1 - C)^T`` (units minus the Hamming distance between two examples'
  codes), the score ``log |det K|``. Networks that give different inputs different codes score higher.
* ``zico``: zero-shot inverse coefficient of variation (Li et al., ICLR 2023): the batch split in
  ``num_splits`` mini-batches, one gradient ``g_s`` each; per weight tensor
  ``log sum_elements mean_s|g_s| / std_s(g_s)``, summed over tensors: high, consistent gradients.

``L`` is the task loss the proxy trains on (the cross entropy on labels at the loss grid), without
weight decay. As in the papers' reference code the network is in training mode for the gradient scores
and ``naswot`` (``training=True``: batch norm on batch statistics, dropout on); every variable the
forward pass changes (moving statistics, random-seed states, the drop-path step) is put back afterwards,
so a score leaves the model as it found it and scores do not depend on their order.

One difference from the reference code (``mohsaied/zero-cost-nas``, ``SLDGroup/ZiCo``), which sums over
the kernels of conv and linear layers only: here every trainable variable counts (batch norm's gamma and
beta, the logits' bias), the definition the tensors of a Keras model give without a layer-type list.

``score_cell`` builds the proxy model exactly as ``proxy.run_proxy`` does (same seed, same
initialisers), draws the first training batch ``run_proxy`` would train on and scores it:

    >>> config = ProxyConfig(cache_dir="/tmp/camvid_cache")
    >>> data = load_proxy_data(config)
    >>> score_cell(published_cell(), config, data)  # doctest: +SKIP
    {'synflow': ..., 'grad_norm': ..., 'snip': ..., 'naswot': ..., 'zico': ..., 'seconds': {...}, ...}

TensorFlow backend only (``tf.GradientTape``; ``naswot`` finds ReLUs in the traced TensorFlow graph):
on another backend every score raises a ``ValueError`` naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np

LossFn = Callable[[Any, Any], Any]


# ----------------------------------------------------------------------------------------------------------
# Helpers.


def _require_tensorflow() -> None:
    import keras  # noqa: PLC0415

    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ValueError(
            f"zero-cost scores need the TensorFlow backend (tf.GradientTape), the Keras backend is "
            f"{backend!r}: set KERAS_BACKEND=tensorflow"
        )


@contextlib.contextmanager
def _preserved_state(model) -> Iterator[None]:
    """Puts every variable of ``model`` (weights, moving statistics, seed states) back on exit."""
    saved = [(v, np.array(v.numpy(), copy=True)) for v in model.variables]
    try:
        yield
    finally:
        for variable, value in saved:
            variable.assign(value)


def _input_dtype(model, features: np.ndarray):
    inputs = getattr(model, "inputs", None)
    if inputs and len(inputs) == 1 and inputs[0].dtype is not None:
        return str(inputs[0].dtype)
    return str(np.asarray(features).dtype)


def _gradients(model, features, labels, loss_fn: LossFn, training: bool) -> list[np.ndarray]:
    """``dL/dW`` (float64) for every trainable variable of ``model``, zeros where W does not reach L."""
    import tensorflow as tf  # noqa: PLC0415

    variables = model.trainable_variables
    x = tf.convert_to_tensor(np.asarray(features), dtype=_input_dtype(model, features))
    with tf.GradientTape() as tape:
        loss = loss_fn(np.asarray(labels), model(x, training=training))
    grads = tape.gradient(loss, variables)
    return [
        np.zeros(v.shape, np.float64) if g is None else np.asarray(g, np.float64)
        for v, g in zip(variables, grads)
    ]


def _trainable_values(model) -> list[np.ndarray]:
    return [np.asarray(v.numpy(), np.float64) for v in model.trainable_variables]


# ----------------------------------------------------------------------------------------------------------
# The scores.


def grad_norm(
    model, features: np.ndarray, labels: np.ndarray, loss_fn: LossFn, training: bool = True
) -> float:
    """Sum over the trainable weight tensors of the L2 norm of the loss' gradient (Abdelfattah et al.).

    Args:
        model: a built Keras model.
        features: one input batch.
        labels: its targets, as ``loss_fn`` takes them.
        loss_fn: ``loss_fn(labels, outputs)`` -> a scalar (a ``keras.losses.Loss`` or a function of
            tensors).
        training: run the model in training mode (batch statistics, dropout), as the reference code.

    Returns:
        ``sum_t ||dL/dW_t||_2``; the model's variables are unchanged.
    """
    _require_tensorflow()
    with _preserved_state(model):
        grads = _gradients(model, features, labels, loss_fn, training)
    return float(sum(np.linalg.norm(g.ravel()) for g in grads))


def snip(
    model, features: np.ndarray, labels: np.ndarray, loss_fn: LossFn, training: bool = True
) -> float:
    """SNIP's saliency summed over every trainable weight: ``sum |W * dL/dW|`` (Lee et al.; Abdelfattah
    et al.).

    Args:
        model, features, labels, loss_fn, training: as ``grad_norm``.

    Returns:
        ``sum |W * dL/dW|``; the model's variables are unchanged.
    """
    _require_tensorflow()
    with _preserved_state(model):
        grads = _gradients(model, features, labels, loss_fn, training)
        weights = _trainable_values(model)
    return float(sum(np.sum(np.abs(w * g)) for w, g in zip(weights, grads)))


def _clone_at(model, dtype: str):
    """A copy of ``model`` computing in ``dtype`` (every layer's dtype policy replaced), same weights."""
    import keras  # noqa: PLC0415

    if len(model.inputs) != 1:
        raise ValueError(
            f"synflow in {dtype} needs a model with one input, {model.name} has {len(model.inputs)}"
        )

    def clone(layer):
        config = layer.get_config()
        config["dtype"] = dtype
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(
        model,
        input_tensors=keras.Input(tuple(model.inputs[0].shape[1:]), dtype=dtype),
        clone_function=clone,
    )
    if len(copy.variables) != len(model.variables) or any(
        tuple(a.shape) != tuple(b.shape) for a, b in zip(copy.variables, model.variables)
    ):
        raise ValueError(f"the {dtype} copy of {model.name} does not have the model's variables")
    for target, source in zip(copy.variables, model.variables):
        target.assign(np.asarray(source.numpy(), dtype if target.dtype == dtype else target.dtype))
    return copy


def synflow(model, features: np.ndarray, dtype: str | None = "float64") -> float:
    """Synaptic flow (Tanaka et al.; Abdelfattah et al.): ``sum |W| * dR/d|W|``, ``R = sum(f_|W|(1))``.

    The trainable weights are made absolute, the input is all ones of ``features``' shape (batch 1),
    batch norm runs in inference mode (``training=False``), and ``R`` is the sum of the output. Data-free:
    only ``features``' shape is read.

    Args:
        model: a built Keras model with one input.
        features: a batch (its shape, without the batch size, is the input's).
        dtype: ``float64`` (default): computed on a copy of the model whose layers compute in float64
            (``keras.models.clone_model``), the model itself never touched; None: in the model's own
            dtype, on the model, whose weights are put back exactly afterwards.

    Returns:
        The score. ``R`` and the products grow as the product of the layers' weight sums, so a deep or
        wide network can overflow: the result is then returned as it came out, inf or NaN, never
        clipped (float64 overflows where float32 would long before).
    """
    import tensorflow as tf  # noqa: PLC0415

    _require_tensorflow()
    net = model if dtype is None else _clone_at(model, dtype)
    shape = (1, *np.asarray(features).shape[1:])
    with _preserved_state(net):
        for variable in net.trainable_variables:
            variable.assign(tf.abs(variable.value))
        x = tf.ones(shape, dtype=_input_dtype(net, features))
        variables = net.trainable_variables
        with tf.GradientTape() as tape:
            r = tf.reduce_sum(net(x, training=False))
        grads = tape.gradient(r, variables)
        total = 0.0
        for variable, grad in zip(variables, grads):
            if grad is not None:
                weight = np.asarray(variable.numpy(), np.float64)
                total += float(np.sum(weight * np.asarray(grad, np.float64)))
    return float(total)


def relu_activations(model, features: np.ndarray, training: bool = True) -> list[np.ndarray]:
    """The output of every ReLU in ``model`` on ``features``: ``[B, ...]`` arrays, in graph order.

    ReLUs are found as ``Relu`` ops of the traced TensorFlow graph, so ``ops.relu`` inside a layer's
    ``call`` (the cell's conv blocks) counts as much as a ``keras.layers.ReLU`` or ``Activation("relu")``
    layer (ReLU6 and leaky ReLUs are other ops and do not). The traced function is pruned to those
    outputs: a training-mode pass updates nothing (moving statistics stay).

    Args:
        model: a built Keras model with one input.
        features: one input batch.
        training: trace the model in training mode.

    Returns:
        One array per ReLU, NumPy.
    """
    import tensorflow as tf  # noqa: PLC0415

    _require_tensorflow()
    features = np.asarray(features)
    dtype = _input_dtype(model, features)
    wrapped = tf.compat.v1.wrap_function(
        lambda x: model(x, training=training), [tf.TensorSpec(features.shape, dtype)]
    )
    relus = [op.outputs[0] for op in wrapped.graph.get_operations() if op.type == "Relu"]
    if not relus:
        return []
    pruned = wrapped.prune(feeds=wrapped.inputs[0], fetches=relus)
    with _preserved_state(model):
        outputs = pruned(tf.convert_to_tensor(features, dtype))
    return [np.asarray(o) for o in outputs]


def hamming_kernel(codes: Sequence[np.ndarray]) -> np.ndarray:
    """``K = C C^T + (1 - C)(1 - C)^T`` of binary codes ``C`` ``[B, units]`` given in parts (concatenated).

    ``K[i, j]`` is the number of units where examples i and j agree (both on or both off). Exact: counts,
    summed in float64.
    """
    kernel = None
    for part in codes:
        c = np.asarray(part, np.float64).reshape(len(part), -1)
        k = c @ c.T + (1.0 - c) @ (1.0 - c).T
        kernel = k if kernel is None else kernel + k
    if kernel is None:
        raise ValueError("no codes: the model has no ReLU")
    return kernel


def naswot(model, features: np.ndarray, training: bool = True) -> float:
    """NAS without training (Mellor et al.): the log-determinant of the Hamming kernel of ReLU codes.

    Each example's code is the on/off state (output > 0) of every unit of every ReLU: every channel at
    every pixel, the whole feature map flattened, as Mellor et al. flatten a classification network's
    activations per image. One code per image, not one per pixel: the kernel compares images, ``B x B``.

    Args:
        model: a built Keras model with one input and at least one ReLU.
        features: one input batch (``B`` examples).
        training: run the model in training mode (as Mellor et al.'s code: batch statistics).

    Returns:
        ``log det K`` (``slogdet``); ``-inf`` when ``K`` is singular (numerically rank-deficient, e.g. two
        examples with equal codes).

    Raises:
        ValueError: the model has no ReLU.
    """
    codes = [a > 0 for a in relu_activations(model, features, training)]
    kernel = hamming_kernel(codes)
    sign, logdet = np.linalg.slogdet(kernel)
    if sign <= 0 or np.linalg.matrix_rank(kernel) < len(kernel):
        return float("-inf")
    return float(logdet)


def zico(
    model,
    features: np.ndarray,
    labels: np.ndarray,
    loss_fn: LossFn,
    num_splits: int = 2,
    training: bool = True,
) -> float:
    """ZiCo (Li et al.): ``sum_t log sum_elements mean_s|g_s| / std_s(g_s)`` over weight tensors ``t``.

    The batch is split in ``num_splits`` consecutive mini-batches (``np.array_split``), each a forward
    and backward pass of its own, giving gradients ``g_s``. ``std`` is the population standard
    deviation over the splits (NumPy's default, as the reference code). Elements whose std is 0 are
    skipped, and so are tensors whose sum is 0 (no element left, or gradients of 0).

    Args:
        model, features, labels, loss_fn, training: as ``grad_norm``.
        num_splits: mini-batches (>= 2, at most the batch size).

    Returns:
        The score (0.0 when every tensor is skipped).
    """
    _require_tensorflow()
    features = np.asarray(features)
    labels = np.asarray(labels)
    if isinstance(num_splits, bool) or not isinstance(num_splits, int) or num_splits < 2:
        raise ValueError(f"num_splits={num_splits!r} must be an integer >= 2")
    if num_splits > len(features):
        raise ValueError(f"num_splits={num_splits} is more than the batch's {len(features)} examples")
    parts = np.array_split(np.arange(len(features)), num_splits)
    with _preserved_state(model):
        per_split = [_gradients(model, features[i], labels[i], loss_fn, training) for i in parts]
    total = 0.0
    for grads in zip(*per_split):
        g = np.stack(grads)  # [splits, ...]
        std = np.std(g, axis=0)
        mean_abs = np.mean(np.abs(g), axis=0)
        keep = std != 0
        ratio = float(np.sum(mean_abs[keep] / std[keep]))
        if ratio != 0:
            total += math.log(ratio)
    return float(total)


class _Registry(dict):
    """A dict of scores whose missing key names the valid ones."""

    def __missing__(self, name):
        raise KeyError(f"unknown zero-cost score {name!r}; valid: {sorted(self)}")


SCORES: dict[str, Callable[..., float]] = _Registry(
    synflow=synflow,
    grad_norm=grad_norm,
    snip=snip,
    naswot=naswot,
    zico=zico,
)
# The scores called with (model, features, labels, loss_fn); the others with (model, features).
NEEDS_LABELS = frozenset({"grad_norm", "snip", "zico"})


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """``names`` as a tuple, or a ValueError naming the unknown one and the valid ones."""
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for name in names:
        if name not in SCORES:
            raise ValueError(f"unknown zero-cost score {name!r}; valid: {sorted(SCORES)}")
    if not names:
        raise ValueError(f"no score named; valid: {sorted(SCORES)}")
    return names


# ----------------------------------------------------------------------------------------------------------
# A cell.


def score_cell(
    spec,
    config,
    data,
    names: Sequence[str] = tuple(SCORES),
    batch_size: int | None = None,
    seed: int | None = None,
) -> dict:
    """Zero-cost scores of ``spec``'s proxy model at initialisation, on the first training batch.

    The model is ``run_proxy``'s (``keras.backend.clear_session``, ``keras.utils.set_random_seed``, then
    ``build_proxy_model``: the same initial weights as a trial of this config), without batch norm's
    warm start (the scores in training mode use batch statistics; ``synflow`` is data-free). The batch is
    the first one ``run_proxy`` trains on (``proxy._batches`` at the seed), labels at the loss grid; the
    loss is the proxy's cross entropy (distillation off).

    Args:
        spec: a ``CellSpec`` (or DeepLab's JSON list).
        config: the ``ProxyConfig``.
        data: ``load_proxy_data`` of a config with an equal ``data_key()``.
        names: the scores to compute (keys of ``SCORES``).
        batch_size: examples in the batch (None: ``config.batch_size``).
        seed: the initial weights' and the batch's seed (None: ``config.seed``).

    Returns:
        ``{name: score}`` for each name, ``seconds`` (``{name: wall seconds}``) and ``cpu_seconds``
        (this process' CPU time for the whole call, model building included).

    Raises:
        ValueError: an unknown name, a batch larger than the training split, features loaded for
            another config, or a backend other than TensorFlow.
    """
    cpu_start = time.process_time()
    names = check_names(names)
    _require_tensorflow()
    import keras  # noqa: PLC0415

    from deeplab_dpc.core.spec import CellSpec  # noqa: PLC0415
    from deeplab_dpc.nas.proxy import _batches, _proxy_loss, build_proxy_model, input_dtype  # noqa: PLC0415

    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    if data.key != config.data_key():
        raise ValueError(
            f"data were loaded for {data.key}, the config asks for {config.data_key()}: "
            "call load_proxy_data(config) with this config"
        )
    batch_size = config.batch_size if batch_size is None else batch_size
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if batch_size > len(data.train_features):
        raise ValueError(
            f"batch_size={batch_size} is more than the {len(data.train_features)} training examples"
        )
    spec = spec if isinstance(spec, CellSpec) else CellSpec.from_list(spec)
    keras.backend.clear_session()
    keras.utils.set_random_seed(config.seed)
    model = build_proxy_model(spec, config, data.feature_shape, data.num_classes, data.output_stride)
    features, labels = next(
        _batches(data.train_features, data.train_labels, batch_size, config.seed, input_dtype(config))
    )
    loss_fn = _proxy_loss(dataclasses.replace(config, distillation_weight=0.0), data)
    result: dict[str, Any] = {}
    seconds = {}
    for name in names:
        start = time.perf_counter()
        if name in NEEDS_LABELS:
            result[name] = SCORES[name](model, features, labels, loss_fn)
        else:
            result[name] = SCORES[name](model, features)
        seconds[name] = time.perf_counter() - start
    del model
    keras.backend.clear_session()
    result["seconds"] = seconds
    result["cpu_seconds"] = time.process_time() - cpu_start
    return result
