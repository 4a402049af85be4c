"""Fake objectives for the search tests: fast, deterministic functions of the cell.

Each is a factory, as ``--objective=module:function`` expects: it takes the
``SearchConfig`` and returns ``objective(spec)``. Every training appends one
line ``<graph hash> <pid>`` to ``$FAKE_OBJECTIVE_LOG`` (if set), so a test can
count how many times each graph was trained across processes and restarts.

* ``deterministic``: a score from the cell's hash; never fails.
* ``flaky``: raises (a stand-in for the proxy's TrialFailed on NaN) for cells
  whose first branch is a pyramid pooling; the others as ``deterministic``.
* ``sleepy``: as ``deterministic`` after ``$FAKE_OBJECTIVE_SLEEP`` seconds
  (default 1), so a kill lands mid-trial.
* ``grouped``: as ``flaky``, with ``group(specs)`` (``--cells_per_worker``): each cell's result or
  exception as alone, plus ``group_size``; every call appends its size to ``$FAKE_GROUP_LOG`` (if set).
  With ``$FAKE_GROUP_INTERRUPT`` set, the group of that call number (from 1) raises KeyboardInterrupt.
* ``scored``: as ``deterministic``, with a cheap ``zero_cost(spec, names)``
  (``zero_cost_score``) that logs ``<graph hash> <names>`` to
  ``$FAKE_ZERO_COST_LOG`` (if set), then sleeps ``$FAKE_ZERO_COST_SLEEP``
  seconds (default 0), so a kill can land mid-scoring.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time


class FakeNaN(RuntimeError):
    """What the proxy raises on a NaN loss."""


def score(spec) -> float:
    """A deterministic pseudo-mIoU in [0.2, 0.6) from the graph's canonical hash."""
    digest = hashlib.sha256(spec.canonical_hash().encode()).digest()
    return 0.2 + 0.4 * int.from_bytes(digest[:4], "little") / 2**32


def _log(spec) -> None:
    path = os.environ.get("FAKE_OBJECTIVE_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{spec.canonical_hash()} {os.getpid()}\n")


def _result(spec, seconds=0.0):
    return {
        "miou": score(spec),
        "params": 1000 + len(spec.branches),
        "madds": 2.5e8,
        "seconds": seconds,
        "steps": 10,
    }


def deterministic(config):
    def objective(spec):
        _log(spec)
        return _result(spec)

    return objective


def fails(spec) -> bool:
    return spec.branches[0].op == "pyramid_pooling"


def flaky(config):
    def objective(spec):
        _log(spec)
        if fails(spec):
            raise FakeNaN("loss became NaN at step 3")
        return _result(spec)

    return objective


def grouped(config):
    objective = flaky(config)
    calls = []

    def group(specs):
        calls.append(len(specs))
        path = os.environ.get("FAKE_GROUP_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{len(specs)}\n")
        if os.environ.get("FAKE_GROUP_INTERRUPT") == str(len(calls)):
            raise KeyboardInterrupt
        outcomes = []
        for spec in specs:
            try:
                outcomes.append({**objective(spec), "group_size": len(specs)})
            except FakeNaN as e:
                outcomes.append(e)
        return outcomes

    objective.group = group
    return objective


def sleepy(config):
    seconds = float(os.environ.get("FAKE_OBJECTIVE_SLEEP", "1"))

    def objective(spec):
        start = time.time()
        time.sleep(seconds)
        _log(spec)  # logged when the training finishes: a killed one is not a training
        return _result(spec, time.time() - start)

    return objective


def broken_factory(config):
    raise FileNotFoundError("cache_dir /nonexistent has no features")


def curves(config):
    """As ``deterministic``, reporting ``score * step / 4`` at steps 1, 2, 3 before returning ``score``
    at step 4 (a learning curve ordered like the final scores), for the pruners."""

    def objective(spec, report=None):
        _log(spec)
        final = score(spec)
        if report is not None:
            for step in (1, 2, 3):
                report(step, final * step / 4)
        return _result(spec)

    return objective


def stage2(spec, config, run_dir):
    """A fake stage 2 (``Stage2Config.trainer``): the proxy score plus 0.1, logged to
    ``$FAKE_STAGE2_LOG`` as ``<graph hash> <run_dir>``."""
    path = os.environ.get("FAKE_STAGE2_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{spec.canonical_hash()} {run_dir}\n")
    return {"miou": score(spec) + 0.1, "seconds": 0.0}


def latency(spec) -> float:
    """A deterministic stand-in latency (ms): atrous convolutions cost more the larger their rates."""
    return float(sum(1 + sum(b.rate or (0,)) if b.op == "conv" else 1 for b in spec.branches))


def costly(config):
    """As ``deterministic``, with ``latency_ms`` from ``latency``."""

    def objective(spec):
        _log(spec)
        return {**_result(spec), "latency_ms": latency(spec)}

    return objective


def zero_cost_score(spec, name: str) -> float:
    """A deterministic stand-in zero-cost score in [0, 1) of the graph, per score name."""
    digest = hashlib.sha256(f"{name}/{spec.canonical_hash()}".encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32


def scored(config):
    """As ``deterministic``, with a fake ``zero_cost(spec, names)`` for ``--prefilter`` and
    ``--zero_cost_scores``."""
    objective = deterministic(config)

    def zero_cost(spec, names):
        path = os.environ.get("FAKE_ZERO_COST_LOG")
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{spec.canonical_hash()} {','.join(names)}\n")
        time.sleep(float(os.environ.get("FAKE_ZERO_COST_SLEEP", "0")))
        return {name: zero_cost_score(spec, name) for name in names}

    objective.zero_cost = zero_cost
    return objective


def search_command(search_dir, *flags: str) -> list[str]:
    """``python -m deeplab_dpc.search`` on ``search_dir`` with the ``sleepy`` objective, plus ``flags``
    (``--max_trials=6``, ...): how the tests and benchmarks run a whole search as a user does (set
    ``PYTHONPATH`` to the repository so the workers find this module)."""
    return [
        sys.executable,
        "-m",
        "deeplab_dpc.search",
        f"--search_dir={search_dir}",
        "--objective=tests.nas.fakes:sleepy",
        *flags,
    ]
