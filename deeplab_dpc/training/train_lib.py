"""The training loop: ``train(config)``.

``model.fit`` drives it on every backend, in "epochs" of ``log_steps`` steps
over an endless stream (DeepLab trains by iterations, not epochs). At each
epoch end the run logs, maybe evaluates, and saves a checkpoint when
``save_interval_secs`` have passed; a final checkpoint is written at the end.
The progress bar counts the run's steps, not an epoch's.

A restarted run first checks its config against the ``train_config.json`` in
``train_logdir`` (``config.check_resume``: only logging, saving and
evaluation settings may change), then loads the newest checkpoint: the
optimizer's step, hence the learning rate schedule, continues where it was,
and ``initial_epoch`` is derived from it. A NaN loss stops training with a
message, and no checkpoint is written after it, so the last one on disk is good.

Evaluation during training is ``eval_lib``'s: the same batches (whole images
padded to ``eval_crop_size``, all of ``eval_split`` unless
``eval_max_examples``), the same compiled prediction and confusion matrix, so
``python -m deeplab_dpc.eval`` on a checkpoint reproduces its mIoU.

Polyak averaging (``ema_decay``): the optimizer keeps an exponential moving
average of the trainable weights (Keras' ``use_ema``; the average starts at
the first step's weights, ``a_t = d a_(t-1) + (1 - d) w_t``; batch norm's
moving statistics are not averaged, being averages already). Evaluation during
training swaps the average in and the raw weights back (``averaged_weights``);
training always continues from the raw weights. Intermediate checkpoints hold
the raw weights, with the average among the optimizer's variables, so a
resumed run continues both exactly; ``eval`` on one scores the raw weights.
The final checkpoint (what ``eval``, ``vis`` and ``export`` read by default)
holds the average as the model's weights, so ``eval`` on it reproduces the
final in-training mIoU.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time

import keras
import numpy as np

from deeplab_dpc import console
from deeplab_dpc.core.model import aux_endpoint_strides, main_head
from deeplab_dpc.data.batches import make_batches
from deeplab_dpc.data.preprocess import PreprocessConfig
from deeplab_dpc.evaluation.eval_lib import confusion_over, make_eval_batches, make_predict_fn
from deeplab_dpc.summaries import write_images, write_scalars
from deeplab_dpc.training.checkpoints import CheckpointManager, list_checkpoints
from deeplab_dpc.training.config import TrainConfig, check_resume
from deeplab_dpc.training.objective import TrainingModel, build_training_model, segmentation_loss
from deeplab_dpc.training.optimizers import SGD
from deeplab_dpc.training.schedules import DeepLabSchedule

log = logging.getLogger(__name__)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def make_schedule(config: TrainConfig) -> DeepLabSchedule:
    return DeepLabSchedule(
        learning_policy=config.learning_policy,
        base_learning_rate=config.base_learning_rate,
        training_number_of_steps=config.training_number_of_steps,
        learning_power=config.learning_power,
        learning_rate_decay_step=config.learning_rate_decay_step,
        learning_rate_decay_factor=config.learning_rate_decay_factor,
        slow_start_step=config.slow_start_step,
        slow_start_learning_rate=config.slow_start_learning_rate,
        slow_start_burnin_type=config.slow_start_burnin_type,
    )


def configure_batch_norm(model: keras.Model, fine_tune: bool, momentum: float | None) -> None:
    """DeepLab's ``fine_tune_batch_norm``: frozen BN runs in inference mode and is not trained."""
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            if not fine_tune:
                layer.trainable = False
            if momentum is not None:
                layer.momentum = momentum


