r"""The whole pipeline on the built-in generated dataset (no download), in a few minutes on 2 CPU cores.

    python -m deeplab_dpc.demo [--workdir=/tmp/deeplab_dpc_demo] [--steps=150]

1. Statistics of MobileNet-v2 + the published Cityscapes DPC at 1025x2049.
2. Generates a segmentation dataset (SegNet folder layout + JSON descriptor)
   and converts it to DeepLab TFRecords (``data.folder_conversion``, as
   ``tools/build_folder_data`` does).
3. Trains MobileNet-v2 + DPC + decoder on it (``deeplab_dpc.train``'s library).
4. Evaluates mIoU on the val split (``deeplab_dpc.eval``'s library).
5. Exports a SavedModel (uint8 images in, labels out), reloads it with
   ``tf.saved_model.load``, runs it on a val image, checks it against the
   Keras model and writes a colour PNG of the prediction.

Every step writes under ``--workdir``; rerunning resumes training from its
checkpoint. Exits non-zero if the loss does not fall or mIoU stays at chance.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import shutil
import time

from absl import app, flags

from deeplab_dpc import cli  # noqa: F401 -- before TensorFlow: keeps its start-up lines off the console

REPO = pathlib.Path(__file__).resolve().parents[1]
PUBLISHED_CELL = REPO / "experiments" / "specs" / "dense_prediction_cell_branch5_top1_cityscapes.json"


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("workdir", "/tmp/deeplab_dpc_demo", "Where the data, run and export go.", **f)
    flags.DEFINE_integer("steps", 150, "Training steps.", **f)
    flags.DEFINE_integer("batch_size", 8, "Training batch size.", **f)
    flags.DEFINE_list("crop_size", ["96", "128"], "Height,width of the generated images.", **f)
    flags.DEFINE_integer("num_train", 64, "Generated training images.", **f)
    flags.DEFINE_integer("num_val", 16, "Generated validation images.", **f)
    flags.DEFINE_integer("num_classes", 4, "Classes of the generated dataset.", **f)
    flags.DEFINE_string("dense_prediction_cell_json", str(PUBLISHED_CELL), "Cell spec (DeepLab JSON).", **f)
    flags.DEFINE_boolean("fresh", False, "Delete --workdir first.", **f)


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_pipeline(fv) -> dict:
    import cv2
    import numpy as np

    from deeplab_dpc import cli, synthetic
    from deeplab_dpc.analysis.stats import model_statistics
    from deeplab_dpc.core.model import ModelConfig
    from deeplab_dpc.data import conversion
    from deeplab_dpc.data.folder_conversion import FolderConfig, convert_folder
    from deeplab_dpc.data.batches import DataConfig
    from deeplab_dpc.data.colormaps import label_to_color
    from deeplab_dpc.evaluation.eval_lib import EvalConfig, run_evaluation
    from deeplab_dpc.training.config import TrainConfig
    from deeplab_dpc.training.train_lib import train

    height, width = cli.parse_pair(fv.crop_size, "crop_size")
    workdir = pathlib.Path(fv.workdir)
    if fv.fresh and workdir.exists():
        shutil.rmtree(workdir)
    summary: dict = {}

    _section("1. Model statistics: MobileNet-v2 + published DPC, Cityscapes 1025x2049, output stride 16")
    spec = cli.load_cell(fv.dense_prediction_cell_json)
    model_config = ModelConfig(
        num_classes=fv.num_classes, context="dpc", dense_prediction_cell=spec, decoder_output_stride=4
    )
    stats = model_statistics(dataclasses.replace(model_config, num_classes=19), (1025, 2049))
    print(json.dumps({"feature_map_size": stats["feature_map_size"], **stats["summary"]}, indent=1))

    _section("2. Generate a dataset and convert it to TFRecords")
    folders = workdir / "data"
    descriptor = str(folders / "dataset.json")
    if not os.path.exists(descriptor):
        synthetic.write_segnet_folders(
            folders, {"train": fv.num_train, "val": fv.num_val}, height, width, fv.num_classes
        )
    records = workdir / "tfrecord"
    for split in ("train", "val"):
        result = convert_folder(
            FolderConfig(
                image_dir=str(folders / split),
                label_dir=str(folders / f"{split}annot"),
                list_file=str(folders / f"{split}.txt"),
                split=split,
                dataset=descriptor,
                output_dir=str(records),
                sharding=conversion.ShardingConfig(num_shards=2),
            )
        )
        print(result.summary())

    _section(f"3. Train {fv.steps} steps (MobileNet-v2 + DPC + decoder, batch {fv.batch_size}, {height}x{width})")
    run_dir = workdir / "run"
    config = TrainConfig(
        model=model_config,
        data=DataConfig(dataset=descriptor, dataset_dir=str(records)),
        train_logdir=str(run_dir),
        train_crop_size=(height, width),
        train_batch_size=fv.batch_size,
        min_scale_factor=0.75,
        max_scale_factor=1.25,
        base_learning_rate=0.05,
        training_number_of_steps=fv.steps,
        batch_norm_momentum=0.9,
        log_steps=25,
        save_interval_secs=60,
    )
    start = time.time()
    trained = train(config, verbose=0)  # train_lib logs each 25 steps with steps/s and ETA
    history = trained["history"]
    summary["train_seconds"] = round(time.time() - start, 1)
    if history:
        summary["loss_first"], summary["loss_last"] = history[0]["loss"], history[-1]["loss"]
        print(f"loss {history[0]['loss']:.3f} (step {history[0]['step']}) -> {history[-1]['loss']:.3f} "
              f"(step {history[-1]['step']}) in {summary['train_seconds']} s")

    _section("4. Evaluate on val")
    [results] = run_evaluation(
        EvalConfig(
            checkpoint_dir=str(run_dir),
            eval_logdir=str(run_dir / "eval"),
            data=DataConfig(dataset=descriptor, dataset_dir=str(records)),
            eval_split="val",
            eval_crop_size=(height, width),
        )
    )
    summary["val_miou"] = results["miou"]
    print(json.dumps({k: results[k] for k in ("step", "miou", "pixel_accuracy", "per_class_iou")}, indent=1))

    _section("5. Export a SavedModel and run it on an image")
    import tensorflow as tf

    from deeplab_dpc.evaluation.inference import predict_labels
    from deeplab_dpc.export.export_lib import ExportConfig, run_export
    from deeplab_dpc.runs import load_model_for_inference

    export_dir = workdir / "export" / "1"
    exported = run_export(ExportConfig(checkpoint_path=str(run_dir), export_path=str(export_dir), overwrite=True))
    print(f"exported {exported['checkpoint']} -> {exported['export_path']}")
    served = tf.saved_model.load(str(export_dir))
    name = (folders / "val.txt").read_text().split()[0]
    image = cv2.imread(str(folders / "val" / name))[:, :, ::-1]
    outputs = served.signatures["serving_default"](images=tf.constant(image[None]))
    labels = outputs["semantic_predictions"].numpy()[0]
    model, _ = load_model_for_inference(str(run_dir))
    keras_labels = np.asarray(predict_labels(model, image[None].astype("float32")))[0]
    summary["export_agreement"] = float((labels == keras_labels).mean())
    out_png = workdir / f"{pathlib.Path(name).stem}_prediction.png"
    cv2.imwrite(str(out_png), label_to_color(labels, "pascal")[:, :, ::-1])
    print(f"{name}: SavedModel vs Keras agree on {summary['export_agreement']:.2%} of pixels; colour PNG {out_png}")
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)  # SavedModel writer chatter
    summary = run_pipeline(flags.FLAGS)
    _section("Summary")
    print(json.dumps(summary, indent=1))
    chance = 1.0 / flags.FLAGS.num_classes
    if "loss_last" in summary and not summary["loss_last"] < summary["loss_first"]:
        raise SystemExit("demo: the training loss did not decrease")
    if summary["val_miou"] < chance:
        raise SystemExit(f"demo: val mIoU {summary['val_miou']:.3f} is below chance ({chance:.3f})")
    if summary["export_agreement"] < 0.999:
        raise SystemExit("demo: the exported model disagrees with the Keras model")


def run():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    run()
