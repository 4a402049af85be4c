r"""Input pipeline throughput on CamVid: tf.data vs the NumPy/OpenCV loader.

    python bench/bench_input_pipeline.py [--source=tfrecord|folder] [--rounds=3]
        [--batches=15] [--workers=2] [--camvid=../shared/data/camvid]

CamVid train (367 images, 360x480) with DeepLab's training augmentation: random
scale 0.5-2.0 in steps of 0.25, pad, random 360x480 crop, flip. Both loaders
read the same data:

* ``--source=tfrecord`` (default): TFRecord shards written on the fly into a
  temporary folder by part 1's ``conversion.convert_split`` (void 11 -> 255);
  tf.data reads them with ``input_pipeline.build_dataset``, the NumPy loader
  with ``numpy_loader.TFRecordSource`` (pure-Python record parsing);
* ``--source=folder``: the PNG folders, tf.data through ``tf.io.read_file``
  (``dataset="folder"``), NumPy through ``FolderSource``.

Each measurement takes a fresh iterator, skips 2 warm-up batches, and times
``--batches`` batches; the loaders alternate for ``--rounds`` rounds (so that
load from other processes hits both alike) and the median round is reported.
The NumPy loader runs ``SegmentationPyDataset.__getitem__`` on a pool of
``--workers`` threads with a bounded queue, as Keras' ``OrderedEnqueuer``
does with ``workers > 1, use_multiprocessing=False``.

Prints images/s per loader and batch size, the ratio NumPy / tf.data, the
step time each can feed (batch / images per second: a training step faster
than that waits for data), CPU time per image (all threads of the process;
less sensitive than images/s to other processes on a shared machine), the
load average, and this command.
"""

from __future__ import annotations

import argparse
import collections
import os
import pathlib
import platform
import shlex
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from deeplab_dpc.data import input_pipeline, numpy_loader  # noqa: E402
from deeplab_dpc.data.preprocess import PreprocessConfig  # noqa: E402

CONFIG = PreprocessConfig(
    crop_size=(360, 480), min_scale_factor=0.5, max_scale_factor=2.0, scale_factor_step_size=0.25, ignore_label=255
)
VOID_TO_IGNORE = {11: 255}
WARMUP_BATCHES = 2


def build_tfrecords(camvid: pathlib.Path, out_dir: str) -> float:
    """Converts CamVid train with part 1's converter; returns seconds taken."""
    from deeplab_dpc.data import conversion

    examples = conversion.examples_from_list(camvid / "train.txt", camvid / "train", camvid / "trainannot")
    start = time.perf_counter()
    conversion.convert_split(
        examples,
        out_dir,
        "train",
        num_classes=11,
        ignore_label=255,
        label_fn=conversion.label_lut(VOID_TO_IGNORE),
        sharding=conversion.ShardingConfig(num_shards=4, progress=False),
    )
    return time.perf_counter() - start


def time_tf(data_dir, dataset: str, batch_size: int, batches: int, seed: int) -> tuple[float, float]:
    """(images/s, CPU ms/image) of ``build_dataset`` (training, tuples) over ``batches`` batches."""
    ds = input_pipeline.build_dataset(
        data_dir,
        "train",
        CONFIG,
        batch_size,
        seed=seed,
        dataset=dataset,
        as_tuple=True,
        label_remap=VOID_TO_IGNORE if dataset == "folder" else None,
    )
    iterator = iter(ds)
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        images, labels = next(iterator)
        assert images.shape == (batch_size, 360, 480, 3) and labels.shape == (batch_size, 360, 480, 1)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    del iterator
    images = batches * batch_size
    return images / seconds, 1000 * cpu / images


