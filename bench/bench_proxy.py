r"""A proxy trial's step against a bare step of the same model and against the arithmetic limit.

    python bench/bench_proxy.py [--cache_dir=runs/camvid/features] [--filters=64] [--steps=60 --warmup=10]
        [--profile_steps=10] [--group_sizes=1,2,4,8] [--intra_op_threads=0 --inter_op_threads=0]
    # on a GPU host (JAX): bench/proxy_gpu.sh (the CamVid budget and the paper's, K = 1, 4, 16, 64)
    # on PyTorch (pip install -e .[torch]): KERAS_BACKEND=torch python bench/bench_proxy.py --profile_steps=0

One run, one model and loss, the same batches (issue 17, section 1). Rows, per ``--filters`` value:

* ``trial``: ``run_proxy`` as a search trial runs it (a step is the wall time between two of its progress
  calls, after ``--warmup`` steps, so building and tracing are left out); its start-up (build, compile,
  warm start, first traced step) and its evaluation are printed beside, with a ``--project_steps`` trial
  projected from them (and trials per hour on one worker).
* ``bare``: the same compiled model (``proxy.compile_proxy_model``) and the same batches, taken out of the
  trial's batch generator before timing, in a plain ``train_on_batch`` loop.
* ``limit``: the step's FLOPs over this machine's sgemm rate (a float32 matmul timed at the start and at
  the end of the run, on the same threads: the higher of the two, what the machine showed it can do; the
  two differ by up to 20% between runs on a shared VM). FLOPs: 2 per multiply-add of the cell and the logits layer (``analysis.stats``'
  analytical counts, as ``model_stats``) times the batch, times 3 for forward and backward (an upper
  bound: the first layers need no gradient for their input); the resize of the logits to the loss grid
  and batch norm are not counted.

Each row gives milliseconds per step (wall), user and system CPU milliseconds per step (``getrusage``
over the timed steps: every thread of the process) and the ratio to the bare step and to the limit.
With ``--group_sizes``, K cells sampled from the search space (seeded) trained in one program
(``run_proxy_group``, as ``search --cells_per_worker=K``): ms per step of all K, per cell, and projected
trials per hour against K = 1. Then, on TensorFlow, a per-op profile of ``--profile_steps`` bare steps
(TensorFlow's profiler, ``framework_op_stats``): self time per step by op type and its share of all ops'
time, and the top ops (self times are summed over threads, so with inter-op parallelism they can add up
to more than the step's wall time).

Data: the feature cache at ``--cache_dir`` (its train split's first ``--train_examples``), else random
features of ``--features`` with labels of ``--crop`` (11 classes; CamVid's size by default: the cost does
not depend on the values). Prints the command and the machine first; run it with the machine to itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SPEC = os.path.join(HERE, "..", "experiments", "specs", "dense_prediction_cell_branch5_top1_cityscapes.json")
FEATURES = (23, 30, 320)
CROP = (360, 480)


def make_cache(root: str, train: int, val: int, num_classes: int = 11, features=FEATURES, crop=CROP) -> None:
    """Random features and labels at CamVid's size, as a feature cache."""
    from deeplab_dpc.nas.features import write_arrays

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        values = rng.normal(size=(n, *features)).astype("float16")
        labels = rng.integers(0, num_classes, size=(n, *crop)).astype("uint8")
        write_arrays(root, split, values, labels, num_classes=num_classes, shard_size=32, description="random")


def cpu_times() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def sgemm_gflops(n: int = 1024, repeats: int = 20) -> float:
    """Float32 matmul rate of this process (the Keras backend, compiled, its current threads), GFLOP/s:
    median of ``repeats``."""
    import keras

    a = keras.random.normal((n, n), seed=1)
    b = keras.random.normal((n, n), seed=2)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        matmul = tf.function(lambda: tf.reduce_sum(tf.linalg.matmul(a, b)))
    elif keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(lambda x, y: (x @ y).sum())
        matmul = lambda: compiled(a, b)  # noqa: E731
    else:
        matmul = lambda: keras.ops.sum(keras.ops.matmul(a, b))  # noqa: E731
    for _ in range(3):
        keras.ops.convert_to_numpy(matmul())
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        keras.ops.convert_to_numpy(matmul())
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_flops(spec, feature_shape, filters: int, num_classes: int, batch_size: int) -> float:
    """Forward and backward FLOPs of one proxy step (see the module doc)."""
    from deeplab_dpc.nas.proxy import cell_cost

    madds = cell_cost(spec, feature_shape, filters)["madds"]
    madds += feature_shape[0] * feature_shape[1] * filters * num_classes  # the logits' 1x1 conv
    return 3 * 2 * madds * batch_size


