"""Converting image/label files to DeepLab TFRecord shards: the shared machinery.

Every ``tools/build_*_data.py`` lists its examples (``SourceExample``: image
path, label path or None, name) and states how raw label values become class
ids (a ``label_fn``, e.g. ``label_lut({11: 255})`` for CamVid's void); then
``convert_split`` does the rest:

* checks up front that every listed file exists and names are unique;
* encodes examples in a thread pool (``num_workers``). Each pair is VERIFIED:
  the image decodes with the reader's own decoder (``tfrecord.decode_image``), the
  label decodes, their sizes match, and every label value is a class id
  ``< num_classes`` or the ignore label. Any failure is a ``ConversionError``
  naming the offending file;
* the image is stored as its original bytes, the label re-encoded as an 8-bit
  PNG of class ids (so palette PNGs, e.g. PASCAL's, read back as ids);
* writes shards of consecutive examples. Each shard is written under a hidden
  temporary name (``.<shard>.tmp-<pid>``) and renamed when complete, so an
  interrupted run never leaves a file that a reader globbing
  ``<split>-*-of-*.tfrecord`` would take as whole;
* resumes: a rerun skips the shards that are already complete and writes the
  rest. ``<split>.manifest.json`` records the example names and shard sizes
  (and the calling tool's config); a rerun with a different example list or
  shard count is refused rather than mixed in;
* shows a progress bar (tqdm when installed, else a line on stderr).

``convert_dataset_splits`` converts the splits of a built-in dataset. The
tools' shared command line (the sharding flags, ``main``'s body) is
``tools/conversion_cli.py``: this module raises ``ValueError`` (``ConversionError``)
and knows no flags.

Labels are read with Pillow, which gives palette indices for palette PNGs and
raw values for grey ones (8 or 16 bit); OpenCV and TensorFlow would turn a
palette into colours.

Example:

>>> examples = examples_from_list("camvid/train.txt", "camvid/train", "camvid/trainannot")  # doctest: +SKIP
>>> result = convert_split(examples, "/tmp/camvid_tfrecord", "train", num_classes=11,
...                        ignore_label=255, label_fn=label_lut({11: 255}))         # doctest: +SKIP
>>> result.num_examples                                                               # doctest: +SKIP
367
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import os
import random
import re
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from deeplab_dpc.data import datasets, splits, tfrecord
from deeplab_dpc.data.splits import IMAGE_EXTENSIONS, LABEL_SUFFIX

LabelFn = Callable[[np.ndarray], np.ndarray]
LabelReader = Callable[[str], np.ndarray]

_log = logging.getLogger(__name__)


class ConversionError(ValueError):
    """A conversion input that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class SourceExample:
    """One example to convert.

    Args:
      image_path: the image file (PNG, JPEG or BMP).
      label_path: the label file, or None for an unlabelled example.
      name: the name stored in ``image/filename`` (DeepLab: the file stem).
    """

    image_path: str
    label_path: str | None
    name: str


