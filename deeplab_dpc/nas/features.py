"""Backbone features cached once, read by every proxy trial: ``cache_split`` writes, ``FeatureCache`` reads.

The paper's proxy trains each candidate cell on MobileNet-v2 features that were
computed once; this module computes them. A backbone (from a training run, or
a fresh one) runs over a split, preprocessed exactly as evaluation does (the
whole image padded bottom/right to ``crop_size`` with the mean pixel, labels
with the ignore label), and its ``features`` end point (the input of the
context module) is stored with the label of each example:

    cache_dir/
      <split>.manifest.json          what the cache holds, and where it came from
      <split>-00000.npz ...          shards: features float16 [n, h, w, c],
                                     labels uint8 [n, crop_h, crop_w], names, flipped,
                                     with a teacher: teacher_logits float16 [n, 4h, 4w, classes]

Labels stay at the crop resolution; the proxy trainer decides at which
resolution it computes its loss. With ``teacher_checkpoint_path`` a whole
model's logits are cached too, for the proxy's distillation: at 4x the feature
grid (the proxy's ``features4x`` loss grid, 92x120 for CamVid's 23x30
features), taken from the model's image-size logits at the pixels the labels
are sampled at there (``nearest_indices``), so each logit lines up with
the label the loss pairs it with. The manifest's ``teacher`` records the
teacher's checkpoint, model and grid. ``flip=True`` adds each image's left-right
mirror as a second example (image and label mirrored after padding, as
training's random flip does), so a trainer sees both without a backbone pass.

Writing is resumable shard by shard: shard ``i`` holds images
``[i * shard_size, (i + 1) * shard_size)`` of the split, is written to a
temporary name and renamed, and is then entered in the manifest (itself
rewritten atomically). A rerun skips every shard whose file exists with the
size and SHA-256 its manifest entry records, and recomputes the others. A
manifest made by another backbone, crop or augmentation is never mixed with:
``overwrite=True`` starts again. Memory holds one shard at a time.

Example:
    >>> data = DataConfig("camvid", "/data/camvid_tfrecord")
    >>> cache_split(CacheConfig(cache_dir="/tmp/camvid_cache", data=data, split="val",
    ...                         crop_size=(360, 480), checkpoint_path="/runs/camvid"))  # doctest: +SKIP
    >>> FeatureCache("/tmp/camvid_cache", "val").load_all("float32")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
import zipfile
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from deeplab_dpc.fileio import atomic_path, write_json
from deeplab_dpc.nas.mapped import ShardedArray, map_npz_member

if TYPE_CHECKING:  # Keras loads with the data package: reading a cache needs neither.
    from deeplab_dpc.data.batches import DataConfig

log = logging.getLogger(__name__)

FORMAT = "deeplab_dpc.feature_cache/1"
FEATURES_ENDPOINT = "features"
FEATURE_DTYPE = "float16"
LABEL_DTYPE = "uint8"
SHARD_KEYS = ("features", "labels", "names", "flipped")
TEACHER_KEY = "teacher_logits"  # A shard's array of teacher logits, when the manifest records a teacher.
TEACHER_DTYPE = "float16"

# Manifest fields that say what the cache is; a rerun must agree on all of them to resume.
IDENTITY_FIELDS = (
    "format",
    "split",
    "dataset",
    "num_classes",
    "ignore_label",
    "crop_size",
    "backbone",
    "augmentation",
    "shard_size",
    "num_images",
    "feature_dtype",
    "label_dtype",
    "teacher",
)


class CacheError(ValueError):
    """A feature cache that is missing, incomplete, inconsistent or corrupt; the message names the file."""


# ----------------------------------------------------------------------------------------------------------
# Where the files are.


def manifest_path(cache_dir: str, split: str) -> str:
    return os.path.join(cache_dir, f"{split}.manifest.json")


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:05d}.npz"


# ----------------------------------------------------------------------------------------------------------
# Writing.


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    """What to cache. Field names are ``cache_features``' flag names (``data`` is the data flags).

    Args:
        cache_dir: folder of the cache (created).
        data: the dataset (``DataConfig``).
        split: split to cache.
        crop_size: (height, width) images are padded to (evaluation's
            whole-image preprocessing; larger images are cut at the bottom/right,
            as evaluation does).
        checkpoint_path: a training run (its newest checkpoint) or a
            ``ckpt-<step>.weights.h5`` file; the backbone is the run's, read
            through its ``model_config.json``. None: a fresh backbone from
            ``model_variant`` (see ``tf_initial_checkpoint``, ``backbone_weights``).
        model_variant, output_stride, depth_multiplier: the backbone. With a
            run they default to (and must agree with) the run's config;
            without one they default to mobilenet_v2, 16, 1.0.
        tf_initial_checkpoint: without a run: weights for the backbone, a
            DeepLab TF1 checkpoint or a Keras checkpoint / train_logdir (as
            ``train``'s flag of that name; weights copied by name and shape).
        backbone_weights: without a run: a ``.keras`` / ``.h5`` file of
            ImageNet weights (``core.backbones.load_backbone_weights``).
            With neither, the backbone has random weights (a warning), and its
            batch norms take the statistics of the first batch.
        flip: also cache each image's left-right mirror (of every crop).
        source_size: (height, width) images are padded (cut) to before ``crops_per_image`` crops of
            ``crop_size`` are cut from them at seeded positions (None: one crop, the whole padded
            image, as evaluation sees it). For datasets whose images are larger than the proxy's
            crop (Cityscapes: 1024x2048 images, 769x769 crops).
        crops_per_image: crops cut from each image of ``source_size``; the positions depend only on
            ``seed`` and the image's index, so a resumed cache cuts the same ones.
        shard_size: images per shard (a shard holds ``shard_size`` examples,
            twice that with ``flip``).
        batch_size: images per backbone call.
        max_images: cache only the first N images of the split (None: all).
        overwrite: delete a cache of another configuration in ``cache_dir``
            for this split instead of refusing.
        jit_compile: compile the backbone with XLA; None: on TensorFlow only
            with a GPU (XLA is several times slower on CPU), always on JAX.
        seed: initialises a random backbone (no weights given), so that a
            rerun resumes with the same weights.
        teacher_checkpoint_path: a training run (its newest checkpoint) or a
            checkpoint file whose whole model's logits are cached with each
            example (the mirror's from the mirrored image), for the proxy's
            distillation; float16 at 4x the feature grid (see the module doc).
            It may be ``checkpoint_path`` itself: the run whose backbone gives
            the features is a complete model (its logits then come from a
            second pass over the images). None: no teacher logits.
    """

    cache_dir: str
    data: DataConfig
    split: str
    crop_size: tuple[int, int]
    checkpoint_path: str | None = None
    model_variant: str | None = None
    output_stride: int | None = None
    depth_multiplier: float | None = None
    tf_initial_checkpoint: str | None = None
    backbone_weights: str | None = None
    flip: bool = False
    source_size: tuple[int, int] | None = None
    crops_per_image: int = 1
    shard_size: int = 64
    batch_size: int = 4
    max_images: int | None = None
    overwrite: bool = False
    jit_compile: bool | None = None
    seed: int = 0
    teacher_checkpoint_path: str | None = None

    def __post_init__(self):
        if not self.cache_dir:
            raise ValueError("cache_dir is required (the folder the features go to)")
        from deeplab_dpc.data.batches import DataConfig  # noqa: PLC0415

        if not isinstance(self.data, DataConfig):
            raise ValueError(f"data must be a DataConfig, got {type(self.data).__name__}")
        if not self.split or os.sep in self.split:
            raise ValueError(f"split={self.split!r} must be a split name")
        crop = tuple(int(c) for c in self.crop_size)
        if len(crop) != 2 or min(crop) < 1:
            raise ValueError(
                f"crop_size={list(self.crop_size)} must be two positive integers (height, width)"
            )
        object.__setattr__(self, "crop_size", crop)
        if self.source_size is not None:
            source = tuple(int(c) for c in self.source_size)
            if len(source) != 2 or source[0] < crop[0] or source[1] < crop[1]:
                raise ValueError(
                    f"source_size={list(self.source_size)} must be two integers at least crop_size={list(crop)}"
                )
            object.__setattr__(self, "source_size", source)
        elif self.crops_per_image != 1:
            raise ValueError(
                f"crops_per_image={self.crops_per_image} needs source_size (the padded image the crops are cut from)"
            )
        for name in ("shard_size", "batch_size", "crops_per_image"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r} must be a positive integer")
        if self.max_images is not None and (not isinstance(self.max_images, int) or self.max_images < 1):
            raise ValueError(f"max_images={self.max_images!r} must be a positive integer or None")
        if self.output_stride is not None and self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride={self.output_stride} must be 8, 16 or 32")
        if self.depth_multiplier is not None and not self.depth_multiplier > 0:
            raise ValueError(f"depth_multiplier={self.depth_multiplier} must be positive")
        descriptor = self.data.descriptor
        if descriptor.num_classes > 255 or descriptor.ignore_label > 255:
            raise ValueError(
                f"dataset={self.data.dataset}: labels are cached as uint8, so num_classes "
                f"({descriptor.num_classes}) and ignore_label ({descriptor.ignore_label}) must be at most 255"
            )
        if self.checkpoint_path is not None:
            if not os.path.exists(self.checkpoint_path):
                raise ValueError(f"checkpoint_path={self.checkpoint_path} does not exist")
            for name in ("tf_initial_checkpoint", "backbone_weights"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{name} is for a fresh backbone; checkpoint_path={self.checkpoint_path} already "
                        "gives the weights (drop one of them)"
                    )
        if self.teacher_checkpoint_path is not None and not os.path.exists(self.teacher_checkpoint_path):
            raise ValueError(f"teacher_checkpoint_path={self.teacher_checkpoint_path} does not exist")
        if self.tf_initial_checkpoint is not None and self.backbone_weights is not None:
            raise ValueError(
                "tf_initial_checkpoint and backbone_weights both give backbone weights: choose one"
            )
        for name in ("tf_initial_checkpoint", "backbone_weights"):
            path = getattr(self, name)
            if path is not None and not (os.path.exists(path) or os.path.exists(path + ".index")):
                raise ValueError(f"{name}={path} does not exist")


@dataclasses.dataclass
class Backbone:
    """A backbone ready to cache with: ``extract(images) -> features`` and what to record about it.

    With a teacher, ``extract`` returns ``{"features": ..., TEACHER_KEY: ...}`` and ``teacher``
    describes it (the manifest's ``teacher``).
    """

    extract: Callable[[np.ndarray], np.ndarray | dict]
    description: dict
    random_weights: bool
    warm_start: Callable[[np.ndarray], int] | None = None
    teacher: dict | None = None


def default_jit_compile() -> bool:
    """XLA on JAX (always) and on TensorFlow with a GPU; not on a TensorFlow CPU (several times slower)."""
    import keras  # noqa: PLC0415

    if keras.backend.backend() != "tensorflow":
        return keras.backend.backend() == "jax"
    import tensorflow as tf  # noqa: PLC0415

    return bool(tf.config.list_physical_devices("GPU"))


def build_backbone_for_cache(config: CacheConfig) -> Backbone:
    """The backbone ``config`` names, with its weights, as a compiled ``images -> features`` function."""
    import keras  # noqa: PLC0415

    from deeplab_dpc.core.model import ModelConfig, build_deeplab  # noqa: PLC0415

    description: dict[str, Any] = {}
    random_weights = False
    if config.checkpoint_path is not None:
        from deeplab_dpc.runs import load_model_for_inference, resolve_checkpoint  # noqa: PLC0415

        try:
            checkpoint = resolve_checkpoint(config.checkpoint_path)
            model, model_config = load_model_for_inference(checkpoint)
        except FileNotFoundError as e:
            raise ValueError(str(e)) from None
        for name in ("model_variant", "output_stride", "depth_multiplier"):
            value = getattr(config, name)
            if value is not None and value != getattr(model_config, name):
                raise ValueError(
                    f"{name}={value} contradicts the run's model config ({name}="
                    f"{getattr(model_config, name)}) of checkpoint_path={config.checkpoint_path}; "
                    "drop the flag"
                )
        description["weights"] = "checkpoint"
        description["checkpoint"] = os.path.abspath(checkpoint)
        description["run_model_config"] = model_config.to_dict()
    else:
        model_config = ModelConfig(
            num_classes=config.data.descriptor.num_classes,
            model_variant=config.model_variant or "mobilenet_v2",
            output_stride=config.output_stride or 16,
            context="none",
            depth_multiplier=config.depth_multiplier if config.depth_multiplier is not None else 1.0,
        )
        if config.tf_initial_checkpoint is None and config.backbone_weights is None:
            keras.utils.set_random_seed(config.seed)  # Random weights: the same on a rerun, so it can resume.
        model = build_deeplab(model_config)
        if config.tf_initial_checkpoint is not None:
            restored = _restore_initial_checkpoint(model, config.tf_initial_checkpoint)
            description["weights"] = "tf_initial_checkpoint"
            description["checkpoint"] = os.path.abspath(config.tf_initial_checkpoint)
            description["restored_backbone_weights"] = restored
        elif config.backbone_weights is not None:
            from deeplab_dpc.core.backbones import load_backbone_weights  # noqa: PLC0415

            report = load_backbone_weights(model.get_layer("backbone"), config.backbone_weights)
            if not report["loaded"]:
                raise ValueError(f"backbone_weights={config.backbone_weights}: no backbone layer found there")
            description["weights"] = "backbone_weights"
            description["checkpoint"] = os.path.abspath(config.backbone_weights)
            description["missing_layers"] = report["missing"]
        else:
            random_weights = True
            description["weights"] = f"random (seed {config.seed})"
            description["checkpoint"] = None
            description["batch_norm"] = "moving statistics of the split's first batch"
    description.update(
        model_variant=model_config.model_variant,
        output_stride=model_config.output_stride,
        depth_multiplier=model_config.depth_multiplier,
        endpoint=FEATURES_ENDPOINT,
    )
    images = keras.Input((*config.crop_size, 3), name="images")
    normalized = model.get_layer("normalize")(images)
    backbone = model.get_layer("backbone")
    features = backbone(normalized)[FEATURES_ENDPOINT]
    extractor = keras.Model(images, features, name="feature_extractor")
    jit_compile = default_jit_compile() if config.jit_compile is None else config.jit_compile
    extractor.compile(jit_compile=jit_compile)

    def warm_start(batch: np.ndarray) -> int:  # The features' batch norms only, never a teacher's.
        from deeplab_dpc.training.train_lib import warm_start_batch_norm  # noqa: PLC0415

        return warm_start_batch_norm(extractor, batch)

    extract = lambda batch: np.asarray(extractor.predict_on_batch(batch))  # noqa: E731
    teacher = None
    if config.teacher_checkpoint_path is not None:
        teacher_logits, teacher = _teacher_logits(config, images, tuple(features.shape[1:3]))
        both = keras.Model(images, {"features": features, TEACHER_KEY: teacher_logits}, name="with_teacher")
        both.compile(jit_compile=jit_compile)
        extract = lambda batch: {
            k: np.asarray(v) for k, v in both.predict_on_batch(batch).items()
        }  # noqa: E731
    return Backbone(
        extract=extract,
        description=description,
        random_weights=random_weights,
        warm_start=warm_start if random_weights else None,
        teacher=teacher,
    )


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Rows (or columns) of a grid of ``in_size`` nearest to ``out_size`` points spread corner to corner.

    The points are where an align-corners resize to ``out_size`` samples, so
    labels sampled here line up with logits resized as the model resizes them.
    """
    if out_size == 1:
        return np.zeros(1, np.int64)
    return np.floor(np.arange(out_size) * ((in_size - 1) / (out_size - 1)) + 0.5).astype(np.int64)


def _teacher_logits(config: CacheConfig, images, feature_grid: tuple[int, int]):
    """(the teacher's logits of ``images`` at 4x ``feature_grid``, a symbolic tensor; its manifest entry).

    The model's logits at the crop size are sampled at the rows and columns the proxy samples labels
    at for its ``features4x`` loss (nearest, align corners).
    """
    import keras  # noqa: PLC0415

    from deeplab_dpc.runs import load_model_for_inference, resolve_checkpoint  # noqa: PLC0415

    try:
        checkpoint = resolve_checkpoint(config.teacher_checkpoint_path)
        model, model_config = load_model_for_inference(checkpoint)
    except (FileNotFoundError, ValueError) as e:
        message = str(e).replace("checkpoint_path=", "teacher_checkpoint_path=", 1)
        raise ValueError(message if message.startswith("teacher_") else f"teacher_{message}") from None
    num_classes = config.data.descriptor.num_classes
    if model_config.num_classes != num_classes:
        raise ValueError(
            f"teacher_checkpoint_path={config.teacher_checkpoint_path}: the teacher predicts "
            f"{model_config.num_classes} classes, dataset={config.data.dataset} has {num_classes}"
        )
    grid = (4 * feature_grid[0], 4 * feature_grid[1])
    rows = nearest_indices(config.crop_size[0], grid[0])
    cols = nearest_indices(config.crop_size[1], grid[1])
    logits = model(images)  # [B, crop_h, crop_w, classes], float32
    sampled = keras.ops.take(keras.ops.take(logits, rows, axis=1), cols, axis=2)
    description = {
        "checkpoint": os.path.abspath(checkpoint),
        "model_config": model_config.to_dict(),
        "logits_shape": [*grid, num_classes],
        "dtype": TEACHER_DTYPE,
        "sampling": "the model's logits at the crop size, nearest-sampled (align corners) to 4x the "
        "feature grid, as the proxy samples labels for loss_resolution=features4x",
    }
    return sampled, description


def _restore_initial_checkpoint(model, path: str) -> int:
    """Copies a TF1 or Keras checkpoint's backbone weights into ``model``; the number restored."""
    from deeplab_dpc.training import train_lib  # noqa: PLC0415

    if os.path.exists(path + ".index") or (
        os.path.isdir(path) and any(n.endswith(".index") for n in os.listdir(path))
    ):
        from deeplab_dpc.training.tf1_checkpoint import restore_tf1_checkpoint  # noqa: PLC0415

        report = restore_tf1_checkpoint(model, path, initialize_last_layer=False)
    else:
        report = train_lib.restore_keras_weights(model, path, initialize_last_layer=False)
    backbone_paths = {w.path for w in model.get_layer("backbone").weights}
    restored = sum(1 for p in report.get("restored", []) if p in backbone_paths)
    if restored == 0:
        raise ValueError(f"tf_initial_checkpoint={path}: none of the backbone's weights are in it")
    return restored


def _code_version() -> dict:
    import deeplab_dpc  # noqa: PLC0415

    out = {"package": deeplab_dpc.__version__}
    root = os.path.dirname(os.path.dirname(os.path.abspath(deeplab_dpc.__file__)))
    try:
        commit = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        out["git_commit"] = commit
        out["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry_is_done(cache_dir: str, entry: dict | None, index: int, first: int, count: int) -> bool:
    """True when the manifest's entry for shard ``index`` matches the plan and its file checks out."""
    if (
        not entry
        or entry.get("index") != index
        or entry.get("first_image") != first
        or entry.get("num_images") != count
    ):
        return False
    path = os.path.join(cache_dir, entry["file"])
    if not os.path.isfile(path) or os.path.getsize(path) != entry.get("bytes"):
        return False
    return _file_digest(path) == entry.get("sha256")


class Progress:
    """A progress line on stderr with rate and ETA, redrawn in place on a terminal, every ~10 s otherwise."""

    def __init__(self, total: int, desc: str, unit: str = "images", stream=None, initial: int = 0):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = self.start_done = int(initial)
        self.start = time.monotonic()
        self._last = 0.0

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        new = self.done - self.start_done
        rate = new / elapsed if elapsed > 0 and new else 0.0
        eta = (self.total - self.done) / rate if rate else float("nan")
        eta_text = "?" if eta != eta else _duration(eta)
        return (
            f"{self.desc}: {self.done}/{self.total} {self.unit} ({rate:.2f}/s), "
            f"elapsed {_duration(elapsed)}, ETA {eta_text}"
        )

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        final = self.done >= self.total
        if final or now - self._last >= (0.5 if self.tty else 10.0):
            self._last = now
            if self.tty:
                self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
            else:
                self.stream.write(self.line() + "\n")
            self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _image_source(config: CacheConfig):
    """(number of images, ``get(positions) -> list of preprocessed samples`` or None, sequential iterator).

    The NumPy loader gives random access (done shards are never decoded); tf.data is read in order.
    """
    from deeplab_dpc.data.batches import make_batches  # noqa: PLC0415
    from deeplab_dpc.data.preprocess import PreprocessConfig  # noqa: PLC0415

    preprocess = PreprocessConfig(
        crop_size=config.source_size or config.crop_size,
        ignore_label=config.data.descriptor.ignore_label,
        is_training=False,
    )
    batches = make_batches(config.data, config.split, preprocess, 1, as_tuple=False)
    if hasattr(batches, "sample"):  # numpy_loader.SegmentationPyDataset
        count = len(batches.source)
        return count, (lambda position: batches.sample(position, 0)), None

    def in_order() -> Iterator[dict]:
        for batch in batches:
            yield {key: value.numpy()[0] for key, value in batch.items()}

    try:
        count = config.data.descriptor.split_size(config.split)
    except ValueError:
        count = None
    if count is None or config.data.is_tfds:
        count = sum(1 for _ in batches)
    return count, None, in_order


def cache_split(config: CacheConfig, progress: bool = True, backbone: Backbone | None = None) -> dict:
    """Caches the backbone features of one split; returns the manifest.

    Args:
        config: what to cache.
        progress: print a progress line with ETA on stderr.
        backbone: a backbone to use instead of the one ``config`` names (tests).

    Raises:
        CacheError: ``cache_dir`` holds a cache of this split made differently
            (another backbone, crop or augmentation) and ``overwrite`` is False.
        ValueError: a bad checkpoint or model flag (the message names the field).
    """
    descriptor = config.data.descriptor
    os.makedirs(config.cache_dir, exist_ok=True)
    total_images, get_sample, in_order = _image_source(config)
    if config.max_images is not None:
        total_images = min(total_images, config.max_images)
    if total_images == 0:
        raise CacheError(f"split={config.split} of dataset={config.data.dataset} has no images")
    backbone = backbone or build_backbone_for_cache(config)
    if backbone.random_weights:
        log.warning(
            "the backbone has random weights (no checkpoint_path, tf_initial_checkpoint or "
            "backbone_weights): "
            "its features suit tests, not a search"
        )
    crops = config.crops_per_image
    copies = crops * (2 if config.flip else 1)
    augmentation = {
        "flip": config.flip,
        "copies_per_image": copies,
        "preprocessing": "evaluation: whole image padded bottom/right to crop_size (mean pixel; labels "
        "ignore_label)" + ("; copy 2: left-right mirror of the padded crop" if config.flip else ""),
    }
    if config.source_size is not None:
        augmentation.update(
            source_size=list(config.source_size),
            crops_per_image=crops,
            crop_seed=config.seed,
            preprocessing=f"evaluation: whole image padded bottom/right to source_size (mean pixel; labels "
            f"ignore_label), then {crops} crop(s) of crop_size at positions seeded by crop_seed and the "
            "image's index" + ("; each followed by its left-right mirror" if config.flip else ""),
        )
    identity = {
        "format": FORMAT,
        "split": config.split,
        "dataset": {
            "name": descriptor.name,
            "spec": config.data.dataset,
            "dataset_dir": os.path.abspath(config.data.dataset_dir) if config.data.dataset_dir else None,
            "dataset_format": config.data.dataset_format,
            "label_remap": config.data.to_dict()["label_remap"],
            "class_names": list(descriptor.class_names),
        },
        "num_classes": descriptor.num_classes,
        "ignore_label": descriptor.ignore_label,
        "crop_size": list(config.crop_size),
        "backbone": backbone.description,
        "augmentation": augmentation,
        "shard_size": config.shard_size,
        "num_images": total_images,
        "feature_dtype": FEATURE_DTYPE,
        "label_dtype": LABEL_DTYPE,
        "teacher": backbone.teacher,
    }
    manifest = _start_manifest(config, identity)
    num_shards = -(-total_images // config.shard_size)
    plan = [
        (i, i * config.shard_size, min(config.shard_size, total_images - i * config.shard_size))
        for i in range(num_shards)
    ]
    entries = {e["index"]: e for e in manifest["shards"]}
    done, pending = [], {}
    for index, first, count in plan:
        if _entry_is_done(config.cache_dir, entries.get(index), index, first, count):
            done.append(entries[index])
        else:
            pending[index] = (first, count)
    manifest["shards"] = done
    done_images = sum(e["num_images"] for e in done)
    if pending and done:
        log.info("resuming: %d of %d shards are done", len(done), num_shards)
    if pending and backbone.warm_start is not None:
        # Random weights: batch norm statistics of the split's first images, whichever shards remain.
        first_images = _first_images(get_sample, in_order, min(config.batch_size, total_images))
        backbone.warm_start(first_images)
    bar = (
        Progress(total_images * crops, f"caching {config.split}", initial=done_images * crops)
        if progress
        else None
    )
    for index, first, count, shard_samples in _samples_for(pending, get_sample, in_order, total_images):
        images = np.stack([s["image"] for s in shard_samples]).astype(np.float32)
        labels = np.stack([s["label"][..., 0] for s in shard_samples]).astype(LABEL_DTYPE)
        names = np.array([_name(s) for s in shard_samples], dtype=np.str_)
        if config.source_size is not None:
            images, labels, names = cut_crops(images, labels, names, first, config)
        outputs = _run_backbone(backbone.extract, images, config.batch_size, config.flip, bar)
        features, teacher_logits = outputs["features"], outputs.get(TEACHER_KEY)
        flipped = np.zeros(len(labels), bool)
        if config.flip:
            flipped = np.tile([False, True], len(labels))
            labels = np.stack([labels, labels[:, :, ::-1]], axis=1).reshape(-1, *labels.shape[1:])
            names = np.repeat(names, 2)
        entry = _write_shard(
            config.cache_dir,
            config.split,
            index,
            first,
            count,
            features,
            labels,
            names,
            flipped,
            teacher_logits,
        )
        manifest["feature_shape"] = list(features.shape[1:])
        manifest["label_shape"] = list(labels.shape[1:])
        if teacher_logits is not None:
            manifest["teacher_shape"] = list(teacher_logits.shape[1:])
        manifest["shards"] = sorted(
            [e for e in manifest["shards"] if e["index"] != index] + [entry], key=lambda e: e["index"]
        )
        _save_manifest(config, manifest, complete=False)
        del images, features, labels, outputs, teacher_logits
    _check_shapes(config, manifest)
    _save_manifest(config, manifest, complete=True)
    return manifest


def crop_offsets(
    image_index: int, crops: int, source_size: tuple[int, int], crop_size: tuple[int, int], seed: int
) -> list[tuple[int, int]]:
    """(top, left) of each crop of one image: uniform over the valid positions, from a generator seeded
    by ``seed`` and the image's index alone (a resumed or re-sharded cache cuts the same crops)."""
    rng = np.random.default_rng([int(seed), int(image_index)])
    rows = source_size[0] - crop_size[0] + 1
    cols = source_size[1] - crop_size[1] + 1
    return [(int(rng.integers(rows)), int(rng.integers(cols))) for _ in range(crops)]


def cut_crops(images, labels, names, first: int, config: CacheConfig):
    """``crops_per_image`` crops of each padded image (images ``first``, ``first + 1``, ... of the
    split), in image order: (images, labels, names), each ``crops_per_image`` times as long."""
    height, width = config.crop_size
    out_images, out_labels = [], []
    for i in range(len(images)):
        for top, left in crop_offsets(
            first + i, config.crops_per_image, config.source_size, config.crop_size, config.seed
        ):
            out_images.append(images[i, top : top + height, left : left + width])
            out_labels.append(labels[i, top : top + height, left : left + width])
    return np.stack(out_images), np.stack(out_labels), np.repeat(names, config.crops_per_image)


def _name(sample: dict) -> str:
    name = sample.get("image_name", "")
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)


def _first_images(get_sample, in_order, count: int) -> np.ndarray:
    if get_sample is not None:
        samples = [get_sample(p) for p in range(count)]
    else:
        samples = []
        for sample in in_order():
            samples.append(sample)
            if len(samples) == count:
                break
    return np.stack([s["image"] for s in samples]).astype(np.float32)


def _samples_for(pending, get_sample, in_order, total_images):
    """Yields (shard index, first image, count, preprocessed samples) for each pending shard, in order."""
    if get_sample is not None:
        for index in sorted(pending):
            first, count = pending[index]
            yield index, first, count, [get_sample(p) for p in range(first, first + count)]
        return
    starts = {first: index for index, (first, _) in pending.items()}
    current = None
    for position, sample in enumerate(in_order()):
        if position >= total_images:
            break
        if position in starts:
            index = starts[position]
            current = (index, position, pending[index][1], [])
        if current is not None:
            current[3].append(sample)
            if len(current[3]) == current[2]:
                yield current
                current = None


def _run_backbone(extract, images, batch_size, flip, bar) -> dict[str, np.ndarray]:
    """``{"features": ...}`` of ``images`` (and, with ``flip``, of their mirrors, interleaved), float16,
    and ``TEACHER_KEY``'s logits the same way when ``extract`` returns them."""

    def call(batch):
        # One batch shape for every call: a compiled function retraced for a smaller last batch would run
        # another graph, whose float rounding differs, and a resumed shard would not equal the first one.
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - n, *batch.shape[1:]), batch.dtype)])
        result = extract(batch)
        result = result if isinstance(result, dict) else {"features": result}
        return {key: np.asarray(value)[:n].astype(FEATURE_DTYPE) for key, value in result.items()}

    out: dict[str, list] = {}
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        arrays = call(batch)
        if flip:
            mirrored = call(np.ascontiguousarray(batch[:, :, ::-1]))
            arrays = {
                k: np.stack([v, mirrored[k]], axis=1).reshape(-1, *v.shape[1:]) for k, v in arrays.items()
            }
        for key, value in arrays.items():
            out.setdefault(key, []).append(value)
        if bar is not None:
            bar.update(len(batch))
    return {key: np.concatenate(parts) for key, parts in out.items()}


