"""What a finished search says: the paper's figures, a CSV of every trial, rank correlation, Pareto front.

``analyze(AnalyzeConfig(search_dir, output_dir))`` reads the study (and the
full scores of ``rerank``) and writes, as PNG:

* ``proxy_scores.png``: the distribution of proxy mIoU over distinct completed
  cells (the paper's Fig. 4a), reference cells marked;
* ``proxy_vs_full.png``: proxy against re-ranked (full) mIoU with Spearman's
  rho in the title (Fig. 4b); skipped, with a note, below 3 re-ranked cells;
* ``best_cells.png``: diagrams of the best cells (by full score if re-ranked,
  else by proxy score): the backbone as a node, each branch a box with its op,
  arrows from its input, all branches into the concat + 1x1 projection (Fig. 6);
* ``projection_l1.png``: for a trained cell (``run_dir``, else the best
  re-ranked run), the L1 norm of the ``concat_projection`` weights attached to
  each branch's channels (Fig. 5b): its kernel is ``[1, 1, B * filters, out]``,
  branch i owns input channels ``[i * filters, (i + 1) * filters)``;
* ``pareto.png``: proxy mIoU against multiply-adds, the Pareto front (fewest
  multiply-adds for a score) highlighted;
* ``proxy_vs_<score>.png``, for each zero-cost score (``nas.zero_cost``) the
  search recorded on its trained cells (``--zero_cost_scores``, user attr
  ``zero_cost_<score>``): proxy mIoU against the score at initialisation,
  Spearman's rho over those cells in the title (also in the summary,
  ``zero_cost_rho``); an infinite score counts in rho at its end of the
  ranking (rho needs only ranks) and is not drawn, a NaN is left out;

and ``trials.csv``, one row per trial (``CSV_COLUMNS``). Figures use
matplotlib's ``Figure`` directly (the Agg canvas, no pyplot state), written
atomically.

``pareto_front`` is a plain function of numbers (and so is ``spearman_rho``,
from ``nas.rank_correlation``).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from optuna.trial import FrozenTrial, TrialState

from deeplab_dpc.core.spec import BACKBONE_INPUT, PYRAMID_POOLING, CellSpec, SearchSpace, SpecError
from deeplab_dpc.fileio import atomic_path, write_bytes_atomically
from deeplab_dpc.nas import rerank as rerank_lib
from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas import zero_cost as zero_cost_lib
from deeplab_dpc.nas.rank_correlation import spearman_rho

CSV_COLUMNS = (
    "number",
    "state",
    "hash",
    "spec",
    "proxy_miou",
    "full_miou",
    "params",
    "madds",
    "seconds",
    "worker",
    "error",
    "duplicate_of",
    "reference",
)
FIGURES = {
    "proxy_scores": "proxy_scores.png",
    "proxy_vs_full": "proxy_vs_full.png",
    "best_cells": "best_cells.png",
    "projection_l1": "projection_l1.png",
    "pareto": "pareto.png",
}
MIN_RERANKED_FOR_RHO = 3
ZERO_COST_FIGURE = "proxy_vs_{}.png"  # one per zero-cost score recorded
MIN_CELLS_FOR_ZERO_COST_RHO = 3


# --------------------------------------------------------------------------- statistics


def pareto_front(costs: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: none has a cost as low and a score as high, one of
    them strictly. Identical points are all on the front. Cheapest first."""
    if len(costs) != len(scores):
        raise ValueError(f"pareto_front needs pairs: {len(costs)} costs, {len(scores)} scores")
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i], i))
    front = []
    best_cheaper = -math.inf  # the best score of every strictly cheaper point
    at = 0
    while at < len(order):
        group = [order[at]]
        while at + len(group) < len(order) and costs[order[at + len(group)]] == costs[order[at]]:
            group.append(order[at + len(group)])
        top = max(scores[i] for i in group)
        if top > best_cheaper:
            front += [i for i in group if scores[i] == top]
            best_cheaper = top
        at += len(group)
    return front


# --------------------------------------------------------------------------- the trials as rows


