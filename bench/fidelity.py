r"""How faithfully a proxy ranks cells: its scores on the fidelity set against their end-to-end mIoU.

    python bench/fidelity.py --cache_dir=runs/camvid/features --proxy_steps=300 --proxy_filters=64 \
        --seeds=0,1 --output_json=runs/camvid/fidelity/proxy_300.json --name='proxy 300 steps'

    python bench/fidelity.py --cache_dir=runs/camvid/features --score=synflow \
        --output_json=runs/camvid/fidelity/synflow.json

The flags are ``deeplab_dpc.proxy_train``'s (the proxy config: a flagfile of proxy_train works
unchanged, its cell aside: each cell of the set is scored), plus:

* ``--cells``: the fidelity set (``experiments/camvid/fidelity_cells.json``);
* ``--ground_truth``: the cells' end-to-end runs (``bench/data/camvid_fidelity.json``, made by
  ``bench/fidelity_truth.py``); a cell's truth is its mean val mIoU over seeds at the file's
  ``chosen_steps`` or ``--truth_steps``; cells without runs at that budget are left out of the
  figures but scored all the same (a later summary, once their runs exist, needs no new trial; with
  no ground truth at all the command only scores);
* ``--seeds``: the proxy seeds each cell is scored at (its score: the mean); default ``--seed``;
* ``--score``: ``proxy`` trains each cell (``run_proxy``); ``synflow``, ``grad_norm``, ``snip``,
  ``naswot``, ``zico`` are zero-cost scores of ``deeplab_dpc.nas.zero_cost`` on the same features;
* ``--output_json``: every trial, written after each one: rerunning the command resumes; a file
  recorded with another config (any ProxyConfig field but the seed) or score is refused;
* ``--name``: the label of the table row; ``--bootstrap``: resamples of the 90% intervals.

Prints a line per finished trial with the ETA, then the figures as one markdown row (Spearman's rho and
Kendall's tau-b with 90% bootstrap intervals over cells, top-5 recall, rho over the better half of the
cells by ground truth, CPU seconds per cell over all its seeds, cells scored) and the command that made
them; writes the figures into ``--output_json`` (``summary``). Run it alone on the machine: the CPU
seconds are the process's (``time.process_time``), the wall seconds are in the file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shlex
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_dpc import cli  # noqa: E402  (first: it quiets TensorFlow's start-up)
from deeplab_dpc import proxy_train  # noqa: E402
from deeplab_dpc import rerank as rerank_main  # noqa: E402
from deeplab_dpc.nas import fidelity  # noqa: E402  (no TensorFlow: it is imported when a trial runs)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    """proxy_train's flags (the ProxyConfig) and the benchmark's."""
    f = dict(flag_values=fv)
    proxy_train.define_flags(fv)
    flags.DEFINE_string("cells", "experiments/camvid/fidelity_cells.json", "The fidelity set of cells.", **f)
    flags.DEFINE_string(
        "ground_truth",
        "bench/data/camvid_fidelity.json",
        "The cells' end-to-end runs (bench/fidelity_truth.py).",
        **f,
    )
    flags.DEFINE_integer(
        "truth_steps", None, "The training budget of the ground truth (default: the file's chosen_steps).", **f
    )
    flags.DEFINE_list("seeds", None, "Seeds each cell is scored at, its score the mean (default: --seed).", **f)
    flags.DEFINE_enum(
        "score",
        "proxy",
        list(fidelity.SCORES),
        "proxy: train each cell (run_proxy); the others: a zero-cost score (deeplab_dpc.nas.zero_cost).",
        **f,
    )
    flags.DEFINE_string("name", None, "Label of the table row (default: the score and its budget).", **f)
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of each 90% interval.", **f)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    """What to score and against what.

    Args:
        proxy: the ``ProxyConfig`` (its seed replaced by each of ``seeds``).
        cells: the fidelity set's file.
        ground_truth: the ground truth's file.
        truth_steps: the ground truth's budget; None: the file's ``chosen_steps``.
        seeds: the seeds each cell is scored at.
        score: the scorer (``fidelity.SCORES``).
        output_json: the results file (resumable).
        name: the table row's label.
        bootstrap: resamples of each interval.
    """

    proxy: object
    cells: str
    ground_truth: str
    truth_steps: int | None
    seeds: tuple[int, ...]
    score: str
    output_json: str
    name: str
    bootstrap: int


def config_from_flags(fv: flags.FlagValues) -> BenchConfig:
    """Flags -> ``BenchConfig``; every error is an ``app.UsageError`` naming its flag."""
    if fv.dense_prediction_cell_json:
        raise app.UsageError(
            f"--dense_prediction_cell_json={fv.dense_prediction_cell_json}: every cell of --cells is scored; "
            "drop the flag"
        )
    if not fv.output_json:
        raise app.UsageError("--output_json is required: every trial is recorded there (a rerun resumes)")
    if fv.seeds is not None and fv["seed"].present:
        raise app.UsageError("--seed and --seeds: give one (--seeds=0,1 scores each cell at both)")
    try:
        seeds = tuple(int(s) for s in (fv.seeds if fv.seeds is not None else [fv.seed]))
    except ValueError:
        raise app.UsageError(f"--seeds={','.join(fv.seeds)}: expected integers") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise app.UsageError(f"--seeds={','.join(map(str, seeds))}: expected distinct integers >= 0")
    if fv.bootstrap < 1:
        raise app.UsageError(f"--bootstrap={fv.bootstrap} must be a positive integer")
    if fv.truth_steps is not None and fv.truth_steps < 1:
        raise app.UsageError(f"--truth_steps={fv.truth_steps} must be a positive integer")
    work = copy.deepcopy(fv)  # proxy_train's own parsing, with a stand-in cell
    with rerank_main._placeholder_cell() as placeholder:
        work.dense_prediction_cell_json = str(placeholder)
        _, proxy = proxy_train.config_from_flags(work)
    name = fv.name
    if not name:
        name = fv.score
        if fv.score == fidelity.PROXY:
            name = f"proxy {proxy.proxy_steps} steps, {proxy.proxy_filters} filters"
    return BenchConfig(
        proxy=proxy,
        cells=fv.cells,
        ground_truth=fv.ground_truth,
        truth_steps=fv.truth_steps,
        seeds=seeds,
        score=fv.score,
        output_json=fv.output_json,
        name=name,
        bootstrap=fv.bootstrap,
    )


def command_line(argv) -> str:
    return "python bench/fidelity.py " + shlex.join(argv[1:])


def run(config: BenchConfig, command: str, out=None, err=None) -> dict:
    """Scores the set, prints the row and the command, writes the summary; returns it."""
    out, err = out or sys.stdout, err or sys.stderr

    def log(line: str) -> None:
        err.write(line + "\n")
        err.flush()

    out.write(f"command: {command}\n")
    out.flush()
    try:
        cells = fidelity.load_cells(config.cells)
        scorer = fidelity.get_scorer(config.score)  # a missing zero-cost module fails here, before any trial
    except fidelity.FidelityError as e:
        raise app.UsageError(str(e)) from None
    # Every cell of the set is scored, with ground truth or not yet: the proxy's scores do not depend on
    # it, so a results file made while the ground truth grows is summarised again without a new trial.
    log(f"scoring {len(cells)} cells x seeds {list(config.seeds)} with {config.score}; results: {config.output_json}")
    try:
        scores = fidelity.score_proxy(
            cells, config.proxy, config.seeds, config.output_json, score=config.score, scorer=scorer, log=log
        )
    except fidelity.ConfigMismatch as e:
        flagged = ", ".join(f"--{proxy_train.FIELD_TO_FLAG.get(k, k)}" for k in e.fields)
        raise app.UsageError(f"--output_json={config.output_json}: {e} (flags: {flagged})") from None
    except fidelity.FidelityError as e:
        raise app.UsageError(f"--output_json={config.output_json}: {e}") from None
    try:
        truth = fidelity.load_ground_truth(config.ground_truth, config.truth_steps, cells)
    except fidelity.FidelityError as e:
        out.write(f"\nno ground truth to rank against ({e}); the scores are in {config.output_json}\n")
        return {"name": config.name, "scores": scores}
    steps = next(iter(truth.values()))["steps"]
    with open(config.ground_truth, encoding="utf-8") as f:
        outside = sorted({r["cell"] for r in json.load(f)["runs"]} - {c.name for c in cells})
    missing = [c.name for c in cells if c.name not in truth]
    log(
        f"ground truth: {len(truth)} of {len(cells)} cells at {steps} steps (mean val mIoU over seeds)"
        + (f"; without runs at {steps} steps, left out: {', '.join(missing)}" if missing else "")
        + (f"; runs outside the set, left out: {', '.join(outside)}" if outside else "")
    )
    figures = fidelity.summary(scores, truth, bootstrap=config.bootstrap)
    record = {
        "name": config.name,
        **figures,
        "score": config.score,
        "truth_steps": steps,
        "seeds": list(config.seeds),
        "cells_file": config.cells,
        "ground_truth": config.ground_truth,
        "config": fidelity.recorded_config(config.proxy),
        "command": command,
    }
    fidelity.record_summary(config.output_json, record)
    failed = f", {figures['failed_trials']} failed trials left out" if figures["failed_trials"] else ""
    unscored = figures["cells_without_score"]
    out.write(
        f"\n{figures['n']} cells scored (ground truth at {steps} steps; "
        f"proxy seeds {list(config.seeds)}{failed})"
        + (f"; no proxy score: {', '.join(unscored)}" if unscored else "")
        + "\n\n"
    )
    out.write(fidelity.TABLE_HEADER + "\n")
    out.write(fidelity.table_row(config.name, figures) + "\n\n")
    out.write(f"command: {command}\n")
    out.flush()
    return record


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    run(config_from_flags(flags.FLAGS), command_line(sys.argv))


if __name__ == "__main__":
    define_flags()
    app.run(main)
