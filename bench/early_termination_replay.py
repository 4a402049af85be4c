r"""What Nekrasov's early-termination rule would save on a finished, re-ranked search.

    python bench/early_termination_replay.py --search_dir=/tmp/runs/random [--seeds=0,1,2]

Replays ``nas.progressive.decide`` over the search's completed cells in completion order (their
proxy scores as stage 1), for each rule setting and seed, and prints how many cells would have gone
on to stage 2, the stage-2 time that saves at the re-ranking's measured time per cell, and whether
the cells with the best end-to-end scores (from ``deeplab_dpc.rerank``) would have reached stage 2
(the "same final ranking" check: a rule that stops the eventual winner after stage 1 loses it).
Runs in seconds: nothing is trained. Prints the command first.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

SETTINGS = (  # (average, initial probability, decay)
    ("mean", 0.9, 0.98),
    ("mean", 0.9, 0.95),
    ("median", 0.9, 0.98),
    ("median", 0.9, 0.95),
    ("median", 0.5, 0.95),
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search_dir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)
    print("command: python bench/early_termination_replay.py " + " ".join(sys.argv[1:]))

    from optuna.trial import TrialState

    from deeplab_dpc.nas import progressive
    from deeplab_dpc.nas import rerank as rerank_lib
    from deeplab_dpc.nas import trial_store

    config = rerank_lib.load_search_config(args.search_dir)
    study = rerank_lib.open_study(config)
    trials = [
        t
        for t in trial_store.all_trials(study)
        if t.state == TrialState.COMPLETE and not trial_store.is_duplicate(t)
    ]
    trials.sort(key=lambda t: (t.datetime_complete, t.number))
    records = rerank_lib.full_scores(study)
    full = {n: r["full_miou"] for n, r in records.items() if r.get("full_miou") is not None}
    seconds = [r["full_seconds"] for r in records.values() if r.get("full_seconds")]
    per_cell = float(np.median(seconds)) if seconds else float("nan")
    top = sorted(full, key=full.get, reverse=True)[:3]
    print(f"{len(trials)} completed cells; stage 2 = the re-ranking's end-to-end run, median {per_cell:.0f} s per "
          f"cell; best end-to-end cells: trials {top}")
    print("\n| rule | seed | stage 2 runs | stage-2 time saved | best 3 by full mIoU reach stage 2 |")
    print("|---|---|---|---|---|")
    for average, p0, decay in SETTINGS:
        for seed in (int(s) for s in args.seeds.split(",")):
            earlier, gone = [], set()
            for t in trials:
                score = trial_store.trial_score(t)
                if progressive.decide(score, earlier, p0, decay, seed, t.number, average).go:
                    gone.add(t.number)
                earlier.append(score)
            saved = (len(trials) - len(gone)) * per_cell
            reached = ", ".join("yes" if n in gone else "NO" for n in top)
            print(
                f"| {average}, p0 {p0}, decay {decay} | {seed} | {len(gone)} of {len(trials)} | "
                f"{saved / 3600:.1f} h of {len(trials) * per_cell / 3600:.1f} h "
                f"({100 * (len(trials) - len(gone)) / len(trials):.0f}%) | {reached} |"
            )


if __name__ == "__main__":
    main()
