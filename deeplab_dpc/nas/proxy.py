"""The proxy trainer: one Dense Prediction Cell trained on cached backbone features, scored by val mIoU.

This is the search's inner loop (the paper's proxy task: cached MobileNet-v2
features, the cell alone trained for 30K steps at batch 8, mIoU on val). The
cell is the model's own ``DensePredictionCell`` (``filters`` and
``concat_channels`` = ``proxy_filters``) followed by the model's ``Logits``
layer (a 1x1 conv with DeepLab's initialiser); there is no backbone. Features
are resident in memory, so a step is the cell's forward and backward pass and
nothing else.

    >>> config = ProxyConfig(cache_dir="/tmp/camvid_cache")
    >>> data = load_proxy_data(config)              # once per worker process
    >>> result = run_proxy(CellSpec.load("cell.json"), config, features=data)
    >>> result["miou"], result["seconds"]

What each knob costs in fidelity (against end-to-end training of the model):

* ``proxy_filters``: the paper's cells have 256 filters; fewer make a step
  cheaper (``bench/bench_proxy.py``, published cell on 23x30x320 features,
  batch 8, TensorFlow on 2 CPU cores: 385 / 190 / 121 / 115 ms per step at
  256 / 128 / 64 / 32 filters, plus ~8 s per trial to build, trace and score;
  below 64 filters per-op overhead dominates) but rank
  cells at another width (NSGA-Net searched at 16). ``params_256`` and
  ``madds_256`` in the result are the cell's cost at the paper's width.
* ``proxy_steps``: the paper trained 30K steps; a few hundred steps score how
  fast a cell learns more than where it ends. Intermediate scores
  (``eval_interval``) show whether the ranking has settled.
* ``loss_resolution``: ``features4x`` (default) computes the loss on labels
  nearest-sampled to 4x the feature grid (92x120 for 23x30 features), with
  logits resized to it as the model resizes them to the image (bilinear,
  align corners): thin classes (poles, signs) lose pixels. ``label`` uses the
  cached labels at the crop size (16x more pixels per step at stride 16).
  ``features`` samples them to the feature grid itself: no resize in the loss
  and 16x fewer loss pixels than ``features4x`` (a cheaper proxy, whose ranking
  BENCHMARKS.md's fidelity table measures).
* ``eval_resolution``: the same choice for scoring; ``label`` (default) is the
  model's evaluation at the crop size, ``features4x`` is 16x cheaper and noisier.
* ``batch_norm_momentum``: DeepLab's 0.9997 keeps ~74% of its start after
  1,000 steps; 0.99 (default) forgets it within a few hundred. Moving
  statistics also start from the first batch (``train_lib.warm_start_batch_norm``).
* ``feature_dtype``: float16 (default, as cached) halves memory at no cost in
  accuracy (the layers compute in float32), and the features are then
  memory-mapped from the cache's shards rather than read (``mapped``): every
  worker on a machine reads the one copy in the page cache. float32 reads and
  converts them into each worker, and skips one cast per step (NumPy's on
  TensorFlow, the device's on other backends).
* ``seed``: the spread between seeds is about half the spread between cells
  (GUIDE.md §6): compare cells over equal seeds, or several.
* ``distillation_weight``: adds a teacher's knowledge to the labels: the
  loss is the cross entropy plus this weight times an MSE on logits or a KL
  divergence of softened probabilities (``distillation_loss``,
  ``distillation_temperature``) against teacher logits cached with the
  features (``cache_features --teacher_checkpoint_path``), on the
  ``features4x`` grid, ignore-label pixels excluded (``ProxyDistillationLoss``).
  Scoring is unchanged (labels only).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from typing import Any, Callable, Mapping

import numpy as np

from deeplab_dpc.core.geometry import interpolation_matrix
from deeplab_dpc.nas.features import CacheError, FeatureCache, nearest_indices

RESOLUTIONS = ("features4x", "label", "features")
DISTILLATION_LOSSES = ("kl", "mse")
FEATURE_DTYPES = ("float16", "float32")
PAPER_FILTERS = 256


class TrialFailed(RuntimeError):
    """A proxy trial that cannot be scored (the loss became NaN or infinite); ``reason`` says why.

    The search records it as a failed trial, never as a score of 0.
    """

    def __init__(self, reason: str, step: int | None = None):
        super().__init__(reason)
        self.reason = reason
        self.step = step


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """How a proxy trial trains and scores a cell. Each field is proxy_train's flag ``--proxy_<field>``
    and the search's where it has one (``proxy_train.flag_name``; ``cache_dir``, ``seed``, ``proxy_*``: as is).

    Args:
        cache_dir: the feature cache (``cache_features``).
        train_split: cached split to train on.
        eval_split: cached split to score on.
        proxy_steps: training steps.
        batch_size: examples per step.
        proxy_filters: filters of every branch and of the projection.
        learning_rate: base rate of DeepLab's poly schedule (to 0 at ``proxy_steps``). Measured on
            CamVid features (published cell, 64 filters, 300 steps, seed 0): val mIoU 39.9 at 0.05,
            44.1 at 0.2, 44.4 at 0.5: 300 steps at 0.05 leave the cell undertrained.
        weight_decay: DeepLab's weight decay.
        batch_norm_momentum: moving-average momentum of the cell's batch norms.
        loss_resolution: ``features4x``, ``label`` or ``features`` (see the module doc).
        eval_resolution: ``label``, ``features4x`` or ``features``.
        seed: initial weights, batch order and dropout.
        momentum: SGD momentum.
        learning_power: poly power.
        dropout_rate: dropout on the concatenated branches (the model's is 0.1).
        drop_path_keep_prob: ScheduledDropPath's final keep probability, reached at
            ``proxy_steps`` (1: off).
        initializer: the cell's kernel initialisers, as ``ModelConfig.initializer``: "deeplab"
            (separable convs 0.33 / 0.06, what the CamVid search in BENCHMARKS.md used) or "keras"
            (glorot_uniform, which trains faster on short budgets from scratch: issue 8).
        ema_decay: Polyak averaging: the cell is scored with an exponential moving
            average of its weights of this decay (Keras' optimizer EMA: the average
            starts at the first step's weights); training continues from the raw
            weights after each intermediate score. None: off.
        eval_interval: steps between intermediate val scores (``history``);
            0 scores only at the end.
        feature_dtype: ``float16`` (memory-mapped from the cache) or ``float32`` (read and converted)
            features.
        max_train_examples, max_eval_examples: use only the first N cached
            examples (None: all).
        eval_batch_size: examples per prediction call.
        jit_compile: compile with XLA; None: on TensorFlow only with a GPU
            (XLA is several times slower on CPU), always on JAX.
        steps_per_execution: training steps per compiled call (GPUs).
        distillation_weight: weight of the distillation term added to the cross
            entropy (0: off). Needs teacher logits in the train split's cache
            (``cache_features --teacher_checkpoint_path``) and
            ``loss_resolution=features4x`` (the grid they are cached at).
        distillation_loss: ``kl``: Hinton's KL divergence from the teacher's to
            the cell's probabilities, both softened at ``distillation_temperature``
            T, times T^2 (gradients of the size of T=1's); ``mse``: the squared
            difference of the logits, averaged over classes. Either averaged over
            the pixels that do not carry the ignore label.
        distillation_temperature: T of ``kl`` (unused by ``mse``).
    """

    cache_dir: str
    train_split: str = "train"
    eval_split: str = "val"
    proxy_steps: int = 300
    batch_size: int = 8
    proxy_filters: int = 64
    learning_rate: float = 0.2
    weight_decay: float = 4e-5
    batch_norm_momentum: float = 0.99
    loss_resolution: str = "features4x"
    eval_resolution: str = "label"
    seed: int = 0
    momentum: float = 0.9
    learning_power: float = 0.9
    dropout_rate: float = 0.1
    drop_path_keep_prob: float = 1.0
    ema_decay: float | None = None
    initializer: str = "deeplab"
    eval_interval: int = 0
    feature_dtype: str = "float16"
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    eval_batch_size: int = 16
    jit_compile: bool | None = None
    steps_per_execution: int = 1
    distillation_weight: float = 0.0
    distillation_loss: str = "kl"
    distillation_temperature: float = 1.0

    def __post_init__(self):
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise ValueError("cache_dir is required (a feature cache made by cache_features)")
        if not os.path.isdir(self.cache_dir):
            raise ValueError(f"cache_dir={self.cache_dir} is not a folder")
        for name in ("train_split", "eval_split"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a split name")
        for name in ("proxy_steps", "batch_size", "proxy_filters", "eval_batch_size", "steps_per_execution"):
            _positive_int(self, name)
        for name in ("max_train_examples", "max_eval_examples"):
            if getattr(self, name) is not None:
                _positive_int(self, name)
        for name in ("seed", "eval_interval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        for name in (
            "learning_rate",
            "weight_decay",
            "batch_norm_momentum",
            "momentum",
            "learning_power",
            "dropout_rate",
            "drop_path_keep_prob",
            "distillation_weight",
            "distillation_temperature",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name}={value!r} must be a finite number")
            object.__setattr__(self, name, float(value))
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate={self.learning_rate} must be positive")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be >= 0")
        if not 0 <= self.batch_norm_momentum < 1:
            raise ValueError(f"batch_norm_momentum={self.batch_norm_momentum} must be in [0, 1)")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum} must be in [0, 1)")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"dropout_rate={self.dropout_rate} must be in [0, 1)")
        if not 0 < self.drop_path_keep_prob <= 1:
            raise ValueError(f"drop_path_keep_prob={self.drop_path_keep_prob} must be in (0, 1]")
        if self.distillation_weight < 0:
            raise ValueError(f"distillation_weight={self.distillation_weight} must be >= 0 (0: off)")
        if not self.distillation_temperature > 0:
            raise ValueError(f"distillation_temperature={self.distillation_temperature} must be positive")
        if self.distillation_loss not in DISTILLATION_LOSSES:
            raise ValueError(
                f"distillation_loss={self.distillation_loss!r} is unknown; valid: {list(DISTILLATION_LOSSES)}"
            )
        if self.distillation_weight > 0 and self.loss_resolution != "features4x":
            raise ValueError(
                f"distillation_weight={self.distillation_weight} needs loss_resolution=features4x, the grid "
                f"teacher logits are cached at (loss_resolution={self.loss_resolution})"
            )
        if self.initializer not in ("deeplab", "keras"):
            raise ValueError(f"initializer={self.initializer!r} is unknown; valid: ['deeplab', 'keras']")
        if self.ema_decay is not None:
            if isinstance(self.ema_decay, bool) or not isinstance(self.ema_decay, (int, float)):
                raise ValueError(f"ema_decay={self.ema_decay!r} must be a number in (0, 1) or None")
            if not 0 < self.ema_decay < 1:
                raise ValueError(f"ema_decay={self.ema_decay} must be in (0, 1) (None: off)")
            object.__setattr__(self, "ema_decay", float(self.ema_decay))
        for name in ("loss_resolution", "eval_resolution"):
            if getattr(self, name) not in RESOLUTIONS:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; valid: {list(RESOLUTIONS)}")
        if self.feature_dtype not in FEATURE_DTYPES:
            raise ValueError(
                f"feature_dtype={self.feature_dtype!r} is unknown; valid: {list(FEATURE_DTYPES)}"
            )
        if self.jit_compile is not None and not isinstance(self.jit_compile, bool):
            raise ValueError(f"jit_compile={self.jit_compile!r} must be true, false or None (automatic)")

    def to_dict(self) -> dict:
        """JSON-safe: every value is a str, int, float, bool or None."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ProxyConfig":
        """The config ``to_dict`` wrote (or a subset: missing fields take their defaults)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{unknown[0]} is not a ProxyConfig field (unknown: {unknown}; valid: {names})")
        return cls(**dict(data))

    def data_key(self) -> tuple:
        """What ``load_proxy_data`` depends on: trials whose keys are equal share loaded data."""
        return (
            os.path.abspath(self.cache_dir),
            self.train_split,
            self.eval_split,
            self.loss_resolution,
            self.eval_resolution,
            self.feature_dtype,
            self.max_train_examples,
            self.max_eval_examples,
            self.distillation_weight > 0,  # teacher logits loaded
        )


def _positive_int(config, name):
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


# ----------------------------------------------------------------------------------------------------------
# Data.


@dataclasses.dataclass
class ProxyData:
    """Cached features and labels in memory, at the resolutions a ``ProxyConfig`` asks for.

    ``train_labels`` are at the loss resolution, ``eval_labels`` at the eval
    resolution; both uint8 ``[N, H, W]``. ``key`` is the config's ``data_key()``.
    ``train_teacher_logits``: float16 ``[N, H, W, classes]`` at the loss
    resolution, loaded for distillation only (None otherwise).
    """

    train_features: np.ndarray
    train_labels: np.ndarray
    eval_features: np.ndarray
    eval_labels: np.ndarray
    num_classes: int
    ignore_label: int
    output_stride: int
    class_names: tuple[str, ...]
    key: tuple
    source: dict
    train_teacher_logits: np.ndarray | None = None

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_features.shape[1:])

    @property
    def nbytes(self) -> int:
        arrays = (self.train_features, self.train_labels, self.eval_features, self.eval_labels)
        teacher = self.train_teacher_logits.nbytes if self.train_teacher_logits is not None else 0
        return sum(a.nbytes for a in arrays) + teacher


def label_grid(resolution: str, feature_shape, label_shape) -> tuple[int, int]:
    """The (height, width) of labels at ``resolution``."""
    if resolution == "label":
        return tuple(int(s) for s in label_shape[:2])
    if resolution == "features":
        return (int(feature_shape[0]), int(feature_shape[1]))
    return (4 * int(feature_shape[0]), 4 * int(feature_shape[1]))


def _sampler(grid, label_shape) -> Callable[[np.ndarray], np.ndarray]:
    if tuple(grid) == tuple(label_shape[:2]):
        return lambda labels: labels
    rows = nearest_indices(label_shape[0], grid[0])
    cols = nearest_indices(label_shape[1], grid[1])
    return lambda labels: np.ascontiguousarray(labels[:, rows[:, None], cols[None, :]])


def load_proxy_data(config: ProxyConfig) -> ProxyData:
    """Loads the train and eval splits of ``config.cache_dir`` for ``run_proxy`` (once per worker).

    Raises:
        CacheError: a split is missing, incomplete or corrupt, or the two splits
            come from different backbones (the message names the file); or
            ``distillation_weight`` > 0 and the train split has no teacher
            logits at the loss grid.
    """
    train = FeatureCache(config.cache_dir, config.train_split)
    val = FeatureCache(config.cache_dir, config.eval_split)
    for what in ("feature_shape", "num_classes", "ignore_label", "output_stride"):
        if getattr(train, what) != getattr(val, what):
            raise CacheError(
                f"{train.manifest_file} and {val.manifest_file} differ in {what} "
                f"({getattr(train, what)} vs {getattr(val, what)}): cache both splits with one backbone"
            )
    for what in ("model_variant", "checkpoint", "weights"):
        a, b = train.manifest["backbone"].get(what), val.manifest["backbone"].get(what)
        if a != b:
            raise CacheError(
                f"{train.manifest_file} and {val.manifest_file} come from different backbones "
                f"({what}: {a} vs {b})"
            )
    loss_grid = label_grid(config.loss_resolution, train.feature_shape, train.label_shape)
    eval_grid = label_grid(config.eval_resolution, val.feature_shape, val.label_shape)
    distill = config.distillation_weight > 0
    if distill:
        _check_teacher(config, train, loss_grid)
    train_x, train_y, *teacher = _read_split(
        train, config.feature_dtype, _sampler(loss_grid, train.label_shape), config.max_train_examples, distill
    )
    val_x, val_y = _read_split(
        val, config.feature_dtype, _sampler(eval_grid, val.label_shape), config.max_eval_examples, False
    )
    if len(train_x) < config.batch_size:
        raise CacheError(
            f"{train.manifest_file}: {len(train_x)} training examples, "
            f"fewer than batch_size={config.batch_size}"
        )
    return ProxyData(
        train_features=train_x,
        train_labels=train_y,
        eval_features=val_x,
        eval_labels=val_y,
        num_classes=train.num_classes,
        ignore_label=train.ignore_label,
        output_stride=train.output_stride,
        class_names=tuple(
            train.manifest.get("dataset", {}).get("class_names") or [str(i) for i in range(train.num_classes)]
        ),
        key=config.data_key(),
        train_teacher_logits=teacher[0] if teacher else None,
        source={
            "cache_dir": os.path.abspath(config.cache_dir),
            "backbone": train.manifest["backbone"].get("checkpoint"),
            "teacher": (train.manifest.get("teacher") or {}).get("checkpoint") if distill else None,
            "train_examples": len(train_x),
            "eval_examples": len(val_x),
            "loss_grid": list(loss_grid),
            "eval_grid": list(eval_grid),
        },
    )


def _read_split(cache: FeatureCache, dtype: str, label_fn, max_examples, teacher: bool) -> tuple:
    """A split's features (and teacher logits) memory-mapped where they are stored in ``dtype`` (one copy
    per machine for all workers: ``FeatureCache.map_all``), else read and converted; labels read."""
    if np.dtype(cache.manifest["feature_dtype"]) == np.dtype(dtype):
        mapped = cache.map_all(label_fn, max_examples, teacher_logits=teacher)
        if mapped is not None:
            return mapped
    return cache.load_all(dtype, label_fn, max_examples, teacher_logits=teacher)


def _check_teacher(config: ProxyConfig, train: FeatureCache, loss_grid) -> None:
    """The train split holds teacher logits at the loss grid, or a CacheError naming the flag and cache."""
    if not train.has_teacher_logits:
        raise CacheError(
            f"distillation_weight={config.distillation_weight} needs teacher logits, and split "
            f"{config.train_split!r} of cache_dir={config.cache_dir} has none ({train.manifest_file}): cache it "
            "with cache_features --teacher_checkpoint_path=RUN (e.g. the --checkpoint_path run, a whole "
            "model), or set distillation_weight=0"
        )
    if tuple(train.teacher_shape[:2]) != tuple(loss_grid) or train.teacher_shape[2] != train.num_classes:
        raise CacheError(
            f"{train.manifest_file}: teacher logits are {list(train.teacher_shape)}, the loss needs "
            f"{[*loss_grid, train.num_classes]} (loss_resolution={config.loss_resolution})"
        )


# ----------------------------------------------------------------------------------------------------------
# The model and its evaluation.


def input_dtype(config: ProxyConfig) -> str:
    """The dtype features enter the model in: ``feature_dtype``, except float32 on TensorFlow.

    TensorFlow's CPU kernels cast float16 without oneDNN on most CPUs (and log an error line saying
    so); NumPy casts a batch as fast. Other backends take float16 and cast on the device.
    """
    import keras  # noqa: PLC0415

    return "float32" if keras.backend.backend() == "tensorflow" else config.feature_dtype


def build_proxy_model(spec, config: ProxyConfig, feature_shape, num_classes: int, output_stride: int):
    """features ``[B, h, w, c]`` -> ``DensePredictionCell`` -> ``Logits``: logits ``[B, h, w, classes]``.

    Sets Keras' random seed to ``config.seed`` first (``build_proxy_group`` of one cell)."""
    return build_proxy_group([spec], config, feature_shape, num_classes, output_stride)


def build_proxy_group(specs, config: ProxyConfig, feature_shape, num_classes: int, output_stride: int):
    """Several cells on one input, each with its own weights: outputs ``[logits of cell k]``.

    Keras' random seed is set to ``config.seed`` before each cell is built, so cell k starts from the
    weights ``build_proxy_model`` gives it alone after the same seeding (tested).
    """
    import keras  # noqa: PLC0415

    features = keras.Input(tuple(feature_shape), dtype=input_dtype(config), name="features")
    outputs = []
    for k, spec in enumerate(specs):
        keras.utils.set_random_seed(config.seed)
        suffix = "" if k == 0 else f"_{k}"
        outputs.append(_proxy_head(features, spec, config, num_classes, output_stride, suffix))
    return keras.Model(features, outputs if len(outputs) > 1 else outputs[0], name="proxy")


def _proxy_head(features, spec, config: ProxyConfig, num_classes: int, output_stride: int, suffix: str):
    """``features`` -> ``DensePredictionCell`` -> ``Logits`` (their names + ``suffix``): the logits tensor."""
    from deeplab_dpc.core.common import l2_regularizer  # noqa: PLC0415
    from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell  # noqa: PLC0415
    from deeplab_dpc.core.model import Logits  # noqa: PLC0415

    x = DensePredictionCell(
        spec,
        output_stride=output_stride,
        filters=config.proxy_filters,
        concat_channels=config.proxy_filters,
        dropout_rate=config.dropout_rate,
        weight_decay=config.weight_decay,
        batch_norm_momentum=config.batch_norm_momentum,
        initializer=config.initializer,
        drop_path_keep_prob=config.drop_path_keep_prob,
        drop_path_steps=config.proxy_steps,
        seed=config.seed,
        fused_batch_norm=True,  # the same values, one fused op on TensorFlow (issue 17: the step -20%)
        name="dense_prediction_cell" + suffix,
    )(features)
    return Logits(num_classes, kernel_regularizer=l2_regularizer(config.weight_decay), name="logits" + suffix)(x)


def resized_argmax(logits: np.ndarray, grid) -> np.ndarray:
    """Argmax of ``logits`` ``[B, h, w, C]`` resized (bilinear, align corners) to ``grid``: ``[B, H, W]``."""
    b, h, w, c = logits.shape
    if (h, w) == tuple(grid):
        return np.argmax(logits, axis=-1)
    rows = interpolation_matrix(h, grid[0])  # [H, h]
    cols = interpolation_matrix(w, grid[1])  # [W, w]
    x = np.matmul(rows, logits.reshape(b, h, w * c))  # [B, H, w*C]
    x = x.reshape(b, grid[0], w, c).transpose(0, 1, 3, 2)  # [B, H, C, w]
    x = np.matmul(x, cols.T)  # [B, H, C, W]
    return np.argmax(x, axis=2)


_LABEL_MAPS: dict = {}


def label_map_function(shape, grid) -> Callable[[np.ndarray], np.ndarray]:
    """``resized_argmax`` for logits of ``shape`` ``[B, h, w, C]``, compiled once per process and shape.

    The evaluation's hot loop: on CamVid's 101 val images at 360x480 the NumPy version took 2.5 s of a
    trial, the compiled one (XLA on TensorFlow, jit on JAX) a tenth of that, with equal labels (the same
    float32 arithmetic; tested). Other backends get the NumPy version.
    """
    import keras  # noqa: PLC0415

    backend = keras.backend.backend()
    key = (backend, tuple(int(s) for s in shape), tuple(int(g) for g in grid))
    if key in _LABEL_MAPS:
        return _LABEL_MAPS[key]
    b, h, w, c = key[1]
    if backend not in ("tensorflow", "jax") or (h, w) == key[2]:
        function = lambda logits: resized_argmax(np.asarray(logits, np.float32), grid)  # noqa: E731
    else:
        rows = interpolation_matrix(h, grid[0])  # [H, h]
        cols_t = interpolation_matrix(w, grid[1]).T  # [w, W]
        if backend == "tensorflow":
            import tensorflow as tf  # noqa: PLC0415

            ops, compile_ = tf, lambda f: tf.function(f, jit_compile=True)
            transpose, argmax = tf.transpose, lambda x: tf.argmax(x, axis=2, output_type=tf.int32)
        else:
            import jax  # noqa: PLC0415
            import jax.numpy as ops  # noqa: PLC0415

            compile_ = jax.jit
            transpose, argmax = ops.transpose, lambda x: ops.argmax(x, axis=2).astype(ops.int32)

        def labels(logits):
            x = ops.matmul(rows, ops.reshape(logits, (b, h, w * c)))  # [B, H, w*C]
            x = transpose(ops.reshape(x, (b, grid[0], w, c)), (0, 1, 3, 2))  # [B, H, C, w]
            return argmax(ops.matmul(x, cols_t))  # [B, H, W]

        compiled = compile_(labels)
        function = lambda logits: np.asarray(compiled(np.asarray(logits, np.float32)))  # noqa: E731
    _LABEL_MAPS[key] = function
    return function


def evaluate(
    model,
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    ignore_label: int,
    batch_size: int,
    dtype=None,
):
    """The confusion matrix of ``model`` on ``features`` against ``labels`` (at the labels' grid); a list
    of them, one per output, for a model of several cells (``build_proxy_group``)."""
    from deeplab_dpc.evaluation.metrics import ConfusionMatrix  # noqa: PLC0415

    outputs = len(model.outputs)
    matrices = [ConfusionMatrix(num_classes, ignore_label) for _ in range(outputs)]
    grid = labels.shape[1:3]
    dtype = dtype or features.dtype
    for start in range(0, len(features), batch_size):
        batch = features[start : start + batch_size].astype(dtype, copy=False)
        n = len(batch)
        if n < batch_size:  # One compiled shape for every call.
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        predictions = model.predict_on_batch(batch)
        for matrix, logits in zip(matrices, predictions if outputs > 1 else [predictions]):
            logits = np.asarray(logits, np.float32)
            matrix.update(labels[start : start + n], label_map_function(logits.shape, grid)(logits)[:n])
    return matrices if outputs > 1 else matrices[0]


# ----------------------------------------------------------------------------------------------------------
# A trial.


def cell_cost(spec, feature_shape, filters: int) -> dict:
    """Parameters and multiply-adds of the cell at ``filters`` (analysis.stats' analytical counts)."""
    from deeplab_dpc.analysis.stats import dense_prediction_cell  # noqa: PLC0415

    count = dense_prediction_cell(spec, tuple(feature_shape[:2]), int(feature_shape[2]), filters, filters)[
        "total"
    ]
    return {"params": int(count.params), "madds": int(count.macs)}


def _batches(features, labels, batch_size, seed, dtype=None, teacher_logits=None):
    """Endless (features, labels) batches: a new permutation each pass, the last partial batch dropped.

    With ``teacher_logits`` the targets are ``distillation.pack_targets`` of labels and logits.
    """
    from deeplab_dpc.nas.distillation import pack_targets  # noqa: PLC0415

    dtype = dtype or features.dtype
    rng = np.random.default_rng([seed, 1])
    n = len(features)
    while True:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            index = np.sort(order[start : start + batch_size])
            targets = labels[index]
            if teacher_logits is not None:
                targets = pack_targets(targets, teacher_logits[index])
            yield features[index].astype(dtype, copy=False), targets


def _default_jit_compile() -> bool:
    from deeplab_dpc.nas.features import default_jit_compile  # noqa: PLC0415

    return default_jit_compile()


def train_segment(model, batches, steps: int, on_step: Callable[[int], None] | None = None) -> tuple:
    """``steps`` training steps on the next ``steps`` batches of ``batches``, exactly those.

    A plain ``train_on_batch`` loop: ``model.fit`` on a generator prefetches batches it never trains on
    (tf.data's ``from_generator`` and ``prefetch``), so after a segment that ended early the next segment's
    batches depended on timing, and the bridge cost a thread hand-off a step. With ``steps_per_execution``
    above 1 (a GPU), ``fit`` runs on exactly ``steps`` batches instead, so the order is the same. A model
    of several cells (``build_proxy_group``) trains each on the same targets.

    Args:
        on_step: called with the segment's step index (from 0) before each step.

    Returns:
        (per output: the mean training loss over the segment; the raw trainable weights when the optimizer
        keeps an EMA (the model now holds the average, as after ``fit``) else None; per output: (step,
        loss) of its first non-finite loss, or None). The segment ends early once every output has failed.
    """
    import itertools  # noqa: PLC0415

    import keras  # noqa: PLC0415

    outputs = len(model.outputs)
    keys = ["loss"] if outputs == 1 else [f"{name}_loss" for name in model.output_names]
    targets = (lambda y: y) if outputs == 1 else (lambda y: tuple(y for _ in range(outputs)))
    failed: list = [None] * outputs
    if (getattr(model, "steps_per_execution", 1) or 1) > 1:
        history = model.fit(
            ((x, targets(y)) for x, y in itertools.islice(batches, steps)),
            steps_per_epoch=steps,
            epochs=1,
            verbose=0,
            shuffle=False,
        ).history
        means = [float(history[key][-1]) for key in keys]
        failed = [None if math.isfinite(m) else (steps, m) for m in means]
    else:
        sums = np.zeros(outputs)
        counts = np.zeros(outputs)
        for step in range(steps):
            if on_step is not None:
                on_step(step)
            x, y = next(batches)
            logs = model.train_on_batch(x, targets(y), return_dict=True)
            for k, key in enumerate(keys):
                if failed[k] is not None:
                    continue
                loss = float(logs[key])
                if math.isfinite(loss):
                    sums[k] += loss
                    counts[k] += 1
                else:
                    failed[k] = (step + 1, loss)
            if all(f is not None for f in failed):
                break
        means = [float(sums[k] / counts[k]) if counts[k] else float("nan") for k in range(outputs)]
    raw = None
    if getattr(model.optimizer, "use_ema", False):  # As fit ends: keep the raw weights, put the average in.
        raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
        model.optimizer.finalize_variable_values(model.trainable_variables)
    return means, raw, failed


def measure_latency_ms(model, sample, repeats: int = 10, warmup: int = 2) -> float:
    """Median milliseconds of one inference of ``model`` on ``sample`` (a batch of one), measured
    here: the cost the search's ``cost_metric=latency_ms`` weighs, on the machine running the trial."""
    for _ in range(warmup):
        model.predict_on_batch(sample)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.predict_on_batch(sample)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0)


