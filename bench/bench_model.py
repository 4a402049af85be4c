r"""Model benchmarks: the DPC as the proxy trainer uses it, and the whole model.

    python bench/bench_model.py [--repeats=20] [--size=513]

Prints, each against a peer measured in the same run:
  1. cell construction + first call on 33x33x320 features (the proxy trainer
     builds one cell per trial): sampled cells vs ASPP;
  2. a training step of the context head alone on cached-feature-shaped input
     (batch 8, 33x33x320, 19 classes): published DPC vs our ASPP;
  3. inference of the whole model (MobileNet-v2 backbone, output stride 16, v3+
     decoder) at size x size, batch 1: ours with ASPP, ours with the DPC, and
     keras-hub's DeepLabV3Plus head (its ASPP + decoder) on the very same
     backbone, so the ratio compares the head implementations;
  4. a training step of those three whole models at CamVid size (352x480,
     batch 4, 11 classes), the step the input pipeline has to feed.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import random
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from deeplab_dpc.core.aspp import ASPP  # noqa: E402
from deeplab_dpc.core.backbones import build_backbone  # noqa: E402
from deeplab_dpc.core.dense_prediction_cell import DensePredictionCell  # noqa: E402
from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: E402
from deeplab_dpc.core.spec import CellSpec, SearchSpace  # noqa: E402

SPEC = CellSpec.load(REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json")


def timed(fn, repeats):
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def bench_construction(features, repeats):
    space = SearchSpace()
    rng = random.Random(0)

    def dpc():
        DensePredictionCell(space.sample(rng))(features)

    def aspp():
        ASPP()(features)

    return timed(dpc, repeats), timed(aspp, repeats)


def head_model(context, channels, num_classes=19):
    features = keras.Input((33, 33, channels))
    x = context(features)
    logits = keras.layers.Conv2D(num_classes, 1)(x)
    model = keras.Model(features, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    return model


def bench_head_step(repeats):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 33, 33, 320)).astype("float32")
    y = rng.integers(0, 19, (8, 33, 33, 1)).astype("int32")
    dpc = head_model(DensePredictionCell(SPEC), 320)
    aspp = head_model(ASPP(), 320)
    return timed(lambda: dpc.train_on_batch(x, y), repeats), timed(lambda: aspp.train_on_batch(x, y), repeats)


def keras_hub_head(size, num_classes):
    """keras-hub's DeepLabV3Plus head on our backbone; ``size`` is an int or (h, w)."""
    return _keras_hub_head(size if isinstance(size, tuple) else (size, size), num_classes)


def _keras_hub_head(size, num_classes):
    """keras-hub's DeepLabV3Plus (ASPP + decoder) on our MobileNet-v2 backbone."""
    import keras_hub

    backbone = build_backbone("mobilenet_v2", 16, input_shape=(*size, 3))


    images = keras.Input((*size, 3))
    outputs = backbone(images)
    encoder = keras.Model(images, {"P2": outputs["low_level"], "P4": outputs["features"]})
    encoder.pyramid_outputs = {"P2": outputs["low_level"], "P4": outputs["features"]}
    hub = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        spatial_pyramid_pooling_key="P4",
        upsampling_size=4,
        dilation_rates=[6, 12, 18],
        low_level_feature_key="P2",
        image_shape=(*size, 3),
    )
    head = keras.layers.Conv2D(num_classes, 1)(hub.output)
    return keras.Model(hub.input, head)


def bench_full(size, repeats):
    images = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    return {
        name: timed(lambda: model.predict_on_batch(images), repeats)
        for name, model in whole_models((size, size), 19).items()
    }


def whole_models(size, num_classes):
    """name -> model at ``size`` (h, w): ours with ASPP / DPC and keras-hub's head, same backbone."""
    models = {}
    for name, context, spec in [("ours_aspp", "aspp", None), ("ours_dpc", "dpc", SPEC)]:
        config = ModelConfig(
            num_classes=num_classes, context=context, dense_prediction_cell=spec, decoder_output_stride=4
        )
        models[name] = build_deeplab(config, input_shape=(*size, 3))
    models["keras_hub_deeplabv3plus"] = keras_hub_head(size, num_classes)
    return models


def bench_train_step(size, batch, repeats, num_classes=11):
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch, *size, 3)).astype("float32")
    labels = rng.integers(0, num_classes, (batch, *size, 1)).astype("int32")
    results = {}
    for name, model in whole_models(size, num_classes).items():
        model.compile(
            optimizer=keras.optimizers.SGD(0.01, momentum=0.9),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=False,
        )
        results[name] = timed(lambda: model.train_on_batch(images, labels), repeats)
    return results


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--size", type=int, default=512, help="a multiple of 16 (keras-hub upsamples by a fixed factor)")
    args = parser.parse_args()
    print(f"# command: python bench/bench_model.py --repeats={args.repeats} --size={args.size}")
    print(f"# machine: {platform.machine()}, {os.cpu_count()} cores, keras {keras.__version__} "
          f"backend {keras.backend.backend()}, {time.strftime('%Y-%m-%d')}")
    features = np.zeros((1, 33, 33, 320), "float32")
    dpc_build, aspp_build = bench_construction(features, args.repeats)
    print(f"construct+first call, 33x33x320: sampled DPC {dpc_build * 1e3:.1f} ms, "
          f"ASPP {aspp_build * 1e3:.1f} ms, ratio DPC/ASPP {dpc_build / aspp_build:.2f}")
    dpc_step, aspp_step = bench_head_step(args.repeats)
    print(f"head train step, batch 8, 33x33x320: published DPC {dpc_step * 1e3:.1f} ms, "
          f"ASPP {aspp_step * 1e3:.1f} ms, ratio DPC/ASPP {dpc_step / aspp_step:.2f}")
    full = bench_full(args.size, max(3, args.repeats // 4))
    peer = full["keras_hub_deeplabv3plus"]
    for name, seconds in full.items():
        print(f"inference {args.size}x{args.size} batch 1, MobileNet-v2 os16 + decoder, {name}: "
              f"{seconds * 1e3:.0f} ms (ratio to keras-hub {seconds / peer:.2f})")
    steps = bench_train_step((352, 480), 4, max(3, args.repeats // 4))
    peer = steps["keras_hub_deeplabv3plus"]
    for name, seconds in steps.items():
        print(f"train step 352x480 batch 4, MobileNet-v2 os16 + decoder, {name}: "
              f"{seconds * 1e3:.0f} ms (ratio to keras-hub {seconds / peer:.2f})")


if __name__ == "__main__":
    main()
