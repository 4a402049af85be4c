r"""Searches Dense Prediction Cells: proxy trials in an Optuna study, on local workers or Ray.

    python -m deeplab_dpc.search --cache_dir=/data/camvid_features --search_dir=/runs/search \
        --strategy=evolution --max_trials=500 --num_workers=2 --enqueue_published

Flags become one ``SearchConfig`` (written to ``search_dir/search_config.json``)
and ``nas.executors.run_search`` runs it. Rerunning the same command, even
after ``kill -9``, continues the search: finished trials are kept, a trial
that was running is retried (a cell whose worker dies twice while the search
runs is recorded as failed). Only --max_trials, --max_hours,
--num_workers, --executor, --ray_address, --zero_cost_scores and the
heartbeat flags may change between runs. Watch it live with the
``optuna-dashboard`` command it prints, and in TensorBoard's HParams tab
(``search_dir/tensorboard``); the best cell by proxy score so far is
``search_dir/best_proxy_cell.json``, ready for ``train
--dense_prediction_cell_json``; ``deeplab_dpc.rerank`` writes the re-ranked
winner as ``search_dir/best_cell.json``.

Zero-cost pre-filtering and scores (``deeplab_dpc.nas.zero_cost``: synflow,
grad_norm, snip, naswot, zico; each about a second of the proxy's model at
initialisation, no training):

    python -m deeplab_dpc.search ... --prefilter=synflow --prefilter_ratio=4 \
        --zero_cost_scores=all

* ``--prefilter=<score> --prefilter_ratio=R`` (R > 1): each trial that trains
  is the best of R proposals of the strategy by that score. The other R - 1
  are recorded in the study as PRUNED trials with user attributes
  ``pruned_by=prefilter``, ``prefilter_winner``, ``prefilter_group``,
  ``zero_cost_<score>``, ``spec`` and ``graph_hash``: never trained, not
  counted by --max_trials (which counts trained trials: with R = 4 and
  --max_trials=100 the search scores about 400 proposals and trains 100), not
  a result any strategy learns from, and no original for the dedup (a later
  proposal of the same graph may train). Queued trials (retries,
  --enqueue_published) train without a pre-filter. Default: no pre-filter
  (R = 1), the search as without these flags.
* ``--zero_cost_scores=synflow,grad_norm,...`` (``all``: every score;
  default: all with a pre-filter, about 5 s per trained trial, else none): every trained trial
  also records these as user attributes ``zero_cost_<score>``, computed
  before it trains (the pre-filter's score always among them);
  ``python -m deeplab_dpc.analyze`` then plots the proxy score against each
  (``proxy_vs_<score>.png``, Spearman's rho in the title and its summary).
"""

from __future__ import annotations

import os
import signal
import sys

from absl import app, flags

from deeplab_dpc import cli

# Proxy trainer flags -> ``ProxyConfig`` fields.
PROXY_FLAGS = {
    "cache_dir": "cache_dir",
    "proxy_train_split": "train_split",
    "proxy_eval_split": "eval_split",
    "proxy_steps": "proxy_steps",
    "proxy_batch_size": "batch_size",
    "proxy_filters": "proxy_filters",
    "proxy_learning_rate": "learning_rate",
    "proxy_drop_path_keep_prob": "drop_path_keep_prob",
    "proxy_ema_decay": "ema_decay",
    "proxy_initializer": "initializer",
    "proxy_eval_interval": "eval_interval",
    "proxy_loss_resolution": "loss_resolution",
    "proxy_eval_resolution": "eval_resolution",
    "proxy_distillation_weight": "distillation_weight",
    "proxy_distillation_loss": "distillation_loss",
    "proxy_distillation_temperature": "distillation_temperature",
}
FIELD_TO_FLAG = {field: flag for flag, field in PROXY_FLAGS.items()} | {"seed": "seed"}


