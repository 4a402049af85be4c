"""The fidelity set's ground truth: each cell fine-tuned end to end and scored, one record file, resumable.

``bench/fidelity_truth.py`` is the command; ``deeplab_dpc.nas.fidelity`` reads the record it writes
(``bench/data/camvid_fidelity.json``) as the truth proxies are ranked against.

Every (cell, steps, seed) trains with one ``TrainConfig`` (the protocol), the cell replacing the
model's context module, in ``<runs_dir>/<cell>/steps<N>_seed<S>``, from the protocol's
``tf_initial_checkpoint`` (weights copied by path and shape: the backbone and decoder; the cell is
fresh), and is scored by ``eval_lib`` on the protocol's ``eval_split`` at ``eval_crop_size``. The
name ``CONTINUED`` is not a cell of the set but the checkpoint's own ASPP head (``context=aspp``,
every weight restored) trained on under the same protocol: the check that the protocol does not
damage what it starts from.

The record is written atomically after each finished run, so a killed job loses at most the run in
progress (which ``train`` resumes from its checkpoint). Its ``protocol`` (the training settings but
the cell, the budget, the seed and the machine's paths) is set by its first run; a run with other
settings is refused naming the fields, so one file never mixes protocols.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from deeplab_dpc.console import format_duration
from deeplab_dpc.fileio import write_json
from deeplab_dpc.nas.fidelity import Cell, FidelityError, GROUND_TRUTH_FORMAT
from deeplab_dpc.nas.full_training import evaluate_run, release_memory
from deeplab_dpc.nas.rank_correlation import spearman_rho

if TYPE_CHECKING:
    from deeplab_dpc.training.config import TrainConfig

CONTINUED = "aspp_head_continued"
# Flat TrainConfig fields a run may differ in within one record: the cell, budget and seed are the
# experiment; paths belong to the machine; logging and saving change nothing a step computes.
PER_RUN = frozenset({
    "train_logdir", "training_number_of_steps", "seed", "data.dataset_dir", "tf_initial_checkpoint",
    "model.dense_prediction_cell", "model.context", "log_steps", "save_interval_secs",
})


class ProtocolMismatch(FidelityError):
    """The record holds runs made with other training settings."""


def protocol_of(config: "TrainConfig") -> dict[str, Any]:
    """The settings every run of one record shares (flat field names, JSON values)."""
    from deeplab_dpc.training.config import _flat  # noqa: PLC0415

    return {k: v for k, v in sorted(_flat(config.to_dict()).items()) if k not in PER_RUN}


def empty_record() -> dict[str, Any]:
    return {"format": GROUND_TRUTH_FORMAT, "cells_file": None, "chosen_steps": None, "protocol": None, "runs": []}


def read_record(path: str) -> dict[str, Any]:
    """The record at ``path`` (an empty one if there is no file)."""
    if not os.path.exists(path):
        return empty_record()
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise FidelityError(f"{path}: cannot read the ground-truth record: {e}") from None


def check_protocol(record: Mapping[str, Any], protocol: Mapping[str, Any], path: str) -> None:
    """``ProtocolMismatch`` naming each field if ``protocol`` is not the record's."""
    saved = record.get("protocol")
    if not saved:
        return
    absent = "<absent>"
    changed = [(k, saved.get(k, absent), v) for k, v in protocol.items() if saved.get(k, absent) != v]
    changed += [(k, v, absent) for k, v in saved.items() if k not in protocol]
    if changed:
        listed = "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}" for k, a, b in changed)
        raise ProtocolMismatch(
            f"{path} holds runs made with other training settings ({listed}); use its settings or another file"
        )