def time_trial(specs, config, data, warmup: int) -> dict:
    """``run_proxy_group`` of ``specs`` (one spec: a trial exactly as ``run_proxy`` runs it), its steps
    timed from the progress calls: wall and CPU ms per step (of all the cells), the start-up (build,
    compile, warm start, the first traced step), the evaluation of all cells, the whole call."""
    from deeplab_dpc.nas.proxy import run_proxy_group

    stamps = {}

    def progress(step, total):
        stamps.setdefault(step, (time.perf_counter(), *cpu_times()))

    start = time.perf_counter()
    outcomes = run_proxy_group(specs, config, features=data, progress=progress)
    wall = time.perf_counter() - start
    failed = [o for o in outcomes if isinstance(o, Exception)]
    if failed:
        raise failed[0]
    last = config.proxy_steps - 1  # the progress call as the last step begins
    per = [(stamps[last][i] - stamps[warmup][i]) / (last - warmup) for i in range(3)]
    return {
        "ms": per[0] * 1000,
        "user_ms": per[1] * 1000,
        "sys_ms": per[2] * 1000,
        "startup_s": stamps[1][0] - start,
        "eval_s": outcomes[0]["eval_seconds"] * len(specs),
        "trial_s": wall,
        "miou": outcomes[0]["miou"],
    }


def bare_model(spec, config, data, steps: int):
    """The trial's compiled model, warm-started, and ``steps`` of the trial's batches taken out first."""
    from deeplab_dpc.nas.proxy import compile_proxy_model, training_batches, warm_start_proxy_model

    model = compile_proxy_model(spec, config, data)
    generator = training_batches(config, data)
    batches = [next(generator) for _ in range(steps)]
    warm_start_proxy_model(model, config, data)
    return model, batches


def time_bare(spec, config, data, warmup: int) -> dict:
    model, batches = bare_model(spec, config, data, config.proxy_steps)
    for x, y in batches[:warmup]:
        model.train_on_batch(x, y)
    t0, u0, s0 = time.perf_counter(), *cpu_times()
    for x, y in batches[warmup:]:
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))  # the last step done
    t1, u1, s1 = time.perf_counter(), *cpu_times()
    n = len(batches) - warmup
    return {"ms": (t1 - t0) / n * 1000, "user_ms": (u1 - u0) / n * 1000, "sys_ms": (s1 - s0) / n * 1000}


def sampled_cells(count: int, seed: int = 0) -> list:
    """``count`` distinct cells of the default search space (5 branches), drawn with ``seed``."""
    import random

    from deeplab_dpc.core.spec import SearchSpace

    rng = random.Random(seed)
    space = SearchSpace(num_branches=5)
    cells, seen = [], set()
    while len(cells) < count:
        spec = space.sample(rng)
        if spec.canonical_hash() not in seen:
            seen.add(spec.canonical_hash())
            cells.append(spec)
    return cells


def op_profile(spec, config, data, warmup: int, steps: int, logdir: str) -> tuple[list[dict], float]:
    """Per-op self time of ``steps`` bare steps: (rows of TensorFlow's framework_op_stats, wall ms per step)."""
    import glob

    import tensorflow as tf
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as plugin

    model, batches = bare_model(spec, config, data, warmup + steps)
    for x, y in batches[:warmup]:
        model.train_on_batch(x, y)
    tf.profiler.experimental.start(logdir)
    t = time.perf_counter()
    for x, y in batches[warmup:]:
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss))
    wall_ms = (time.perf_counter() - t) / steps * 1000
    tf.profiler.experimental.stop()
    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    raw, ok = plugin.xspace_to_tools_data(paths, "framework_op_stats", {})
    if not ok:
        raise RuntimeError(f"the profiler's op stats: {raw[:200]!r}")
    table = json.loads(raw)
    table = table[0] if isinstance(table, list) else table
    ids = [c["id"] for c in table["cols"]]
    rows = [dict(zip(ids, (cell.get("v") if cell else None for cell in row["c"]))) for row in table["rows"]]
    rows = [r for r in rows if r.get("type") != "IDLE"]
    return rows, wall_ms


