"""The training model when the loss is more than the segmentation loss of the logits (issue 10).

Two additions, both training-only and absent from every inference model:

* **Auxiliary cells** (Nekrasov et al. 2019, intermediate supervision):
  ``ModelConfig.aux_cell_endpoints`` gives the model one more output per
  endpoint (``build_deeplab(..., aux_heads=True)``); each is scored with the
  same ``SegmentationLoss`` and weighted by ``aux_loss_weight`` (0.15, as
  Nekrasov et al.).
* **Distillation from a teacher**: a trained run (``distillation_teacher``),
  loaded through ``runs.load_model_for_inference`` and frozen, predicts the
  same augmented batch in inference mode at every step; its logits are
  compared with the student's main logits by ``losses.distillation_loss``
  (``distillation_loss``: mse or kl), weighted by ``distillation_weight``.

total = segmentation(logits) + aux_loss_weight * sum(segmentation(aux logits))
        + distillation_weight * distillation(logits, teacher logits) + regularisation

``TrainingModel`` is the functional model with ``compute_loss`` overridden;
the teacher sits in a plain ``TrainingObjective`` that Keras neither tracks
nor saves, so checkpoints hold the student only and load into
``runs.load_model_for_inference`` like any other run. Without auxiliary
cells or distillation ``build_training_model`` returns the plain functional
model, so other runs' checkpoints and behaviour are unchanged.
"""

from __future__ import annotations

import logging

import keras
from keras import ops

from deeplab_dpc.core.model import build_deeplab
from deeplab_dpc.training.config import TrainConfig
from deeplab_dpc.training.losses import SegmentationLoss, distillation_loss

log = logging.getLogger(__name__)


class TrainingObjective:
    """The loss of a training step: main + weighted auxiliary + weighted distillation losses.

    A plain object on purpose: a Keras model holding it neither tracks the
    teacher's variables nor writes them into its checkpoints.

    Args:
        segmentation_loss: the ``SegmentationLoss`` of every head.
        aux_loss_weight: weight of each auxiliary head's loss.
        teacher: a frozen model from images to logits, or None.
        distillation_kind: "mse" or "kl" (``losses.distillation_loss``).
        distillation_weight: weight of the distillation loss.
        distillation_temperature: T of "kl".
    """

    def __init__(
        self,
        segmentation_loss: SegmentationLoss,
        aux_loss_weight: float = 0.15,
        teacher: keras.Model | None = None,
        distillation_kind: str = "mse",
        distillation_weight: float = 0.0,
        distillation_temperature: float = 1.0,
    ):
        self.segmentation_loss = segmentation_loss
        self.aux_loss_weight = float(aux_loss_weight)
        self.teacher = teacher
        self.distillation_kind = distillation_kind
        self.distillation_weight = float(distillation_weight)
        self.distillation_temperature = float(distillation_temperature)

    def __call__(self, images, labels, outputs):
        """The loss of ``outputs`` (main logits, auxiliary logits...) on ``labels``, weight decay aside."""
        main, aux = outputs[0], outputs[1:]
        total = self.segmentation_loss(labels, main)
        if aux:
            total = total + self.aux_loss_weight * ops.sum(
                ops.stack([self.segmentation_loss(labels, a) for a in aux])
            )
        if self.teacher is not None and self.distillation_weight > 0:
            teacher_logits = self.teacher(images, training=False)
            total = total + self.distillation_weight * distillation_loss(
                labels,
                main,
                teacher_logits,
                self.distillation_kind,
                num_classes=self.segmentation_loss.num_classes,
                ignore_label=self.segmentation_loss.ignore_label,
                temperature=self.distillation_temperature,
            )
        return total


class TrainingModel(keras.Model):
    """A functional DeepLab model whose training loss is a ``TrainingObjective``.

    Built from the tensors of ``build_deeplab(..., aux_heads=True)``, so its
    layers and checkpoint layout are that model's. Compile it without a loss.
    For training only: it is never serialised (``get_config`` is Keras'
    functional one and does not record the objective).

    Args:
        inputs, outputs: the functional model's tensors (outputs: the logits,
            or the list [logits, auxiliary logits...]).
        objective: the ``TrainingObjective``.
        **kwargs: ``keras.Model`` arguments (``name``).
    """

    def __init__(self, inputs, outputs, objective: TrainingObjective, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, **kwargs)
        self._objective = objective

    @property
    def objective(self) -> TrainingObjective:
        return self._objective

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        del sample_weight, training  # pixels are weighted by the labels (ignore label, class_weights)
        outputs = list(y_pred) if isinstance(y_pred, (list, tuple)) else [y_pred]
        total = self._objective(x, y, outputs)
        for loss in self.losses:  # weight decay, as Keras' own compute_loss adds it
            total = total + self._aggregate_additional_loss(loss)
        return total


def segmentation_loss(config: TrainConfig) -> SegmentationLoss:
    """The run's ``SegmentationLoss`` (dataset classes and ignore label, class weights, hard pixel mining)."""
    descriptor = config.data.descriptor
    return SegmentationLoss(
        descriptor.num_classes,
        descriptor.ignore_label,
        class_weights=config.class_weights,
        top_k_percent_pixels=config.top_k_percent_pixels,
    )


def load_teacher(config: TrainConfig) -> keras.Model | None:
    """The frozen teacher of ``config.distillation_teacher`` (None without distillation).

    Loaded as evaluation loads a run (``runs.load_model_for_inference``: its
    newest checkpoint when a train_logdir is given), its main head only,
    with every layer frozen; it runs in inference mode.

    Raises:
        ValueError naming ``distillation_teacher``: no run there, or its checkpoint does not fit its config.
    """
    if not config.distillation_teacher or config.distillation_weight == 0:
        return None
    from deeplab_dpc.runs import load_model_for_inference  # noqa: PLC0415

    try:
        teacher, teacher_config = load_model_for_inference(config.distillation_teacher)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"distillation_teacher={config.distillation_teacher}: {e}") from None
    teacher.trainable = False  # its class count was checked with the config (TrainConfig)
    log.info(
        "distilling from %s (%s, %s loss, weight %g)",
        config.distillation_teacher,
        teacher_config.model_variant,
        config.distillation_loss,
        config.distillation_weight,
    )
    return teacher


def build_training_model(config: TrainConfig, loss: SegmentationLoss) -> keras.Model:
    """The model ``train`` fits: a ``TrainingModel`` with auxiliary heads or a teacher, else the plain model.

    The student is built first (its initial weights do not depend on the
    teacher), then the teacher is loaded.

    Args:
        config: the run.
        loss: the segmentation loss of every head.

    Returns:
        ``build_deeplab(config.model)`` when neither auxiliary cells nor
        distillation are on (compile it with ``loss``); else a
        ``TrainingModel`` (compile it without a loss).
    """
    network = build_deeplab(config.model, aux_heads=True)
    teacher = load_teacher(config)
    if len(network.outputs) == 1 and teacher is None:
        return network
    objective = TrainingObjective(
        loss,
        aux_loss_weight=config.aux_loss_weight,
        teacher=teacher,
        distillation_kind=config.distillation_loss,
        distillation_weight=config.distillation_weight,
        distillation_temperature=config.distillation_temperature,
    )
    outputs = network.outputs if len(network.outputs) > 1 else network.output
    return TrainingModel(network.input, outputs, objective, name=network.name)