def run_config(template: "TrainConfig", name: str, cell: Cell | None, steps: int, seed: int, runs_dir: str):
    """The training of one (cell, steps, seed); ``cell`` None: the checkpoint's own ASPP head."""
    if cell is None:
        model = dataclasses.replace(template.model, context="aspp", dense_prediction_cell=None)
    else:
        model = dataclasses.replace(template.model, context="dpc", dense_prediction_cell=cell.spec)
    return dataclasses.replace(
        template, model=model, training_number_of_steps=steps, seed=seed,
        train_logdir=os.path.join(os.path.abspath(runs_dir), name, f"steps{steps}_seed{seed}"),
    )


def _key(run: Mapping[str, Any]) -> tuple:
    return run["cell"], run["steps"], run["seed"]


def pending(record: Mapping[str, Any], names: Sequence[str], steps: int, seeds: Sequence[int]) -> list:
    """(name, seed) pairs with no run in ``record`` at ``steps``, seed-major (every cell's first seed
    before any second seed: a cut-short job leaves a whole seed, not half the cells twice)."""
    done = {_key(r) for r in record.get("runs", [])}
    return [(n, s) for s in seeds for n in names if (n, steps, s) not in done]


def run_ground_truth(
    template: "TrainConfig",
    cells: Sequence[Cell],
    names: Sequence[str],
    seeds: Sequence[int],
    output_json: str,
    runs_dir: str,
    cells_file: str,
    command: str,
    say: Callable[[str], None] = print,
    train_fn: Callable | None = None,
    evaluate_fn: Callable | None = None,
    reuse_from: Sequence[str] = (),
) -> dict[str, Any]:
    """Trains and scores every (name, seed) without a run in ``output_json`` at the template's budget.

    Args:
        template: the protocol (its cell and seed are replaced per run).
        cells: the cell set; ``names`` picks among them and ``CONTINUED``.
        seeds: one run per seed.
        output_json: the record; written after each run.
        runs_dir: where the run folders go.
        cells_file, command: written into the record (where the cells come from, how it was made).
        say: progress lines.
        train_fn, evaluate_fn: ``train_lib.train`` and ``full_training.evaluate_run`` (tests pass fakes).
        reuse_from: other records made under the same protocol (the fidelity set's ground truth): their
            runs of these cells (by graph hash), budget and seeds are copied into ``output_json`` instead of
            trained again. A record under another protocol is refused (``ProtocolMismatch``), never
            silently mixed in.

    Returns:
        The record as written.

    Raises:
        FidelityError: a name not in the set; ``ProtocolMismatch``: the record's protocol differs.
    """
    if train_fn is None or evaluate_fn is None:
        from deeplab_dpc.training.train_lib import train  # noqa: PLC0415

        train_fn, evaluate_fn = train_fn or train, evaluate_fn or evaluate_run
    by_name = {c.name: c for c in cells}
    unknown = [n for n in names if n not in by_name and n != CONTINUED]
    if unknown:
        raise FidelityError(f"names {unknown} are not cells of {cells_file} (valid: {[*by_name, CONTINUED]})")
    protocol = protocol_of(template)
    check_protocol(read_record(output_json), protocol, output_json)
    steps = template.training_number_of_steps
    if reuse_from:
        copied = reuse_runs(reuse_from, output_json, protocol, by_name, names, steps, seeds, cells_file)
        say(f"{copied} runs reused from {', '.join(reuse_from)} (same protocol)")
    todo = pending(read_record(output_json), names, steps, seeds)
    total = len(names) * len(seeds)
    say(f"{total - len(todo)} of {total} runs recorded; {len(todo)} to train at {steps} steps")
    spent: list[float] = []
    for i, (name, seed) in enumerate(todo, 1):
        cell = by_name.get(name)
        config = run_config(template, name, cell, steps, seed, runs_dir)
        eta = format_duration(float(np.mean(spent)) * (len(todo) - i + 1)) if spent else "unknown"
        say(f"[{i}/{len(todo)}] {name} seed {seed}: training in {config.train_logdir} | ETA {eta}")
        began, cpu = time.time(), time.process_time()
        try:
            train_fn(config, verbose=2)
            result = evaluate_fn(config, config.eval_split or "val", config.eval_crop_size)
        finally:
            release_memory()
        run = {
            "cell": name,
            "graph_hash": cell.graph_hash if cell else None,
            "steps": steps,
            "seed": seed,
            "miou": float(result["miou"]),
            "pixel_accuracy": float(result["pixel_accuracy"]),
            "seconds": round(time.time() - began, 1),
            "cpu_seconds": round(time.process_time() - cpu, 1),
            "date": datetime.date.today().isoformat(),
            "command": command,
        }
        spent.append(run["seconds"])
        record = read_record(output_json)  # as on disk now: another job may have added runs
        check_protocol(record, protocol, output_json)
        record.update(cells_file=cells_file, protocol=protocol)
        record["runs"] = [r for r in record["runs"] if _key(r) != _key(run)] + [run]
        write_json(output_json, record)
        say(f"[{i}/{len(todo)}] {name} seed {seed}: val mIoU {100 * run['miou']:.2f} in "
            f"{format_duration(run['seconds'])}")
    return read_record(output_json)


