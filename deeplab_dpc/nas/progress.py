"""What a person sees of a running search: one line per finished trial, a live status line with
the ETA, TensorBoard's HParams dashboard, and ``best_proxy_cell.json``.

The driver calls ``SearchProgress.update`` with the study's trials every
second or so; it reports each trial once, whoever ran it (a worker process, a
Ray task, another machine), so the same code serves every executor.

TensorBoard: ``<search_dir>/tensorboard`` holds the HParams experiment (each
branch's input and op as hyperparameters; proxy mIoU, parameters and
multiply-adds as metrics) and one run folder per trial (``trial_00012``) with
its session and metrics. The protocol buffers come from TensorBoard's hparams
plugin (no TensorFlow needed) and are written by ``deeplab_dpc.summaries``.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Iterable, Sequence, TextIO

from optuna.trial import FrozenTrial, TrialState

from deeplab_dpc import summaries
from deeplab_dpc.console import format_duration
from deeplab_dpc.core.spec import CellSpec, SearchSpace
from deeplab_dpc.fileio import write_bytes_atomically
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas import zero_cost as zero_cost_lib
from deeplab_dpc.nas.search_config import BEST_PROXY_CELL, SearchConfig

METRICS = (
    ("proxy/miou", "miou", "proxy mIoU"),
    ("proxy/params", "params", "parameters"),
    ("proxy/madds", "madds", "multiply-adds"),
    ("proxy/seconds", "seconds", "trial seconds"),
)


def format_madds(madds: float) -> str:
    """``0.21 GMAdds``; below 10 million, ``2.4 MMAdds`` (small proxy cells would all read 0.00 G)."""
    return f"{madds / 1e9:.2f} GMAdds" if madds >= 1e7 else f"{madds / 1e6:.1f} MMAdds"


def trial_line(trial: FrozenTrial) -> str:
    """One line for a finished trial: ``trial 12 done: proxy mIoU 0.412, 0.21 GMAdds, 31 s``."""
    attrs = trial.user_attrs
    if trial_store.is_interrupted(trial):
        return f"trial {trial.number} interrupted: {attrs.get(trial_store.ERROR, '')}"
    if trial.state == TrialState.FAIL:
        prefix = f"trial {trial.number} failed"
        return f"{prefix}: {attrs.get(trial_store.ERROR, 'unknown error')}".splitlines()[0][:300]
    if trial_store.is_prefiltered(trial):
        scores = [
            f"{name} {float(attrs[trial_store.zero_cost_attr(name)]):.4g}"
            for name in zero_cost_lib.SCORES
            if trial_store.zero_cost_attr(name) in attrs
        ]
        score = f" ({', '.join(scores)})" if scores else " (not scored)"
        return (
            f"trial {trial.number} pre-filtered{score}: trial {attrs.get(trial_store.PREFILTER_WINNER)} "
            "chosen instead (not trained)"
        )
    if trial.state == TrialState.PRUNED:
        step = attrs.get(trial_store.PRUNED_AT_STEP)
        value = trial_store.trial_score(trial)
        score = "" if value is None else f": proxy mIoU {value:.3f} then"
        copy = ""
        if trial_store.is_duplicate(trial):
            copy = f" (duplicate of trial {attrs[trial_store.DUPLICATE_OF]}, not retrained)"
        return f"trial {trial.number} pruned at step {step}{score}{copy}"
    if attrs.get("score") is not None and attrs.get("miou") is not None:  # a cost-aware search
        parts = [f"score {trial.value:.3f} (proxy mIoU {float(attrs['miou']):.3f})"]
    else:
        parts = [f"proxy mIoU {trial_store.trial_score(trial):.3f}"]
    if attrs.get(trial_store.STAGE) == 2:  # two-stage evaluation: the value is the end-to-end score
        parts = [f"stage 2 mIoU {float(attrs[trial_store.FULL_MIOU]):.3f}", f"proxy mIoU {float(attrs['miou']):.3f}"]
    elif attrs.get(trial_store.STAGE) == 1:
        parts[0] += " (stopped after stage 1)"
    if attrs.get("madds") is not None:
        parts.append(format_madds(float(attrs["madds"])))
    if trial_store.is_duplicate(trial):
        return (
            f"trial {trial.number} duplicate of trial {attrs[trial_store.DUPLICATE_OF]}: "
            + ", ".join(parts)
            + " (not retrained)"
        )
    if attrs.get("seconds") is not None:
        parts.append(format_duration(float(attrs["seconds"])))
    how = ""
    if attrs.get(trial_store.REFERENCE):
        how = f" [{attrs[trial_store.REFERENCE]}]"
    elif attrs.get(trial_store.RETRY_OF) is not None:
        how = f" [retry of trial {attrs[trial_store.RETRY_OF]}]"
    return f"trial {trial.number} done: " + ", ".join(parts) + how


# --------------------------------------------------------------------------- TensorBoard HParams


def _hparams_value(tag: str, plugin_data) -> bytes:
    from tensorboard.compat.proto import summary_pb2  # noqa: PLC0415
    from tensorboard.plugins.hparams import metadata  # noqa: PLC0415

    value = summary_pb2.Summary.Value(
        tag=tag, metadata=metadata.create_summary_metadata(plugin_data), tensor=metadata.NULL_TENSOR
    )
    return value.SerializeToString()


def write_hparams_experiment(logdir: str, space: SearchSpace) -> None:
    """The experiment (hyperparameters with their domains, metrics) in ``logdir``, once."""
    from google.protobuf import struct_pb2  # noqa: PLC0415
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2  # noqa: PLC0415

    marker = os.path.join(logdir, "hparams_experiment.done")
    if os.path.exists(marker):
        return
    infos = []
    for name, dist in space_lib.distributions(space).items():
        values = struct_pb2.ListValue()
        if name.endswith("_input"):
            values.values.extend(struct_pb2.Value(number_value=float(c)) for c in dist.choices)
            kind = api_pb2.DATA_TYPE_FLOAT64
        else:
            values.values.extend(struct_pb2.Value(string_value=c) for c in dist.choices)
            kind = api_pb2.DATA_TYPE_STRING
        infos.append(api_pb2.HParamInfo(name=name, type=kind, domain_discrete=values))
    metrics = [
        api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=label) for tag, _, label in METRICS
    ]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metrics, time_created_secs=time.time())
    data = plugin_data_pb2.HParamsPluginData(version=0, experiment=experiment)
    summaries.write_values(logdir, 0, [_hparams_value(metadata.EXPERIMENT_TAG, data)])
    write_bytes_atomically(marker, b"")


def write_hparams_trial(logdir: str, trial: FrozenTrial) -> bool:
    """The trial's session (hyperparameters, metrics, status) in ``logdir/trial_%05d``, once.

    Written to a temporary folder and renamed, so a folder that exists is complete. Returns False if
    it was already there.
    """
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2  # noqa: PLC0415

    run = os.path.join(logdir, f"trial_{trial.number:05d}")
    if os.path.exists(run):
        return False
    tmp = os.path.join(logdir, f".trial_{trial.number:05d}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    start = plugin_data_pb2.SessionStartInfo(
        group_name=f"trial_{trial.number:05d}",
        start_time_secs=trial.datetime_start.timestamp() if trial.datetime_start else time.time(),
    )
    for name, value in trial.params.items():
        if isinstance(value, str):
            start.hparams[name].string_value = value
        else:
            start.hparams[name].number_value = float(value)
    ok = trial.state == TrialState.COMPLETE
    end = plugin_data_pb2.SessionEndInfo(
        status=api_pb2.STATUS_SUCCESS if ok else api_pb2.STATUS_FAILURE,
        end_time_secs=trial.datetime_complete.timestamp() if trial.datetime_complete else time.time(),
    )
    summaries.write_values(
        tmp,
        0,
        [
            _hparams_value(
                metadata.SESSION_START_INFO_TAG,
                plugin_data_pb2.HParamsPluginData(version=0, session_start_info=start),
            )
        ],
    )
    if ok:
        scalars = {
            tag: float(trial.user_attrs[key])
            for tag, key, _ in METRICS
            if trial.user_attrs.get(key) is not None
        }
        scalars["proxy/miou"] = float(trial_store.trial_score(trial))
        summaries.write_scalars(tmp, 0, scalars)
    summaries.write_values(
        tmp,
        0,
        [
            _hparams_value(
                metadata.SESSION_END_INFO_TAG,
                plugin_data_pb2.HParamsPluginData(version=0, session_end_info=end),
            )
        ],
    )
    try:
        os.rename(tmp, run)
    except OSError:  # Another driver wrote it first.
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    return True


# --------------------------------------------------------------------------- console


class SearchProgress:
    """Reports finished trials once each, keeps a live status line, logs TensorBoard, saves the best cell.

    Args:
        config: the search.
        stream: where lines go (stderr by default); the live line is redrawn in place on a terminal
            and printed at most once a minute otherwise.
        known: trials finished before this run started: not reported again on the console.
    """

    def __init__(
        self, config: SearchConfig, known: Iterable[FrozenTrial] = (), stream: TextIO | None = None
    ):
        self.config = config
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = time.time()
        self.reported: set[int] = {t.number for t in known if t.state.is_finished()}
        self.finished_this_run = 0
        self.best: FrozenTrial | None = None
        self._logged: set[int] = set()
        self._live = ""
        self._last_live_print = 0.0
        os.makedirs(config.tensorboard_dir, exist_ok=True)
        write_hparams_experiment(config.tensorboard_dir, config.space)

    def _print(self, line: str) -> None:
        if self.tty and self._live:
            self.stream.write("\r\033[K")
        self.stream.write(line + "\n")
        if self.tty and self._live:
            self.stream.write(self._live)
        self.stream.flush()

    def message(self, line: str) -> None:
        self._print(line)

    def update(self, trials: Sequence[FrozenTrial], workers: int | None = None) -> None:
        for trial in sorted(trials, key=lambda t: t.number):
            if not trial.state.is_finished():
                continue
            if trial.number not in self._logged:
                if not (
                    trial_store.is_duplicate(trial)
                    or trial_store.is_interrupted(trial)
                    or trial_store.is_prefiltered(trial)
                ):
                    write_hparams_trial(self.config.tensorboard_dir, trial)  # once, also across restarts
                self._logged.add(trial.number)
            if trial.number in self.reported:
                continue
            self.reported.add(trial.number)
            if trial_store.counts_toward_budget(trial):
                self.finished_this_run += 1
            self._print(trial_line(trial))
        self._update_best(trials)
        self._live_line(trials, workers)

    def _update_best(self, trials: Sequence[FrozenTrial]) -> None:
        done = [t for t in trials if t.state == TrialState.COMPLETE and not trial_store.is_duplicate(t)]
        if not done:
            return
        best = max(done, key=lambda t: (trial_store.trial_score(t), -t.number))
        if self.best is None or best.number != self.best.number:
            self.best = best
            spec = space_lib.params_to_spec(best.params, self.config.space)
            spec.save(os.path.join(self.config.search_dir, BEST_PROXY_CELL))

    def status(self, trials: Sequence[FrozenTrial], workers: int | None = None) -> str:
        done = sum(t.state == TrialState.COMPLETE and not trial_store.is_duplicate(t) for t in trials)
        failed = sum(t.state == TrialState.FAIL and trial_store.counts_toward_budget(t) for t in trials)
        pruned = sum(
            t.state == TrialState.PRUNED and not trial_store.is_duplicate(t) and not trial_store.is_prefiltered(t)
            for t in trials
        )
        prefiltered = sum(trial_store.is_prefiltered(t) for t in trials)
        running = sum(  # a group of proposals being pre-filtered is one trial
            t.state == TrialState.RUNNING and trial_store.prefilter_pending(t) in (None, t.number) for t in trials
        )
        duplicates = sum(trial_store.is_duplicate(t) and t.state.is_finished() for t in trials)
        remaining = max(0, self.config.max_trials - trial_store.budget_used(trials)) + running
        elapsed = time.time() - self.start
        parallel = max(1, workers or self.config.num_workers)
        if self.finished_this_run:
            eta = remaining * elapsed / self.finished_this_run
            if self.config.max_hours is not None:
                eta = min(eta, self.config.max_hours * 3600 - elapsed)
            eta_text = format_duration(eta)
        else:
            eta_text = "?"
        best = f"best {trial_store.trial_score(self.best):.3f} (trial {self.best.number})" if self.best else "best -"
        return (
            f"[{done + pruned + failed}/{self.config.max_trials} trials: {done} done, "
            + (f"{pruned} pruned, " if self.config.pruner != "none" else "")
            + f"{failed} failed, {running} running"
            f" on {parallel} workers, {duplicates} duplicates"
            + (f", {prefiltered} pre-filtered" if self.config.prefilter_ratio > 1 else "")
            + f"] {best} | ETA {eta_text}"
        )

    def _live_line(self, trials: Sequence[FrozenTrial], workers: int | None) -> None:
        line = self.status(trials, workers)
        if self.tty:
            self._live = line
            self.stream.write("\r\033[K" + line)
            self.stream.flush()
        elif line != self._live and time.time() - self._last_live_print >= 60:
            self._last_live_print = time.time()
            self.stream.write(line + "\n")
            self.stream.flush()
            self._live = ""

    def close(self, trials: Sequence[FrozenTrial]) -> None:
        if self.tty and self._live:
            self.stream.write("\n")
        self._live = ""
        self.stream.write(self.status(trials) + "\n")
        self.stream.flush()


def best_trials(trials: Sequence[FrozenTrial], k: int) -> list[FrozenTrial]:
    """The ``k`` best completed trials (duplicates left out), best first."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and not trial_store.is_duplicate(t)]
    return sorted(done, key=lambda t: (-trial_store.trial_score(t), t.number))[:k]


def spec_of(trial: FrozenTrial, space: SearchSpace) -> CellSpec:
    return space_lib.params_to_spec(trial.params, space)