def _write_shard(
    cache_dir, split, index, first, count, features, labels, names, flipped, teacher_logits=None
) -> dict:
    name = shard_name(split, index)
    path = os.path.join(cache_dir, name)
    arrays = dict(features=features, labels=labels, names=names, flipped=flipped)
    if teacher_logits is not None:
        arrays[TEACHER_KEY] = teacher_logits
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    return {
        "index": index,
        "file": name,
        "first_image": first,
        "num_images": count,
        "num_examples": len(features),
        "bytes": os.path.getsize(path),
        "sha256": _file_digest(path),
    }


def _start_manifest(config: CacheConfig, identity: dict) -> dict:
    """The manifest to continue: the one on disk if it is of the same cache, else a new one."""
    path = manifest_path(config.cache_dir, config.split)
    old = None
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None  # An unreadable manifest describes nothing: start again.
    if old is not None:
        # Compare through JSON so tuples and lists agree.
        same = all(
            json.dumps(old.get(k), sort_keys=True)
            == json.dumps(json.loads(json.dumps(identity[k])), sort_keys=True)
            for k in IDENTITY_FIELDS
        )
        if not same and not config.overwrite:
            differing = [
                k
                for k in IDENTITY_FIELDS
                if json.dumps(old.get(k), sort_keys=True)
                != json.dumps(json.loads(json.dumps(identity[k])), sort_keys=True)
            ]
            raise CacheError(
                f"{path} describes a different cache of split {config.split} "
                f"({', '.join(differing)} differ); "
                "use another cache_dir or overwrite=True (--overwrite) to replace it"
            )
        if same:
            old.update(identity)
            old.setdefault("shards", [])
            return old
        for entry in old.get("shards", []):
            stale = os.path.join(config.cache_dir, os.path.basename(entry.get("file", "")))
            if os.path.isfile(stale):
                os.remove(stale)
    now = _now()
    return dict(identity, created=now, code_version=_code_version(), shards=[])


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _save_manifest(config: CacheConfig, manifest: dict, complete: bool) -> None:
    manifest["complete"] = complete
    manifest["num_examples"] = sum(e["num_examples"] for e in manifest["shards"])
    manifest["updated"] = _now()
    manifest["code_version"] = manifest.get("code_version") or _code_version()
    write_json(manifest_path(config.cache_dir, config.split), manifest)


