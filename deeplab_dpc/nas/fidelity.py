"""How well a proxy ranks cells: its scores on a fixed set of cells against their end-to-end mIoU.

Two files describe the benchmark (``bench/fidelity.py`` reads them; ``load_cells`` and
``load_ground_truth`` validate them, errors naming the file and the field):

* the cell set (``experiments/camvid/fidelity_cells.json``)::

    {"description": "...", "command": "...",
     "cells": [{"name": "published", "group": "reference", "graph_hash": "<CellSpec.canonical_hash()>",
                "spec": [<DeepLab's JSON list of branches>], ...}, ...]}

* the ground truth (``bench/data/camvid_fidelity.json``): end-to-end runs of those cells::

    {"format": 1, "cells_file": "...", "chosen_steps": 300, "protocol": {...},
     "runs": [{"cell": "published", "graph_hash": "...", "steps": 300, "seed": 1, "miou": 0.5123, ...}, ...]}

  A cell's truth is its mean mIoU over its runs at one training budget (``chosen_steps``, or the
  budget asked for); cells without runs at that budget are left out.

``score_proxy`` scores each (cell, seed) with a scorer (the proxy trainer by default, or a zero-cost
score of ``deeplab_dpc.nas.zero_cost``), recording every finished trial in a results file written
atomically after each one, so a killed run resumes where it stopped; a results file recorded with
another config is refused, never mixed. A trial that fails (``TrialFailed``: the loss diverged; a
non-finite score) is recorded as failed and left out of the statistics, never scored 0.

``summary`` gives the figures: Spearman's rho and Kendall's tau-b with 90% bootstrap intervals
(cells resampled with replacement), top-5 recall, rho over the better half of the cells by ground
truth, and the CPU seconds a cell cost to score.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from deeplab_dpc.console import format_duration
from deeplab_dpc.core.spec import CellSpec, SpecError
from deeplab_dpc.fileio import write_json
from deeplab_dpc.nas.rank_correlation import spearman_rho

RESULTS_FORMAT = 1
GROUND_TRUTH_FORMAT = 1
PROXY = "proxy"
ZERO_COST_SCORES = ("synflow", "grad_norm", "snip", "naswot", "zico")
SCORES = (PROXY, *ZERO_COST_SCORES)
ZERO_COST_MODULE = "deeplab_dpc.nas.zero_cost"
CI_LEVEL = 0.9
TOP_K = 5
MIN_CELLS = 3  # Below this a rank correlation is +-1 or undefined whatever the proxy: no figure.


class FidelityError(ValueError):
    """A cell set, ground truth or results file that cannot be used; the message names the file and field."""


class ConfigMismatch(FidelityError):
    """A results file recorded with another scorer or config; ``fields`` names what differs."""

    def __init__(self, message: str, fields: Sequence[str]):
        super().__init__(message)
        self.fields = tuple(fields)


@dataclasses.dataclass(frozen=True)
class Cell:
    """One cell of the set.

    Args:
        name: unique within the set; the ground truth's runs name it.
        group: what the cell stands for (``reference``, ``random``, ...); not used in the figures.
        spec: the cell.
        graph_hash: ``spec.canonical_hash()``.
    """

    name: str
    group: str
    spec: CellSpec
    graph_hash: str


# --------------------------------------------------------------------------- the two input files


def _read_json(path: str, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FidelityError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise FidelityError(f"{what} {path} is not valid JSON: {e}") from None


def _require(record: Any, key: str, types, where: str) -> Any:
    if not isinstance(record, dict):
        raise FidelityError(f"{where} must be a JSON object, got {type(record).__name__}")
    if key not in record:
        raise FidelityError(f"{where} has no '{key}'")
    value = record[key]
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise FidelityError(f"{where}.{key}={value!r} must be {_type_names(types)}")
    if not isinstance(value, types):
        raise FidelityError(f"{where}.{key}={value!r} must be {_type_names(types)}")
    return value


def _type_names(types) -> str:
    types = types if isinstance(types, tuple) else (types,)
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }
    return " or ".join(names.get(t, t.__name__) for t in types)


def load_cells(path: str) -> list[Cell]:
    """Reads and validates a cell set.

    Args:
        path: the JSON file (``{"cells": [{"name", "group", "graph_hash", "spec"}, ...]}``; other keys
            are ignored).

    Returns:
        The cells, in the file's order.

    Raises:
        FidelityError: the file is missing or not JSON; a cell lacks a key or has one of the wrong type;
            its spec is not a valid cell; its ``graph_hash`` is not its spec's canonical hash; two cells
            share a name or a graph. The message names the file and the field (``cells[3].graph_hash``).
    """
    data = _read_json(path, "cell set")
    entries = _require(data, "cells", list, f"{path}: the file")
    if not entries:
        raise FidelityError(f"{path}: 'cells' is empty")
    cells: list[Cell] = []
    names: dict[str, int] = {}
    graphs: dict[str, int] = {}
    for i, entry in enumerate(entries):
        where = f"{path}: cells[{i}]"
        name = _require(entry, "name", str, where)
        if not name:
            raise FidelityError(f"{where}.name is empty")
        where = f"{path}: cells[{i}] ({name})"
        group = _require(entry, "group", str, where)
        graph_hash = _require(entry, "graph_hash", str, where)
        raw = _require(entry, "spec", list, where)
        try:
            spec = CellSpec.from_list(raw)
        except SpecError as e:
            raise FidelityError(f"{where}.spec is not a valid cell: {e}") from None
        actual = spec.canonical_hash()
        if graph_hash != actual:
            raise FidelityError(
                f"{where}.graph_hash={graph_hash} does not match its spec, whose canonical hash is {actual}"
            )
        if name in names:
            raise FidelityError(f"{where}.name repeats the name of cells[{names[name]}]")
        if actual in graphs:
            first = graphs[actual]
            raise FidelityError(
                f"{where}.spec is the same graph as cells[{first}] ({entries[first]['name']}): a cell counted "
                "twice weighs twice in the rank statistics"
            )
        names[name] = graphs[actual] = i
        cells.append(Cell(name=name, group=group, spec=spec, graph_hash=actual))
    return cells


def load_ground_truth(
    path: str, steps: int | None = None, cells: Sequence[Cell] | None = None
) -> dict[str, dict[str, Any]]:
    """Reads and validates the ground truth; a cell's truth is its mean mIoU over seeds at one budget.

    Args:
        path: the JSON file (``{"format": 1, "chosen_steps", "runs": [{"cell", "graph_hash", "steps",
            "seed", "miou"}, ...]}``; other keys are ignored).
        steps: the training budget whose runs count; None: the file's ``chosen_steps``, or when that is
            null the one budget its runs share.
        cells: the cell set: only runs of its cells count (others, such as a control run outside the
            set with ``graph_hash`` null, are left out), and each must carry its cell's ``graph_hash``.
            None: every run counts.

    Returns:
        ``{cell name: {"mean": float, "scores": {seed: miou}, "steps": int, "graph_hash": str or None}}``
        for the cells with runs at the budget (the others are left out), in the order of ``cells`` when
        given, else by name.

    Raises:
        FidelityError: a missing key or wrong type, an mIoU outside [0, 1], a run repeated (cell, steps,
            seed), one cell under two graph hashes, a run of a cell of ``cells`` with another hash, no
            budget to choose or no run at the budget. The message names the file and the field.
    """
    data = _read_json(path, "ground truth")
    fmt = _require(data, "format", int, f"{path}: the file")
    if fmt != GROUND_TRUTH_FORMAT:
        raise FidelityError(f"{path}: format={fmt} is unknown (this reader knows {GROUND_TRUTH_FORMAT})")
    if "chosen_steps" not in data:
        raise FidelityError(f"{path}: the file has no 'chosen_steps' (an integer, or null)")
    chosen = data["chosen_steps"]
    if chosen is not None and (isinstance(chosen, bool) or not isinstance(chosen, int) or chosen < 1):
        raise FidelityError(f"{path}: chosen_steps={chosen!r} must be a positive integer or null")
    runs = _require(data, "runs", list, f"{path}: the file")
    by_name = {c.name: c for c in cells} if cells is not None else None
    hashes: dict[str, tuple[str | None, int]] = {}
    seen: dict[tuple[str, int, int], int] = {}
    parsed = []
    for i, run in enumerate(runs):
        where = f"{path}: runs[{i}]"
        name = _require(run, "cell", str, where)
        graph_hash = _require(run, "graph_hash", (str, type(None)), where)
        run_steps = _require(run, "steps", int, where)
        seed = _require(run, "seed", int, where)
        miou = _require(run, "miou", (int, float), where)
        if run_steps < 1:
            raise FidelityError(f"{where}.steps={run_steps} must be a positive integer")
        if not (math.isfinite(miou) and 0 <= miou <= 1):
            raise FidelityError(f"{where}.miou={miou!r} must be a number in [0, 1] (a fraction, not percent)")
        if name in hashes and hashes[name][0] != graph_hash:
            raise FidelityError(
                f"{where}.graph_hash={graph_hash} differs from runs[{hashes[name][1]}].graph_hash="
                f"{hashes[name][0]} of the same cell {name}"
            )
        hashes.setdefault(name, (graph_hash, i))
        key = (name, run_steps, seed)
        if key in seen:
            raise FidelityError(
                f"{where} repeats cell {name}, steps {run_steps}, seed {seed} of runs[{seen[key]}]"
            )
        seen[key] = i
        if by_name is not None:
            if name not in by_name:
                continue  # A run outside the set (a control such as the backbone's own head): not ranked.
            if by_name[name].graph_hash != graph_hash:
                raise FidelityError(
                    f"{where}.graph_hash={graph_hash} is not the graph_hash of cell {name} in the cell set "
                    f"({by_name[name].graph_hash}): the cell set changed since the run"
                )
        parsed.append((name, run_steps, seed, float(miou)))
    budgets = sorted({s for _, s, _, _ in parsed})
    if steps is None:
        steps = chosen
    if steps is None:
        if len(budgets) != 1:
            raise FidelityError(
                f"{path}: chosen_steps is null and the runs have {len(budgets)} budgets {budgets}: "
                "choose one (--truth_steps)"
            )
        steps = budgets[0]
    truth: dict[str, dict[str, Any]] = {}
    for name, run_steps, seed, miou in parsed:
        if run_steps == steps:
            record = truth.setdefault(name, {"scores": {}, "steps": steps, "graph_hash": hashes[name][0]})
            record["scores"][seed] = miou
    if not truth:
        raise FidelityError(f"{path}: no run at {steps} steps (the runs' budgets: {budgets})")
    for record in truth.values():
        record["scores"] = dict(sorted(record["scores"].items()))
        record["mean"] = float(np.mean(list(record["scores"].values())))
    order = [c.name for c in cells] if cells is not None else sorted(truth)
    return {name: truth[name] for name in order if name in truth}


# --------------------------------------------------------------------------- rank statistics


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (``rank_correlation.spearman_rho``: average ranks for ties; NaN without a ranking)."""
    return spearman_rho(x, y)