@dataclasses.dataclass(frozen=True)
class ShardingConfig:
    """How a split is cut into shards and encoded.

    Args:
      num_shards: number of shards (at most one per example; sizes differ by
        at most one). Exclusive with ``examples_per_shard``.
      examples_per_shard: shard size instead (the last shard takes the rest).
      num_workers: encoding threads; None for the number of CPUs.
      shuffle_seed: if set, examples are shuffled with this seed before being
        cut into shards (so that shard-level shuffling mixes well); None keeps
        the listed order.
      progress: show a progress bar.
    """

    num_shards: int | None = None
    examples_per_shard: int | None = None
    num_workers: int | None = None
    shuffle_seed: int | None = None
    progress: bool = True

    def __post_init__(self):
        if self.num_shards is not None and self.examples_per_shard is not None:
            raise ValueError("give num_shards or examples_per_shard, not both")
        for field in ("num_shards", "examples_per_shard", "num_workers"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"{field} must be >= 1; got {value}")

    @classmethod
    def from_flags(
        cls, *, num_shards: int, examples_per_shard: int = 0, num_workers: int = 0,
        shuffle_seed: int | None = None, progress: bool = True,
    ) -> "ShardingConfig":
        """From command-line values where 0 means unset: ``examples_per_shard > 0`` wins over ``num_shards``."""
        if examples_per_shard < 0 or num_workers < 0:
            raise ValueError("examples_per_shard and num_workers must be >= 0")
        if examples_per_shard > 0:
            return cls(examples_per_shard=examples_per_shard, num_workers=num_workers or None,
                       shuffle_seed=shuffle_seed, progress=progress)
        return cls(num_shards=num_shards, num_workers=num_workers or None, shuffle_seed=shuffle_seed, progress=progress)


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What ``convert_split`` did."""

    split: str
    output_dir: str
    num_examples: int
    shard_paths: tuple[str, ...]
    shards_written: int
    shards_skipped: int
    examples_written: int
    seconds: float

    @property
    def examples_per_second(self) -> float:
        return self.examples_written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"{self.split}: {self.num_examples} examples in {len(self.shard_paths)} shards "
            f"({self.shards_written} written, {self.shards_skipped} already complete; "
            f"{self.examples_written} examples in {self.seconds:.1f} s, "
            f"{self.examples_per_second:.1f} examples/s) -> {self.output_dir}"
        )


# --------------------------------------------------------------------------- listing examples


def examples_from_list(
    list_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike | None,
    *,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    label_suffix: str = LABEL_SUFFIX,
) -> list[SourceExample]:
    """The examples a list file names (``splits.read_list``: the rules of every folder reader).

    Args:
      list_file: names or ``image label`` pairs, one per line (see ``splits``).
      image_dir: folder of images; a name takes the first of ``image_extensions`` that exists.
      label_dir: folder of ``<name><label_suffix>`` labels, or None for unlabelled examples.

    Raises:
      ConversionError: a missing list file, image or label (naming the list
        file, the line and the field); an empty list.
    """
    try:
        entries = splits.read_list(
            list_file, image_dir, label_dir, image_extensions=image_extensions, label_suffix=label_suffix
        )
    except (OSError, ValueError) as e:
        raise ConversionError(str(e)) from None
    return [SourceExample(entry.image_path, entry.label_path, entry.name) for entry in entries]


def examples_from_dirs(
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike | None,
    *,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    label_suffix: str = LABEL_SUFFIX,
) -> list[SourceExample]:
    """Every image of ``image_dir`` (sorted by name), paired with ``label_dir/<stem><label_suffix>``."""
    image_dir = os.fspath(image_dir)
    try:
        entries = sorted(os.listdir(image_dir))
    except OSError as e:
        raise ConversionError(f"cannot list image folder {image_dir}: {e}") from None
    examples = []
    for entry in entries:
        stem, ext = os.path.splitext(entry)
        if ext.lower() not in image_extensions or entry.startswith("."):
            continue
        label = splits.label_path(label_dir, stem, label_suffix) if label_dir is not None else None
        examples.append(SourceExample(os.path.join(image_dir, entry), label, stem))
    if not examples:
        raise ConversionError(f"no images ({', '.join(image_extensions)}) in {image_dir}")
    return examples


# --------------------------------------------------------------------------- labels


def read_label(path: str) -> np.ndarray:
    """Reads a label file as a 2-D array of raw values.

    Palette PNGs give their palette indices (PASCAL VOC's class ids), grey
    images their values (8 or 16 bit). Colour labels are refused.
    """
    from PIL import Image  # noqa: PLC0415 - Pillow is only needed to convert data

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr", "F"):
                raise ConversionError(
                    f"label {path} is a {mode} image; labels must hold class ids "
                    "(a single-channel or palette image)"
                )
            array = np.asarray(image)
    except ConversionError:
        raise
    except FileNotFoundError:
        raise ConversionError(f"label file {path} does not exist") from None
    except Exception as e:  # Pillow raises several types for bad files
        raise ConversionError(f"cannot decode label {path}: {e}") from None
    if array.dtype == bool:
        array = array.astype(np.uint8)
    return array


def label_lut(mapping: Mapping[int, int], *, default: int | None = None) -> LabelFn:
    """A label function that maps values through a table.

    Args:
      mapping: raw value -> class id (or ignore label), targets in 0..255.
      default: the target of values absent from ``mapping``; None leaves them
        unchanged (so that unexpected values are caught by the range check
        and reported with their file).
    """
    mapping = {int(k): int(v) for k, v in mapping.items()}
    table8 = splits.label_table(mapping, default=default, what="label_lut")

    def apply(label: np.ndarray) -> np.ndarray:
        label = np.asarray(label)
        if label.dtype == np.uint8:
            return table8[label]
        out = label.astype(np.int64) if default is None else np.full(label.shape, default, np.int64)
        for source, target in mapping.items():
            out[label == source] = target
        return out

    return apply


def check_label_values(label: np.ndarray, num_classes: int, ignore_label: int, path: str) -> None:
    """ConversionError naming ``path`` if a value is neither ``< num_classes`` nor ``ignore_label``."""
    values = np.asarray(label)
    bad = ((values < 0) | (values >= num_classes)) & (values != ignore_label)
    if bad.any():
        shown = np.unique(values[bad])[:8].tolist()
        raise ConversionError(
            f"label {path} holds values {shown} that are neither class ids < {num_classes} "
            f"nor the ignore label {ignore_label}"
        )


# --------------------------------------------------------------------------- encoding


def sniff_image_format(data: bytes) -> str | None:
    """``png``, ``jpeg`` or ``bmp`` from a file's first bytes; None if none of them."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def _decode_image_shape(data: bytes, path: str) -> tuple[int, int]:
    tf = tfrecord._tf()
    try:
        image = tfrecord.decode_image(data)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        message = getattr(e, "message", str(e)).strip().splitlines()[0]
        raise ConversionError(f"cannot decode image {path}: {message}") from None
    height, width = int(image.shape[0]), int(image.shape[1])
    return height, width


def encode_source(
    example: SourceExample,
    *,
    num_classes: int,
    ignore_label: int,
    label_fn: LabelFn | None = None,
    read_label_fn: LabelReader = read_label,
) -> bytes:
    """Reads, verifies and encodes one example into a serialized record.

    Raises:
      ConversionError: naming the file, for an unreadable or undecodable
        image or label, a size mismatch, or label values out of range.
    """
    import cv2  # noqa: PLC0415

    try:
        with open(example.image_path, "rb") as f:
            image_bytes = f.read()
    except OSError as e:
        raise ConversionError(f"cannot read image {example.image_path}: {e.strerror or e}") from None
    image_format = sniff_image_format(image_bytes)
    if image_format is None:
        raise ConversionError(f"image {example.image_path} is not a PNG, JPEG or BMP file")
    height, width = _decode_image_shape(image_bytes, example.image_path)

    label_png = None
    if example.label_path is not None:
        label = read_label_fn(example.label_path)
        if label_fn is not None:
            try:
                label = label_fn(label)
            except ConversionError:
                raise
            except Exception as e:
                raise ConversionError(f"label {example.label_path}: label conversion failed: {e!r}") from e
        label = np.asarray(label)
        if label.ndim == 3 and label.shape[-1] == 1:
            label = label[..., 0]
        if label.ndim != 2:
            raise ConversionError(f"label {example.label_path} has shape {label.shape}; expected [H, W]")
        if label.shape != (height, width):
            raise ConversionError(
                f"label {example.label_path} is {label.shape[0]}x{label.shape[1]} (HxW) but image "
                f"{example.image_path} is {height}x{width}"
            )
        check_label_values(label, num_classes, ignore_label, example.label_path)
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(label, dtype=np.uint8))
        if not ok:
            raise ConversionError(f"cannot encode label {example.label_path} as PNG")
        label_png = encoded.tobytes()

    return tfrecord.encode_example(
        image_bytes, label_png, example.name, image_format, height, width, channels=3, label_format="png"
    )