def warm_start_batch_norm(model: keras.Model, images, keep=()) -> int:
    """Sets trainable batch norms' moving statistics to those of ``images``.

    Keras starts moving statistics at mean 0, variance 1, and an exponential
    average keeps ``momentum ** steps`` of that start (0.99 ** 400 = 1.8%,
    0.9997 ** 1200 = 70%): a short run's inference then normalises by a
    blend of the start and the truth. Starting the averages from a real batch
    (one forward pass with momentum 0) removes that bias; long DeepLab
    schedules (0.9997 ** 90000 ~ 0) never see it.

    Args:
        model: the model (batch norms at any depth).
        images: one batch of input images.
        keep: paths of moving-statistics weights that must not change (those
            restored from a checkpoint); their layers keep their statistics.
            A path is either form a restore report uses: the model's
            (``tf1_checkpoint.model_weight_paths``: ``backbone/bn_Conv1/moving_mean``)
            or Keras' own variable path (``bn_Conv1/moving_mean``).

    Returns:
        The number of batch norm layers warm-started.
    """
    kept_variables = _variables_at(model, set(keep))
    layers = [
        layer for layer in _all_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable
    ]
    momenta = [layer.momentum for layer in layers]
    # Other state a training forward pass advances (ScheduledDropPath's step count, random seeds) is
    # put back: the warm start is not a training step.
    statistics = {id(v) for layer in layers for v in (layer.moving_mean, layer.moving_variance)}
    other_state = [(v, keras.ops.convert_to_numpy(v)) for v in model.non_trainable_variables if id(v) not in statistics]
    started = 0
    for layer in layers:
        kept = id(layer.moving_mean) in kept_variables or id(layer.moving_variance) in kept_variables
        layer.momentum = 1.0 if kept else 0.0  # 1: the forward pass leaves the average as it is
        started += not kept
    try:
        if started:
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
        for variable, value in other_state:
            variable.assign(value)
    return started


def _variables_at(model: keras.Model, paths: set) -> set[int]:
    """ids of the model's variables named by ``paths`` (model paths or Keras variable paths)."""
    if not paths:
        return set()
    from deeplab_dpc.training.tf1_checkpoint import model_weight_paths  # noqa: PLC0415 (no TensorFlow)

    found = {id(v) for path, v in model_weight_paths(model).items() if path in paths}
    return found | {id(v) for v in model.weights if v.path in paths}


def _first_images(batches):
    """The images of the first batch of a tf.data.Dataset or a PyDataset."""
    batch = batches[0] if isinstance(batches, keras.utils.PyDataset) else next(iter(batches))
    return batch[0]


def _all_layers(layer):
    yield layer
    for sub in layer._flatten_layers(include_self=False, recursive=True):
        yield sub


def ema_arguments(config: TrainConfig) -> dict:
    """The optimizer's Polyak averaging arguments for ``config.ema_decay`` (none when it is None).

    The model's weights are never overwritten with the average during training
    (``ema_overwrite_frequency=None``); ``fit`` puts the average in at its end.
    """
    if config.ema_decay is None:
        return {}
    return {"use_ema": True, "ema_momentum": config.ema_decay, "ema_overwrite_frequency": None}


@contextlib.contextmanager
def averaged_weights(model: keras.Model):
    """Within the block the model's trainable weights are the optimizer's moving average; after it,
    the raw weights again. Does nothing when the optimizer keeps no average."""
    optimizer = getattr(model, "optimizer", None)
    if not getattr(optimizer, "use_ema", False):
        yield
        return
    raw = [keras.ops.convert_to_numpy(v) for v in model.trainable_variables]
    optimizer.finalize_variable_values(model.trainable_variables)
    try:
        yield
    finally:
        for variable, value in zip(model.trainable_variables, raw):
            variable.assign(value)


def build_and_compile(config: TrainConfig) -> keras.Model:
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    loss = segmentation_loss(config)
    model = build_training_model(config, loss)  # auxiliary heads and distillation: objective.py
    configure_batch_norm(model, config.fine_tune_batch_norm, config.batch_norm_momentum)
    if config.freeze_backbone:
        # Not trainable: no gradients, no optimizer slots, batch norm in inference mode; the warm start
        # of batch norm statistics (trainable layers only) leaves the backbone's as they were too.
        model.get_layer("backbone").trainable = False
    model.compile(
        optimizer=SGD(make_schedule(config), momentum=config.momentum, **ema_arguments(config)),
        loss=None if isinstance(model, TrainingModel) else loss,  # a TrainingModel computes its own
        jit_compile=config.jit_compile,
    )
    model.optimizer.build(model.trainable_variables)
    return model


def _strategy_scope(config: TrainConfig):
    """MirroredStrategy over ``num_clones`` GPUs on the TensorFlow backend."""
    if config.num_clones == 1:
        return contextlib.nullcontext()
    if keras.backend.backend() != "tensorflow":
        raise ValueError(f"num_clones={config.num_clones} needs the TensorFlow backend (tf.distribute)")
    import tensorflow as tf  # noqa: PLC0415

    devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
    if len(devices) < config.num_clones:
        raise ValueError(f"num_clones={config.num_clones} but only {len(devices)} devices are visible")
    return tf.distribute.MirroredStrategy([d.name for d in devices[: config.num_clones]]).scope()