def time_numpy(source, batch_size: int, batches: int, workers: int, seed: int, queue: int = 10) -> tuple[float, float]:
    """(images/s, CPU ms/image) of ``SegmentationPyDataset`` batches made on ``workers`` threads."""
    ds = numpy_loader.SegmentationPyDataset(source, CONFIG, batch_size, seed=seed)
    total = WARMUP_BATCHES + batches
    indices = [i % len(ds) for i in range(total)]
    with ThreadPoolExecutor(workers) as pool:
        pending = collections.deque(pool.submit(ds.__getitem__, i) for i in indices[:queue])
        submitted = len(pending)
        start = None
        for k in range(total):
            if k == WARMUP_BATCHES:
                start, cpu = time.perf_counter(), time.process_time()
            images, labels = pending.popleft().result()
            assert images.shape == (batch_size, 360, 480, 3) and labels.shape == (batch_size, 360, 480, 1)
            if submitted < total:
                pending.append(pool.submit(ds.__getitem__, indices[submitted]))
                submitted += 1
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    images = batches * batch_size
    return images / seconds, 1000 * cpu / images


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=["tfrecord", "folder"], default="tfrecord")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=15, help="timed batches per measurement")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="NumPy loader threads")
    parser.add_argument("--batch_sizes", default="4,8")
    parser.add_argument("--camvid", default=str(REPO.parent / "shared" / "data" / "camvid"))
    args = parser.parse_args(argv)
    command = "python bench/bench_input_pipeline.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    camvid = pathlib.Path(args.camvid)
    if not (camvid / "train.txt").is_file():
        sys.exit(f"CamVid not found at {camvid}")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    print(f"command: {command.strip()}")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
        f"tensorflow {tf.__version__}, numpy {np.__version__}, opencv {numpy_loader.cv2.__version__}"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        "augmentation: random scale 0.5-2.0 step 0.25, pad (127.5 / 255), random crop 360x480, flip; "
        "float32 images, int32 labels"
    )

    with tempfile.TemporaryDirectory(prefix="bench_input_") as tmp:
        if args.source == "tfrecord":
            seconds = build_tfrecords(camvid, tmp)
            data_dir, dataset = tmp, "tfrecord"
            source = numpy_loader.TFRecordSource(tmp, "train")
            print(f"data: CamVid train, {len(source)} images -> 4 TFRecord shards by conversion.convert_split "
                  f"in {seconds:.1f} s; tf.data: TFRecordDataset, NumPy: TFRecordSource")
        else:
            data_dir, dataset = camvid, "folder"
            source = numpy_loader.FolderSource.from_split(camvid, "train", label_remap=VOID_TO_IGNORE)
            print(f"data: CamVid train, {len(source)} PNG pairs; tf.data: tf.io.read_file, NumPy: FolderSource")

        results = {("tf", b): [] for b in batch_sizes} | {("numpy", b): [] for b in batch_sizes}
        for round_ in range(args.rounds):
            for b in batch_sizes:
                results[("tf", b)].append(time_tf(data_dir, dataset, b, args.batches, seed=round_))
                results[("numpy", b)].append(time_numpy(source, b, args.batches, args.workers, seed=round_))
            line = ", ".join(f"{k[0]} b{k[1]} {v[-1][0]:.1f}" for k, v in results.items())
            print(f"round {round_ + 1}/{args.rounds}: images/s {line}", flush=True)

    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    names = {"tf": f"tf.data ({dataset}, AUTOTUNE)", "numpy": f"NumPy/OpenCV ({args.workers} threads)"}
    print()
    print(
        f"{'loader':<34} {'batch':>5} {'images/s':>9} {'(min-max)':>13} {'feeds a step of':>16} "
        f"{'CPU ms/image':>13}"
    )
    medians, cpu_medians = {}, {}
    for (loader, b), values in results.items():
        rates = [rate for rate, _ in values]
        medians[(loader, b)] = median = float(np.median(rates))
        cpu_medians[(loader, b)] = cpu = float(np.median([c for _, c in values]))
        spread = f"({min(rates):.1f}-{max(rates):.1f})"
        print(f"{names[loader]:<34} {b:>5} {median:>9.1f} {spread:>13} {1000 * b / median:>13.0f} ms {cpu:>13.1f}")
    print()
    for b in batch_sizes:
        ratio = medians[("numpy", b)] / medians[("tf", b)]
        cpu_ratio = cpu_medians[("tf", b)] / cpu_medians[("numpy", b)]
        print(
            f"ratio NumPy / tf.data, batch {b}: {ratio:.2f} in images/s, "
            f"{cpu_ratio:.2f} in images per CPU-second"
        )


if __name__ == "__main__":
    main()