RL_FLAGS = (
    "rl_algorithm",
    "rl_learning_rate",
    "rl_batch_size",
    "rl_epochs",
    "rl_clip",
    "rl_entropy_weight",
    "rl_baseline_decay",
    "rl_hidden",
    "rl_layers",
)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    from deeplab_dpc.nas import zero_cost  # noqa: PLC0415  (NumPy only at import)
    from deeplab_dpc.nas.samplers import STRATEGIES  # noqa: PLC0415
    from deeplab_dpc.nas.search_config import DEFAULT_OBJECTIVE, EXECUTORS  # noqa: PLC0415

    f = dict(flag_values=fv)
    flags.DEFINE_string("search_dir", None, "Where the search config, study, logs and best cell go.", **f)
    flags.DEFINE_string(
        "storage",
        None,
        "Optuna storage: unset for sqlite:///<search_dir>/study.db, a database URL, or a journal file "
        "(journal:PATH or PATH.log) for many processes.",
        **f,
    )
    flags.DEFINE_string("study_name", "dpc_search", "The study's name in the storage.", **f)
    flags.DEFINE_string("strategy", "random", f"Search strategy: one of {sorted(STRATEGIES)}.", **f)
    flags.DEFINE_integer(
        "max_trials",
        100,
        "Trials that train (duplicates, interrupted attempts and pre-filtered proposals not counted).",
        **f,
    )
    flags.DEFINE_float("max_hours", None, "Start no trial after this many hours of this run.", **f)
    flags.DEFINE_integer("num_branches", 5, "Branches per cell (B).", **f)
    flags.DEFINE_integer("seed", 0, "Seed of the strategy and of the proxy trainer.", **f)
    flags.DEFINE_float("mutation_probability", 0.5, "random: probability of mutating a near-best cell.", **f)
    flags.DEFINE_integer("mutation_top_k", 10, "random: mutate one of this many best completed cells.", **f)
    flags.DEFINE_integer("population_size", 20, "evolution: population (most recent completed trials).", **f)
    flags.DEFINE_integer("sample_size", 5, "evolution: tournament size.", **f)
    flags.DEFINE_enum("rl_algorithm", "ppo", ["ppo", "reinforce"], "rl: how the controller learns.", **f)
    flags.DEFINE_float("rl_learning_rate", 1e-3, "rl: Adam's learning rate (Nekrasov et al.: 1e-4).", **f)
    flags.DEFINE_integer("rl_batch_size", 5, "rl: completed proposals per controller update.", **f)
    flags.DEFINE_integer("rl_epochs", 4, "rl: PPO passes over each batch.", **f)
    flags.DEFINE_float("rl_clip", 0.1, "rl: PPO clip range (Nekrasov et al.: 0.1).", **f)
    flags.DEFINE_float("rl_entropy_weight", 1e-3, "rl: weight of the entropy bonus.", **f)
    flags.DEFINE_float("rl_baseline_decay", 0.95, "rl: decay of the reward baseline's moving average.", **f)
    flags.DEFINE_integer("rl_hidden", 100, "rl: units of each controller LSTM layer.", **f)
    flags.DEFINE_integer("rl_layers", 2, "rl: controller LSTM layers.", **f)
    flags.DEFINE_boolean(
        "enqueue_published",
        False,
        "Run the published Cityscapes cell and an ASPP cell as the first trials.",
        **f,
    )
    flags.DEFINE_string("executor", "local", f"Where trials run: one of {list(EXECUTORS)}.", **f)
    flags.DEFINE_integer("num_workers", 1, "Trials running at once (worker processes or Ray tasks).", **f)
    flags.DEFINE_integer(
        "cells_per_worker",
        1,
        "Trials a worker trains at once in one program, on the same batches, each cell with its own weights "
        "and score (where small cells cannot fill a GPU); not with --pruner or --prefilter_ratio.",
        **f,
    )
    flags.DEFINE_string("ray_address", None, "Ray cluster address (unset: start Ray on this machine).", **f)
    flags.DEFINE_string(
        "objective",
        DEFAULT_OBJECTIVE,
        "module:function building the per-process objective from the SearchConfig "
        "(default: the proxy trainer).",
        **f,
    )
    flags.DEFINE_enum(
        "cost_metric",
        None,
        ["madds", "params", "latency_ms"],
        "Weigh each trial's proxy mIoU by this cost, MnasNet-style: mIoU x (cost / --cost_target) ** w, "
        "w = --cost_alpha at or below the target, --cost_beta above (unset: mIoU alone, as the paper). "
        "With --strategy=nsga2, the second objective (minimised; the result is the Pareto front). "
        "latency_ms: the proxy cell's measured inference time, batch 1, on the machine running the trial.",
        **f,
    )
    flags.DEFINE_float(
        "cost_target", None, "Target cost (multiply-adds or parameters of the proxy cell).", **f
    )
    flags.DEFINE_float(
        "cost_alpha", -0.07, "Exponent at or below the target (MnasNet soft: -0.07; hard: 0).", **f
    )
    flags.DEFINE_float("cost_beta", -0.07, "Exponent above the target (MnasNet soft: -0.07; hard: -1).", **f)
    flags.DEFINE_enum(
        "pruner",
        "none",
        ["none", "median", "sha", "hyperband"],
        "Stop proxy trials early on their intermediate val scores (every --proxy_eval_interval steps): "
        "Optuna's median pruner, successive halving (sha) or Hyperband; none trains every trial to the end.",
        **f,
    )
    flags.DEFINE_integer("pruner_startup_trials", 5, "median: prune nothing until this many trials completed.", **f)
    flags.DEFINE_integer("pruner_warmup_steps", 0, "median: prune no trial before this proxy step.", **f)
    flags.DEFINE_integer(
        "pruner_reduction_factor", 3, "sha, hyperband: about 1 in this many trials continues at each rung.", **f
    )
    flags.DEFINE_string(
        "stage2_flagfile",
        None,
        "Progressive two-stage evaluation (Nekrasov et al.): a training flagfile (train's flags, like "
        "rerank's) to fine-tune promising cells end to end after the proxy; the trial's value is then "
        "its last stage's score. Unset: the proxy alone.",
        **f,
    )
    flags.DEFINE_float(
        "stage2_probability", 0.9, "Chance a cell not above the running average still goes to stage 2, at first.", **f
    )
    flags.DEFINE_float(
        "stage2_probability_decay", 0.98, "...multiplied by this for each earlier stage-1 result.", **f
    )
    flags.DEFINE_enum(
        "stage2_average",
        "mean",
        ["mean", "median"],
        "The running level a stage-1 score must beat to go on for sure: the mean of earlier scores "
        "(Nekrasov's) or their median (resists a broken cell's outlier score).",
        **f,
    )
    scores = sorted(zero_cost.SCORES)
    flags.DEFINE_string(
        "prefilter",
        None,
        f"Zero-cost pre-filter: with --prefilter_ratio=R > 1, each trained trial is the best of R proposals by "
        f"this score of the untrained cell, one of {scores}; the other R - 1 are recorded PRUNED "
        "(pruned_by=prefilter) without training. Unset: no pre-filter.",
        **f,
    )
    flags.DEFINE_integer(
        "prefilter_ratio",
        1,
        "Proposals scored by --prefilter per trained trial (1: no pre-filter). --max_trials counts trained "
        "trials, not proposals.",
        **f,
    )
    flags.DEFINE_string(
        "zero_cost_scores",
        None,
        f"Zero-cost scores recorded on every trained trial before it trains (user attrs zero_cost_<score>): "
        f"comma-separated names of {scores}, or all. Default: all with --prefilter (about 5 s per trained trial), else none. "
        "May change when a search is continued.",
        **f,
    )
    flags.DEFINE_float("heartbeat_seconds", 15.0, "A running trial's heartbeat interval.", **f)
    flags.DEFINE_float(
        "grace_seconds", 120.0, "A running trial silent this long is interrupted and retried.", **f
    )
    # The proxy trainer's flags, passed through (unset: the proxy trainer's defaults), named as proxy_train
    # names them (proxy_train.flag_name: --proxy_<ProxyConfig field>; --cache_dir and --seed as everywhere).
    flags.DEFINE_string("cache_dir", None, "Cached backbone features (from the feature cache).", **f)
    flags.DEFINE_string("proxy_train_split", None, "Split of cached features to train each cell on.", **f)
    flags.DEFINE_string("proxy_eval_split", None, "Split of cached features to score each cell on.", **f)
    flags.DEFINE_integer("proxy_steps", None, "Training steps per proxy trial.", **f)
    flags.DEFINE_integer("proxy_batch_size", None, "Batch size of the proxy trainer.", **f)
    flags.DEFINE_integer("proxy_filters", None, "Filters of the proxy cell's convolutions.", **f)
    flags.DEFINE_float("proxy_learning_rate", None, "Learning rate of the proxy trainer.", **f)
    flags.DEFINE_float(
        "proxy_drop_path_keep_prob", None, "ScheduledDropPath's final keep probability in proxy trials.", **f
    )
    flags.DEFINE_integer(
        "proxy_eval_interval", None, "Steps between a proxy trial's intermediate val scores (for --pruner).", **f
    )
    flags.DEFINE_enum(
        "proxy_initializer", None, ["deeplab", "keras"], "Kernel initialisers of the proxy cells.", **f
    )
    flags.DEFINE_float("proxy_ema_decay", None, "Polyak averaging (EMA decay) of proxy trials' weights.", **f)
    flags.DEFINE_enum(
        "proxy_loss_resolution",
        None,
        ["features4x", "label", "features"],
        "Labels of a proxy trial's loss (as proxy_train's flag; default features4x).",
        **f,
    )
    flags.DEFINE_enum(
        "proxy_eval_resolution",
        None,
        ["label", "features4x", "features"],
        "Labels a proxy trial is scored on (as proxy_train's flag; default label).",
        **f,
    )
    flags.DEFINE_float(
        "proxy_distillation_weight",
        None,
        "Distillation from teacher logits cached with the features (cache_features "
        "--teacher_checkpoint_path): weight of the term (0: off).",
        **f,
    )
    flags.DEFINE_enum(
        "proxy_distillation_loss", None, ["kl", "mse"], "Distillation term of proxy trials: kl or mse.", **f
    )
    flags.DEFINE_float(
        "proxy_distillation_temperature", None, "Softening temperature of the kl distillation term.", **f
    )