def initialize_from_checkpoint(model: keras.Model, config: TrainConfig) -> dict:
    """``tf_initial_checkpoint``: a DeepLab TF1 checkpoint, or a Keras weights file / train_logdir."""
    path = config.tf_initial_checkpoint
    if os.path.exists(path + ".index") or (os.path.isdir(path) and _has_tf1_checkpoint(path)):
        from deeplab_dpc.training.tf1_checkpoint import restore_tf1_checkpoint  # noqa: PLC0415

        return restore_tf1_checkpoint(model, path, initialize_last_layer=config.initialize_last_layer)
    return restore_keras_weights(model, path, config.initialize_last_layer)


def _has_tf1_checkpoint(directory: str) -> bool:
    return any(name.endswith(".index") for name in os.listdir(directory))


def restore_keras_weights(model: keras.Model, path: str, initialize_last_layer: bool) -> dict:
    """Copies weights by path from a Keras weights file or train_logdir (its latest checkpoint).

    The source model is rebuilt from the ``model_config.json`` beside the
    weights; weights whose path and shape match are copied; the logits are
    skipped when ``initialize_last_layer`` is False (e.g. another class count).
    """
    from deeplab_dpc.runs import load_model_for_inference, resolve_checkpoint  # noqa: PLC0415

    try:
        weights_file = resolve_checkpoint(path)
        source, _ = load_model_for_inference(weights_file)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"tf_initial_checkpoint={path}: {e}") from None
    source_weights = {w.path: w for w in source.weights}
    report = {"kind": "Keras checkpoint", "checkpoint": weights_file,
              "restored": [], "skipped": [], "missing": [], "ignored": []}
    used = set()
    for weight in model.weights:
        if not initialize_last_layer and weight.path.startswith("logits/"):
            report["skipped"].append(weight.path)
            continue
        match = source_weights.get(weight.path)
        if match is None or tuple(match.shape) != tuple(weight.shape):
            report["missing"].append(weight.path)
            continue
        weight.assign(match.numpy())
        used.add(weight.path)
        report["restored"].append(weight.path)
    report["ignored"] = sorted(set(source_weights) - used - set(report["skipped"]))
    return report


def eval_miou_tag(config: TrainConfig) -> str:
    """TensorBoard tag of the in-training mIoU; it says so when only the first examples are evaluated."""
    if config.eval_max_examples is None:
        return "eval/miou"
    return f"eval/miou_first_{config.eval_max_examples}_examples"


