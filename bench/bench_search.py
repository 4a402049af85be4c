r"""The whole search command: trials per hour with start-up included, time to the first trial, memory.

    python bench/bench_search.py [--max_trials=16] [--flagfile=experiments/camvid/search.flags] \
        [-- extra search flags, e.g. --num_workers=1]

Runs ``python -m deeplab_dpc.search`` on the flagfile (its cache: build it first, see the flagfile's
header) into a fresh temporary ``--search_dir``, and while it runs samples, every ``--interval``
seconds, the memory of the command's whole process tree (driver and workers): the sum of their PSS
(proportional set size: a page shared by N processes, such as TensorFlow's libraries or the memory-mapped
feature cache, counts 1/N in each, so the sum is what the machine holds) and the sum of their RSS (what
each process alone appears to hold). Prints: wall time, trials per hour over the whole command (start-up
and the driver's end included), seconds from the command's start to the first trial's start and to its
end, the mean trial's seconds per worker, and the peak PSS and RSS sums. Run it with the machine to itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc's parent links)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    return tree


def memory_kb(pid: int) -> tuple[int, int]:
    """(PSS, RSS) of one process in kB (0, 0 once it is gone)."""
    pss = rss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                elif line.startswith("Rss:"):
                    rss = int(line.split()[1])
    except OSError:
        pass
    return pss, rss


class Sampler(threading.Thread):
    def __init__(self, pid: int, interval: float):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_pss = self.peak_rss = 0
        self.peak_processes = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            tree = descendants(self.pid)
            sizes = [memory_kb(p) for p in tree]
            self.peak_pss = max(self.peak_pss, sum(s[0] for s in sizes))
            self.peak_rss = max(self.peak_rss, sum(s[1] for s in sizes))
            self.peak_processes = max(self.peak_processes, sum(1 for s in sizes if s[1]))
            self.done.wait(self.interval)


def trial_times(search_dir: str, started: float) -> dict:
    """From the study: seconds from ``started`` (epoch) to the first trial's start and end, the trials that
    completed by training (duplicates left out) and their mean seconds."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{os.path.join(search_dir, 'study.db')}"
    [summary] = optuna.get_all_study_summaries(storage)
    study = optuna.load_study(study_name=summary.study_name, storage=storage)
    done = [
        t
        for t in study.trials
        if t.state == TrialState.COMPLETE
        and t.datetime_start
        and t.datetime_complete
        and t.user_attrs.get("duplicate_of") is None  # a duplicate copies a score: it trained nothing
    ]
    first = min(done, key=lambda t: t.datetime_start)
    return {
        "completed": len(done),
        "first_start_s": first.datetime_start.timestamp() - started,
        "first_end_s": min(t.datetime_complete.timestamp() for t in done) - started,
        "mean_trial_s": sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done),
    }


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flagfile", default="experiments/camvid/search.flags")
    parser.add_argument("--max_trials", type=int, default=16)
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--keep", help="search here instead of a temporary folder (kept)")
    args = parser.parse_args(own)

    search_dir = args.keep or tempfile.mkdtemp(prefix="bench_search_")
    command = [
        sys.executable, "-m", "deeplab_dpc.search", f"--flagfile={args.flagfile}", f"--search_dir={search_dir}",
        f"--max_trials={args.max_trials}", *extra,
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))
    log_path = os.path.join(tempfile.gettempdir(), f"bench_search_{os.getpid()}.log")
    try:
        with open(log_path, "w") as log:
            started = time.time()
            t0 = time.perf_counter()
            proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
            sampler = Sampler(proc.pid, args.interval)
            sampler.start()
            code = proc.wait()
            wall = time.perf_counter() - t0
            sampler.done.set()
            sampler.join()
        if code != 0:
            with open(log_path) as f:
                sys.exit(f"the search failed (exit {code}); its last lines:\n{f.read()[-3000:]}")
        times = trial_times(search_dir, started)
    finally:
        if not args.keep:
            shutil.rmtree(search_dir, ignore_errors=True)

    print(f"command: python bench/bench_search.py {' '.join(argv)}".rstrip())
    print(f"search: {' '.join(command[1:])}")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end")
    print("| trials | wall s | trials/hour (whole command) | first trial starts s | first trial ends s "
          "| mean trial s (per worker) | peak PSS sum MB | peak RSS sum MB | processes |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {times['completed']} | {wall:.0f} | {times['completed'] / wall * 3600:.0f} | "
        f"{times['first_start_s']:.1f} | {times['first_end_s']:.1f} | {times['mean_trial_s']:.1f} | "
        f"{sampler.peak_pss / 1024:.0f} | {sampler.peak_rss / 1024:.0f} | {sampler.peak_processes} |"
    )


if __name__ == "__main__":
    main()