def _proxy_message(message: str) -> str:
    """A ``ProxyConfig`` error, its field written as the flag."""
    field = message.split("=", 1)[0].split(" ", 1)[0]
    if field in FIELD_TO_FLAG:
        return f"--{FIELD_TO_FLAG[field]}{message[len(field):]}"
    return message


def proxy_config_from_flags(fv: flags.FlagValues) -> dict:
    """The proxy trainer's config as a dict: resolved and validated by ``ProxyConfig`` when the
    default objective uses it."""
    from deeplab_dpc.nas.search_config import DEFAULT_OBJECTIVE  # noqa: PLC0415

    given = {field: fv[flag].value for flag, field in PROXY_FLAGS.items() if fv[flag].value is not None}
    given["seed"] = fv.seed
    if fv.objective != DEFAULT_OBJECTIVE:
        return given
    if not fv.cache_dir:
        raise app.UsageError("--cache_dir is required: the cached backbone features the proxy trains on")
    try:
        from deeplab_dpc.nas.proxy import ProxyConfig  # noqa: PLC0415
    except ImportError as e:
        raise app.UsageError(f"the proxy trainer (deeplab_dpc.nas.proxy) cannot be imported: {e}") from None
    try:
        return ProxyConfig.from_dict(given).to_dict()
    except (TypeError, ValueError) as e:
        raise app.UsageError(_proxy_message(str(e))) from None