# --------------------------------------------------------------------------- sharding


def plan_shards(num_examples: int, *, num_shards: int | None = None, examples_per_shard: int | None = None) -> list[int]:
    """Sizes of consecutive shards; none is empty.

    With ``num_shards``: ``min(num_shards, num_examples)`` shards whose sizes
    differ by at most one. With ``examples_per_shard``: shards of that size,
    the last one takes the rest.

    >>> plan_shards(10, num_shards=4)
    [3, 3, 2, 2]
    >>> plan_shards(10, examples_per_shard=4)
    [4, 4, 2]
    """
    if num_examples < 1:
        raise ValueError(f"nothing to shard: {num_examples} examples")
    if (num_shards is None) == (examples_per_shard is None):
        raise ValueError("give exactly one of num_shards and examples_per_shard")
    if examples_per_shard is not None:
        if examples_per_shard < 1:
            raise ValueError(f"examples_per_shard must be >= 1; got {examples_per_shard}")
        full, rest = divmod(num_examples, examples_per_shard)
        return [examples_per_shard] * full + ([rest] if rest else [])
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1; got {num_shards}")
    count = min(num_shards, num_examples)
    base, extra = divmod(num_examples, count)
    return [base + 1] * extra + [base] * (count - extra)


def manifest_path(output_dir: str, split: str) -> str:
    """``<output_dir>/<split>.manifest.json`` (not matched by ``<split>-*``)."""
    return os.path.join(output_dir, f"{split}.manifest.json")