class _Progress(keras.callbacks.Callback):
    """A progress bar over the run's steps (this session's: from the resumed step to the last).

    Keras' own bar counts an "epoch" of ``log_steps`` and jumps to its end
    when the run stops inside one (a 10-step run with ``log_steps=100``
    showed 100/100). Counting finished batches is host work only, so this is
    ``async_safe`` like the monitor; the lock orders updates from Keras' worker threads.
    """

    async_safe = True

    def __init__(self, total_steps: int, verbose: int):
        super().__init__()
        self.total_steps = total_steps
        self.verbose = verbose
        self.bar = None
        self.done = 0
        self._lock = threading.Lock()

    def on_train_begin(self, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.target = max(self.total_steps - step, 0)
        self.bar = keras.utils.Progbar(self.target, verbose=self.verbose, stateful_metrics=["loss"], unit_name="step")

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        with self._lock:
            self.done += 1
            self.bar.update(min(self.done, self.target), [("loss", float(loss))] if loss is not None else None,
                            finalize=False)

    def on_train_end(self, logs=None):
        with self._lock:
            self.bar.update(self.done, finalize=True)


class _Monitor(keras.callbacks.Callback):
    """Stops at the last step or on NaN; logs, evaluates and checkpoints at epoch ends.

    Steps are counted on the host as batches begin, so nothing here waits for
    the device per step. The NaN check reads each batch's loss in
    ``on_train_batch_end``, which Keras runs on a worker thread when every
    callback is ``async_safe`` (JAX): the training loop keeps dispatching
    steps while an earlier one's loss is read. A NaN may so stop training a
    step or two late; the epoch's checkpoint is skipped either way.
    """

    async_safe = True

    def __init__(self, config: TrainConfig, manager: CheckpointManager, eval_batches, schedule):
        super().__init__()
        self.config = config
        self.manager = manager
        self.eval_batches = eval_batches
        self.schedule = schedule
        self.diverged_at = None
        self.last_save = time.time()
        self.last_eval_step = None
        self.start_time = time.time()
        self.start_step = None
        self.batches_begun = 0
        self.epoch_start_step = None
        self.history = []
        self._predict_fn = None

    def _step(self) -> int:
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        self.start_step = self._step()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_start_step = self.start_step + self.batches_begun

    def on_train_batch_begin(self, batch, logs=None):
        self.batches_begun += 1
        if self.start_step + self.batches_begun >= self.config.training_number_of_steps:
            self.model.stop_training = True  # after this batch's step

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")  # the epoch's running mean: NaN from the first bad step on
        if self.diverged_at is None and loss is not None and not math.isfinite(float(loss)):
            self.diverged_at = self.epoch_start_step + batch + 1
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        if self.diverged_at is not None:
            return
        step = self._step()
        logs = dict(logs or {})
        rate = float(keras.ops.convert_to_numpy(self.schedule(step)))
        elapsed = time.time() - self.start_time
        done = step - self.start_step
        speed = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.config.training_number_of_steps - step) / speed if speed > 0 else float("nan")
        record = {"step": step, "loss": float(logs.get("loss", float("nan"))), "learning_rate": rate}
        scalars = {"train/loss": record["loss"], "train/learning_rate": rate}
        evaluated = ""
        if self._eval_due(step):
            record["val_miou"] = self._evaluate(step)
            scalars[eval_miou_tag(self.config)] = record["val_miou"]
            evaluated = f" {self.config.eval_split} mIoU {record['val_miou']:.4f}"
            if self.config.eval_max_examples is not None:
                evaluated += f" (its first {self.config.eval_max_examples} examples only: eval_max_examples)"
        self.history.append(record)
        write_scalars(self.config.train_logdir, step, scalars)
        log.info(
            "step %d/%d loss %.4f lr %.3g%s  %.2f steps/s ETA %.0f s",
            step, self.config.training_number_of_steps, record["loss"], rate, evaluated, speed, eta,
        )
        # The last step's checkpoint is written once, after fit (with EMA: the average, never the raw weights).
        final = step >= self.config.training_number_of_steps
        if not final and time.time() - self.last_save >= self.config.save_interval_secs:
            self.manager.save(self.model, step)
            self.last_save = time.time()

    def _eval_due(self, step: int) -> bool:
        interval = self.config.eval_interval_steps
        if not interval or self.eval_batches is None:
            return False
        last = self.last_eval_step if self.last_eval_step is not None else self.start_step
        return step - last >= interval or step >= self.config.training_number_of_steps

    def _evaluate(self, step: int) -> float:
        """The mIoU ``eval_lib.evaluate_checkpoint`` computes (at its default scale 1, no flip), of the
        averaged weights with ``ema_decay``."""
        with averaged_weights(self.model):
            return self._evaluate_current(step)

    def _evaluate_current(self, step: int) -> float:
        descriptor = self.config.data.descriptor
        if self._predict_fn is None:  # compiled once, reads the current weights at each call
            self._predict_fn = make_predict_fn(main_head(self.model), (1.0,), False)  # no auxiliary heads
        predict_fn = self._predict_fn
        matrix = confusion_over(
            predict_fn, self.eval_batches, descriptor.num_classes, descriptor.ignore_label,
            self.config.eval_max_examples,
        )
        self.last_eval_step = step
        self._write_images(step, predict_fn)
        return matrix.mean_iou()

    def _write_images(self, step: int, predict_fn) -> None:
        """Input, ground truth and prediction in colour of the first ``num_summary_images`` examples."""
        n = self.config.num_summary_images
        if not n:
            return
        from deeplab_dpc.data.colormaps import label_to_color  # noqa: PLC0415

        descriptor = self.config.data.descriptor
        images, labels = [], []
        for batch in self.eval_batches:  # eval batches may hold one image each
            images.extend(np.asarray(batch["image"])[: n - len(images)])
            labels.extend(np.asarray(batch["label"])[: n - len(labels), ..., 0])
            if len(images) >= n:
                break
        images = np.stack(images)
        predictions = np.asarray(predict_fn(images))
        labels = np.stack(labels)
        colour = lambda x: np.stack(  # noqa: E731
            [label_to_color(v, descriptor.colormap, ignore_label=descriptor.ignore_label) for v in x]
        )
        write_images(self.config.train_logdir, step, {
            "images/input": np.clip(images, 0, 255).astype(np.uint8),
            "images/ground_truth": colour(labels),
            "images/prediction": colour(predictions),
        }, max_outputs=n)