def _pairs(x, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"{what} needs pairs: {x.shape} x values, {y.shape} y values")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError(f"{what}: values must be finite")
    return x, y


def kendall_tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b: (concordant - discordant) / sqrt((n0 - ties in x) (n0 - ties in y)).

    n0 = n (n - 1) / 2 pairs; a pair tied in x or y is neither concordant nor discordant (scipy's
    ``kendalltau`` default). NaN when fewer than 2 pairs or either side has all values equal.

    Raises:
        ValueError: sequences of different lengths or non-finite values.
    """
    x, y = _pairs(x, y, "kendall_tau")
    n = len(x)
    if n < 2:
        return float("nan")
    upper = np.triu_indices(n, k=1)
    sx = np.sign(x[:, None] - x[None, :])[upper]
    sy = np.sign(y[:, None] - y[None, :])[upper]
    pairs = n * (n - 1) / 2
    untied_x = pairs - np.sum(sx == 0)
    untied_y = pairs - np.sum(sy == 0)
    if untied_x == 0 or untied_y == 0:
        return float("nan")
    return float(np.sum(sx * sy) / math.sqrt(untied_x * untied_y))


def bootstrap_interval(
    stat: Callable[[np.ndarray, np.ndarray], float],
    x: Sequence[float],
    y: Sequence[float],
    n: int = 1000,
    level: float = CI_LEVEL,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap interval of ``stat(x, y)``, resampling the pairs (cells) with replacement.

    Args:
        stat: a statistic of paired values (``spearman``, ``kendall_tau``).
        x, y: paired values, one pair per cell.
        n: resamples drawn; degenerate ones (``stat`` not finite: a resample whose x or y are all
            equal) are skipped.
        level: the interval's coverage, (0, 1).
        seed: the resampling's seed: equal seeds, equal intervals.

    Returns:
        (low, high): the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the statistic over the
        kept resamples; (NaN, NaN) when none is kept.
    """
    x, y = _pairs(x, y, "bootstrap_interval")
    if not 0 < level < 1:
        raise ValueError(f"level={level} must be in (0, 1)")
    if n < 1:
        raise ValueError(f"n={n} must be a positive integer")
    m = len(x)
    if m < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        index = rng.integers(0, m, size=m)
        value = stat(x[index], y[index])
        if math.isfinite(value):
            values.append(value)
    if not values:
        return float("nan"), float("nan")
    tail = (1 - level) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _top(values: np.ndarray, k: int) -> set[int]:
    """Indices of the ``k`` highest values; ties broken by position (the first listed wins)."""
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return set(order[:k])