def _check_shapes(config: CacheConfig, manifest: dict) -> None:
    """Every shard of a resumed cache has the feature shape of this run's shards."""
    if "feature_shape" not in manifest:
        with np.load(os.path.join(config.cache_dir, manifest["shards"][0]["file"]), allow_pickle=False) as z:
            manifest["feature_shape"] = list(z["features"].shape[1:])
            manifest["label_shape"] = list(z["labels"].shape[1:])
            if TEACHER_KEY in z.files:
                manifest["teacher_shape"] = list(z[TEACHER_KEY].shape[1:])


def write_arrays(
    cache_dir: str,
    split: str,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    ignore_label: int = 255,
    output_stride: int = 16,
    shard_size: int = 64,
    description: str = "arrays",
    class_names=None,
    teacher_logits: np.ndarray | None = None,
) -> dict:
    """Writes features ``[N, h, w, c]`` and labels ``[N, H, W]`` as a cache split (benchmarks, tests).

    The same shards and manifest as ``cache_split``; ``backbone.weights`` is ``description``.
    ``teacher_logits`` ``[N, 4h, 4w, num_classes]``: cached as a teacher's (``teacher.checkpoint`` is
    ``description``).
    """
    features = np.asarray(features)
    labels = np.asarray(labels)
    if len(features) != len(labels) or labels.ndim != 3 or features.ndim != 4:
        raise ValueError(
            f"features {features.shape} and labels {labels.shape} must be [N, h, w, c] and [N, H, W]"
        )
    manifest = {
        "format": FORMAT,
        "split": split,
        "dataset": {
            "name": description,
            "class_names": list(class_names or [str(i) for i in range(num_classes)]),
        },
        "num_classes": int(num_classes),
        "ignore_label": int(ignore_label),
        "crop_size": list(labels.shape[1:]),
        "backbone": {
            "weights": description,
            "checkpoint": None,
            "model_variant": None,
            "output_stride": int(output_stride),
            "endpoint": FEATURES_ENDPOINT,
        },
        "augmentation": {"flip": False, "copies_per_image": 1},
        "shard_size": int(shard_size),
        "num_images": len(features),
        "feature_dtype": FEATURE_DTYPE,
        "label_dtype": LABEL_DTYPE,
        "teacher": None,
        "feature_shape": list(features.shape[1:]),
        "label_shape": list(labels.shape[1:]),
        "created": _now(),
        "code_version": _code_version(),
        "shards": [],
    }
    if teacher_logits is not None:
        teacher_logits = np.asarray(teacher_logits)
        if teacher_logits.shape[:1] != features.shape[:1] or teacher_logits.shape[-1] != num_classes:
            raise ValueError(
                f"teacher_logits {teacher_logits.shape} must be [N, H, W, num_classes] for {len(features)} "
                f"examples and num_classes={num_classes}"
            )
        manifest["teacher"] = {
            "checkpoint": description,
            "logits_shape": list(teacher_logits.shape[1:]),
            "dtype": TEACHER_DTYPE,
        }
        manifest["teacher_shape"] = list(teacher_logits.shape[1:])
    os.makedirs(cache_dir, exist_ok=True)
    for index, first in enumerate(range(0, len(features), shard_size)):
        part = slice(first, first + shard_size)
        n = len(features[part])
        manifest["shards"].append(
            _write_shard(
                cache_dir,
                split,
                index,
                first,
                n,
                features[part].astype(FEATURE_DTYPE),
                labels[part].astype(LABEL_DTYPE),
                np.array([str(i) for i in range(first, first + n)]),
                np.zeros(n, bool),
                None if teacher_logits is None else teacher_logits[part].astype(TEACHER_DTYPE),
            )
        )
    manifest["complete"] = True
    manifest["num_examples"] = len(features)
    manifest["updated"] = _now()
    write_json(manifest_path(cache_dir, split), manifest)
    return manifest


