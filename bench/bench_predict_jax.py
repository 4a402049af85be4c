r"""Evaluation-time inference on the JAX backend: compiled (``make_predict_fn``) vs eager.

    KERAS_BACKEND=jax python bench/bench_predict_jax.py [--repeats=5] [--size=360,480] [--scales=1.0] [--flip]

MobileNet-v2 (os 16) + the published DPC + v3+ decoder, 11 classes, batch 1,
random weights. Prints, for the eager ``predict_labels`` and the ``jax.jit``
function that eval/vis/training use: the first call (compilation) and the
median of the following calls, their ratio, and whether the labels agree.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: E402
from deeplab_dpc.core.spec import CellSpec  # noqa: E402
from deeplab_dpc.evaluation.eval_lib import make_predict_fn  # noqa: E402
from deeplab_dpc.evaluation.inference import predict_labels  # noqa: E402


def measure(fn, images, repeats):
    start = time.perf_counter()
    first = np.asarray(fn(images))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.asarray(fn(images))
        times.append(time.perf_counter() - start)
    return first, first_s, float(np.median(times))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", default="360,480")
    parser.add_argument("--scales", default="1.0")
    parser.add_argument("--flip", action="store_true")
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split(","))
    scales = tuple(float(s) for s in args.scales.split(","))
    print(f"# command: KERAS_BACKEND={keras.backend.backend()} python bench/bench_predict_jax.py "
          f"--repeats={args.repeats} --size={args.size} --scales={args.scales}{' --flip' if args.flip else ''}")
    print(f"# {platform.node()} {os.cpu_count()} cpus, keras {keras.__version__}, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}")
    spec = CellSpec.load(REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json")
    model = build_deeplab(ModelConfig(num_classes=11, dense_prediction_cell=spec, decoder_output_stride=4))
    images = np.random.default_rng(0).uniform(0, 255, (1, height, width, 3)).astype("float32")
    eager = lambda x: predict_labels(model, x, scales, args.flip)  # noqa: E731
    compiled = make_predict_fn(model, scales, args.flip)
    a, eager_first, eager_s = measure(eager, images, args.repeats)
    b, compiled_first, compiled_s = measure(compiled, images, args.repeats)
    print(f"eager:    first call {eager_first:6.2f} s, then {eager_s:.3f} s/image")
    print(f"compiled: first call {compiled_first:6.2f} s, then {compiled_s:.3f} s/image")
    print(f"ratio compiled/eager: {compiled_s / eager_s:.2f} (steady), {compiled_first / eager_first:.2f} (first call); "
          f"labels agree on {100 * float((a == b).mean()):.2f}% of pixels")


if __name__ == "__main__":
    main()
