r"""Training-loop overhead on JAX: a monitor that syncs every step vs ours (host-side counting).

    KERAS_BACKEND=jax python bench/bench_async_callbacks.py [--size=9] [--repeats=3]

A published-DPC head on cached-feature-shaped input (batch 8, size x size x
320, 19 classes), trained with ``model.fit`` over a PyDataset, as the proxy
trainer will. Peer: a callback that reads the loss in ``on_train_batch_end``
(what ``train_lib._Monitor`` did before), which makes every step wait for the
device and disables Keras' asynchronous callback dispatch. Ours:
``train_lib._Monitor`` as training uses it. Prints the best ms/step of each
and their ratio.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell  # noqa: E402
from deeplab_dpc.core.spec import CellSpec  # noqa: E402
from deeplab_dpc.training import train_lib  # noqa: E402


class SyncEveryStep(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])
        int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    print(f"# command: KERAS_BACKEND={keras.backend.backend()} python bench/bench_async_callbacks.py "
          f"--size={args.size} --repeats={args.repeats} --steps={args.steps}")
    print(f"# {platform.node()} {os.cpu_count()} cpus, keras {keras.__version__}, "
          f"load {os.getloadavg()[0]:.1f}, {time.strftime('%Y-%m-%d')}")
    spec = CellSpec.load(REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, args.size, args.size, 320)).astype("float32")
    y = rng.integers(0, 19, (64, args.size, args.size)).astype("int32")

    class Data(keras.utils.PyDataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8]

    def build():
        inputs = keras.Input((args.size, args.size, 320))
        model = keras.Model(inputs, keras.layers.Conv2D(19, 1)(DensePredictionCell(spec)(inputs)))
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    class Config:  # the fields _Monitor reads
        training_number_of_steps = 10**9
        log_steps = 8
        save_interval_secs = 10**9
        eval_interval_steps = 0
        train_logdir = tempfile.mkdtemp(prefix="bench_async_")

    def ours():
        return train_lib._Monitor(Config, None, None, lambda step: 0.0)

    results = {}
    for _ in range(args.repeats):
        for name, make in (("sync every step (before)", SyncEveryStep), ("train_lib._Monitor", ours)):
            model = build()
            model.fit(Data(), epochs=1, steps_per_epoch=8, verbose=0, callbacks=[make()])  # compile
            start = time.perf_counter()
            model.fit(Data(), epochs=args.steps // 8, steps_per_epoch=8, verbose=0, callbacks=[make()])
            results.setdefault(name, []).append((time.perf_counter() - start) / args.steps)
    best = {name: min(times) for name, times in results.items()}
    for name, seconds in best.items():
        print(f"{name:26s} {1000 * seconds:8.1f} ms/step (best of {args.repeats})")
    before, after = best["sync every step (before)"], best["train_lib._Monitor"]
    print(f"ratio ours/before: {after / before:.2f}")


if __name__ == "__main__":
    main()
