"""Why batch norm's moving statistics need a warm start, under each initialiser.

Keras starts moving statistics at mean 0 / variance 1; after n steps of
momentum m, inference still normalises with a fraction f = m ** n of that
start. For a layer whose input has batch mean mu and variance v, inference
then scales by sqrt(v / (f + (1 - f) v)) instead of 1 and shifts by
f * mu / sqrt(v) standard deviations. This measures v and mu of every batch
norm of MobileNet-v2 + published DPC + decoder on one batch of CamVid crops
at initialisation, under Keras' default initialisers (the code before issue 8)
and under DeepLab's, and prints the resulting inference error for a few
(momentum, steps) pairs. No training: a few forward passes.

    python bench/bench_bn_start.py [--camvid=DIR] [--batch=4] [--crop=240,320]
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: E402
from deeplab_dpc.core.spec import CellSpec  # noqa: E402
from deeplab_dpc.training.train_lib import warm_start_batch_norm  # noqa: E402

SPEC = os.path.join(os.path.dirname(__file__), "..", "experiments", "specs",
                    "dense_prediction_cell_branch5_top1_cityscapes.json")
SCENARIOS = ((0.99, 400), (0.99, 1200), (0.9997, 200), (0.9997, 1200), (0.9997, 30000))


def keras_default_init(model):
    """Redraws every conv kernel with Keras' default (glorot_uniform), as before issue 8."""
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            layer.kernel.assign(keras.initializers.GlorotUniform()(layer.kernel.shape))
        elif isinstance(layer, keras.layers.Conv2D) and layer.name != "logits":
            layer.kernel.assign(keras.initializers.GlorotUniform()(layer.kernel.shape))


def batch_statistics(model, images):
    """Per batch norm: the median over channels of its input's batch variance and |mean|/std."""
    warm_start_batch_norm(model, images)  # momentum 0: moving statistics = this batch's
    out = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            var = keras.ops.convert_to_numpy(layer.moving_variance).astype(np.float64)
            mean = keras.ops.convert_to_numpy(layer.moving_mean).astype(np.float64)
            out[layer.path if hasattr(layer, "path") else layer.name] = (var, np.abs(mean) / np.sqrt(var + 1e-12))
    return out


def inference_errors(stats, momentum, steps):
    f = momentum ** steps
    scale, shift = [], []
    for var, z in stats.values():
        s = np.sqrt(var / (f + (1 - f) * var))  # inference output / correct output (scale)
        scale.append(np.median(s))
        shift.append(np.median(f * z))
    return np.array(scale), np.array(shift)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--camvid", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "camvid"))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", default="240,320")
    args = parser.parse_args()
    h, w = (int(v) for v in args.crop.split(","))
    files = sorted(glob.glob(os.path.join(args.camvid, "train", "*.png")))[: args.batch]
    if len(files) < args.batch:
        sys.exit(f"--camvid={args.camvid}: fewer than {args.batch} images in train/")
    images = np.stack([cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB)[:h, :w] for f in files]).astype("float32")
    print(f"# command: python bench/bench_bn_start.py --batch={args.batch} --crop={args.crop}")
    config = ModelConfig(num_classes=11, dense_prediction_cell=CellSpec.load(SPEC), decoder_output_stride=4)
    rows = {}
    for name in ("keras default", "deeplab"):
        keras.utils.set_random_seed(0)
        model = build_deeplab(config)
        if name == "keras default":
            keras_default_init(model)
        stats = batch_statistics(model, images)
        var_median = np.array([np.median(v) for v, _ in stats.values()])
        print(f"{name:13s}: {len(stats)} batch norms; input variance per layer (median over channels): "
              f"min {var_median.min():.2e}, median {np.median(var_median):.2e}, "
              f"{(var_median < 0.02).sum()} layers below 0.02")
        rows[name] = stats
    print("\nWithout a warm start, inference scale (1 = right) and shift (std units), median over layers "
          "[worst layer]:")
    print(f"{'momentum':>9s} {'steps':>6s} {'left of start':>13s} | {'keras default':>28s} | {'deeplab':>28s}")
    for momentum, steps in SCENARIOS:
        cells = []
        for name in ("keras default", "deeplab"):
            scale, shift = inference_errors(rows[name], momentum, steps)
            cells.append(f"x{np.median(scale):.3f} [x{scale.min():.3f}] +{np.median(shift):.2f} [+{shift.max():.2f}]")
        print(f"{momentum:9.4f} {steps:6d} {momentum ** steps:13.3g} | {cells[0]:>28s} | {cells[1]:>28s}")


if __name__ == "__main__":
    main()
