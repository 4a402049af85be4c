r"""What a pruner saves, and what it costs the ranking, against the same search without one.

    python bench/pruner_report.py /tmp/runs/prune_none /tmp/runs/prune_median /tmp/runs/prune_sha

The first search ran every trial to the end; the others ran with ``--pruner``. All must share the
strategy's proposals: ``--strategy=random --mutation_probability=0`` draws trial n's cell from
(seed, n) alone, so trial n is the same cell in every search. For each pruned search: trials pruned,
proxy training steps run (a pruned trial stops at ``pruned_at_step``) against the baseline's, wall
time against the baseline's, and the ranking it kept: whether the baseline's best cells completed
(a pruner that stops the eventual best cell loses it) and Spearman's rho between the baseline's final
scores and this search's values (a pruned trial's value is its last intermediate score).
Prints the command first.
"""

from __future__ import annotations

import argparse
import sys


def load(search_dir: str):
    from optuna.trial import TrialState

    from deeplab_dpc.nas import rerank as rerank_lib
    from deeplab_dpc.nas import trial_store

    config = rerank_lib.load_search_config(search_dir)
    trials = [
        t
        for t in trial_store.all_trials(rerank_lib.open_study(config))
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and not trial_store.is_duplicate(t)
    ]
    return config, {t.number: t for t in trials}


def wall_minutes(trials) -> float:
    start = min(t.datetime_start for t in trials)
    end = max(t.datetime_complete for t in trials)
    return (end - start).total_seconds() / 60


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline")
    parser.add_argument("pruned", nargs="+")
    parser.add_argument("--top", type=int, default=5, help="the baseline's best cells that must survive")
    args = parser.parse_args(argv)
    print(f"command: python bench/pruner_report.py {' '.join(sys.argv[1:] if argv is None else argv)}")

    from optuna.trial import TrialState

    from deeplab_dpc.nas import trial_store
    from deeplab_dpc.nas.rank_correlation import spearman_rho

    base_config, base = load(args.baseline)
    steps = int(base_config.proxy["proxy_steps"])
    top = sorted(base, key=lambda n: -trial_store.trial_score(base[n]))[: args.top]
    base_minutes = wall_minutes(base.values())
    print(f"baseline {args.baseline}: {len(base)} trials to {steps} steps, {base_minutes:.1f} min; "
          f"its best {args.top}: trials {top}")
    print("\n| pruner | pruned | proxy steps run | wall time | baseline's best kept | rho vs baseline |")
    print("|---|---|---|---|---|---|")
    print(f"| none | 0 of {len(base)} | {len(base) * steps} (100%) | {base_minutes:.1f} min (100%) | "
          f"{args.top} of {args.top} | 1 |")
    for search_dir in args.pruned:
        config, trials = load(search_dir)
        common = sorted(set(trials) & set(base))
        same = all(trials[n].params == base[n].params for n in common)
        if not same:
            print(f"{search_dir}: trials propose other cells than the baseline's; not comparable")
            continue
        pruned = [n for n in common if trials[n].state == TrialState.PRUNED]
        run = sum(
            int(trials[n].user_attrs.get(trial_store.PRUNED_AT_STEP) or steps)
            if trials[n].state == TrialState.PRUNED else steps
            for n in common
        )
        minutes = wall_minutes([trials[n] for n in common])
        kept = sum(trials[n].state == TrialState.COMPLETE for n in top if n in trials)
        rho = spearman_rho([trial_store.trial_score(base[n]) for n in common],
                           [trial_store.trial_score(trials[n]) for n in common])
        print(f"| {config.pruner} (every {config.proxy.get('eval_interval')} steps) | {len(pruned)} of "
              f"{len(common)} | {run} ({100 * run / (len(common) * steps):.0f}%) | {minutes:.1f} min "
              f"({100 * minutes / base_minutes:.0f}%) | {kept} of {args.top} | {rho:.2f} |")


if __name__ == "__main__":
    main()