def stage2_from_flags(fv: flags.FlagValues, search_config) -> dict | None:
    """``--stage2_flagfile`` and its probabilities -> ``Stage2Config.to_dict()`` (None when unset).

    The flagfile holds ``deeplab_dpc.train``'s flags (``rerank``'s are accepted and unused), parsed by
    train itself (its cell, if any, is replaced by each candidate's); runs start from the feature cache's backbone checkpoint unless it
    gives --tf_initial_checkpoint, as rerank's do. Errors name the flagfile and its flag.
    """
    if not fv.stage2_flagfile:
        return None
    import dataclasses  # noqa: PLC0415

    from deeplab_dpc import rerank as rerank_main  # noqa: PLC0415
    from deeplab_dpc import train as train_main  # noqa: PLC0415
    from deeplab_dpc.nas import progressive  # noqa: PLC0415
    from deeplab_dpc.nas.rerank import initial_checkpoint_from_cache  # noqa: PLC0415

    path = fv.stage2_flagfile
    if not os.path.isfile(path):
        raise app.UsageError(f"--stage2_flagfile={path} does not exist")
    work = flags.FlagValues()
    rerank_main.define_flags(work)  # train's flags and rerank's: a re-ranking flagfile works unchanged
    try:
        work(["search", f"--flagfile={path}"])
    except flags.Error as e:
        raise app.UsageError(f"--stage2_flagfile={path}: {e}") from None
    work.train_logdir = os.path.join(os.path.abspath(fv.search_dir), progressive.STAGE2_FOLDER)
    try:
        with rerank_main._placeholder_cell() as placeholder:
            work.dense_prediction_cell_json = str(placeholder)
            work.context = "dpc"
            template = train_main.config_from_flags(work)
        if not template.tf_initial_checkpoint:
            checkpoint, _ = initial_checkpoint_from_cache(search_config, template.model)
            if checkpoint:
                template = dataclasses.replace(template, tf_initial_checkpoint=checkpoint)
        return progressive.Stage2Config(
            train=template.to_dict(),
            eval_split=work.eval_split or "val",
            eval_crop_size=cli.parse_pair(work.eval_crop_size, "eval_crop_size"),
            initial_probability=fv.stage2_probability,
            decay=fv.stage2_probability_decay,
            average=fv.stage2_average,
        ).to_dict()
    except (app.UsageError, ValueError) as e:
        message = str(e).replace("stage2_initial_probability", "stage2_probability")
        message = message.replace("stage2_decay", "stage2_probability_decay")
        if message.startswith("stage2_"):
            raise app.UsageError("--" + message) from None
        raise app.UsageError(f"--stage2_flagfile={path}: {message}") from None


