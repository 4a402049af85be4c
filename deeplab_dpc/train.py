r"""Trains a DeepLab model (DPC, ASPP or none) with DeepLab's flags.

    python -m deeplab_dpc.train --flagfile=experiments/camvid/mobilenet_v2_dpc.flags

Flags become one ``TrainConfig`` (written to ``train_logdir/train_config.json``
with ``model_config.json``) and ``training.train_lib.train`` runs it. Rerunning
the same command resumes from the newest checkpoint in ``train_logdir``; a
rerun may change only logging, saving and evaluation flags
(``training.config.RESUMABLE_FIELDS``), any other change is refused naming
the flags.
"""

from __future__ import annotations

import logging

from absl import app, flags

from deeplab_dpc import cli  # first: it quiets TensorFlow's start-up (console.py)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    cli.define_model_flags(fv)
    cli.define_data_flags(fv)
    f = dict(flag_values=fv)
    flags.DEFINE_string("train_split", "train", "Split to train on.", **f)
    flags.DEFINE_string("train_logdir", None, "Where checkpoints, configs and TensorBoard logs go.", **f)
    flags.DEFINE_list("train_crop_size", ["513", "513"], "Training crop 'height,width'.", **f)
    flags.DEFINE_integer("train_batch_size", 8, "Images per step (over all clones).", **f)
    flags.DEFINE_float("min_scale_factor", 0.5, "Smallest random scale.", **f)
    flags.DEFINE_float("max_scale_factor", 2.0, "Largest random scale.", **f)
    flags.DEFINE_float("scale_factor_step_size", 0.25, "Spacing of the scale set (0: continuous).", **f)
    flags.DEFINE_integer("min_resize_value", None, "Resize the shorter side to this first.", **f)
    flags.DEFINE_integer("max_resize_value", None, "...unless the longer side would exceed this.", **f)
    flags.DEFINE_enum("learning_policy", "poly", ["poly", "step"], "Learning rate policy.", **f)
    flags.DEFINE_float("base_learning_rate", 1e-4, "Initial learning rate.", **f)
    flags.DEFINE_float("learning_rate_decay_factor", 0.1, "Step policy factor.", **f)
    flags.DEFINE_integer("learning_rate_decay_step", 2000, "Step policy interval.", **f)
    flags.DEFINE_float("learning_power", 0.9, "Poly policy power.", **f)
    flags.DEFINE_integer("training_number_of_steps", 30000, "Total training steps.", **f)
    flags.DEFINE_integer("slow_start_step", 0, "Steps at slow_start_learning_rate first.", **f)
    flags.DEFINE_float("slow_start_learning_rate", 1e-4, "Learning rate of the slow start.", **f)
    flags.DEFINE_enum("slow_start_burnin_type", "none", ["none", "linear"], "Slow start shape.", **f)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum.", **f)
    flags.DEFINE_float("weight_decay", 4e-5, "DeepLab's weight decay (slim convention).", **f)
    flags.DEFINE_boolean("fine_tune_batch_norm", True, "Train batch norm (else frozen, inference mode).", **f)
    flags.DEFINE_boolean(
        "freeze_backbone", False,
        "Train only what follows the backbone (context module, decoder, logits): the backbone's weights and "
        "batch norm statistics stay as initialised (e.g. from tf_initial_checkpoint), and its backward pass "
        "is skipped.", **f,
    )
    flags.DEFINE_float("batch_norm_momentum", None, "Override batch norm momentum (DeepLab: 0.9997).", **f)
    flags.DEFINE_boolean(
        "batch_norm_warm_start", True,
        "A fresh run starts batch norm moving statistics from its first batch (statistics restored "
        "from tf_initial_checkpoint are kept).", **f,
    )
    flags.DEFINE_float("top_k_percent_pixels", 1.0, "Hard pixel mining: fraction of pixels in the loss.", **f)
    flags.DEFINE_list("class_weights", None, "Per-class loss weights, comma separated.", **f)
    flags.DEFINE_string("tf_initial_checkpoint", None, "DeepLab TF1 checkpoint, or a Keras checkpoint / train_logdir.", **f)
    flags.DEFINE_boolean("initialize_last_layer", True, "Restore the logits from tf_initial_checkpoint.", **f)
    flags.DEFINE_float("last_layer_gradient_multiplier", 1.0, "Gradient multiplier of the logits layer.", **f)
    flags.DEFINE_float(
        "drop_path_keep_prob", 1.0,
        "ScheduledDropPath (NASNet): each Dense Prediction Cell branch output is kept with a probability "
        "falling linearly from 1 to this over --training_number_of_steps (1: off; off at inference).", **f,
    )
    flags.DEFINE_list(
        "aux_cell_endpoints", None,
        "Auxiliary cells (intermediate supervision, Nekrasov et al.): backbone layers at stride 8 or 16 "
        "(mobilenet_v2: block_5_add,block_12_add) that each get a copy of the context module with its own "
        "weights and logits during training; exported and evaluated models have none.", **f,
    )
    flags.DEFINE_float(
        "aux_loss_weight", 0.15, "Weight of each auxiliary cell's loss (needs --aux_cell_endpoints).", **f
    )
    flags.DEFINE_string(
        "distillation_teacher", None,
        "Knowledge distillation: a train_logdir (its newest checkpoint) or checkpoint of a trained model "
        "with the same classes; frozen, it predicts every training batch (needs --distillation_weight > 0).",
        **f,
    )
    flags.DEFINE_enum(
        "distillation_loss", "mse", ["mse", "kl"],
        "mse: squared difference of the logits; kl: KL divergence of probabilities softened by "
        "--distillation_temperature, times its square (Hinton et al.).", **f,
    )
    flags.DEFINE_float("distillation_weight", 0.0, "Weight of the distillation loss (0: off).", **f)
    flags.DEFINE_float(
        "distillation_temperature", 1.0, "Softmax temperature T of --distillation_loss=kl.", **f
    )
    flags.DEFINE_float("save_interval_secs", 1200, "Seconds between checkpoints.", **f)
    flags.DEFINE_integer("log_steps", 10, "Steps between log lines, summaries and checkpoint checks.", **f)
    flags.DEFINE_string("eval_split", None, "Split for mIoU during training.", **f)
    flags.DEFINE_integer("eval_interval_steps", 0, "Steps between validation mIoU (0: never; also at the last step).", **f)
    flags.DEFINE_list(
        "eval_crop_size", ["513", "513"],
        "Evaluation during training pads whole images to 'height,width', as deeplab_dpc.eval's flag of that "
        "name (which must be given the same value to reproduce the mIoU); must cover the images.", **f,
    )
    flags.DEFINE_integer(
        "eval_max_examples", None,
        "Evaluate only the first N examples of eval_split during training (unset: all; the mIoU's "
        "TensorBoard tag then says so).", **f,
    )
    flags.DEFINE_boolean("mixed_precision", False, "mixed_bfloat16 compute.", **f)
    flags.DEFINE_boolean("jit_compile", False, "XLA (slower on CPU; use on GPU).", **f)
    flags.DEFINE_integer("num_clones", 1, "GPUs for MirroredStrategy (TensorFlow backend).", **f)
    flags.DEFINE_integer("seed", 0, "Random seed.", **f)
    flags.DEFINE_float(
        "ema_decay",
        None,
        "Polyak averaging: evaluate and finally save an exponential moving average of the weights of this "
        "decay, e.g. 0.999 (unset: off; cannot change on resume).",
        **f,
    )