def profile_lines(rows: list[dict], steps: int, wall_ms: float, top: int) -> list[str]:
    """Markdown: self time per step by op type (and its share of all ops' time), then the top ops."""
    by_type: dict[str, list[float]] = {}
    for r in rows:
        entry = by_type.setdefault(r["type"], [0.0, 0])
        entry[0] += r["total_self_time"] / 1000 / steps
        entry[1] += r["occurrences"] / steps
    ops_ms = sum(v[0] for v in by_type.values())
    lines = [
        f"per-op profile of {steps} bare steps: {wall_ms:.1f} ms a step (wall); the ops' self time "
        f"{ops_ms:.1f} ms a step, summed over threads (above the wall time where ops ran in parallel)",
        "",
        "| op type | ms/step | % of op time | ops/step |",
        "|---|---|---|---|",
    ]
    for kind, (ms, count) in sorted(by_type.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"| {kind} | {ms:.2f} | {100 * ms / ops_ms:.1f} | {count:.0f} |")
    lines += ["", "| op | type | ms/step |", "|---|---|---|"]
    for r in sorted(rows, key=lambda r: -r["total_self_time"])[:top]:
        lines.append(f"| {r['operation']} | {r['type']} | {r['total_self_time'] / 1000 / steps:.2f} |")
    return lines


def set_threads(intra: int, inter: int) -> None:
    """TensorFlow's or torch's thread pools (importing Keras starts neither); other backends keep theirs."""
    if not (intra or inter):
        return
    import keras

    if keras.backend.backend() == "torch":
        import torch

        if intra:
            torch.set_num_threads(intra)
        if inter:
            torch.set_num_interop_threads(inter)
        return
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    if intra:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
    if inter:
        tf.config.threading.set_inter_op_parallelism_threads(inter)


