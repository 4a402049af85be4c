r"""Caches a backbone's features over a split, for the proxy trainer (``proxy_train``, the search).

    python -m deeplab_dpc.cache_features --checkpoint_path=RUN --dataset=camvid \
        --dataset_dir=DATA --split=train --crop_size=360,480 --cache_dir=/tmp/camvid_cache --flip
    python -m deeplab_dpc.cache_features --checkpoint_path=RUN --dataset=camvid \
        --dataset_dir=DATA --split=val --crop_size=360,480 --cache_dir=/tmp/camvid_cache

The backbone is a training run's (``--checkpoint_path``: the run folder or one
checkpoint, read through its ``model_config.json``), or, without a run, a fresh
``--model_variant`` with ``--tf_initial_checkpoint`` or ``--backbone_weights``
(random weights otherwise, with a warning). Images are preprocessed as
evaluation does: padded to ``--crop_size``. Output: ``CACHE/<split>-NNNNN.npz``
shards (features float16, labels uint8 at the crop size) and
``CACHE/<split>.manifest.json``. Rerunning the command resumes: finished shards
are kept, missing or damaged ones are computed again.

``--teacher_checkpoint_path=RUN`` also caches that run's logits (float16, at 4x
the feature grid) for the proxy's distillation (``proxy_train
--proxy_distillation_weight``); the features' own run is a whole model and may be
the teacher (``--teacher_checkpoint_path`` equal to ``--checkpoint_path``).
Only the split the proxy trains on needs them.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags

from deeplab_dpc import cli


def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
    f = dict(flag_values=fv)
    cli.define_data_flags(fv)
    flags.DEFINE_string("cache_dir", None, "Folder of the cache (shards and manifests).", **f)
    flags.DEFINE_string("split", "train", "Split to cache.", **f)
    flags.DEFINE_list(
        "crop_size", None, "Images are padded to 'height,width' (evaluation's preprocessing).", **f
    )
    flags.DEFINE_string(
        "checkpoint_path",
        None,
        "A training run (its newest checkpoint) or a ckpt-<step>.weights.h5 file: the backbone, weights.",
        **f,
    )
    flags.DEFINE_string(
        "model_variant",
        None,
        "Backbone; with --checkpoint_path it must agree with the run (default mobilenet_v2).",
        **f,
    )
    flags.DEFINE_integer("output_stride", None, "Backbone output stride (default: the run's, or 16).", **f)
    flags.DEFINE_float(
        "depth_multiplier", None, "MobileNet-v2 width multiplier (default: the run's, or 1.0).", **f
    )
    flags.DEFINE_string(
        "tf_initial_checkpoint",
        None,
        "Without a run: backbone weights from a DeepLab TF1 checkpoint or a Keras checkpoint / train_logdir.",
        **f,
    )
    flags.DEFINE_string(
        "backbone_weights",
        None,
        "Without a run: ImageNet weights, a .keras / .h5 file saved from keras.applications.",
        **f,
    )
    flags.DEFINE_boolean(
        "flip", False, "Also cache each image's left-right mirror (two examples per image).", **f
    )
    flags.DEFINE_list(
        "source_size",
        None,
        "height,width images are padded to before --crops_per_image crops of --crop_size are cut from them "
        "(unset: one crop, the whole image padded to --crop_size).",
        **f,
    )
    flags.DEFINE_integer(
        "crops_per_image",
        1,
        "Crops cut from each image (with --source_size), at positions seeded by --seed.",
        **f,
    )
    flags.DEFINE_integer("shard_size", 64, "Images per shard (the unit of resumption).", **f)
    flags.DEFINE_integer("batch_size", 4, "Images per backbone call.", **f)
    flags.DEFINE_integer("max_images", None, "Cache only the first N images of the split.", **f)
    flags.DEFINE_boolean("overwrite", False, "Replace a cache of this split made with other settings.", **f)
    flags.DEFINE_integer(
        "seed", 0, "Seed of a random backbone (no weights given) and of the crop positions.", **f
    )
    flags.DEFINE_string(
        "teacher_checkpoint_path",
        None,
        "A training run (or ckpt-<step>.weights.h5) whose model's logits are cached with the features, "
        "float16 at 4x the feature grid, for proxy distillation (--proxy_distillation_weight). May be "
        "--checkpoint_path itself (a whole model). Needed on the train split only.",
        **f,
    )


def config_from_flags(fv: flags.FlagValues):
    """Flags -> ``CacheConfig``; errors are ``app.UsageError`` naming the flag."""
    from deeplab_dpc.nas.features import CacheConfig  # noqa: PLC0415

    if not fv.cache_dir:
        raise app.UsageError("--cache_dir is required (the folder the features go to)")
    if not fv.crop_size:
        raise app.UsageError("--crop_size is required: images are padded to it ('height,width')")
    data = cli.data_config_from_flags(fv)
    try:
        return CacheConfig(
            cache_dir=fv.cache_dir,
            data=data,
            split=fv.split,
            crop_size=cli.parse_pair(fv.crop_size, "crop_size"),
            checkpoint_path=fv.checkpoint_path,
            model_variant=fv.model_variant,
            output_stride=fv.output_stride,
            depth_multiplier=fv.depth_multiplier,
            tf_initial_checkpoint=fv.tf_initial_checkpoint,
            backbone_weights=fv.backbone_weights,
            flip=fv.flip,
            source_size=cli.parse_pair(fv.source_size, "source_size") if fv.source_size else None,
            crops_per_image=fv.crops_per_image,
            shard_size=fv.shard_size,
            batch_size=fv.batch_size,
            max_images=fv.max_images,
            overwrite=fv.overwrite,
            seed=fv.seed,
            teacher_checkpoint_path=fv.teacher_checkpoint_path,
        )
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def run(fv: flags.FlagValues) -> dict:
    """Caches the split the flags name; returns the manifest."""
    config = config_from_flags(fv)
    from deeplab_dpc.nas.features import CacheError, cache_split  # noqa: PLC0415

    try:
        return cache_split(config)
    except CacheError as e:
        raise app.UsageError(str(e)) from None
    except ValueError as e:
        raise app.UsageError(cli.flag_message(str(e), fv)) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    manifest = run(flags.FLAGS)
    summary = {
        "split": manifest["split"],
        "num_images": manifest["num_images"],
        "num_examples": manifest["num_examples"],
        "feature_shape": manifest["feature_shape"],
        "label_shape": manifest["label_shape"],
        "shards": len(manifest["shards"]),
        "backbone": {
            k: manifest["backbone"].get(k)
            for k in ("model_variant", "output_stride", "weights", "checkpoint")
        },
        "cache_dir": flags.FLAGS.cache_dir,
    }
    if manifest.get("teacher"):
        summary["teacher"] = {
            "checkpoint": manifest["teacher"]["checkpoint"],
            "logits_shape": manifest.get("teacher_shape"),
        }
    sys.stdout.write(json.dumps(summary, indent=1) + "\n")


def console_main():
    define_flags()
    app.run(main)


if __name__ == "__main__":
    console_main()