def config_from_flags(fv: flags.FlagValues):
    """Flags -> ``TrainConfig``; every error is an ``app.UsageError`` naming its flag."""
    from deeplab_dpc.training.config import TrainConfig  # noqa: PLC0415

    if not fv.train_logdir:
        raise app.UsageError("--train_logdir is required")
    data = cli.data_config_from_flags(fv)
    model = cli.model_config_from_flags(fv, data.descriptor.num_classes, fv.weight_decay)
    import dataclasses  # noqa: PLC0415

    if fv.last_layer_gradient_multiplier != 1.0:
        model = dataclasses.replace(model, last_layer_gradient_multiplier=fv.last_layer_gradient_multiplier)
    if fv.drop_path_keep_prob != 1.0:
        try:
            model = dataclasses.replace(
                model, drop_path_keep_prob=fv.drop_path_keep_prob, drop_path_steps=fv.training_number_of_steps
            )
        except ValueError as e:
            raise app.UsageError(cli.flag_message(str(e), fv)) from None
    model = _with_aux_cells(model, fv)
    try:
        return TrainConfig(
            model=model,
            data=data,
            train_logdir=fv.train_logdir,
            train_split=fv.train_split,
            train_crop_size=cli.parse_pair(fv.train_crop_size, "train_crop_size"),
            train_batch_size=fv.train_batch_size,
            min_scale_factor=fv.min_scale_factor,
            max_scale_factor=fv.max_scale_factor,
            scale_factor_step_size=fv.scale_factor_step_size,
            min_resize_value=fv.min_resize_value,
            max_resize_value=fv.max_resize_value,
            learning_policy=fv.learning_policy,
            base_learning_rate=fv.base_learning_rate,
            learning_rate_decay_factor=fv.learning_rate_decay_factor,
            learning_rate_decay_step=fv.learning_rate_decay_step,
            learning_power=fv.learning_power,
            training_number_of_steps=fv.training_number_of_steps,
            slow_start_step=fv.slow_start_step,
            slow_start_learning_rate=fv.slow_start_learning_rate,
            slow_start_burnin_type=fv.slow_start_burnin_type,
            momentum=fv.momentum,
            fine_tune_batch_norm=fv.fine_tune_batch_norm,
            freeze_backbone=fv.freeze_backbone,
            batch_norm_momentum=fv.batch_norm_momentum,
            batch_norm_warm_start=fv.batch_norm_warm_start,
            top_k_percent_pixels=fv.top_k_percent_pixels,
            class_weights=tuple(float(w) for w in fv.class_weights) if fv.class_weights else None,
            tf_initial_checkpoint=fv.tf_initial_checkpoint,
            initialize_last_layer=fv.initialize_last_layer,
            save_interval_secs=fv.save_interval_secs,
            log_steps=fv.log_steps,
            eval_split=fv.eval_split,
            eval_interval_steps=fv.eval_interval_steps,
            eval_crop_size=cli.parse_pair(fv.eval_crop_size, "eval_crop_size"),
            eval_max_examples=fv.eval_max_examples,
            mixed_precision=fv.mixed_precision,
            jit_compile=fv.jit_compile,
            num_clones=fv.num_clones,
            seed=fv.seed,
            ema_decay=fv.ema_decay,
            aux_loss_weight=fv.aux_loss_weight,
            distillation_teacher=fv.distillation_teacher,
            distillation_loss=fv.distillation_loss,
            distillation_weight=fv.distillation_weight,
            distillation_temperature=fv.distillation_temperature,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def _with_aux_cells(model, fv: flags.FlagValues):
    """``--aux_cell_endpoints`` into the model config, checked against the backbone (built once)."""
    import dataclasses  # noqa: PLC0415

    from deeplab_dpc.core.model import aux_endpoint_strides  # noqa: PLC0415

    if not fv.aux_cell_endpoints:
        if fv["aux_loss_weight"].present:
            raise app.UsageError(
                "--aux_loss_weight needs --aux_cell_endpoints (the auxiliary cells it weights)"
            )
        return model
    try:
        model = dataclasses.replace(model, aux_cell_endpoints=tuple(fv.aux_cell_endpoints))
        aux_endpoint_strides(model)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None
    return model


def train_from_flags(fv: flags.FlagValues, verbose: int | str = "auto") -> dict:
    """Builds the config and trains; a rerun that would change the saved run is an ``app.UsageError``."""
    config = config_from_flags(fv)
    from deeplab_dpc.training.config import ResumeMismatch  # noqa: PLC0415
    from deeplab_dpc.training.train_lib import train  # noqa: PLC0415

    try:
        return train(config, verbose=verbose)
    except ResumeMismatch as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    summary = train_from_flags(flags.FLAGS)
    logging.info("done: step %d, checkpoints in %s", summary["step"], flags.FLAGS.train_logdir)


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