def train(config: TrainConfig, verbose: int | str = "auto") -> dict:
    """Trains (or resumes) until ``training_number_of_steps``; returns a summary.

    Args:
        config: the run.
        verbose: the progress bar: 0 none, 1 live, 2 one line at the end; "auto": 1 when stdout is
            a terminal, else 2 (a live bar in a log file is an update per step).

    Raises:
        ResumeMismatch: ``train_logdir`` holds a run with other settings
            (``config.check_resume``); nothing was written.
        TrainingDiverged: the loss became NaN; the newest checkpoint on disk
            is the last good one.
    """
    aux_endpoint_strides(config.model)  # bad aux_cell_endpoints fail before the run's files are written
    has_checkpoints = bool(list_checkpoints(config.train_logdir))
    if check_resume(config, has_checkpoints):
        os.makedirs(config.train_logdir, exist_ok=True)
        config.save(config.train_logdir)
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    manager = CheckpointManager(config.train_logdir, config.keep_checkpoint_max)
    with _strategy_scope(config):
        model = build_and_compile(config)
    step = manager.restore(model)
    report = None
    if step == 0 and config.tf_initial_checkpoint:
        from deeplab_dpc.training.tf1_checkpoint import format_report  # noqa: PLC0415

        report = initialize_from_checkpoint(model, config)
        log.info("initialised from tf_initial_checkpoint:\n%s", format_report(report))
    elif step:
        log.info("resumed from step %d (%s)", step, manager.latest())
    descriptor = config.data.descriptor
    if step >= config.training_number_of_steps:
        return {"step": step, "history": [], "initialization": report, "resumed_from": step}

    train_batches = make_batches(
        config.data,
        config.train_split,
        PreprocessConfig(
            crop_size=config.train_crop_size,
            min_scale_factor=config.min_scale_factor,
            max_scale_factor=config.max_scale_factor,
            scale_factor_step_size=config.scale_factor_step_size,
            ignore_label=descriptor.ignore_label,
            min_resize_value=config.min_resize_value,
            max_resize_value=config.max_resize_value,
            is_training=True,
        ),
        config.train_batch_size,
        seed=config.seed,
    )
    eval_batches = None
    if config.eval_interval_steps:
        eval_batches = make_eval_batches(config.data, config.eval_split, config.eval_crop_size)
        log.info(
            "evaluating every %d steps on %s of %s, whole images padded to eval_crop_size=%s",
            config.eval_interval_steps,
            "all" if config.eval_max_examples is None else f"the first {config.eval_max_examples} examples",
            config.eval_split, ",".join(map(str, config.eval_crop_size)),
        )
    if step == 0 and config.fine_tune_batch_norm and config.batch_norm_warm_start:
        restored = report["restored"] if report else ()
        warm_start_batch_norm(model, _first_images(train_batches), keep=restored)
    monitor = _Monitor(config, manager, eval_batches, make_schedule(config))
    callbacks = [monitor]
    verbose = console.progress_verbosity(sys.stdout) if verbose == "auto" else int(verbose)
    if verbose:
        callbacks.append(_Progress(config.training_number_of_steps, verbose))
    chunk = config.log_steps
    if not hasattr(train_batches, "element_spec"):  # a PyDataset: an epoch is at most its length
        chunk = min(chunk, len(train_batches))
        train_batches.set_epoch(step // chunk)  # a resumed run continues the data order
    model.fit(
        train_batches,
        steps_per_epoch=chunk,
        epochs=math.ceil(config.training_number_of_steps / chunk),
        initial_epoch=step // chunk,
        callbacks=callbacks,
        verbose=0,  # Keras' bar counts an epoch (log_steps); _Progress counts the run
        shuffle=False,  # the pipelines shuffle (and PyDataset order is seeded per epoch)
    )
    if monitor.diverged_at is not None:
        raise TrainingDiverged(
            f"the loss became NaN or infinite at step {monitor.diverged_at}; training stopped. "
            f"The last good checkpoint is {manager.latest()}. Lower base_learning_rate or check the data."
        )
    final_step = monitor._step()
    manager.save(model, final_step)  # with ema_decay, fit has put the average in: the final weights
    return {"step": final_step, "history": monitor.history, "initialization": report, "resumed_from": step}