def reuse_runs(
    sources: Sequence[str],
    output_json: str,
    protocol: Mapping[str, Any],
    by_name: Mapping[str, Cell],
    names: Sequence[str],
    steps: int,
    seeds: Sequence[int],
    cells_file: str,
) -> int:
    """Copies the runs of ``sources`` (records of the same protocol) that ``output_json`` lacks: for
    each of ``names`` at ``steps`` and ``seeds``, a run of the same graph (by hash: the same cell may
    have another name there, such as a search's winner that was its rank 2) or, for ``CONTINUED``, of
    that name. Written atomically under the name asked for; returns the number copied."""
    record = read_record(output_json)
    done = {_key(r) for r in record.get("runs", [])}
    copied: list[dict[str, Any]] = []
    for source in sources:
        record_from = read_record(source)
        if not record_from.get("runs"):
            raise FidelityError(f"{source}: no runs to reuse")
        check_protocol(record_from, protocol, source)
        for name in names:
            cell = by_name.get(name)
            for run in record_from["runs"]:
                same = run.get("graph_hash") == cell.graph_hash if cell else (
                    run["cell"] == name and run.get("graph_hash") is None
                )
                key = (name, run["steps"], run["seed"])
                if same and run["steps"] == steps and run["seed"] in seeds and key not in done:
                    copied.append({**run, "cell": name, "reused_from": f"{source}: {run['cell']}"})
                    done.add(key)
    if copied:
        record.update(cells_file=cells_file, protocol=dict(protocol))
        record["runs"] = list(record.get("runs", [])) + copied
        write_json(output_json, record)
    return len(copied)


# --------------------------------------------------------------------------- is the order the cells'?


def scores_by_budget(record: Mapping[str, Any], exclude=(CONTINUED,)) -> dict[int, dict[str, dict[int, float]]]:
    """``{steps: {cell: {seed: miou}}}`` of the record's runs (``exclude``: names left out)."""
    out: dict[int, dict[str, dict[int, float]]] = {}
    for r in record.get("runs", []):
        if r["cell"] not in exclude:
            out.setdefault(r["steps"], {}).setdefault(r["cell"], {})[r["seed"]] = float(r["miou"])
    return out