def _owner_worker(trial: FrozenTrial) -> str:
    owner = trial.system_attrs.get(trial_store.OWNER) or {}
    return str(owner.get("worker", "")) if isinstance(owner, dict) else ""


def _spec_text(trial: FrozenTrial, space: SearchSpace) -> str:
    try:
        return json.dumps(json.loads(rerank_lib.trial_spec(trial, space).to_json()), separators=(",", ":"))
    except (SpecError, ValueError, TypeError):
        return ""


def trial_rows(
    trials: Sequence[FrozenTrial], space: SearchSpace, full: Mapping[int, Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One dict per trial (keys ``CSV_COLUMNS``; None where nothing is known), by trial number."""
    full = full or {}
    rows = []
    for trial in sorted(trials, key=lambda t: t.number):
        attrs = trial.user_attrs
        record = full.get(trial.number, {})
        rows.append(
            {
                "number": trial.number,
                "state": trial.state.name,
                "hash": rerank_lib.trial_hash(trial, space),
                "spec": _spec_text(trial, space),
                # The proxy's mIoU: the trial's value unless it was weighed by cost or is stage 2's.
                "proxy_miou": (
                    attrs.get("miou", trial_store.trial_score(trial)) if trial.state == TrialState.COMPLETE else None
                ),
                "full_miou": record.get(rerank_lib.FULL_MIOU, attrs.get(trial_store.FULL_MIOU)),
                "params": attrs.get("params"),
                "madds": attrs.get("madds"),
                "seconds": attrs.get("seconds"),
                "worker": _owner_worker(trial),
                "error": attrs.get(trial_store.ERROR) or record.get(rerank_lib.FULL_ERROR),
                "duplicate_of": attrs.get(trial_store.DUPLICATE_OF),
                "reference": attrs.get(trial_store.REFERENCE) or record.get("reference"),
            }
        )
    return rows


def write_trials_csv(path: str, rows: Sequence[Mapping[str, Any]]) -> None:
    """``rows`` as CSV with a header (empty cells for None), written atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    write_bytes_atomically(path, text.getvalue().encode("utf-8"))


# --------------------------------------------------------------------------- figures


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # noqa: PLC0415  (the Agg canvas; no pyplot, no global backend)

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: str) -> str:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_proxy_histogram(path: str, scores: Sequence[float], references: Mapping[str, float] = ()) -> str:
    """Fig. 4a: the distribution of proxy mIoU; vertical lines mark ``references`` (name -> score)."""
    fig = _figure(7, 4.2)
    ax = fig.subplots()
    scores = [float(s) for s in scores]
    bins = int(min(40, max(5, round(math.sqrt(len(scores))) * 2)))
    ax.hist(scores, bins=bins, color="#4c72b0", edgecolor="white")
    for (name, value), colour in zip(dict(references).items(), ("#dd8452", "#55a868", "#c44e52")):
        ax.axvline(value, color=colour, linestyle="--", linewidth=1.5, label=f"{name} ({value:.3f})")
    if references:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xlabel("proxy mIoU")
    ax.set_ylabel("cells")
    ax.set_title(f"Proxy scores of {len(scores)} distinct cells (best {max(scores):.3f})")
    return _save(fig, path)


def plot_proxy_vs_full(
    path: str, proxy: Sequence[float], full: Sequence[float], labels: Sequence[str], rho: float
) -> str:
    """Fig. 4b: proxy against full mIoU, each point labelled (trial number, reference name)."""
    fig = _figure(6.5, 5)
    ax = fig.subplots()
    ax.scatter(proxy, full, color="#4c72b0", zorder=3)
    for x, y, label in zip(proxy, full, labels):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    best = int(np.argmax(full))
    ax.scatter(
        [proxy[best]],
        [full[best]],
        s=160,
        facecolors="none",
        edgecolors="#c44e52",
        linewidths=1.5,
        zorder=4,
        label="best by full mIoU",
    )
    ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("proxy mIoU (cached features)")
    ax.set_ylabel("full mIoU (end-to-end training)")
    ax.grid(alpha=0.3)
    ax.set_title(f"Proxy vs re-ranked score: Spearman's rho = {rho:.3f} (n = {len(proxy)})")
    return _save(fig, path)


def rank_preserving(values: Sequence[float]) -> list[float]:
    """``values`` with inf and -inf replaced by numbers above and below every finite one: the same
    ranks, so ``spearman_rho`` takes them (it refuses non-finite values). NaN stays NaN."""
    finite = [float(v) for v in values if math.isfinite(v)]
    low, high = (min(finite) - 1.0, max(finite) + 1.0) if finite else (-1.0, 1.0)
    return [high if v == math.inf else low if v == -math.inf else float(v) for v in values]


def plot_proxy_vs_zero_cost(
    path: str, name: str, scores: Sequence[float], proxy: Sequence[float], rho: float
) -> str:
    """Proxy mIoU against zero-cost score ``name`` (finite points drawn), ``rho`` over all of them in the
    title; a log axis when every drawn score is positive and they span more than three decades."""
    fig = _figure(6.5, 4.8)
    ax = fig.subplots()
    drawn = [(float(x), float(y)) for x, y in zip(scores, proxy) if math.isfinite(x)]
    if drawn:
        xs, ys = zip(*drawn)
        ax.scatter(xs, ys, color="#4c72b0", s=18, zorder=3)
        if min(xs) > 0 and max(xs) / min(xs) > 1e3:
            ax.set_xscale("log")
    ax.set_xlabel(f"{name} at initialisation (zero-cost)")
    ax.set_ylabel("proxy mIoU")
    ax.grid(alpha=0.3)
    hidden = len(scores) - len(drawn)
    ax.set_title(
        f"Proxy mIoU vs {name}: Spearman's rho = {rho:.3f} (n = {len(scores)})"
        + (f"\n{hidden} infinite {name} ranked at the ends, not drawn" if hidden else "")
    )
    return _save(fig, path)


def zero_cost_pairs(trials: Sequence[FrozenTrial], ranking, name: str) -> tuple[list[float], list[float]]:
    """(zero-cost score ``name``, proxy mIoU) of the ranked cells (distinct trained cells) that recorded
    the score; a NaN or unreadable score is left out."""
    attrs = {t.number: t.user_attrs for t in trials}
    key = trial_store.zero_cost_attr(name)
    scores, proxy = [], []
    for c in ranking:
        try:
            value = float(attrs.get(c.number, {})[key])
        except (KeyError, TypeError, ValueError):
            continue
        if not math.isnan(value):
            scores.append(value)
            proxy.append(float(c.proxy_miou))
    return scores, proxy


def op_label(branch) -> str:
    """A branch's operation in a few words: ``conv 1x1``, ``sep 3x3 r6x18``, ``pool 4x2``."""
    if branch.op == PYRAMID_POOLING:
        return "pool %dx%d" % tuple(branch.grid_size)
    if tuple(branch.kernel) == (1, 1):
        return "conv 1x1"
    label = "sep %dx%d" % tuple(branch.kernel)
    if branch.rate is not None:
        label += " r%dx%d" % tuple(branch.rate)
    return label


def cell_layout(spec: CellSpec) -> dict[int, tuple[float, float]]:
    """(x, y) of each node: the backbone (-1) at depth 0, a branch one step right of its input,
    nodes of one depth spread vertically around 0."""
    depth = {BACKBONE_INPUT: 0}
    for i, branch in enumerate(spec.branches):
        depth[i] = depth[branch.input] + 1
    columns: dict[int, list[int]] = {}
    for node, d in depth.items():
        columns.setdefault(d, []).append(node)
    position = {}
    for d, nodes in columns.items():
        nodes.sort()
        for k, node in enumerate(nodes):
            position[node] = (float(d), (len(nodes) - 1) / 2 - k)
    return position


_OP_COLOURS = {"conv 1x1": "#c6dbef", "sep": "#fdd0a2", "pool": "#c7e9c0"}


def draw_cell(ax, spec: CellSpec, title: str = "", columns: int | None = None) -> None:
    """One cell on ``ax``: boxes and arrows (Fig. 6). ``columns``: the widest cell's column count
    in the figure, so that every cell is drawn at one scale (a shallow cell is not squeezed)."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: PLC0415

    position = cell_layout(spec)
    x_gap, y_gap, width, height = 2.2, 1.0, 1.8, 0.7
    centre = {n: (x * x_gap, y * y_gap) for n, (x, y) in position.items()}
    last_column = max(x for x, _ in position.values()) + 1
    concat = (last_column * x_gap, 0.0)

    def box(xy, text, colour):
        x, y = xy
        ax.add_patch(
            FancyBboxPatch(
                (x - width / 2, y - height / 2),
                width,
                height,
                boxstyle="round,pad=0.02,rounding_size=0.08",
                fc=colour,
                ec="#333333",
                lw=1,
            )
        )
        ax.text(x, y, text, ha="center", va="center", fontsize=7)

    def arrow(a, b):
        start = (a[0] + width / 2, a[1])
        end = (b[0] - width / 2, b[1])
        ax.add_patch(
            FancyArrowPatch(
                start,
                end,
                arrowstyle="-|>",
                mutation_scale=10,
                color="#555555",
                lw=1,
                connectionstyle="arc3,rad=0.0",
            )
        )

    box(centre[BACKBONE_INPUT], "backbone\nfeatures", "#e0e0e0")
    for i, branch in enumerate(spec.branches):
        label = op_label(branch)
        colour = _OP_COLOURS.get(label, _OP_COLOURS["sep" if label.startswith("sep") else "pool"])
        box(centre[i], f"b{i}\n{label}", colour)
        arrow(centre[branch.input], centre[i])
        arrow(centre[i], concat)
    box(concat, "concat\n+ 1x1 proj", "#dadaeb")
    ys = [y for _, y in centre.values()]
    span = max(columns or 0, last_column) * x_gap
    ax.set_xlim(-width, span + width)
    middle = (min(ys) + max(ys)) / 2
    half = max((max(ys) - min(ys)) / 2, (len(spec.branches) - 1) * y_gap / 2) + 1
    ax.set_ylim(middle - half, middle + half)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)


def plot_cells(path: str, cells: Sequence[tuple[CellSpec, str]]) -> str:
    """Fig. 6: one diagram per (spec, title), stacked."""
    columns = max(max(x for x, _ in cell_layout(spec).values()) + 1 for spec, _ in cells)
    fig = _figure(max(8.0, 1.6 * (columns + 1)), 2.6 * len(cells))
    axes = fig.subplots(len(cells), 1, squeeze=False)[:, 0]
    for ax, (spec, title) in zip(axes, cells):
        draw_cell(ax, spec, title, columns)
    return _save(fig, path)


def projection_l1(kernel: np.ndarray, num_branches: int) -> tuple[np.ndarray, np.ndarray]:
    """(per input channel L1 over the outputs ``[B * filters]``, per branch L1 ``[B]``) of a
    ``[1, 1, B * filters, out]`` projection kernel; branch i owns channels ``[i * f, (i + 1) * f)``."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim != 4 or kernel.shape[:2] != (1, 1):
        raise ValueError(f"expected a [1, 1, in, out] projection kernel, got shape {list(kernel.shape)}")
    channels = kernel.shape[2]
    if channels % num_branches:
        raise ValueError(f"{channels} input channels do not split into {num_branches} branches")
    per_channel = np.abs(kernel[0, 0]).sum(axis=1)
    per_branch = per_channel.reshape(num_branches, channels // num_branches).sum(axis=1)
    return per_channel, per_branch


def projection_kernel(run_dir: str) -> tuple[np.ndarray, CellSpec]:
    """The ``concat_projection`` kernel of a trained DPC run's newest checkpoint, and its cell."""
    from deeplab_dpc.runs import load_model_for_inference  # noqa: PLC0415  (builds the model: Keras)

    model, model_config = load_model_for_inference(run_dir)
    if model_config.context != "dpc" or model_config.dense_prediction_cell is None:
        raise ValueError(
            f"run_dir={run_dir} is not a Dense Prediction Cell model (context={model_config.context})"
        )
    cell = model.get_layer("dense_prediction_cell")
    kernel = np.asarray(cell.projection.conv.kernel.numpy())
    return kernel, model_config.dense_prediction_cell


def plot_projection_l1(path: str, kernel: np.ndarray, spec: CellSpec, title: str = "") -> dict:
    """Fig. 5b: per-branch and per-channel L1 norms of the projection weights; returns the numbers."""
    per_channel, per_branch = projection_l1(kernel, len(spec.branches))
    filters = len(per_channel) // len(spec.branches)
    fig = _figure(10, 4.2)
    left, right = fig.subplots(1, 2, width_ratios=(1, 2))
    labels = [f"b{i}\n{op_label(b)}" for i, b in enumerate(spec.branches)]
    colours = [f"C{i % 10}" for i in range(len(spec.branches))]
    left.bar(range(len(per_branch)), per_branch, color=colours)
    left.set_xticks(range(len(per_branch)), labels, fontsize=7)
    left.set_ylabel("L1 norm of the branch's projection weights")
    for i in range(len(spec.branches)):
        channels = np.arange(i * filters, (i + 1) * filters)
        right.bar(
            channels, per_channel[channels], width=1.0, color=colours[i], label=labels[i].replace("\n", " ")
        )
    right.set_xlabel("concatenated channel")
    right.set_ylabel("L1 norm over output channels")
    right.legend(fontsize=7, loc="upper right")
    fig.suptitle(title or "concat_projection weights by branch")
    _save(fig, path)
    return {"per_branch": per_branch.tolist(), "filters": filters}


def plot_pareto(
    path: str, madds: Sequence[float], scores: Sequence[float], labels: Sequence[str]
) -> list[int]:
    """Proxy mIoU against multiply-adds, the Pareto front highlighted; returns the front's indices."""
    front = pareto_front(madds, scores)
    fig = _figure(7, 4.6)
    ax = fig.subplots()
    g = np.asarray(madds, float) / 1e9
    s = np.asarray(scores, float)
    ax.scatter(g, s, color="#9e9e9e", s=14, label="cells", zorder=2)
    ax.step(g[front], s[front], where="post", color="#c44e52", linewidth=1.2, zorder=3)
    ax.scatter(g[front], s[front], color="#c44e52", s=30, label=f"Pareto front ({len(front)})", zorder=4)
    for i in front:
        ax.annotate(labels[i], (g[i], s[i]), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if g.min() > 0 and g.max() / g.min() > 10:
        from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: PLC0415

        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("multiply-adds (G)")
    ax.set_ylabel("proxy mIoU")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(f"Proxy mIoU against cost over {len(s)} cells")
    _save(fig, path)
    return front


# --------------------------------------------------------------------------- the whole analysis


@dataclasses.dataclass(frozen=True)
class AnalyzeConfig:
    """An analysis; each field is the flag of the same name.

    Args:
        search_dir: the search (``search_config.json``, its study).
        output_dir: where the PNGs and ``trials.csv`` go (default ``<search_dir>/analysis``).
        run_dir: the trained DPC run of ``projection_l1.png`` (default: the best re-ranked run).
        num_cells: cells drawn in ``best_cells.png``.
        max_madds: also answer "the best cell under this many multiply-adds" (the proxy cell's, as
            ``pareto.png`` and a search's ``cost_metric=madds``): written to
            ``best_cell_under_max_madds.json`` (None: not asked).
    """

    search_dir: str
    output_dir: str | None = None
    run_dir: str | None = None
    num_cells: int = 4
    max_madds: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "search_dir", os.path.abspath(os.fspath(self.search_dir)))
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", os.path.join(self.search_dir, "analysis"))
        if not 1 <= self.num_cells <= 20:
            raise ValueError(f"num_cells must be between 1 and 20, got {self.num_cells}")
        if self.run_dir is not None and not os.path.isdir(self.run_dir):
            raise ValueError(f"run_dir={self.run_dir} is not a folder")
        if self.max_madds is not None and not self.max_madds > 0:
            raise ValueError(f"max_madds must be positive, got {self.max_madds}")


def _proxy_rank_label(candidate: rerank_lib.Candidate) -> str:
    return candidate.reference or str(candidate.number)


def analyze(config: AnalyzeConfig) -> dict:
    """Writes the figures and ``trials.csv``; returns what was written and a summary.

    The summary: ``written`` (paths), ``notes`` (what was skipped and why), ``states`` (trials by
    state, with duplicates, interrupted attempts and pre-filtered proposals), ``best_proxy`` (trial,
    score, spec), ``reranked``, ``spearman_rho`` (None below 3 re-ranked cells), ``best_full`` (trial,
    score, its rank by proxy), ``zero_cost_rho`` (score name -> rho, n, infinite: Spearman's rho of
    proxy mIoU against each zero-cost score recorded on at least 3 trained cells).
    """
    search_config = rerank_lib.load_search_config(config.search_dir)
    study = rerank_lib.open_study(search_config)
    space = search_config.space
    trials = trial_store.all_trials(study)
    full = rerank_lib.full_scores(study)
    out = config.output_dir
    os.makedirs(out, exist_ok=True)
    written, notes = [], []
    summary: dict[str, Any] = {"written": written, "notes": notes}

    rows = trial_rows(trials, space, full)
    csv_path = os.path.join(out, "trials.csv")
    write_trials_csv(csv_path, rows)
    written.append(csv_path)

    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name] = states.get(trial.state.name, 0) + 1
    states["duplicates"] = sum(trial_store.is_duplicate(t) for t in trials)
    states["interrupted"] = sum(trial_store.is_interrupted(t) for t in trials)
    states["prefiltered"] = sum(trial_store.is_prefiltered(t) for t in trials)
    summary["states"] = states
    summary["trials"] = len(trials)

    ranking = rerank_lib.proxy_ranking(trials, space)
    by_number = {c.number: c for c in ranking}
    summary["best_proxy"] = (
        {"trial": ranking[0].number, "proxy_miou": ranking[0].proxy_miou, "spec": ranking[0].spec.to_list()}
        if ranking
        else None
    )

    # (a) proxy score distribution.
    if ranking:
        references = {}
        for name, spec in space_lib.reference_cells().items():
            found = [c for c in ranking if c.graph_hash == spec.canonical_hash()]
            if found:
                references[name] = found[0].proxy_miou
        written.append(
            plot_proxy_histogram(
                os.path.join(out, FIGURES["proxy_scores"]), [c.proxy_miou for c in ranking], references
            )
        )
    else:
        notes.append("proxy_scores.png skipped: no completed cell")

    # (b) proxy vs full.
    reranked = [
        (by_number[n], r)
        for n, r in sorted(full.items())
        if n in by_number and r.get(rerank_lib.FULL_MIOU) is not None
    ]
    summary["reranked"] = len(reranked)
    summary["spearman_rho"] = None
    if len(reranked) >= MIN_RERANKED_FOR_RHO:
        proxy = [c.proxy_miou for c, _ in reranked]
        full_scores = [float(r[rerank_lib.FULL_MIOU]) for _, r in reranked]
        rho = spearman_rho(proxy, full_scores)
        summary["spearman_rho"] = rho
        written.append(
            plot_proxy_vs_full(
                os.path.join(out, FIGURES["proxy_vs_full"]),
                proxy,
                full_scores,
                [_proxy_rank_label(c) for c, _ in reranked],
                rho,
            )
        )
    else:
        notes.append(
            f"proxy_vs_full.png skipped: {len(reranked)} re-ranked cells, Spearman's rho needs at least "
            f"{MIN_RERANKED_FOR_RHO} (python -m deeplab_dpc.rerank)"
        )
    best_full = None
    if reranked:
        candidate, record = max(reranked, key=lambda item: (item[1][rerank_lib.FULL_MIOU], -item[0].number))
        best_full = {
            "trial": candidate.number,
            "full_miou": float(record[rerank_lib.FULL_MIOU]),
            "proxy_rank": candidate.proxy_rank,
            "run_dir": record.get(rerank_lib.FULL_RUN_DIR),
        }
    summary["best_full"] = best_full

    # (c) the best cells.
    if reranked:
        ordered = sorted(reranked, key=lambda item: (-item[1][rerank_lib.FULL_MIOU], item[0].number))
        cells = [
            (
                c.spec,
                f"trial {c.number}{' (' + c.reference + ')' if c.reference else ''}: full mIoU "
                f"{r[rerank_lib.FULL_MIOU]:.3f}, proxy {c.proxy_miou:.3f} (#{c.proxy_rank} by proxy)",
            )
            for c, r in ordered[: config.num_cells]
        ]
    else:
        cells = [
            (c.spec, f"trial {c.number}: proxy mIoU {c.proxy_miou:.3f} (#{c.proxy_rank})")
            for c in ranking[: config.num_cells]
        ]
    if cells:
        written.append(plot_cells(os.path.join(out, FIGURES["best_cells"]), cells))
    else:
        notes.append("best_cells.png skipped: no completed cell")

    # (d) projection weights of a trained cell.
    run_dir = config.run_dir or (best_full or {}).get("run_dir")
    if run_dir and os.path.isdir(run_dir):
        try:
            kernel, spec = projection_kernel(run_dir)
        except (ValueError, FileNotFoundError) as e:
            notes.append(f"projection_l1.png skipped: {e}")
        else:
            numbers = plot_projection_l1(
                os.path.join(out, FIGURES["projection_l1"]),
                kernel,
                spec,
                f"concat_projection L1 by branch: {run_dir}",
            )
            summary["projection_l1"] = numbers["per_branch"]
            written.append(os.path.join(out, FIGURES["projection_l1"]))
    else:
        notes.append("projection_l1.png skipped: no trained cell (no re-ranked run, no --run_dir)")

    # (e) score against cost.
    cost = {t.number: t.user_attrs.get("madds") for t in trials}
    costed = [c for c in ranking if cost.get(c.number) is not None]
    if costed:
        madds = [float(cost[c.number]) for c in costed]
        front = plot_pareto(
            os.path.join(out, FIGURES["pareto"]),
            madds,
            [c.proxy_miou for c in costed],
            [_proxy_rank_label(c) for c in costed],
        )
        summary["pareto_front"] = [costed[i].number for i in front]
        written.append(os.path.join(out, FIGURES["pareto"]))
    else:
        notes.append("pareto.png skipped: no completed cell records multiply-adds")
    # (f) proxy score against each zero-cost score recorded on trained cells.
    summary["zero_cost_rho"] = {}
    for name in zero_cost_lib.SCORES:
        scores, proxy = zero_cost_pairs(trials, ranking, name)
        if not scores:
            continue
        if len(scores) < MIN_CELLS_FOR_ZERO_COST_RHO:
            notes.append(
                f"{ZERO_COST_FIGURE.format(name)} skipped: {len(scores)} trained cells record {name}, Spearman's "
                f"rho needs at least {MIN_CELLS_FOR_ZERO_COST_RHO}"
            )
            continue
        rho = spearman_rho(rank_preserving(scores), proxy)
        infinite = sum(not math.isfinite(v) for v in scores)
        summary["zero_cost_rho"][name] = {"rho": rho, "n": len(scores), "infinite": infinite}
        written.append(
            plot_proxy_vs_zero_cost(os.path.join(out, ZERO_COST_FIGURE.format(name)), name, scores, proxy, rho)
        )
    if config.max_madds is not None:
        best = best_under(costed, cost, config.max_madds)
        summary["best_under_max_madds"] = best and {
            "trial": best.number, "proxy_miou": best.proxy_miou, "madds": float(cost[best.number]),
            "max_madds": config.max_madds, "spec": best.spec.to_list(),
        }
        if best is None:
            notes.append(f"no completed cell has at most max_madds={config.max_madds:g} multiply-adds")
        else:
            path = os.path.join(out, BEST_UNDER_MAX_MADDS)
            best.spec.save(path)
            written.append(path)
    return summary


BEST_UNDER_MAX_MADDS = "best_cell_under_max_madds.json"


def best_under(candidates, cost: Mapping[int, Any], limit: float):
    """The candidate with the best proxy mIoU among those costing at most ``limit`` (ties: the
    earlier trial); None if none does. ``candidates`` are ``rerank.Candidate``s, ``cost`` by trial."""
    within = [c for c in candidates if cost.get(c.number) is not None and float(cost[c.number]) <= limit]
    return max(within, key=lambda c: (c.proxy_miou, -c.number), default=None)