def restore_weights(model, values) -> None:
    """Puts trainable weights from ``train_segment`` back."""
    for variable, value in zip(model.trainable_variables, values):
        variable.assign(value)


def compile_proxy_model(spec, config: ProxyConfig, data: ProxyData):
    """The model a trial trains, compiled with its optimizer and loss, from a clean Keras state.

    Clears Keras' global state and seeds it (``config.seed``) first, so equal configs build equal
    weights. Shared by ``run_proxy`` and ``bench/bench_proxy.py``'s bare step.
    """
    return compile_proxy_group([spec], config, data)


def compile_proxy_group(specs, config: ProxyConfig, data: ProxyData):
    """``compile_proxy_model`` for several cells in one model (``build_proxy_group``): one loss per cell,
    summed; each cell's gradients, optimizer slots and batch-norm statistics are its own."""
    import keras  # noqa: PLC0415

    from deeplab_dpc.training.optimizers import SGD  # noqa: PLC0415
    from deeplab_dpc.training.schedules import DeepLabSchedule  # noqa: PLC0415

    keras.backend.clear_session()  # Each trial starts from the same global state: equal seeds, equal results.
    keras.utils.set_random_seed(config.seed)
    model = build_proxy_group(specs, config, data.feature_shape, data.num_classes, data.output_stride)
    schedule = DeepLabSchedule("poly", config.learning_rate, config.proxy_steps, config.learning_power)
    losses = [_proxy_loss(config, data) for _ in specs]
    model.compile(
        optimizer=SGD(
            schedule,
            momentum=config.momentum,
            use_ema=config.ema_decay is not None,
            ema_momentum=config.ema_decay if config.ema_decay is not None else 0.99,
        ),
        loss=losses if len(specs) > 1 else losses[0],
        jit_compile=_default_jit_compile() if config.jit_compile is None else config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    # Its slots made now, eagerly: made inside the first traced step they are each initialised in a
    # tf.cond whose branch graphs TensorFlow never frees (about 70 a trial; see training.optimizers).
    model.optimizer.build(model.trainable_variables)
    return model


def training_batches(config: ProxyConfig, data: ProxyData):
    """The endless (features, targets) batches a trial trains on (``_batches`` at ``config.seed``; targets
    carry the teacher's logits when distilling)."""
    return _batches(
        data.train_features,
        data.train_labels,
        config.batch_size,
        config.seed,
        input_dtype(config),
        data.train_teacher_logits if config.distillation_weight > 0 else None,
    )


def warm_start_proxy_model(model, config: ProxyConfig, data: ProxyData) -> None:
    """Batch norm's warm start on one batch of another permutation (``seed + 1``) than training's."""
    from deeplab_dpc.training.train_lib import warm_start_batch_norm  # noqa: PLC0415

    first_images, _ = next(
        _batches(data.train_features, data.train_labels, config.batch_size, config.seed + 1, input_dtype(config))
    )
    warm_start_batch_norm(model, first_images)


def run_proxy(
    spec,
    config: ProxyConfig,
    features: ProxyData | None = None,
    progress: Callable[[int, int], None] | None = None,
    report: Callable[[int, float], None] | None = None,
) -> dict:
    """Trains ``spec`` on cached features and scores it on the eval split.

    Args:
        spec: a ``CellSpec`` (or DeepLab's JSON list).
        config: the ``ProxyConfig``.
        features: ``load_proxy_data(config)``, to share between trials
            (loaded here when None); it must have been loaded for an equal
            ``config.data_key()``.
        progress: called as ``progress(step, total)`` as steps start, and with
            ``(total, total)`` at the end.
        report: called as ``report(step, miou)`` after each intermediate score (every
            ``eval_interval`` steps, not the last): a search's pruner. It stops the trial by
            raising (Optuna's ``TrialPruned``), which propagates.

    Returns:
        ``miou`` (0..1), ``per_class_iou`` (class name -> IoU or None),
        ``pixel_accuracy``, ``params`` / ``madds`` (the cell at
        ``proxy_filters`` on the cached feature size; analytical),
        ``params_256`` / ``madds_256`` (at the paper's 256 filters),
        ``seconds`` (wall, the whole call), ``train_seconds``,
        ``eval_seconds``, ``steps``, ``filters``, ``final_loss``,
        ``history`` (``{"step", "miou", "loss"}`` at every ``eval_interval``
        and the end), ``backend``, ``feature_size``, ``spec``, ``config``.

    Raises:
        TrialFailed: the loss became NaN or infinite.
        CacheError: the cache cannot be read (``features`` None).
        ValueError: ``features`` were loaded for another config.

    Clears Keras' global state (``keras.backend.clear_session``) and sets its random seed
    (``keras.utils.set_random_seed(config.seed)``) first, so equal configs give equal results in one
    process (tested, dropout included); models the caller built before keep working.
    """
    [outcome] = run_proxy_group([spec], config, features, progress, report)
    if isinstance(outcome, TrialFailed):
        raise outcome
    return outcome


def run_proxy_group(
    specs,
    config: ProxyConfig,
    features: ProxyData | None = None,
    progress: Callable[[int, int], None] | None = None,
    report: Callable[[int, float], None] | None = None,
) -> list:
    """``run_proxy`` for several cells in one program: one model of K cells (``build_proxy_group``) trained
    on the same batches, each cell with its own weights, optimizer slots, batch-norm statistics, loss and
    score, as it would train alone (tested within float tolerance).

    Returns, per cell in order, ``run_proxy``'s result, or the ``TrialFailed`` of a cell whose loss became
    non-finite (the others train on). ``seconds``, ``train_seconds`` and ``eval_seconds`` are each cell's
    share (the group's over K); ``group_size`` and ``group_seconds`` (the whole call) are added. With K > 1
    a cell's ``final_loss`` is its own loss term without the weight decay (Keras sums the decay of all
    cells into one total); alone it includes it, as ``fit`` reports it.
    ``report`` (a pruner) takes one cell only.
    """
    start = time.perf_counter()
    import keras  # noqa: PLC0415

    _quiet_retracing_warning()

    from deeplab_dpc.core.spec import CellSpec  # noqa: PLC0415

    specs = [spec if isinstance(spec, CellSpec) else CellSpec.from_list(spec) for spec in specs]
    if not specs:
        raise ValueError("run_proxy_group needs at least one cell")
    if report is not None and len(specs) != 1:
        raise ValueError(f"report (a pruner's) takes one cell per program, got {len(specs)} cells")
    if features is None:
        features = load_proxy_data(config)
    elif features.key != config.data_key():
        raise ValueError(
            f"features were loaded for {features.key}, the config asks for {config.data_key()}: "
            "call load_proxy_data(config) with this config"
        )
    data = features
    size = len(specs)
    model = compile_proxy_group(specs, config, data)
    dtype = input_dtype(config)
    batches = training_batches(config, data)
    warm_start_proxy_model(model, config, data)

    total = config.proxy_steps
    interval = config.eval_interval or total
    ends = sorted({*range(interval, total, interval), total})
    histories: list[list] = [[] for _ in specs]
    failures: list = [None] * size
    matrices: list = [None] * size
    losses = [float("nan")] * size
    train_seconds = eval_seconds = 0.0
    done = 0
    for end in ends:
        t = time.perf_counter()
        offset = done
        losses, raw, failed = train_segment(
            model,
            batches,
            end - done,
            None if progress is None else lambda step, offset=offset: progress(offset + step, total),
        )
        train_seconds += time.perf_counter() - t
        for k, fault in enumerate(failed):
            if fault is not None and failures[k] is None:
                step, value = fault
                failures[k] = TrialFailed(
                    f"the loss became {value} by step {offset + step} (learning_rate={config.learning_rate})",
                    offset + step,
                )
        if all(f is not None for f in failures):
            break
        done = end
        t = time.perf_counter()
        scored = evaluate(
            model,
            data.eval_features,
            data.eval_labels,
            data.num_classes,
            data.ignore_label,
            config.eval_batch_size,
            dtype,
        )
        eval_seconds += time.perf_counter() - t
        for k, matrix in enumerate(scored if size > 1 else [scored]):
            if failures[k] is None:
                matrices[k] = matrix
                histories[k].append({"step": end, "miou": matrix.mean_iou(), "loss": losses[k]})
        if raw is not None and end != total:
            restore_weights(model, raw)  # Scored with the average; training goes on from the raw weights.
        if report is not None and end != total:
            report(end, float(matrices[0].mean_iou()))
    sample = data.eval_features[:1].astype(dtype)
    outcomes: list = []
    for k, spec in enumerate(specs):
        if failures[k] is not None:
            outcomes.append(failures[k])
            continue
        cell_model = model if size == 1 else keras.Model(model.inputs[0], model.outputs[k])
        outcomes.append(
            {
                **_cell_result(spec, config, data, matrices[k], histories[k], losses[k]),
                "latency_ms": measure_latency_ms(cell_model, sample),
            }
        )
    if progress is not None and any(f is None for f in failures):
        progress(total, total)
    wall = time.perf_counter() - start
    for outcome in outcomes:
        if isinstance(outcome, dict):
            outcome.update(
                seconds=wall / size,
                train_seconds=train_seconds / size,
                eval_seconds=eval_seconds / size,
                **({"group_size": size, "group_seconds": wall} if size > 1 else {}),
            )
    del model
    keras.backend.clear_session()
    return outcomes


def _cell_result(spec, config: ProxyConfig, data: ProxyData, matrix, history, loss) -> dict:
    """One cell's result dict (``run_proxy``'s), less its times and latency."""
    import keras  # noqa: PLC0415

    iou = matrix.per_class_iou()
    cost = cell_cost(spec, data.feature_shape, config.proxy_filters)
    cost_256 = cell_cost(spec, data.feature_shape, PAPER_FILTERS)
    return {
        "miou": float(matrix.mean_iou()),
        "per_class_iou": {
            name: (None if np.isnan(v) else float(v)) for name, v in zip(data.class_names, iou)
        },
        "pixel_accuracy": float(matrix.pixel_accuracy()),
        "params": cost["params"],
        "madds": cost["madds"],
        "params_256": cost_256["params"],
        "madds_256": cost_256["madds"],
        "steps": config.proxy_steps,
        "filters": config.proxy_filters,
        "final_loss": loss,
        "history": history,
        "backend": keras.backend.backend(),
        "feature_size": list(data.feature_shape),
        "spec": spec.to_list(),
        "config": config.to_dict(),
    }


def _proxy_loss(config: ProxyConfig, data: ProxyData):
    """The cross entropy, plus the distillation term when ``distillation_weight`` > 0."""
    if config.distillation_weight > 0:
        from deeplab_dpc.nas.distillation import ProxyDistillationLoss  # noqa: PLC0415

        return ProxyDistillationLoss(
            data.num_classes,
            data.ignore_label,
            weight=config.distillation_weight,
            kind=config.distillation_loss,
            temperature=config.distillation_temperature,
        )
    from deeplab_dpc.training.losses import SegmentationLoss  # noqa: PLC0415

    return SegmentationLoss(data.num_classes, data.ignore_label)


class _RetracingFilter(logging.Filter):
    """Drops TensorFlow's "N out of the last N calls ... triggered tf.function retracing" warning.

    Every trial builds a new model whose train and predict functions trace once: intended, not the
    accidental retracing the warning is about.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


def _quiet_retracing_warning() -> None:
    logger = logging.getLogger("tensorflow")
    if not any(isinstance(f, _RetracingFilter) for f in logger.filters):
        logger.addFilter(_RetracingFilter())