def top_k_recall(proxy: Sequence[float], truth: Sequence[float], k: int = TOP_K) -> float:
    """The share of the ``k`` best cells by ground truth that are among the ``k`` best by proxy.

    ``|top-k by proxy ∩ top-k by truth| / k``; ties broken by position. NaN when there are ``k`` cells
    or fewer (every cell is in both tops: the figure says nothing).
    """
    proxy, truth = _pairs(proxy, truth, "top_k_recall")
    if k < 1:
        raise ValueError(f"k={k} must be a positive integer")
    if len(proxy) <= k:
        return float("nan")
    return len(_top(proxy, k) & _top(truth, k)) / k


def better_half(truth: Sequence[float]) -> list[int]:
    """Indices of the better half of the cells by ground truth: the ``ceil(n / 2)`` highest, by position."""
    truth = np.asarray(truth, dtype=float)
    return sorted(_top(truth, (len(truth) + 1) // 2))


def spearman_better_half(proxy: Sequence[float], truth: Sequence[float]) -> float:
    """Spearman's rho over the better half of the cells by ground truth (``better_half``): how well the
    proxy orders the cells a search cares about. NaN below 3 cells in that half."""
    proxy, truth = _pairs(proxy, truth, "spearman_better_half")
    index = better_half(truth)
    if len(index) < 3:
        return float("nan")
    return spearman(proxy[index], truth[index])


# --------------------------------------------------------------------------- scorers


Scorer = Callable[[CellSpec, Any, Any], Mapping[str, Any]]


def _proxy_scorer(spec: CellSpec, config, data) -> dict:
    """Trains the cell (``run_proxy``): the score is its val mIoU."""
    from deeplab_dpc.nas import proxy as proxy_lib  # noqa: PLC0415

    result = proxy_lib.run_proxy(spec, config, features=data)
    return {
        "score": float(result["miou"]),
        "miou": float(result["miou"]),
        "train_seconds": float(result["train_seconds"]),
        "final_loss": float(result["final_loss"]),
    }


def _zero_cost_module():
    try:
        module = importlib.import_module(ZERO_COST_MODULE)
    except ModuleNotFoundError as e:
        if e.name in (ZERO_COST_MODULE, *_parents(ZERO_COST_MODULE)):
            raise FidelityError(
                f"zero-cost scores need {ZERO_COST_MODULE} (score_cell), which does not exist in this checkout"
            ) from None
        raise
    if not hasattr(module, "score_cell"):
        raise FidelityError(f"{ZERO_COST_MODULE} has no score_cell(spec, config, data, names=...)")
    return module


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def zero_cost_scorer(name: str) -> Scorer:
    """A scorer for one zero-cost score of ``deeplab_dpc.nas.zero_cost`` (imported here, lazily).

    Raises:
        FidelityError: the module is missing or has no ``score_cell``.
    """
    module = _zero_cost_module()

    def scorer(spec: CellSpec, config, data) -> dict:
        out = module.score_cell(spec, config, data, names=(name,))
        if name not in out:
            raise FidelityError(f"{ZERO_COST_MODULE}.score_cell gave no '{name}' (keys: {sorted(out)})")
        record = {"score": float(out[name])}
        if out.get("seconds") is not None:
            record["score_seconds"] = out["seconds"]
        if out.get("cpu_seconds") is not None:
            record["score_cpu_seconds"] = float(out["cpu_seconds"])
        return record

    scorer.__name__ = f"zero_cost_{name}"
    return scorer


def get_scorer(score: str) -> Scorer:
    """The scorer of a ``--score`` name: ``proxy`` trains the cell; the others are zero-cost scores.

    A scorer is called as ``scorer(spec, config, data)`` (``config``: the ``ProxyConfig`` with the
    trial's seed; ``data``: ``load_proxy_data(config)``) and returns ``{"score": float, ...}``; it
    raises ``TrialFailed`` for a trial that cannot be scored.

    Raises:
        FidelityError: an unknown name, or a zero-cost score whose module is missing.
    """
    if score == PROXY:
        return _proxy_scorer
    if score in ZERO_COST_SCORES:
        return zero_cost_scorer(score)
    raise FidelityError(f"score={score!r} is unknown; valid: {list(SCORES)}")


# --------------------------------------------------------------------------- scoring the cells


def recorded_config(config) -> dict:
    """What a results file records of the config: every field but ``seed`` (each trial has its own)."""
    values = config.to_dict()
    values.pop("seed", None)
    return values


def read_results(path: str) -> dict | None:
    """A results file as ``score_proxy`` wrote it, or None when it does not exist.

    Raises:
        FidelityError: not JSON, or not a results file (format, score, config, trials).
    """
    if not os.path.exists(path):
        return None
    data = _read_json(path, "results file")
    where = f"{path}: the file"
    fmt = _require(data, "format", int, where)
    if fmt != RESULTS_FORMAT:
        raise FidelityError(f"{path}: format={fmt} is unknown (this reader knows {RESULTS_FORMAT})")
    _require(data, "score", str, where)
    _require(data, "config", dict, where)
    trials = _require(data, "trials", list, where)
    for i, trial in enumerate(trials):
        for key, types in (("cell", str), ("graph_hash", str), ("seed", int), ("status", str)):
            _require(trial, key, types, f"{path}: trials[{i}]")
        if trial["status"] == "ok":
            _require(trial, "score", (int, float), f"{path}: trials[{i}]")
    return data


def _check_same_setup(path: str, recorded: Mapping[str, Any], score: str, config: Mapping[str, Any]) -> None:
    differ = []
    if recorded["score"] != score:
        differ.append(("score", recorded["score"], score))
    old = recorded["config"]
    for key in sorted(set(old) | set(config)):
        if old.get(key, "<absent>") != config.get(key, "<absent>"):
            differ.append((key, old.get(key, "<absent>"), config.get(key, "<absent>")))
    if differ:
        text = ", ".join(f"{key}: {a!r} recorded, {b!r} now" for key, a, b in differ)
        raise ConfigMismatch(
            f"{path} holds trials recorded with another setup ({text}); results of two setups are never "
            "mixed: give another results file, or the recorded settings",
            [key for key, _, _ in differ],
        )


def cell_scores(trials: Sequence[Mapping[str, Any]], cells: Sequence[Cell]) -> dict[str, dict[str, Any]]:
    """Per cell, its trials gathered: the score is the mean over the seeds that finished.

    Returns:
        ``{cell name: {"mean": float or None (no trial finished), "scores": {seed: score},
        "failed": {seed: reason}, "cpu_seconds": float, "seconds": float}}`` (the seconds summed over
        its trials, failed ones included: they cost too), for the cells with a trial, in ``cells``'
        order.
    """
    by_hash: dict[str, list[Mapping[str, Any]]] = {}
    for trial in trials:
        by_hash.setdefault(trial["graph_hash"], []).append(trial)
    out: dict[str, dict[str, Any]] = {}
    for cell in cells:
        mine = by_hash.get(cell.graph_hash)
        if not mine:
            continue
        scores = {t["seed"]: float(t["score"]) for t in mine if t["status"] == "ok"}
        failed = {t["seed"]: t.get("reason", "failed") for t in mine if t["status"] != "ok"}
        out[cell.name] = {
            "mean": float(np.mean(list(scores.values()))) if scores else None,
            "scores": dict(sorted(scores.items())),
            "failed": dict(sorted(failed.items())),
            "cpu_seconds": float(sum(t.get("cpu_seconds") or 0.0 for t in mine)),
            "seconds": float(sum(t.get("seconds") or 0.0 for t in mine)),
        }
    return out


def _trial_line(done: int, total: int, cell: Cell, seed: int, record: Mapping[str, Any], eta: float) -> str:
    if record["status"] == "ok":
        what = f"score {record['score']:.4f}"
    else:
        what = f"FAILED ({record.get('reason', '')})"
    return (
        f"[{done}/{total}] {cell.name} seed {seed}: {what}, {format_duration(record['seconds'])} "
        f"(CPU {format_duration(record['cpu_seconds'])}); ETA {format_duration(eta)}"
    )


def score_proxy(
    cells: Sequence[Cell],
    proxy_config,
    seeds: Sequence[int],
    results_path: str,
    *,
    score: str = PROXY,
    scorer: Scorer | None = None,
    data=None,
    log: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Scores each cell at each seed, resuming from (and recording every trial in) ``results_path``.

    Trials run seed by seed (every cell at the first seed, then the next), so a run stopped early has
    whole seeds. Each finished trial is written at once (atomically): a killed run loses only the
    trial it was in, and a rerun runs only the trials not recorded. A trial that raises
    ``TrialFailed`` or gives a non-finite score is recorded as failed (not retried on a rerun); any
    other error propagates, recording nothing.

    Args:
        cells: the cells (``load_cells``).
        proxy_config: the ``ProxyConfig``; each trial runs it with ``seed`` replaced by its seed.
        seeds: the seeds each cell is scored at.
        results_path: the results file (JSON); created if missing.
        score: the scorer's name, recorded (``SCORES``: ``proxy`` trains the cell, the others are
            zero-cost scores).
        scorer: the function that scores (``get_scorer``'s interface); None: ``get_scorer(score)``.
        data: ``load_proxy_data(proxy_config)``; None: loaded when the first trial runs (not at all when
            every trial is recorded).
        log: called with a line per finished trial (progress and ETA); None: silent.

    Returns:
        ``cell_scores`` of every recorded trial of ``cells`` at ``seeds``.

    Raises:
        ConfigMismatch: ``results_path`` was recorded with another score or config (every field but
            ``seed``); the message and ``fields`` name what differs.
        FidelityError: ``results_path`` is not a results file, or a recorded trial's cell name now
            belongs to another graph.
    """
    from deeplab_dpc.nas.proxy import TrialFailed, load_proxy_data  # noqa: PLC0415

    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds} must be distinct and at least one")
    config_record = recorded_config(proxy_config)
    document = read_results(results_path)
    if document is None:
        document = {"format": RESULTS_FORMAT, "score": score, "config": config_record, "trials": []}
    else:
        _check_same_setup(results_path, document, score, config_record)
    names = {c.name: c.graph_hash for c in cells}
    for i, trial in enumerate(document["trials"]):
        if trial["cell"] in names and names[trial["cell"]] != trial["graph_hash"]:
            raise FidelityError(
                f"{results_path}: trials[{i}] scored cell {trial['cell']} as graph {trial['graph_hash']}; "
                f"the cell set now names graph {names[trial['cell']]} so: give another results file"
            )
    done = {(t["graph_hash"], t["seed"]) for t in document["trials"]}
    todo = [(seed, cell) for seed in seeds for cell in cells if (cell.graph_hash, seed) not in done]
    if todo and scorer is None:
        scorer = get_scorer(score)
    total = len(cells) * len(seeds)
    finished = total - len(todo)
    if log is not None and finished:
        log(f"{results_path}: {finished} of {total} trials already recorded; {len(todo)} to run")
    spent = 0.0
    for count, (seed, cell) in enumerate(todo, start=1):
        if data is None:
            data = load_proxy_data(proxy_config)
        config = dataclasses.replace(proxy_config, seed=seed)
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            result = dict(scorer(cell.spec, config, data))
            value = float(result.pop("score"))
            record = {"status": "ok", "score": value, **result}
            if not math.isfinite(value):
                record = {"status": "failed", "reason": f"the score is {value}"}
        except TrialFailed as e:
            record = {"status": "failed", "reason": e.reason, "step": e.step}
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        record = {
            "cell": cell.name,
            "graph_hash": cell.graph_hash,
            "seed": seed,
            **record,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        document["trials"].append(record)
        document.pop("summary", None)  # A summary of fewer trials is stale now.
        write_json(results_path, document)
        spent += seconds
        if log is not None:
            eta = spent / count * (len(todo) - count)
            log(_trial_line(finished + count, total, cell, seed, record, eta))
    wanted = set(seeds)
    return cell_scores([t for t in document["trials"] if t["seed"] in wanted], cells)


def record_summary(results_path: str, summary: Mapping[str, Any]) -> None:
    """Writes ``summary`` into the results file (its ``summary`` key), atomically."""
    document = read_results(results_path)
    if document is None:
        raise FidelityError(f"results file {results_path} does not exist")
    document["summary"] = dict(summary)
    write_json(results_path, document)


# --------------------------------------------------------------------------- the figures


def _mean_of(value) -> float | None:
    if isinstance(value, Mapping):
        value = value.get("mean")
    return None if value is None else float(value)


def _finite(value: float) -> float | None:
    """None for NaN (a figure without an answer), so the JSON stays standard."""
    return float(value) if math.isfinite(value) else None


def summary(
    proxy_scores: Mapping[str, Any],
    truth: Mapping[str, Any],
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The figures of a proxy against the ground truth, over the cells both score.

    Args:
        proxy_scores: ``{cell name: score}``, or ``score_proxy``'s records (``mean`` None: every trial
            failed; the cell is left out).
        truth: ``{cell name: miou}``, or ``load_ground_truth``'s records.
        bootstrap: resamples of each interval.
        seed: the resampling's seed.

    Returns:
        ``n`` (cells in the statistics), ``spearman``, ``spearman_ci90`` ([low, high]), ``kendall``,
        ``kendall_ci90``, ``top5_recall``, ``spearman_better_half``, ``cpu_seconds_per_cell`` (over the
        cells of ``proxy_scores`` with a ``cpu_seconds``, failed trials included; None without),
        a figure without an answer (fewer than ``MIN_CELLS`` cells, no ranking) is None,
        ``failed_trials``, ``cells`` (the names, in ``truth``'s order), ``cells_without_score`` (truth
        but no proxy score), ``bootstrap``.
    """
    names = [n for n in truth if _mean_of(proxy_scores.get(n)) is not None]
    x = np.array([_mean_of(proxy_scores[n]) for n in names], dtype=float)
    y = np.array([_mean_of(truth[n]) for n in names], dtype=float)
    cpu = [v["cpu_seconds"] for v in proxy_scores.values() if isinstance(v, Mapping) and "cpu_seconds" in v]
    failed = sum(len(v.get("failed", {})) for v in proxy_scores.values() if isinstance(v, Mapping))

    enough = len(names) >= MIN_CELLS

    def figure(stat):
        return _finite(stat(x, y)) if enough else None

    def interval(stat):
        if not enough:
            return [None, None]
        return [_finite(v) for v in bootstrap_interval(stat, x, y, n=bootstrap, level=CI_LEVEL, seed=seed)]

    return {
        "n": len(names),
        "spearman": figure(spearman),
        "spearman_ci90": interval(spearman),
        "kendall": figure(kendall_tau),
        "kendall_ci90": interval(kendall_tau),
        "top5_recall": _finite(top_k_recall(x, y, TOP_K)),
        "spearman_better_half": _finite(spearman_better_half(x, y)),
        "cpu_seconds_per_cell": float(np.mean(cpu)) if cpu else None,
        "failed_trials": failed,
        "cells": names,
        "cells_without_score": [n for n in truth if n not in names],
        "bootstrap": bootstrap,
    }


def _number(value, digits: int) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


TABLE_HEADER = (
    "| proxy | rho [90% CI] | tau [90% CI] | top-5 recall | rho better half | CPU s/cell | cells |\n"
    "|---|---|---|---|---|---|---|"
)


def table_row(name: str, figures: Mapping[str, Any]) -> str:
    """One markdown row of ``summary``'s figures, under ``TABLE_HEADER``."""

    def with_interval(key):
        low, high = figures[f"{key}_ci90"]
        return f"{_number(figures[key], 3)} [{_number(low, 2)}, {_number(high, 2)}]"

    cpu = figures["cpu_seconds_per_cell"]
    return (
        f"| {name} | {with_interval('spearman')} | {with_interval('kendall')} | "
        f"{_number(figures['top5_recall'], 2)} | {_number(figures['spearman_better_half'], 3)} | "
        f"{_number(cpu, 0)} | {figures['n']} |"
    )