def seed_study(scores: Mapping[str, Mapping[int, float]]) -> dict[str, Any] | None:
    """Is the order at one budget the cells' or the seeds'? Over the cells with two or more seeds:

    * ``rho_between_seeds``: Spearman's rho between the cells' scores at their first two seeds;
    * ``seed_noise``: the pooled within-cell standard deviation of one run (what a single run's score
      may be off by);
    * ``interaction_noise``: the same after removing what a seed does to every cell alike (runs of one
      seed share the data order): the residual standard deviation of the two-way additive model cell +
      seed, over the cells run at every common seed. This is the noise in the cells' order, as every
      cell is run at the same seeds;
    * ``spread``: the standard deviation of the cells' means;
    * ``ratio`` (``seed_noise / spread``) and ``interaction_ratio``: the budget is long enough when
      under a third.

    None below 3 cells.
    """
    paired = {c: dict(sorted(s.items())) for c, s in scores.items() if len(s) >= 2}
    if len(paired) < 3:
        return None
    first = [list(s.values())[0] for s in paired.values()]
    second = [list(s.values())[1] for s in paired.values()]
    noise = float(np.sqrt(np.mean([np.var(list(s.values()), ddof=1) for s in paired.values()])))
    spread = float(np.std([np.mean(list(s.values())) for s in paired.values()], ddof=1))
    common = sorted(set.intersection(*(set(s) for s in paired.values())))
    interaction = float("nan")
    if len(common) >= 2:
        table = np.array([[s[k] for k in common] for s in paired.values()])  # cells x seeds
        residual = table - table.mean(1, keepdims=True) - table.mean(0, keepdims=True) + table.mean()
        interaction = float(np.sqrt(np.sum(residual**2) / ((table.shape[0] - 1) * (table.shape[1] - 1))))
    return {
        "cells": len(paired),
        "rho_between_seeds": spearman_rho(first, second),
        "seed_noise": noise,
        "interaction_noise": interaction,
        "spread": spread,
        "ratio": noise / spread if spread > 0 else float("inf"),
        "interaction_ratio": interaction / spread if spread > 0 else float("inf"),
    }


def budget_rho(scores: Mapping[int, Mapping[str, Mapping[int, float]]], a: int, b: int) -> tuple[float, int]:
    """Spearman's rho between the cells' mean scores at budgets ``a`` and ``b``, and the cells compared
    (those with runs at both); NaN below 3 cells."""
    common = [c for c in scores.get(a, {}) if c in scores.get(b, {})]
    if len(common) < 3:
        return float("nan"), len(common)
    mean = lambda steps, c: float(np.mean(list(scores[steps][c].values())))  # noqa: E731
    return spearman_rho([mean(a, c) for c in common], [mean(b, c) for c in common]), len(common)


def report_lines(record: Mapping[str, Any]) -> list[str]:
    """Per budget each cell's seeds, mean and sample standard deviation (ddof 1, from 2 seeds on; best mean
    first), the seed study, and rho between budgets."""
    lines = []
    with_control = scores_by_budget(record, exclude=())
    scores = scores_by_budget(record)
    for steps, cells in sorted(with_control.items()):
        lines.append(f"{steps} steps: val mIoU per seed and mean")
        means = {c: float(np.mean(list(s.values()))) for c, s in cells.items()}
        for cell in sorted(cells, key=lambda c: -means[c]):
            per = " ".join(f"s{k}={100 * v:.2f}" for k, v in sorted(cells[cell].items()))
            runs = list(cells[cell].values())
            sd = f" ± {100 * np.std(runs, ddof=1):.2f}" if len(runs) >= 2 else ""
            lines.append(f"  {cell:28s} {per:33s} mean {100 * means[cell]:.2f}{sd}")
        study = seed_study(scores.get(steps, {}))
        if study:
            lines.append(
                f"  over {study['cells']} cells with 2 seeds: rho(seed a, seed b) {study['rho_between_seeds']:.2f}; "
                f"seed noise {100 * study['seed_noise']:.2f} ({100 * study['interaction_noise']:.2f} without the "
                f"seeds' common effect), spread across cells {100 * study['spread']:.2f}: ratio "
                f"{study['ratio']:.2f} ({study['interaction_ratio']:.2f}; < 0.33 wanted)"
            )
    budgets = sorted(scores)
    for i, a in enumerate(budgets):
        for b in budgets[i + 1:]:
            rho, n = budget_rho(scores, a, b)
            if n >= 3:
                lines.append(f"rho({a} steps, {b} steps) over {n} cells, means over seeds: {rho:.2f}")
    return lines
