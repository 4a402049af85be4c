r"""Figures and a CSV from a search: proxy score distribution, proxy vs full, best cells, costs.

    python -m deeplab_dpc.analyze --search_dir=runs/search [--output_dir=runs/search/analysis] \
        [--run_dir=runs/search/rerank/trial_00012] [--num_cells=4]

Writes ``trials.csv`` (one row per trial) and PNGs (see
``deeplab_dpc.nas.analysis``): ``proxy_scores.png`` (the paper's Fig. 4a),
``proxy_vs_full.png`` (Fig. 4b, with Spearman's rho; needs 3 re-ranked cells),
``best_cells.png`` (Fig. 6), ``projection_l1.png`` (Fig. 5b, from a trained
cell: --run_dir or the best re-ranked run), ``pareto.png`` (proxy mIoU
against multiply-adds) and, for each zero-cost score the search recorded on
its trained trials (search's --zero_cost_scores, --prefilter),
``proxy_vs_<score>.png`` (proxy mIoU against the score, Spearman's rho in the
title). Prints the paths written and a short summary, the rhos included.
"""

from __future__ import annotations

import sys

from absl import app, flags

from deeplab_dpc import cli  # first: it quiets TensorFlow's start-up (console.py)


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("search_dir", None, "The search to analyse (its search_config.json and study).", **f)
    flags.DEFINE_string(
        "output_dir", None, "Where the PNGs and trials.csv go (default: <search_dir>/analysis).", **f
    )
    flags.DEFINE_string(
        "run_dir", None, "A trained DPC run for projection_l1.png (default: the best re-ranked run).", **f
    )
    flags.DEFINE_integer("num_cells", 4, "Cells drawn in best_cells.png.", **f)
    flags.DEFINE_float(
        "max_madds",
        None,
        "Also find the best cell by proxy mIoU with at most this many multiply-adds (the proxy cell's, as "
        "pareto.png), written to best_cell_under_max_madds.json.",
        **f,
    )


def config_from_flags(fv: flags.FlagValues):
    """Flags -> ``AnalyzeConfig``; every error is an ``app.UsageError`` naming its flag."""
    from deeplab_dpc.nas.analysis import AnalyzeConfig  # noqa: PLC0415

    if not fv.search_dir:
        raise app.UsageError("--search_dir is required")
    try:
        return AnalyzeConfig(
            search_dir=fv.search_dir, output_dir=fv.output_dir, run_dir=fv.run_dir, num_cells=fv.num_cells,
            max_madds=fv.max_madds,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def summary_lines(summary: dict) -> list[str]:
    """What a person reads after the paths: trials by state, the best proxy cell, rho, the winner."""
    states = summary["states"]
    counted = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()) if s.isupper() and n)
    prefiltered = states.get("prefiltered", 0)
    lines = [
        f"{summary['trials']} trials: {counted or 'none'} "
        f"({states.get('duplicates', 0)} duplicates, {states.get('interrupted', 0)} interrupted attempts"
        + (f", {prefiltered} pre-filtered proposals, not trained" if prefiltered else "")
        + ")"
    ]
    best = summary.get("best_proxy")
    if best:
        lines.append(f"best proxy cell: trial {best['trial']}, proxy mIoU {best['proxy_miou']:.4f}")
    full = summary.get("best_full")
    if full:
        lines.append(
            f"best re-ranked cell: trial {full['trial']}, full mIoU {full['full_miou']:.4f} "
            f"(#{full['proxy_rank']} by proxy score), of {summary['reranked']} re-ranked"
        )
    if summary.get("spearman_rho") is not None:
        lines.append(
            f"Spearman's rho, proxy vs full mIoU: {summary['spearman_rho']:.3f} (n = {summary['reranked']})"
        )
    for name, found in (summary.get("zero_cost_rho") or {}).items():
        lines.append(
            f"Spearman's rho, proxy mIoU vs {name} at initialisation: {found['rho']:.3f} (n = {found['n']})"
        )
    if summary.get("pareto_front"):
        lines.append(f"Pareto front (proxy mIoU vs multiply-adds): trials {summary['pareto_front']}")
    under = summary.get("best_under_max_madds")
    if under:
        lines.append(
            f"best cell with at most {under['max_madds'] / 1e9:g} GMAdds: trial {under['trial']}, proxy mIoU "
            f"{under['proxy_miou']:.4f}, {under['madds'] / 1e9:.3f} GMAdds"
        )
    return lines


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = config_from_flags(flags.FLAGS)
    from deeplab_dpc.nas.analysis import analyze  # noqa: PLC0415

    try:
        summary = analyze(config)
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), flags.FLAGS)) from None
    for path in summary["written"]:
        sys.stdout.write(f"wrote {path}\n")
    for note in summary["notes"]:
        sys.stdout.write(f"note: {note}\n")
    for line in summary_lines(summary):
        sys.stdout.write(line + "\n")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