# ----------------------------------------------------------------------------------------------------------
# Reading.


class FeatureCache:
    """Reads one split of a feature cache.

    Args:
        cache_dir: the cache folder.
        split: the split.

    Raises:
        CacheError: no manifest, a manifest that is not one (or of an unknown
            format), or an incomplete cache; the message names the file.

    Example:
        >>> cache = FeatureCache("/tmp/camvid_cache", "train")  # doctest: +SKIP
        >>> features, labels = cache.load_all("float16")  # [N, 23, 30, 320], [N, 360, 480]
    """

    def __init__(self, cache_dir: str, split: str):
        self.cache_dir = cache_dir
        self.split = split
        path = manifest_path(cache_dir, split)
        self.manifest_file = path
        if not os.path.isfile(path):
            present = (
                sorted(
                    n[: -len(".manifest.json")] for n in os.listdir(cache_dir) if n.endswith(".manifest.json")
                )
                if os.path.isdir(cache_dir)
                else []
            )
            raise CacheError(
                f"{path} does not exist: no cached split {split!r} in {cache_dir} "
                f"(cached splits: {present or 'none'}; make it with python -m deeplab_dpc.cache_features)"
            )
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise CacheError(f"{path} is not a readable JSON manifest: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise CacheError(f"{path} is not a feature cache manifest of format {FORMAT}")
        missing = [
            k
            for k in ("shards", "feature_shape", "label_shape", "num_classes", "ignore_label")
            if k not in manifest
        ]
        if missing:
            raise CacheError(f"{path} lacks {', '.join(missing)}")
        if not manifest.get("complete"):
            done = sum(e["num_images"] for e in manifest["shards"])
            raise CacheError(
                f"{path}: the cache is incomplete ({done} of {manifest.get('num_images')} images); "
                "rerun the same cache_features command to finish it"
            )
        self.manifest = manifest

    @property
    def num_examples(self) -> int:
        return int(self.manifest["num_examples"])

    @property
    def num_classes(self) -> int:
        return int(self.manifest["num_classes"])

    @property
    def ignore_label(self) -> int:
        return int(self.manifest["ignore_label"])

    @property
    def feature_shape(self) -> tuple[int, int, int]:
        return tuple(self.manifest["feature_shape"])

    @property
    def label_shape(self) -> tuple[int, int]:
        return tuple(self.manifest["label_shape"])

    @property
    def output_stride(self) -> int:
        return int(self.manifest["backbone"]["output_stride"])

    @property
    def has_teacher_logits(self) -> bool:
        """Whether the shards hold a teacher's logits (``cache_features --teacher_checkpoint_path``)."""
        return bool(self.manifest.get("teacher")) and "teacher_shape" in self.manifest

    @property
    def teacher_shape(self) -> tuple[int, int, int] | None:
        """(height, width, classes) of the cached teacher logits; None without a teacher."""
        return tuple(self.manifest["teacher_shape"]) if self.has_teacher_logits else None

    def shard_paths(self) -> list[str]:
        return [os.path.join(self.cache_dir, e["file"]) for e in self.manifest["shards"]]

    def read_shard(self, entry: dict) -> dict[str, np.ndarray]:
        """One shard's arrays, checked against the manifest (CacheError naming the file otherwise)."""
        return self._shard(entry, SHARD_KEYS + ((TEACHER_KEY,) if self.has_teacher_logits else ()))

    def _shard(self, entry: dict, keys, mapped=()) -> dict[str, np.ndarray] | None:
        """``keys`` of one shard, those in ``mapped`` memory-mapped (``map_npz_member``), the others read;
        each checked against the manifest. None when a member to map is compressed."""
        path = os.path.join(self.cache_dir, entry["file"])
        if not os.path.isfile(path):
            raise CacheError(
                f"{path} is missing (listed in {self.manifest_file}); rerun cache_features to rewrite it"
            )
        try:
            arrays = {key: map_npz_member(path, key) for key in mapped}
            if any(array is None for array in arrays.values()):
                return None
            read = [key for key in keys if key not in arrays]
            if read:
                with np.load(path, allow_pickle=False) as z:
                    arrays.update({key: z[key] for key in read})
        except KeyError as e:
            raise CacheError(f"{path} lacks the array {e} of a feature shard") from None
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
            raise CacheError(
                f"{path} is corrupt ({type(e).__name__}: {e}); "
                "delete it and rerun cache_features to rewrite it"
            ) from None
        n = entry["num_examples"]
        expected = {
            "features": ((n, *self.feature_shape), self.manifest["feature_dtype"]),
            "labels": ((n, *self.label_shape), self.manifest["label_dtype"]),
        }
        if self.has_teacher_logits:
            expected[TEACHER_KEY] = ((n, *self.teacher_shape), TEACHER_DTYPE)
        for key, (shape, dtype) in expected.items():
            if key in arrays and (arrays[key].shape != shape or arrays[key].dtype != np.dtype(dtype)):
                raise CacheError(
                    f"{path}: {key} are {arrays[key].dtype} {list(arrays[key].shape)}, the manifest says "
                    f"{dtype} {list(shape)}"
                )
        return arrays

    def _examples(self, max_examples: int | None, teacher_logits: bool) -> int:
        """How many examples ``map_all`` / ``load_all`` take; a CacheError if teacher logits are asked of a
        cache without them."""
        if teacher_logits and not self.has_teacher_logits:
            raise CacheError(
                f"{self.manifest_file} holds no teacher logits: cache the split with "
                "cache_features --teacher_checkpoint_path"
            )
        return self.num_examples if max_examples is None else min(self.num_examples, int(max_examples))

    def iter_shards(self) -> Iterator[dict[str, np.ndarray]]:
        """Each shard's ``features``, ``labels``, ``names``, ``flipped`` (and ``teacher_logits`` with a
        teacher), in order, one at a time."""
        for entry in self.manifest["shards"]:
            yield self.read_shard(entry)

    def map_all(
        self,
        label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        max_examples: int | None = None,
        teacher_logits: bool = False,
    ) -> tuple | None:
        """As ``load_all``, with the features (and the teacher's logits) memory-mapped from the shards
        instead of read into this process (``mapped``): the page cache holds them once per machine, however
        many workers read them. Labels (small once ``label_fn`` has sampled them) are read.

        Returns:
            (features ``ShardedArray`` in the stored dtype, labels ``ndarray``), and with ``teacher_logits``
            the logits ``ShardedArray`` third; None when a shard is compressed and cannot be mapped
            (``load_all`` reads those).

        Raises:
            CacheError: a shard is missing, corrupt or disagrees with the manifest (the message names the
                file); ``teacher_logits`` asked of a cache without them.
        """
        total = self._examples(max_examples, teacher_logits)
        mapped = ("features",) + ((TEACHER_KEY,) if teacher_logits else ())
        features, teachers, labels = [], [], []
        at = 0
        for entry in self.manifest["shards"]:
            if at >= total:
                break
            arrays = self._shard(entry, mapped + ("labels",), mapped)
            if arrays is None:
                return None
            take = min(entry["num_examples"], total - at)
            features.append(arrays["features"])
            if teacher_logits:
                teachers.append(arrays[TEACHER_KEY])
            shard_labels = arrays["labels"][:take]
            labels.append(label_fn(shard_labels) if label_fn is not None else shard_labels)
            at += take
        out = (ShardedArray(features, total), np.concatenate(labels))
        return out + (ShardedArray(teachers, total),) if teacher_logits else out

    def load_all(
        self,
        dtype="float32",
        label_fn: Callable[[np.ndarray], np.ndarray] | None = None,
        max_examples: int | None = None,
        teacher_logits: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """All features (as ``dtype``) and labels in memory (and the teacher's logits, when asked).

        Args:
            dtype: of the features: float16 (as stored, half the memory) or float32.
            label_fn: applied to each shard's labels ``[n, H, W]`` uint8 as it is
                read (e.g. nearest sampling to a smaller grid), so full-size
                labels are never all in memory at once.
            max_examples: keep only the first N examples.
            teacher_logits: also return the cached teacher logits (float16).

        Returns:
            (features ``[N, h, w, c]``, labels ``[N, ...]`` uint8), and with ``teacher_logits`` the
            logits ``[N, H, W, classes]`` float16 third.

        Raises:
            CacheError: ``teacher_logits`` asked of a cache without them.
        """
        total = self._examples(max_examples, teacher_logits)
        features = np.empty((total, *self.feature_shape), dtype)
        teacher = np.empty((total, *self.teacher_shape), TEACHER_DTYPE) if teacher_logits else None
        labels = None
        at = 0
        for shard in self.iter_shards():
            if at >= total:
                break
            take = min(len(shard["features"]), total - at)
            features[at : at + take] = shard["features"][:take]
            if teacher is not None:
                teacher[at : at + take] = shard[TEACHER_KEY][:take]
            shard_labels = shard["labels"][:take]
            if label_fn is not None:
                shard_labels = label_fn(shard_labels)
            if labels is None:
                labels = np.empty((total, *shard_labels.shape[1:]), shard_labels.dtype)
            labels[at : at + take] = shard_labels
            at += take
        return (features, labels) if teacher is None else (features, labels, teacher)
