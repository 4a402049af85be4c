r"""The figures of finished searches: throughput, score distribution, best so far, re-ranking.

    python bench/search_report.py /tmp/runs/random [/tmp/runs/evolution ...] [--at=25,50,75,100] \
        [--plot=best_so_far.png]

For each search folder (``deeplab_dpc.search``'s ``--search_dir``): trials per
hour over the search's wall time (first trial start to last trial end, the
workers' start-up included), the mean trial time per worker, the proxy
score distribution over distinct completed cells (and where the published and
ASPP cells fall in it), the best proxy score after the first N trials (the
fair comparison of strategies at one budget), and, where ``deeplab_dpc.rerank``
ran, each re-ranked cell's proxy and full score with Spearman's rho; with
several searches, a table of each strategy's best-so-far over its seeds. ``--plot``
draws every search's best proxy score so far against trials in one PNG
(searches of one strategy and several seeds share a colour).
Prints the command that made the figures first.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def report(search_dir: str, at: list[int]) -> tuple[str, int, list[float]]:
    """Prints the figures of one search; returns (strategy, seed, best proxy mIoU x100 so far by trial)."""
    from optuna.trial import TrialState

    from deeplab_dpc.nas import rerank as rerank_lib
    from deeplab_dpc.nas import space as space_lib
    from deeplab_dpc.nas import trial_store
    from deeplab_dpc.nas.rank_correlation import spearman_rho

    config = rerank_lib.load_search_config(search_dir)
    study = rerank_lib.open_study(config)
    trials = trial_store.all_trials(study)
    done = [t for t in trials if t.state == TrialState.COMPLETE and not trial_store.is_duplicate(t)]
    failed = [t for t in trials if t.state == TrialState.FAIL and trial_store.counts_toward_budget(t)]
    finished = [t for t in done + failed if t.datetime_start and t.datetime_complete]
    label = search_label(config)
    print(f"\n## {search_dir}: strategy {label}, seed {config.seed}, {config.num_workers} workers")
    print(f"proxy: {dict((k, config.proxy.get(k)) for k in ('proxy_steps', 'batch_size', 'proxy_filters'))}")
    print(
        f"trials: {len(done)} completed, {len(failed)} failed, "
        f"{sum(trial_store.is_duplicate(t) for t in trials)} duplicates"
    )
    if finished:
        start = min(t.datetime_start for t in finished)
        end = max(t.datetime_complete for t in finished)
        hours = (end - start).total_seconds() / 3600
        seconds = [t.user_attrs.get("seconds") for t in done if t.user_attrs.get("seconds")]
        print(
            f"wall {hours * 60:.1f} min: {len(finished) / hours:.1f} trials/hour; "
            f"mean trial {np.mean(seconds):.1f} s per worker (median {np.median(seconds):.1f} s)"
        )
    scores = np.array([trial_store.trial_score(t) for t in done])
    best = []
    if len(scores):
        q = np.percentile(scores, [0, 10, 25, 50, 75, 90, 100]) * 100
        print(
            "proxy mIoU (x100): min {:.2f}, p10 {:.2f}, p25 {:.2f}, median {:.2f}, p75 {:.2f}, p90 {:.2f}, "
            "max {:.2f}; std {:.2f}".format(*q, scores.std() * 100)
        )
        ranking = rerank_lib.proxy_ranking(trials, config.space)
        for name, spec in space_lib.reference_cells().items():
            found = [c for c in ranking if c.graph_hash == spec.canonical_hash()]
            if found:
                c = found[0]
                print(f"{name}: proxy {c.proxy_miou * 100:.2f}, rank {c.proxy_rank} of {len(ranking)}")
        order = sorted(done, key=lambda t: t.number)
        best = list(np.maximum.accumulate([trial_store.trial_score(t) for t in order]) * 100)
        marks = [n for n in at if n <= len(best)] + ([len(best)] if len(best) not in at else [])
        print("best so far: " + ", ".join(f"{n} trials {best[n - 1]:.2f}" for n in marks))
    records = rerank_lib.full_scores(study)
    scored = [(n, r) for n, r in sorted(records.items()) if r.get(rerank_lib.FULL_MIOU) is not None]
    if scored:
        print(f"re-ranked ({len(scored)} cells, of {len(records)} recorded):")
        print("  trial  proxy rank  proxy mIoU  full mIoU  reference")
        for number, r in sorted(scored, key=lambda item: item[1]["proxy_rank"]):
            print(
                f"  {number:5d}  {r['proxy_rank']:10d}  {r['proxy_miou'] * 100:10.2f}  "
                f"{r[rerank_lib.FULL_MIOU] * 100:9.2f}  {r.get('reference') or ''}"
            )
        if len(scored) >= 3:
            rho = spearman_rho(
                [r["proxy_miou"] for _, r in scored], [r[rerank_lib.FULL_MIOU] for _, r in scored]
            )
            print(f"Spearman's rho, proxy vs full: {rho:.3f} over {len(scored)} cells")
    return label, config.seed, best


def search_label(config) -> str:
    """The strategy, with its zero-cost pre-filter when it has one ("evolution + naswot x4"): searches
    with and without a pre-filter are compared as different strategies."""
    prefilter = getattr(config, "prefilter", None)
    ratio = getattr(config, "prefilter_ratio", 1)
    return f"{config.strategy} + {prefilter} x{ratio}" if prefilter and ratio > 1 else config.strategy


def strategy_table(curves: list[tuple[str, int, list[float]]], at: list[int]) -> list[str]:
    """Markdown rows: per strategy, the best proxy mIoU after N trials, mean over its searches (seeds)
    with the lowest and highest; a search shorter than N is left out at N."""
    by_strategy: dict[str, list[tuple[int, list[float]]]] = {}
    for strategy, seed, best in curves:
        by_strategy.setdefault(strategy, []).append((seed, best))
    rows = ["| strategy | seeds | " + " | ".join(f"best after {n}" for n in at) + " |"]
    rows.append("|---|---|" + "---|" * len(at))
    for strategy, runs in by_strategy.items():
        cells = []
        for n in at:
            values = [best[n - 1] for _, best in runs if len(best) >= n]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.2f}")
            else:
                cells.append(f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})")
        seeds = ",".join(str(seed) for seed, _ in sorted(runs))
        rows.append(f"| {strategy} | {seeds} | " + " | ".join(cells) + " |")
    return rows


def plot(path: str, curves: list[tuple[str, int, list[float]]]) -> None:
    """Best proxy mIoU so far against completed trials, one line per search, a colour per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours, styles = {}, ("-", "--", ":", "-.")
    seen: dict[str, int] = {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for strategy, seed, best in curves:
        colour = colours.setdefault(strategy, f"C{len(colours)}")
        style = styles[seen.get(strategy, 0) % len(styles)]  # seeds of one strategy: one colour, own dashes
        seen[strategy] = seen.get(strategy, 0) + 1
        label = strategy if sum(c[0] == strategy for c in curves) == 1 else f"{strategy}, seed {seed}"
        ax.step(range(1, len(best) + 1), best, where="post", color=colour, linestyle=style, label=label)
    ax.set_xlabel("completed trials")
    ax.set_ylabel("best proxy val mIoU so far (x100)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search_dirs", nargs="+")
    parser.add_argument("--at", default="10,25,50,75,100", help="best-so-far after these many trials")
    parser.add_argument("--plot", help="a PNG of every search's best-so-far curve")
    args = parser.parse_args(argv)
    print(f"command: python bench/search_report.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    at = [int(n) for n in args.at.split(",")]
    curves = [report(search_dir, at) for search_dir in args.search_dirs]
    if len(curves) > 1:
        print("\nbest proxy val mIoU (x100) after N completed trials: mean over seeds (lowest-highest)")
        print("\n".join(strategy_table(curves, at)))
    if args.plot:
        plot(args.plot, curves)


if __name__ == "__main__":
    main()