def config_from_flags(fv: flags.FlagValues):
    """Flags -> ``SearchConfig``; every error is an ``app.UsageError`` naming its flag."""
    import dataclasses  # noqa: PLC0415

    from deeplab_dpc.nas.search_config import SearchConfig  # noqa: PLC0415

    if not fv.search_dir:
        raise app.UsageError("--search_dir is required")
    proxy = proxy_config_from_flags(fv)
    config = _search_config(fv, proxy, SearchConfig)
    stage2 = stage2_from_flags(fv, config)
    if stage2 is None:
        return config
    try:
        return dataclasses.replace(config, stage2=stage2)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def _search_config(fv: flags.FlagValues, proxy: dict, SearchConfig):
    try:
        return SearchConfig(
            search_dir=fv.search_dir,
            storage=fv.storage,
            study_name=fv.study_name,
            strategy=fv.strategy,
            max_trials=fv.max_trials,
            max_hours=fv.max_hours,
            num_branches=fv.num_branches,
            seed=fv.seed,
            mutation_probability=fv.mutation_probability,
            mutation_top_k=fv.mutation_top_k,
            population_size=fv.population_size,
            sample_size=fv.sample_size,
            **{name: fv[name].value for name in RL_FLAGS},
            enqueue_published=fv.enqueue_published,
            executor=fv.executor,
            num_workers=fv.num_workers,
            cells_per_worker=fv.cells_per_worker,
            ray_address=fv.ray_address,
            objective=fv.objective,
            proxy=proxy,
            heartbeat_seconds=fv.heartbeat_seconds,
            grace_seconds=fv.grace_seconds,
            cost_metric=fv.cost_metric,
            cost_target=fv.cost_target,
            cost_alpha=fv.cost_alpha,
            cost_beta=fv.cost_beta,
            pruner=fv.pruner,
            pruner_startup_trials=fv.pruner_startup_trials,
            pruner_warmup_steps=fv.pruner_warmup_steps,
            pruner_reduction_factor=fv.pruner_reduction_factor,
            prefilter=fv.prefilter,
            prefilter_ratio=fv.prefilter_ratio,
            zero_cost_scores=fv.zero_cost_scores,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def run(config, fv: flags.FlagValues = flags.FLAGS) -> dict:
    """Runs the search; a search_dir started with other flags is an ``app.UsageError`` naming the flag."""
    from deeplab_dpc.nas import executors  # noqa: PLC0415
    from deeplab_dpc.nas.search_config import ConfigMismatch  # noqa: PLC0415

    try:
        return executors.run_search(config)
    except ConfigMismatch as e:
        flag = FIELD_TO_FLAG.get(e.key, e.key) if e.key else e.field
        detail = str(e).split("=", 1)[1] if "=" in str(e) else str(e)
        raise app.UsageError(f"--{flag}={detail}") from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags(flags.FLAGS)
    from deeplab_dpc.nas.executors import SearchError  # noqa: PLC0415

    # SIGTERM stops like Ctrl-C: workers are stopped and their running trials queued for a retry now.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        run(config)
    except SearchError as e:
        sys.stderr.write(f"search stopped: {e}\n")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted: run the same command again to continue the search\n")
        sys.exit(130)


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
