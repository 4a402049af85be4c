r"""The end-to-end demo on the built-in generated dataset (no download).

    python -m deeplab_dpc.demo [--steps=60] [--crop_size=97,129]

1. Builds MobileNet-v2 + the published Cityscapes DPC and prints its
   statistics (parameters, multiply-adds) at the paper's 1025x2049 crop.
2. Trains it for a few steps on generated images and prints the loss and
   pixel accuracy before and after, which must improve.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
PUBLISHED_CELL = REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json"

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 60, "Training steps on the generated dataset.")
flags.DEFINE_integer("batch_size", 8, "Batch size.")
flags.DEFINE_list("crop_size", ["97", "129"], "Height,width of the generated images.")
flags.DEFINE_integer("num_classes", 4, "Classes of the generated dataset.")
flags.DEFINE_string("dense_prediction_cell_json", str(PUBLISHED_CELL), "Cell spec (DeepLab JSON).")
flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    del argv
    import keras
    import numpy as np

    from deeplab_dpc import synthetic
    from deeplab_dpc.analysis.stats import model_statistics
    from deeplab_dpc.core.model import ModelConfig, build_deeplab
    from deeplab_dpc.core.spec import CellSpec

    keras.utils.set_random_seed(FLAGS.seed)
    height, width = (int(v) for v in FLAGS.crop_size)
    spec = CellSpec.load(FLAGS.dense_prediction_cell_json)
    config = ModelConfig(
        num_classes=FLAGS.num_classes,
        model_variant="mobilenet_v2",
        output_stride=16,
        context="dpc",
        dense_prediction_cell=spec,
        decoder_output_stride=4,
    )
    stats = model_statistics(dataclasses.replace(config, num_classes=19), (1025, 2049))
    print("== MobileNet-v2 + published DPC + decoder, Cityscapes 1025x2049:")
    print(json.dumps(stats, indent=1))

    images, labels = synthetic.make_dataset(
        FLAGS.batch_size * 8, height, width, FLAGS.num_classes, seed=FLAGS.seed
    )
    images = images.astype("float32")
    labels = labels[..., None].astype("int32")
    model = build_deeplab(config)
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
        metrics=["accuracy"],
        jit_compile=False,
    )
    before = model.evaluate(images, labels, batch_size=FLAGS.batch_size, verbose=0, return_dict=True)
    start = time.time()
    epochs = max(1, FLAGS.steps // 8)
    model.fit(images, labels, batch_size=FLAGS.batch_size, epochs=epochs, verbose=2, shuffle=True)
    seconds = time.time() - start
    after = model.evaluate(images, labels, batch_size=FLAGS.batch_size, verbose=0, return_dict=True)
    print(
        f"== trained {epochs * 8} steps of batch {FLAGS.batch_size} at {height}x{width} in {seconds:.1f} s "
        f"({seconds / (epochs * 8):.2f} s/step)"
    )
    print(f"loss {before['loss']:.3f} -> {after['loss']:.3f}; "
          f"pixel accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}")
    if not after["loss"] < before["loss"]:
        raise SystemExit("demo: the loss did not decrease")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