def _temp_name(final_name: str) -> str:
    return f".{final_name}.tmp-{os.getpid()}"


_TEMP_RE = re.compile(r"^\.(?P<final>.+)\.tmp-(?P<pid>\d+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temps(output_dir: str, split: str) -> None:
    for name in os.listdir(output_dir):
        match = _TEMP_RE.match(name)
        if not match:
            continue
        parsed = tfrecord.parse_shard_name(match["final"])
        if parsed is None or parsed[0] != split:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or not _pid_alive(pid):
            _log.info("removing a partial shard left by an interrupted run: %s", name)
            try:
                os.remove(os.path.join(output_dir, name))
            except FileNotFoundError:
                pass


def _write_json_atomic(path: str, data: Mapping[str, Any]) -> None:
    temp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(temp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(temp, path)


def _check_inputs(examples: Sequence[SourceExample]) -> None:
    seen: dict[str, str] = {}
    for example in examples:
        if example.name in seen:
            raise ConversionError(
                f"two examples are named {example.name!r}: {seen[example.name]} and {example.image_path}"
            )
        seen[example.name] = example.image_path
    for example in examples:
        if not os.path.isfile(example.image_path):
            raise ConversionError(f"image file {example.image_path} does not exist (example {example.name!r})")
        if example.label_path is not None and not os.path.isfile(example.label_path):
            raise ConversionError(
                f"label file {example.label_path} does not exist (for image {example.image_path})"
            )


class _Progress:
    """tqdm if installed, else a line on stderr every few seconds."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool):
        self._bar = None
        self._enabled = enabled
        self._done, self._total, self._desc = initial, total, desc
        self._last = 0.0
        if not enabled:
            return
        try:
            from tqdm import tqdm  # noqa: PLC0415
        except ImportError:
            return
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="ex", file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int = 1) -> None:
        self._done += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._enabled and (time.monotonic() - self._last > 2.0 or self._done == self._total):
            self._last = time.monotonic()
            sys.stderr.write(f"\r{self._desc}: {self._done}/{self._total} examples")
            if self._done == self._total:
                sys.stderr.write("\n")
            sys.stderr.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def convert_split(
    examples: Iterable[SourceExample],
    output_dir: str | os.PathLike,
    split: str,
    *,
    num_classes: int,
    ignore_label: int,
    label_fn: LabelFn | None = None,
    read_label_fn: LabelReader = read_label,
    sharding: ShardingConfig = ShardingConfig(num_shards=4),
    config: Mapping[str, Any] | None = None,
) -> ConversionResult:
    """Converts examples to ``<output_dir>/<split>-%05d-of-%05d.tfrecord`` shards.

    Args:
      examples: what to convert; names must be unique.
      output_dir: created if needed.
      split: split name used in the shard names.
      num_classes, ignore_label: the label values allowed.
      label_fn: raw label values -> class ids (applied after reading).
      read_label_fn: label file -> 2-D array of raw values (``read_label``
        unless a dataset needs another reader, e.g. SBD's .mat files).
      sharding: shard count or size, threads, shuffling, progress bar.
      config: the calling tool's resolved config, stored in the manifest.

    Returns:
      A ``ConversionResult``: shards written and skipped (already complete),
      timing.

    Raises:
      ConversionError: a bad input, naming the file; or an output folder
        that holds this split from a conversion with another example list or
        shard count. Shards completed before the error stay; rerunning
        finishes the job.
    """
    examples = list(examples)
    output_dir = os.fspath(output_dir)
    if not examples:
        raise ConversionError(f"no examples to convert for split {split!r}")
    if sharding.num_shards is None and sharding.examples_per_shard is None:
        raise ValueError("sharding needs num_shards or examples_per_shard")
    _check_inputs(examples)
    if sharding.shuffle_seed is not None:
        random.Random(sharding.shuffle_seed).shuffle(examples)
    sizes = plan_shards(len(examples), num_shards=sharding.num_shards, examples_per_shard=sharding.examples_per_shard)
    num_shards = len(sizes)
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    finals = [os.path.join(output_dir, tfrecord.shard_name(split, i, num_shards)) for i in range(num_shards)]

    os.makedirs(output_dir, exist_ok=True)
    manifest = {
        "split": split,
        "num_examples": len(examples),
        "num_shards": num_shards,
        "shard_sizes": sizes,
        "names_sha256": hashlib.sha256("\n".join(e.name for e in examples).encode("utf-8")).hexdigest(),
        "num_classes": num_classes,
        "ignore_label": ignore_label,
    }
    _check_resumable(output_dir, split, manifest)
    _remove_stale_temps(output_dir, split)
    _write_json_atomic(manifest_path(output_dir, split), {**manifest, "complete": False, "config": dict(config or {})})

    pending = [i for i in range(num_shards) if not os.path.isfile(finals[i])]
    skipped = num_shards - len(pending)
    to_write = sum(sizes[i] for i in pending)
    if skipped:
        _log.info("split %r: %d of %d shards already complete, writing %d", split, skipped, num_shards, len(pending))

    encode = lambda example: encode_source(  # noqa: E731
        example, num_classes=num_classes, ignore_label=ignore_label, label_fn=label_fn, read_label_fn=read_label_fn
    )
    workers = sharding.num_workers or os.cpu_count() or 1
    tfrecord._tf()  # import TensorFlow before the clock starts
    progress = _Progress(len(examples), len(examples) - to_write, split, sharding.progress)
    start_time = time.monotonic()
    try:
        if pending:
            _write_shards(examples, pending, starts, finals, encode, workers, progress)
    finally:
        progress.close()
    seconds = time.monotonic() - start_time
    _write_json_atomic(
        manifest_path(output_dir, split),
        {**manifest, "complete": True, "config": dict(config or {})},
    )
    return ConversionResult(
        split=split,
        output_dir=output_dir,
        num_examples=len(examples),
        shard_paths=tuple(finals),
        shards_written=len(pending),
        shards_skipped=skipped,
        examples_written=to_write,
        seconds=seconds,
    )


def _check_resumable(output_dir: str, split: str, manifest: Mapping[str, Any]) -> None:
    path = manifest_path(output_dir, split)
    existing_shards = [
        name for name in os.listdir(output_dir)
        if (parsed := tfrecord.parse_shard_name(name)) is not None and parsed[0] == split
    ]
    if not os.path.isfile(path):
        if existing_shards:
            raise ConversionError(
                f"{output_dir} already holds shards of split {split!r} ({existing_shards[0]}, ...) "
                f"but no {os.path.basename(path)}: convert into an empty folder or delete them"
            )
        return
    try:
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"cannot read {path}: {e}") from None
    for key in ("num_shards", "shard_sizes", "names_sha256", "num_classes", "ignore_label"):
        if previous.get(key) != manifest[key]:
            raise ConversionError(
                f"{output_dir} already holds split {split!r} converted with a different {key} "
                f"({previous.get(key)!r}, now {manifest[key]!r}; see {path}): "
                "convert into an empty folder or delete that split's shards and manifest"
            )


def _write_shards(examples, pending, starts, finals, encode, workers, progress) -> None:
    tf = tfrecord._tf()
    jobs = ((shard, index) for shard in pending for index in range(starts[shard], starts[shard + 1]))
    window: collections.deque = collections.deque()
    max_in_flight = max(2, 4 * workers)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="convert")

    def submit_next() -> None:
        job = next(jobs, None)
        if job is not None:
            window.append((job, pool.submit(encode, examples[job[1]])))

    writer = temp_path = None
    current = None
    try:
        for _ in range(max_in_flight):
            submit_next()
        while window:
            (shard, index), future = window.popleft()
            record = future.result()
            submit_next()
            if shard != current:
                current = shard
                final = finals[shard]
                temp_path = os.path.join(os.path.dirname(final), _temp_name(os.path.basename(final)))
                writer = tf.io.TFRecordWriter(temp_path)
            writer.write(record)
            progress.update(1)
            if index == starts[shard + 1] - 1:
                writer.close()
                writer = None
                _fsync(temp_path)
                os.replace(temp_path, finals[shard])
                temp_path = None
    except BaseException:
        for _, future in window:
            future.cancel()
        if writer is not None:
            writer.close()
        if temp_path is not None and os.path.exists(temp_path):
            os.remove(temp_path)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- the tools' shared parts


def convert_dataset_splits(
    splits: Iterable[str],
    list_examples: Callable[[str], Sequence[SourceExample]],
    dataset: datasets.DatasetDescriptor,
    config: Any,
    *,
    title: str,
    found: str = "examples listed",
    label_fn: LabelFn | None = None,
    read_label_fn: LabelReader = read_label,
) -> dict[str, ConversionResult]:
    """Lists and converts each split in turn, with the classes and ignore label of ``dataset``.

    Args:
      splits: the splits, converted in this order.
      list_examples: split -> its examples; called just before that split is
        converted.
      dataset: the number of classes, the ignore label and the expected
        split sizes.
      config: the tool's config dataclass: its ``output_dir`` and ``sharding``
        are used, and the whole of it is stored in each split's manifest.
      title, found: when ``dataset`` gives a size for a split and the listed
        examples are not that many, a warning ``"<title> <split>: <n>
        <found>, the descriptor says <size>"`` is logged.
      label_fn, read_label_fn: as for ``convert_split``.

    Returns:
      split -> its ``ConversionResult``.
    """
    results = {}
    for split in splits:
        examples = list_examples(split)
        expected = dataset.splits.get(split)
        if expected is not None and expected != len(examples):
            _log.warning("%s %s: %d %s, the descriptor says %d", title, split, len(examples), found, expected)
        results[split] = convert_split(
            examples,
            config.output_dir,
            split,
            num_classes=dataset.num_classes,
            ignore_label=dataset.ignore_label,
            label_fn=label_fn,
            read_label_fn=read_label_fn,
            sharding=config.sharding,
            config=dataclasses.asdict(config),
        )
    return results
