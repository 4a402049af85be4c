r"""Proxy trial cost: time per training step and per trial of the published cell at 256/128/64/32 filters.

    python bench/bench_proxy.py [--steps=25 --warmup=5 --repeats=2 --train_examples=64 --eval_examples=16]
    # the paper's proxy on a GPU (JAX): Cityscapes 769x769 crops, 256 filters, 30K-step trials
    KERAS_BACKEND=jax python bench/bench_proxy.py --features=49,49,320 --crop=769,769 --filters=256 \
        --steps=300 --warmup=50 --project_steps=30000

On CamVid-sized features (23x30x320, MobileNet-v2 at stride 16 on 360x480
crops; random values: cost does not depend on them), batch 8, labels at 4x the
feature grid for the loss and at 360x480 for the score (``ProxyConfig``'s
defaults). Everything goes through ``run_proxy``, as a search trial does.

Per step: the wall time between training steps after ``--warmup`` steps
(taken on the host from the progress callback), so tracing and compiling are
left out. Per trial: ``run_proxy``'s wall time at ``--steps`` steps, split into
the fixed part (model build, batch-norm warm start, tracing, evaluation on
``--eval_examples`` examples) and the steps; ``300 steps`` is the fixed part
plus 300 measured steps (the default ``proxy_steps``), a projection.

Configurations run in turn, then in reverse order (``--repeats``), and the
median is reported, so a change in the machine's load hits all of them alike.
Ratios to 256 filters are the figures to compare across machines. CPU
seconds (``time.process_time``: every thread of the process) are printed
beside wall seconds: on a machine shared with other jobs, wall time measures
the share the scheduler gave, CPU time what the work costs (an idle machine
runs it in about CPU time / cores used).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

SPEC = os.path.join(
    os.path.dirname(__file__),
    "..",
    "experiments",
    "specs",
    "dense_prediction_cell_branch5_top1_cityscapes.json",
)
FEATURES = (23, 30, 320)
CROP = (360, 480)


def make_cache(root: str, train: int, val: int, num_classes: int = 11, features=FEATURES, crop=CROP) -> None:
    from deeplab_dpc.nas.features import write_arrays

    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        features_ = rng.normal(size=(n, *features)).astype("float16")
        labels = rng.integers(0, num_classes, size=(n, *crop)).astype("uint8")
        write_arrays(
            root, split, features_, labels, num_classes=num_classes, shard_size=32, description="random"
        )


def one_trial(spec, config, data, warmup):
    from deeplab_dpc.nas.proxy import run_proxy

    stamps = {}

    def progress(step, total):
        stamps.setdefault(step, (time.perf_counter(), time.process_time()))

    cpu_start = time.process_time()
    result = run_proxy(spec, config, features=data, progress=progress)
    cpu_trial = time.process_time() - cpu_start
    last = config.proxy_steps - 1  # the progress call as the last step begins
    per_step = (stamps[last][0] - stamps[warmup][0]) / (last - warmup)
    cpu_step = (stamps[last][1] - stamps[warmup][1]) / (last - warmup)
    fixed = result["seconds"] - per_step * config.proxy_steps
    cpu_fixed = cpu_trial - cpu_step * config.proxy_steps
    return per_step, result["seconds"], fixed, result, cpu_step, cpu_trial, cpu_fixed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--filters", default="256,128,64,32")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--train_examples", type=int, default=64)
    parser.add_argument("--eval_examples", type=int, default=16)
    parser.add_argument("--features", default=",".join(map(str, FEATURES)), help="height,width,channels")
    parser.add_argument("--crop", default=",".join(map(str, CROP)), help="label height,width")
    parser.add_argument("--project_steps", type=int, default=300, help="steps of the projected trial")
    args = parser.parse_args(argv)
    features = tuple(int(v) for v in args.features.split(","))
    crop = tuple(int(v) for v in args.crop.split(","))
    project = args.project_steps

    import keras

    from deeplab_dpc.core.spec import CellSpec
    from deeplab_dpc.nas.proxy import ProxyConfig, load_proxy_data

    spec = CellSpec.load(SPEC)
    filters = [int(f) for f in args.filters.split(",")]
    root = tempfile.mkdtemp(prefix="bench_proxy_")
    try:
        make_cache(root, args.train_examples, args.eval_examples, features=features, crop=crop)
        base = ProxyConfig(cache_dir=root, proxy_steps=args.steps, batch_size=args.batch_size)
        data = load_proxy_data(base)
        load_start = os.getloadavg()
        runs = {f: [] for f in filters}
        for repeat in range(args.repeats):
            for f in filters if repeat % 2 == 0 else filters[::-1]:
                config = ProxyConfig.from_dict(dict(base.to_dict(), proxy_filters=f))
                runs[f].append(one_trial(spec, config, data, args.warmup))
                print(
                    f"  filters {f:3d}, repeat {repeat}: {runs[f][-1][0] * 1000:.0f} ms/step, "
                    f"{runs[f][-1][4] * 1000:.0f} CPU ms/step",
                    file=sys.stderr,
                )
        load_end = os.getloadavg()
    finally:
        shutil.rmtree(root, ignore_errors=True)

    print(f"command: python bench/bench_proxy.py {' '.join(sys.argv[1:] if argv is None else argv)}".rstrip())
    print(
        f"backend {keras.backend.backend()}, {os.cpu_count()} CPUs, load average {load_start[0]:.1f} at the "
        f"start, {load_end[0]:.1f} at the end; published cell, features {list(features)}, batch "
        f"{args.batch_size}, {args.steps} steps ({args.warmup} warm-up), "
        f"eval on {args.eval_examples} examples "
        f"at {crop[0]}x{crop[1]}, median of {args.repeats}"
    )
    print(
        f"{'filters':>7} {'ms/step':>8} {'CPU ms/step':>11} {'vs 256':>7} {'MAdds (G)':>9} {'params':>8} "
        f"{'trial s':>8} {'CPU s':>6} {'fixed s':>8} {'CPU s':>6} {f'{project} steps s':>11} {'CPU s':>6} "
        f"{'trials/h':>8}"
    )
    reference = None
    for f in filters:
        median = lambda i: statistics.median(r[i] for r in runs[f])  # noqa: E731
        per_step, trial, fixed, cpu_step, cpu_trial, cpu_fixed = (median(i) for i in (0, 1, 2, 4, 5, 6))
        result = runs[f][0][3]
        if f == 256:
            reference = (per_step, cpu_step)
        ratio = f"{per_step / reference[0]:.2f}/{cpu_step / reference[1]:.2f}" if reference else "-"
        print(
            f"{f:7d} {per_step * 1000:8.0f} {cpu_step * 1000:11.0f} {ratio:>7} {result['madds'] / 1e9:9.3f} "
            f"{result['params']:8d} {trial:8.1f} {cpu_trial:6.1f} {fixed:8.1f} {cpu_fixed:6.1f} "
            f"{fixed + project * per_step:11.0f} {cpu_fixed + project * cpu_step:6.0f} "
            f"{3600 / (fixed + project * per_step):8.1f}"
        )
    print(
        f"vs 256: wall/CPU time per step relative to 256 filters; trials/h: one worker, {project}-step trials"
    )


if __name__ == "__main__":
    main()
