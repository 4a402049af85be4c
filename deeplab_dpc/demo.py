r"""The whole architecture search on the built-in generated dataset (no download), in under 10
minutes on 2 CPU cores: from images to a served model whose cell was searched.

    python -m deeplab_dpc.demo --fresh [--workdir=/tmp/deeplab_dpc_demo]

1. Statistics of MobileNet-v2 + the published Cityscapes DPC at 1025x2049.
2. Generates a segmentation dataset (SegNet folder layout + JSON descriptor)
   and converts it to DeepLab TFRecords (``data.folder_conversion``, as
   ``tools/build_folder_data`` does).
3. Trains a MobileNet-v2 + ASPP + decoder backbone briefly (``train``'s library).
4. Caches its features on train (with flips) and val (``cache_features``).
5. Searches a dozen cells on the cached features, the published and ASPP cells
   first, in an Optuna study with 2 worker processes (``search``).
6. Re-ranks the best two by training each end to end from the backbone
   (``rerank``): the winner is ``search/best_cell.json``.
7. Trains MobileNet-v2 + the winning cell + decoder from the backbone.
8. Evaluates mIoU on val (``eval``'s library).
9. Exports a SavedModel (uint8 images in, labels out), reloads it with
   ``tf.saved_model.load``, runs it on a val image, checks it against the
   Keras model and writes a colour PNG of the prediction.

Every step writes under ``--workdir`` and prints where; rerunning resumes
(converted data, runs, cache and study are reused). Exits non-zero if the
loss does not fall, mIoU stays at chance or the export disagrees.
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


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string(
        "workdir", "/tmp/deeplab_dpc_demo", "Where the data, runs, search and export go.", **f
    )
    flags.DEFINE_boolean("fresh", False, "Delete --workdir first.", **f)
    flags.DEFINE_integer("backbone_steps", 100, "Training steps of the MobileNet-v2 + ASPP backbone.", **f)
    flags.DEFINE_integer("search_trials", 12, "Cells the search trains on the cached features.", **f)
    flags.DEFINE_integer("proxy_steps", 100, "Training steps of each proxy trial.", **f)
    flags.DEFINE_integer("proxy_filters", 32, "Filters of the proxy cells.", **f)
    flags.DEFINE_integer("num_workers", 2, "Search worker processes.", **f)
    flags.DEFINE_integer("rerank_top_k", 2, "Best cells by proxy score trained end to end.", **f)
    flags.DEFINE_integer("rerank_steps", 50, "End-to-end training steps of each re-ranked cell.", **f)
    flags.DEFINE_integer("steps", 150, "Training steps of the final model (the winning cell).", **f)
    flags.DEFINE_integer("batch_size", 8, "Training batch size.", **f)
    flags.DEFINE_list("crop_size", ["96", "128"], "Height,width of the generated images.", **f)
    flags.DEFINE_integer("num_train", 64, "Generated training images.", **f)
    flags.DEFINE_integer("num_val", 16, "Generated validation images.", **f)
    flags.DEFINE_integer("num_classes", 4, "Classes of the generated dataset.", **f)
    flags.DEFINE_integer("seed", 0, "Seed of the search and the proxy trainer.", **f)


def _section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_pipeline(fv) -> dict:
    import cv2
    import numpy as np

    from deeplab_dpc import cli, synthetic
    from deeplab_dpc.analysis.stats import model_statistics
    from deeplab_dpc.core.model import ModelConfig
    from deeplab_dpc.core.spec import CellSpec
    from deeplab_dpc.data import conversion
    from deeplab_dpc.data.batches import DataConfig
    from deeplab_dpc.data.colormaps import label_to_color
    from deeplab_dpc.data.folder_conversion import FolderConfig, convert_folder
    from deeplab_dpc.evaluation.eval_lib import EvalConfig, run_evaluation
    from deeplab_dpc.nas import executors, features
    from deeplab_dpc.nas import rerank as rerank_lib
    from deeplab_dpc.nas import space as space_lib
    from deeplab_dpc.nas.proxy import ProxyConfig
    from deeplab_dpc.nas.search_config import SearchConfig
    from deeplab_dpc.runs import latest_checkpoint
    from deeplab_dpc.training.config import TrainConfig
    from deeplab_dpc.training.train_lib import train

    began = time.time()
    height, width = cli.parse_pair(fv.crop_size, "crop_size")
    workdir = pathlib.Path(fv.workdir).resolve()
    if fv.fresh and workdir.exists():
        shutil.rmtree(workdir)
    summary: dict = {}
    artefacts: dict[str, str] = {}

    _section("1. Model statistics: MobileNet-v2 + published DPC, Cityscapes 1025x2049, output stride 16")
    published = space_lib.published_cell()
    stats = model_statistics(
        ModelConfig(num_classes=19, context="dpc", dense_prediction_cell=published, decoder_output_stride=4),
        (1025, 2049),
    )
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
    data = DataConfig(dataset=descriptor, dataset_dir=str(records))
    artefacts.update(images=str(folders), tfrecords=str(records))

    def train_config(model: ModelConfig, logdir: pathlib.Path, steps: int, initial=None) -> TrainConfig:
        return TrainConfig(
            model=model,
            data=data,
            train_logdir=str(logdir),
            train_crop_size=(height, width),
            train_batch_size=fv.batch_size,
            min_scale_factor=0.75,
            max_scale_factor=1.25,
            base_learning_rate=0.05,
            training_number_of_steps=steps,
            batch_norm_momentum=0.9,
            log_steps=25,
            save_interval_secs=60,
            tf_initial_checkpoint=initial,
        )

    _section(f"3. Train a backbone: MobileNet-v2 + ASPP + decoder, {fv.backbone_steps} steps")
    backbone_dir = workdir / "backbone"
    backbone_model = ModelConfig(num_classes=fv.num_classes, context="aspp", decoder_output_stride=4)
    train(train_config(backbone_model, backbone_dir, fv.backbone_steps), verbose=0)
    artefacts["backbone run"] = str(backbone_dir)

    _section("4. Cache the backbone's features: train (with flips) and val")
    cache_dir = workdir / "features"
    for split in ("train", "val"):
        result = features.cache_split(
            features.CacheConfig(
                cache_dir=str(cache_dir),
                data=data,
                split=split,
                crop_size=(height, width),
                checkpoint_path=str(backbone_dir),
                flip=split == "train",
                batch_size=16,
            ),
            progress=False,
        )
        cache = features.FeatureCache(str(cache_dir), split)
        print(f"{split}: {cache.num_examples} examples of {cache.feature_shape} features")
    artefacts["feature cache"] = str(cache_dir)

    _section(f"5. Search {fv.search_trials} cells on the cached features ({fv.num_workers} workers)")
    search_dir = workdir / "search"
    proxy = ProxyConfig(
        cache_dir=str(cache_dir),
        proxy_steps=fv.proxy_steps,
        proxy_filters=fv.proxy_filters,
        seed=fv.seed,
    )
    search_config = SearchConfig(
        search_dir=str(search_dir),
        strategy="random",
        max_trials=fv.search_trials,
        seed=fv.seed,
        enqueue_published=True,
        num_workers=fv.num_workers,
        proxy=proxy.to_dict(),
    )
    searched = executors.run_search(search_config)
    summary["search_completed"] = searched["completed"]
    summary["search_failed"] = searched["failed"]
    summary["best_proxy_miou"] = searched["best_value"]
    artefacts.update(
        {
            "search study": search_config.storage,
            "best cell by proxy score": str(searched["best_cell"]),
        }
    )

    _section(f"6. Re-rank the best {fv.rerank_top_k} cells end to end, {fv.rerank_steps} steps each")
    backbone_checkpoint = latest_checkpoint(str(backbone_dir))
    placeholder = ModelConfig(
        num_classes=fv.num_classes, context="dpc", dense_prediction_cell=published, decoder_output_stride=4
    )
    reranked = rerank_lib.run_rerank(
        rerank_lib.RerankConfig(
            search_dir=str(search_dir),
            train=train_config(
                placeholder, search_dir / rerank_lib.RUNS_FOLDER, fv.rerank_steps, backbone_checkpoint
            ),
            top_k=fv.rerank_top_k,
            eval_crop_size=(height, width),
        ),
        verbose=0,
    )
    if reranked["best_cell"] is None:
        raise SystemExit("demo: no re-ranked cell trained to a score")
    winner = CellSpec.load(reranked["best_cell"])
    summary["winner_trial"] = reranked["best_trial"]
    summary["winner_rerank_miou"] = reranked["best_full_miou"]
    artefacts["re-ranking runs"] = reranked["runs_dir"]
    artefacts["best cell (re-ranked)"] = reranked["best_cell"]

    _section(
        f"7. Train MobileNet-v2 + the winning cell (trial {reranked['best_trial']}) + decoder, {fv.steps} steps"
    )
    run_dir = workdir / "run"
    model_config = dataclasses.replace(placeholder, dense_prediction_cell=winner)
    start = time.time()
    trained = train(train_config(model_config, run_dir, fv.steps, backbone_checkpoint), verbose=0)
    history = trained["history"]
    summary["train_seconds"] = round(time.time() - start, 1)
    if history:
        summary["loss_first"], summary["loss_last"] = history[0]["loss"], history[-1]["loss"]
        print(
            f"loss {history[0]['loss']:.3f} (step {history[0]['step']}) -> {history[-1]['loss']:.3f} "
            f"(step {history[-1]['step']}) in {summary['train_seconds']} s"
        )
    artefacts["final run"] = str(run_dir)

    _section("8. Evaluate on val")
    [results] = run_evaluation(
        EvalConfig(
            checkpoint_dir=str(run_dir),
            eval_logdir=str(run_dir / "eval"),
            data=data,
            eval_split="val",
            eval_crop_size=(height, width),
        )
    )
    summary["val_miou"] = results["miou"]
    print(json.dumps({k: results[k] for k in ("step", "miou", "pixel_accuracy", "per_class_iou")}, indent=1))

    _section("9. Export a SavedModel and run it on an image")
    import tensorflow as tf

    from deeplab_dpc.evaluation.inference import predict_labels
    from deeplab_dpc.export.export_lib import ExportConfig, run_export
    from deeplab_dpc.runs import load_model_for_inference

    export_dir = workdir / "export" / "1"
    exported = run_export(
        ExportConfig(checkpoint_path=str(run_dir), export_path=str(export_dir), overwrite=True)
    )
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
    print(
        f"{name}: SavedModel vs Keras agree on {summary['export_agreement']:.2%} of pixels; colour PNG {out_png}"
    )
    artefacts.update({"SavedModel": str(export_dir), "prediction PNG": str(out_png)})
    summary["seconds"] = round(time.time() - began, 1)

    _section("Where everything is")
    width_ = max(len(k) for k in artefacts)
    for key, path in artefacts.items():
        print(f"  {key:<{width_}}  {path}")
    print(f"  dashboard: optuna-dashboard {search_config.storage}")
    print(f"  tensorboard: tensorboard --logdir {workdir}")
    print(
        f"  analysis: python -m deeplab_dpc.analyze --search_dir={search_dir} --output_dir={workdir / 'analysis'}"
    )
    return summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
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
