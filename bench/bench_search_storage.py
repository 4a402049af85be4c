r"""The search's storage under many workers: SQLite against the journal file, trials per second of
bookkeeping alone and errors, at 8, 16 and 32 local workers.

    python bench/bench_search_storage.py [--workers=8,16,32] [--max_trials=400] [--sleep=0]

Runs ``python -m deeplab_dpc.search`` with the fake objective of ``tests/nas/fakes.py`` (``sleepy``:
no training, ``--sleep`` seconds per trial; 0 measures the storage and the claim protocol alone, the
worst case for locking) into a fresh temporary ``--search_dir`` for each storage and worker count, and
prints: wall seconds from the first trial's start to the last trial's end (from the study), trials per
second over that span, failed trials, and the lines of the workers' logs that say a database was
locked or a lock was forced. Run it with the machine to itself.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

TROUBLE = ("database is locked", "Forcibly releasing", "OperationalError", "Traceback")


def run(storage: str, workers: int, max_trials: int, sleep: float, root: str) -> dict:
    from deeplab_dpc.nas import study as study_lib  # noqa: PLC0415
    from deeplab_dpc.nas import trial_store  # noqa: PLC0415
    from deeplab_dpc.nas.search_config import SearchConfig  # noqa: PLC0415
    from tests.nas import fakes  # noqa: PLC0415

    search_dir = os.path.join(root, f"{storage}_{workers}")
    url = f"journal:{search_dir}/journal.log" if storage == "journal" else None
    command = fakes.search_command(
        search_dir,
        f"--max_trials={max_trials}",
        f"--num_workers={workers}",
        "--num_branches=5",
        *([f"--storage={url}"] if url else []),
    )
    env = dict(os.environ, FAKE_OBJECTIVE_SLEEP=str(sleep), PYTHONPATH=REPO)
    start = time.time()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.time() - start
    if done.returncode != 0:
        return {"error": done.stderr[-2000:]}
    config = SearchConfig(search_dir=search_dir, num_branches=5, storage=url, max_trials=max_trials)
    trials = trial_store.all_trials(study_lib.load_study(config))
    span = max(t.datetime_complete for t in trials) - min(t.datetime_start for t in trials)
    trouble = 0
    for path in glob.glob(os.path.join(search_dir, "workers", "*.log")):
        with open(path, errors="replace") as f:
            trouble += sum(any(word in line for word in TROUBLE) for line in f)
    return {
        "wall": wall,
        "span": span.total_seconds(),
        "trials": len(trials),
        "per_second": max_trials / span.total_seconds(),
        "failed": sum(t.state.name == "FAIL" and trial_store.counts_toward_budget(t) for t in trials),
        "trouble": trouble,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="8,16,32")
    parser.add_argument("--max_trials", type=int, default=400)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    print("command: python bench/bench_search_storage.py " + " ".join(sys.argv[1:]), flush=True)
    root = tempfile.mkdtemp(prefix="search_storage_")
    try:
        print(f"{'storage':8} {'workers':>7} {'trials':>6} {'span s':>7} {'trials/s':>8} {'failed':>6} {'lock/error lines':>16}")
        for workers in [int(w) for w in args.workers.split(",")]:
            for storage in ("sqlite", "journal"):
                r = run(storage, workers, args.max_trials, args.sleep, root)
                if "error" in r:
                    print(f"{storage:8} {workers:7d} search failed:\n{r['error']}", flush=True)
                    continue
                print(
                    f"{storage:8} {workers:7d} {r['trials']:6d} {r['span']:7.1f} {r['per_second']:8.2f} "
                    f"{r['failed']:6d} {r['trouble']:16d}",
                    flush=True,
                )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