def threads_text() -> str:
    import keras

    if keras.backend.backend() == "torch":
        import torch

        return f"threads intra {torch.get_num_threads()} / inter {torch.get_num_interop_threads()} (torch)"
    if keras.backend.backend() != "tensorflow":
        return "threads: the backend's"
    import tensorflow as tf

    return (
        f"threads intra {tf.config.threading.get_intra_op_parallelism_threads() or 'default'} / inter "
        f"{tf.config.threading.get_inter_op_parallelism_threads() or 'default'}"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache_dir", help="a feature cache (default: random features of --features)")
    parser.add_argument("--features", default=",".join(map(str, FEATURES)), help="random features: h,w,c")
    parser.add_argument("--crop", default=",".join(map(str, CROP)), help="random labels: height,width")
    parser.add_argument("--spec", default=SPEC, help="the cell (DeepLab's JSON); default the published one")
    parser.add_argument("--filters", default="64")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=0.2)
    parser.add_argument("--loss_resolution", default="features4x", help="the proxy's (features4x, label, features)")
    parser.add_argument("--steps", type=int, default=60, help="steps of each timed run (trial and bare)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--project_steps", type=int, default=200, help="steps of the projected trial")
    parser.add_argument("--profile_steps", type=int, default=10, help="0: no profile (TensorFlow only)")
    parser.add_argument("--top", type=int, default=12, help="rows of each profile table")
    parser.add_argument(
        "--group_sizes", default="", help="e.g. 1,2,4,8: also K sampled cells per program (run_proxy_group)"
    )
    parser.add_argument("--train_examples", type=int, default=96)
    parser.add_argument("--eval_examples", type=int, default=16)
    parser.add_argument("--intra_op_threads", type=int, default=0, help="0: the backend's default")
    parser.add_argument("--inter_op_threads", type=int, default=0, help="0: the backend's default")
    args = parser.parse_args(argv)
    if args.steps <= args.warmup + 1:
        parser.error(f"--steps={args.steps} must exceed --warmup={args.warmup} + 1")
    features = tuple(int(v) for v in args.features.split(","))
    crop = tuple(int(v) for v in args.crop.split(","))
    sizes = [int(k) for k in args.group_sizes.split(",") if k.strip()]

    set_threads(args.intra_op_threads, args.inter_op_threads)
    import keras

    from deeplab_dpc.core.spec import CellSpec
    from deeplab_dpc.nas.proxy import ProxyConfig, load_proxy_data

    profiling = args.profile_steps and keras.backend.backend() == "tensorflow"
    spec = CellSpec.load(args.spec)
    tmp = tempfile.mkdtemp(prefix="bench_proxy_")
    try:
        cache_dir = args.cache_dir
        if cache_dir is None:
            cache_dir = os.path.join(tmp, "cache")
            make_cache(cache_dir, args.train_examples, args.eval_examples, features=features, crop=crop)
        base = ProxyConfig(
            cache_dir=cache_dir,
            proxy_steps=args.steps,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            loss_resolution=args.loss_resolution,
            max_train_examples=args.train_examples,
            max_eval_examples=args.eval_examples,
        )
        data = load_proxy_data(base)
        gflops = sgemm_gflops()
        results, groups = {}, {}
        for filters in (int(f) for f in args.filters.split(",")):
            config = ProxyConfig.from_dict(dict(base.to_dict(), proxy_filters=filters))
            trial = time_trial([spec], config, data, args.warmup)
            bare = time_bare(spec, config, data, args.warmup)
            flops = step_flops(spec, data.feature_shape, filters, data.num_classes, args.batch_size)
            profile = None
            if profiling:
                profile = op_profile(
                    spec, config, data, args.warmup, args.profile_steps, os.path.join(tmp, f"profile_{filters}")
                )
            results[filters] = (trial, bare, flops, profile)
            cells = sampled_cells(max(sizes)) if sizes else []
            for k in sizes:
                groups[(filters, k)] = time_trial(cells[:k], config, data, args.warmup)
        gflops_end = sgemm_gflops()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    project = args.project_steps
    print(f"command: python bench/bench_proxy.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(
        f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs, {threads_text()}, load average "
        f"{os.getloadavg()[0]:.1f}; sgemm {gflops:.0f} GFLOP/s (at the end: {gflops_end:.0f}); "
        f"{os.path.basename(args.spec)}, features {list(data.feature_shape)} "
        f"({'cache ' + args.cache_dir if args.cache_dir else 'random'}), batch {args.batch_size}, "
        f"{args.steps} steps ({args.warmup} warm-up), loss at {args.loss_resolution}; eval on "
        f"{len(data.eval_features)} examples"
    )
    for filters, (trial, bare, flops, profile) in results.items():
        limit_ms = flops / (max(gflops, gflops_end) * 1e9) * 1000
        projected = trial["startup_s"] + trial["eval_s"] + project * trial["ms"] / 1000
        print(
            f"\n{filters} filters: {flops / 1e9:.2f} GFLOP a step; trial start-up {trial['startup_s']:.1f} s "
            f"(build, compile, warm start, first traced step), eval {trial['eval_s']:.1f} s, whole trial "
            f"{trial['trial_s']:.1f} s; a {project}-step trial: {projected:.1f} s, {3600 / projected:.0f} "
            "trials/hour on one worker"
        )
        print("\n| step | ms | user CPU ms | system CPU ms | system/user | vs bare | vs limit |")
        print("|---|---|---|---|---|---|---|")
        for name, row in (("trial (run_proxy)", trial), ("bare train_on_batch", bare)):
            print(
                f"| {name} | {row['ms']:.1f} | {row['user_ms']:.1f} | {row['sys_ms']:.1f} | "
                f"{row['sys_ms'] / max(row['user_ms'], 1e-9):.2f} | {row['ms'] / bare['ms']:.2f}x | "
                f"{row['ms'] / limit_ms:.1f}x |"
            )
        print(f"| arithmetic limit | {limit_ms:.1f} | | | | {limit_ms / bare['ms']:.2f}x | 1.0x |")
        if sizes:
            print(f"\ncells per program ({filters} filters, sampled cells; a {project}-step trial projected):")
            print("\n| K | ms per step (all K) | ms per cell-step | start-up s | trials/hour | vs K=1 |")
            print("|---|---|---|---|---|---|")
            base_rate = None
            for k in sizes:
                g = groups[(filters, k)]
                seconds = g["startup_s"] + g["eval_s"] + project * g["ms"] / 1000
                rate = 3600 * k / seconds
                base_rate = base_rate or (rate if k == 1 else None)
                ratio = f"{rate / base_rate:.2f}x" if base_rate else "-"
                print(f"| {k} | {g['ms']:.1f} | {g['ms'] / k:.1f} | {g['startup_s']:.1f} | {rate:.0f} | {ratio} |")
        if profile is not None:
            print()
            print("\n".join(profile_lines(profile[0], args.profile_steps, profile[1], args.top)))


if __name__ == "__main__":
    main()
