"""A data path without TensorFlow: NumPy/OpenCV readers, preprocessing, PyDataset.

For hosts that have JAX (or another Keras backend) but no TensorFlow: this
module never imports TensorFlow. Keras itself must then run on another
backend (``KERAS_BACKEND=jax`` or ``numpy``), since Keras' default backend is
TensorFlow.

Pieces:

* Readers producing the project's sample dictionary (``image`` uint8
  ``[H, W, 3]`` RGB, ``label`` uint8 ``[H, W, 1]`` when labelled,
  ``image_name``, ``height``, ``width``):

  - ``FolderSource``: image and label folders plus a list file, in the
    ``segnet`` or ``voc`` layout or explicit folders; list files, image
    endings and label paths are ``splits.py``'s, shared with tf.data and the
    TFRecord conversion.
  - ``TFRecordSource``: the DeepLab TFRecord shards training reads, parsed
    in pure Python (``tfrecord.parse_example``).
  - ``NpzSource``: one ``.npz`` file, read with ``allow_pickle=False``
    (object arrays are refused). See ``write_npz`` for the formats.

  Label files must hold class indices in one channel (8-bit PNG); colour or
  palette PNGs are refused, as DeepLab's ``remove_gt_colormap.py`` requires.

* ``preprocess_numpy``: ``preprocess.preprocess_sample`` in NumPy/OpenCV,
  with the same ``PreprocessConfig``, size arithmetic and flip probability
  (``augmentation.py``), the same padding and crop rules. Resizing: ``cv2.INTER_LINEAR`` for images (half-pixel centres,
  like ``tf.image.resize``; the two differ by float rounding, below 5e-3 on
  the 0-255 scale, because OpenCV and TF accumulate the weights differently);
  labels by index arrays computed with TF's own float32 formula, so they are
  bit-identical to TF's nearest (``cv2.INTER_NEAREST`` uses another
  pixel-centre convention and disagrees on most pixels;
  ``cv2.INTER_NEAREST_EXACT`` agrees except where a sample falls exactly on
  a pixel boundary). Without resizing (evaluation without
  ``min_resize_value``) both paths are bit-identical.
  Random draws come from NumPy, not TF: in training the two paths apply the
  same kinds of augmentation but not the same crops.

* ``SegmentationPyDataset``: a ``keras.utils.PyDataset`` yielding
  ``(images float32 [B, h, w, 3], labels int32 [B, h, w, 1])`` (or dicts with
  names for evaluation/visualisation). Each batch is a pure function of
  ``(seed, epoch, index)``: the epoch's order is a permutation drawn from
  ``(seed, epoch)`` and each sample's augmentation from
  ``(seed, epoch, position)``, so batches do not depend on which worker makes
  them. ``workers > 1`` with ``use_multiprocessing=False`` runs Keras' thread
  pool; OpenCV's decode and resize release the GIL, so threads can use
  several cores. Prefer threads: forking a process that has initialised JAX
  (or TF) can deadlock, since the child inherits locks held by the parent's
  runtime threads.

Images decode to the same pixels as the TF readers: PNG is lossless, and
``tfrecord.decode_image`` decodes JPEGs with the accurate integer IDCT that
OpenCV uses.
"""

from __future__ import annotations

import math
import os
import pathlib
import threading
import zipfile
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np

from deeplab_dpc.fileio import atomic_path

try:
    import keras
except ImportError as error:  # Keras' default backend is TensorFlow.
    raise ImportError(
        "numpy_loader needs Keras; on a host without TensorFlow set KERAS_BACKEND=jax (or numpy) "
        f"before importing it ({error})"
    ) from error

from deeplab_dpc.data.augmentation import (
    FLIP_PROBABILITY,
    MEAN_PIXEL,
    PreprocessConfig,
    resize_to_range_size,
    scaled_size,
)
from deeplab_dpc.data.splits import Entry, read_list, remap_table, split_entries

# ---------------------------------------------------------------------------
# Decoding.


def decode_image(data: bytes | np.ndarray, what: str = "image") -> np.ndarray:
    """Encoded bytes (PNG, JPEG, ...) -> uint8 RGB ``[H, W, 3]``.

    EXIF orientation is ignored, as TensorFlow's decoders do.
    """
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if image is None:
        raise ValueError(f"{what}: cannot decode image bytes")
    if image.dtype != np.uint8:
        raise ValueError(f"{what}: expected an 8-bit image, got {image.dtype}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_label(data: bytes | np.ndarray, what: str = "label") -> np.ndarray:
    """Encoded single-channel class-index PNG -> uint8 ``[H, W, 1]``."""
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data.reshape(-1)
    label = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION) if buf.size else None
    if label is None:
        raise ValueError(f"{what}: cannot decode label bytes")
    if label.ndim == 3 and label.shape[2] != 1:
        raise ValueError(
            f"{what}: label has {label.shape[2]} channels; expected a single-channel "
            "class-index PNG (convert colour/palette labels to indices first)"
        )
    if label.dtype != np.uint8:
        raise ValueError(f"{what}: expected an 8-bit label, got {label.dtype}")
    return label.reshape(label.shape[0], label.shape[1], 1)


def _sample(image: np.ndarray, label: np.ndarray | None, name: str) -> dict[str, Any]:
    if label is not None and label.shape[:2] != image.shape[:2]:
        raise ValueError(f"{name}: image {image.shape[:2]} and label {label.shape[:2]} sizes differ")
    sample = {"image": image, "image_name": name, "height": image.shape[0], "width": image.shape[1]}
    if label is not None:
        sample["label"] = label
    return sample


# ---------------------------------------------------------------------------
# Folder + list file reader.


class FolderSource:
    """Random access to listed image/label files as sample dictionaries.

    Example:
        >>> source = FolderSource.from_split("../shared/data/camvid", "val")  # doctest: +SKIP
        >>> source[0]["image"].shape  # doctest: +SKIP
        (360, 480, 3)
    """

    def __init__(self, entries: Sequence[Entry], *, label_remap: Mapping[int, int] | None = None):
        if not entries:
            raise ValueError("FolderSource needs at least one entry")
        self.entries = list(entries)
        self._lut = remap_table(label_remap)

    @classmethod
    def from_split(
        cls, root, split, *, layout: str = "auto", labels: bool = True, label_remap=None
    ) -> "FolderSource":
        return cls(split_entries(root, split, layout=layout, labels=labels), label_remap=label_remap)

    @classmethod
    def from_list(cls, list_file, image_dir, label_dir=None, *, label_remap=None, **kwargs) -> "FolderSource":
        return cls(read_list(list_file, image_dir, label_dir, **kwargs), label_remap=label_remap)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        image = decode_image(pathlib.Path(entry.image_path).read_bytes(), entry.image_path)
        label = None
        if entry.label_path is not None:
            label = decode_label(pathlib.Path(entry.label_path).read_bytes(), entry.label_path)
            if self._lut is not None:
                label = self._lut[label]
        return _sample(image, label, entry.name)


# ---------------------------------------------------------------------------
# TFRecord reader (pure Python, via tfrecord.parse_example).


def _record_offsets(path: str) -> list[tuple[int, int]]:
    """``(data offset, length)`` of each record of a TFRecord file, from its headers."""
    offsets = []
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        position = 0
        while position < size:
            header = f.read(12)
            if len(header) < 12:
                raise ValueError(f"{path}: truncated record header at byte {position}")
            length = int.from_bytes(header[:8], "little")
            if position + 16 + length > size:
                raise ValueError(f"{path}: truncated record at byte {position}")
            offsets.append((position + 12, length))
            position += 16 + length
            f.seek(position)
    return offsets


class TFRecordSource:
    """Random access to DeepLab TFRecord shards without TensorFlow.

    Indexes the records of ``<split>-*-of-*.tfrecord`` by their headers, then
    reads one record per access and parses it with ``tfrecord.parse_example``
    (pure Python). Checksums are not verified here; ``tfrecord.py`` and the
    TF reader do that.
    """

    def __init__(self, dataset_dir, split: str, *, label_remap: Mapping[int, int] | None = None):
        from deeplab_dpc.data import tfrecord  # noqa: PLC0415 (pure Python at import)

        self._tfrecord = tfrecord
        self._index = [
            (path, offset, length)
            for path in tfrecord.shard_paths(dataset_dir, split)
            for offset, length in _record_offsets(path)
        ]
        if not self._index:
            raise ValueError(f"no records of split {split!r} in {dataset_dir}")
        self._lut = remap_table(label_remap)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, offset, length = self._index[index]
        with open(path, "rb") as f:
            f.seek(offset)
            record = self._tfrecord.parse_example(f.read(length))
        what = f"{path} record {index}"
        name = record.get(self._tfrecord.IMAGE_FILENAME, b"")
        name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
        image = decode_image(record[self._tfrecord.IMAGE_ENCODED], what)
        label = None
        if record.get(self._tfrecord.LABEL_ENCODED):
            label = decode_label(record[self._tfrecord.LABEL_ENCODED], what + " label")
            if self._lut is not None:
                label = self._lut[label]
        return _sample(image, label, name)


# ---------------------------------------------------------------------------
# Packed .npz reader.


def write_npz(
    path: str | os.PathLike,
    images: Sequence[bytes],
    labels: Sequence[bytes] | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """Packs encoded images (and label PNGs) into one ``.npz``, no pickle, written atomically.

    Format "concatenated bytes": ``image_bytes`` uint8 ``[total]`` and
    ``image_offsets`` int64 ``[N + 1]`` (example i is
    ``image_bytes[offsets[i]:offsets[i + 1]]``), the same for ``label_*``, and
    ``names`` (unicode ``[N]``). ``NpzSource`` also reads decoded arrays
    (``images`` uint8 ``[N, H, W, 3]``, ``labels`` ``[N, H, W(, 1)]``) and
    fixed-width byte strings (``images`` of dtype ``S``; NumPy strips trailing
    NUL bytes from those, harmless for PNG and JPEG, which never end in one).
    """

    def pack(blobs):
        blobs = [bytes(b) for b in blobs]
        offsets = np.zeros(len(blobs) + 1, np.int64)
        offsets[1:] = np.cumsum([len(b) for b in blobs])
        return np.frombuffer(b"".join(blobs), np.uint8), offsets

    arrays = {}
    arrays["image_bytes"], arrays["image_offsets"] = pack(images)
    if labels is not None:
        if len(labels) != len(images):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        arrays["label_bytes"], arrays["label_offsets"] = pack(labels)
    if names is not None:
        if len(names) != len(images):
            raise ValueError(f"{len(images)} images but {len(names)} names")
        arrays["names"] = np.asarray(list(names), dtype=np.str_)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would add ".npz" to a name
        np.savez(f, **arrays)


class NpzSource:
    """Random access to a packed ``.npz`` (see ``write_npz``) as sample dicts.

    The file is read with ``np.load(..., allow_pickle=False)``; an array of
    Python objects raises ``ValueError`` naming the file and the array.
    """

    def __init__(self, path: str | os.PathLike, *, label_remap: Mapping[int, int] | None = None):
        self.path = str(path)
        self._lut = remap_table(label_remap)
        if not os.path.isfile(self.path):
            raise FileNotFoundError(f"npz file not found: {self.path}")
        with open(self.path, "rb") as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive (empty or not)
                raise ValueError(f"{self.path}: not an .npz (zip) archive; pack splits with tools/build_npz_data.py")
        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(self.path, allow_pickle=False) as npz:
                for key in npz.files:
                    try:
                        arrays[key] = npz[key]
                    except ValueError as error:
                        raise ValueError(
                            f"{self.path}: array {key!r} holds Python objects (pickle), refused; store "
                            "encoded bytes as uint8 + offsets (write_npz) or decoded uint8 arrays"
                        ) from error
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise ValueError(f"{self.path}: truncated or corrupt .npz ({error}); pack it again") from error
        self._images, self._image_encoded = self._table(arrays, "image")
        if self._images is None:
            raise ValueError(
                f"{self.path}: no images; expected 'images' or 'image_bytes' + 'image_offsets' "
                f"(arrays present: {sorted(arrays)})"
            )
        self._labels, self._label_encoded = self._table(arrays, "label")
        n = len(self._images)
        if self._labels is not None and len(self._labels) != n:
            raise ValueError(f"{self.path}: {n} images but {len(self._labels)} labels")
        if "names" in arrays:
            names = arrays["names"]
            if names.shape != (n,):
                raise ValueError(f"{self.path}: 'names' has shape {names.shape}, expected ({n},)")
            self.names = [x.decode() if isinstance(x, bytes) else str(x) for x in names.tolist()]
        else:
            self.names = [f"{i:06d}" for i in range(n)]

    def _table(self, arrays, kind):
        """(sequence of per-example items, encoded?) for 'image' or 'label'."""
        plural = kind + "s"
        if kind + "_bytes" in arrays or kind + "_offsets" in arrays:
            data, offsets = arrays.get(kind + "_bytes"), arrays.get(kind + "_offsets")
            if data is None or offsets is None:
                raise ValueError(f"{self.path}: '{kind}_bytes' and '{kind}_offsets' go together")
            if data.dtype != np.uint8 or data.ndim != 1:
                raise ValueError(f"{self.path}: '{kind}_bytes' must be 1-D uint8, got {data.dtype} {data.shape}")
            if offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1:
                raise ValueError(f"{self.path}: '{kind}_offsets' must be 1-D integers")
            if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
                raise ValueError(f"{self.path}: '{kind}_offsets' do not partition '{kind}_bytes'")
            return [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)], True
        if plural not in arrays:
            return None, False
        array = arrays[plural]
        if array.dtype.kind == "S":
            if array.ndim != 1:
                raise ValueError(f"{self.path}: encoded '{plural}' must be 1-D, got shape {array.shape}")
            return array, True
        if array.dtype != np.uint8:
            raise ValueError(f"{self.path}: '{plural}' must be uint8 (or encoded bytes), got {array.dtype}")
        if kind == "image" and (array.ndim != 4 or array.shape[-1] != 3):
            raise ValueError(f"{self.path}: 'images' must be [N, H, W, 3], got {array.shape}")
        if kind == "label":
            if array.ndim == 3:
                array = array[..., np.newaxis]
            if array.ndim != 4 or array.shape[-1] != 1:
                raise ValueError(f"{self.path}: 'labels' must be [N, H, W] or [N, H, W, 1], got {array.shape}")
        return array, False

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        name = self.names[index]
        what = f"{self.path}[{index}]"
        item = self._images[index]
        image = decode_image(item, what) if self._image_encoded else np.asarray(item)
        label = None
        if self._labels is not None:
            item = self._labels[index]
            label = decode_label(item, what + " label") if self._label_encoded else np.asarray(item)
            if self._lut is not None:
                label = self._lut[label]
        return _sample(image, label, name)


# ---------------------------------------------------------------------------
# Preprocessing.


def _resize(image: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    if image.shape[:2] == tuple(size):
        return image
    out = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return out.reshape(size[0], size[1], image.shape[2])


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output pixel, as TF's half-pixel nearest computes it.

    ``min(floor((x + 0.5) * (in / out)), in - 1)`` in float32, so that labels
    match ``tf.image.resize(..., "nearest")`` bit for bit; OpenCV's
    ``INTER_NEAREST_EXACT`` uses the same rule in fixed point and differs where
    ``(x + 0.5) * in / out`` is an integer.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor((np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
    return np.minimum(index, in_size - 1)


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W, C]`` to ``size``, identical to TF's."""
    if label.shape[:2] == tuple(size):
        return label
    rows = _nearest_indices(label.shape[0], size[0])
    cols = _nearest_indices(label.shape[1], size[1])
    return label[rows[:, None], cols[None, :]]


def _resize_pair(image, label, size):
    image = _resize(image, size, cv2.INTER_LINEAR)
    if label is not None:
        label = resize_label(label, size)
    return image, label


def preprocess_numpy(
    sample: dict[str, Any],
    config: PreprocessConfig,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """``preprocess.preprocess_sample`` in NumPy/OpenCV (same keys, dtypes, shapes).

    Args:
        sample: ``image`` uint8 ``[H, W, 3]``, optional ``label`` ``[H, W, 1]``
            (required for training), optional ``image_name``, ``height``,
            ``width``.
        config: the ``PreprocessConfig``.
        rng: random generator for training augmentation (None: a fresh,
            unseeded one).
    """
    if "image" not in sample:
        raise ValueError(f"sample has no 'image' key (keys: {sorted(sample)})")
    image_in = np.asarray(sample["image"])
    if image_in.ndim != 3 or image_in.shape[2] != 3:
        raise ValueError(f"'image' must be [height, width, 3], got shape {image_in.shape}")
    label = sample.get("label")
    if config.is_training and label is None:
        raise ValueError("training preprocessing needs a 'label' in the sample")
    if label is not None:
        label = np.asarray(label)
        if label.ndim == 2:
            label = label[..., np.newaxis]
        if label.ndim != 3 or label.shape[2] != 1:
            raise ValueError(f"'label' must be [height, width, 1], got shape {label.shape}")
        if label.shape[:2] != image_in.shape[:2]:
            raise ValueError(f"image {image_in.shape[:2]} and label {label.shape[:2]} sizes differ")
        if label.dtype.kind not in "iu":
            raise ValueError(f"'label' must hold integers, got {label.dtype}")

    out: dict[str, Any] = {
        "image_name": sample.get("image_name", ""),
        "height": int(sample.get("height", image_in.shape[0])),
        "width": int(sample.get("width", image_in.shape[1])),
    }
    image = image_in.astype(np.float32)
    original_image = image_in
    if config.resizes_to_range:
        size = resize_to_range_size(
            image.shape[0], image.shape[1], config.min_resize_value, config.max_resize_value, config.resize_factor
        )
        image, label = _resize_pair(image, label, size)
        original_image = image

    crop_h, crop_w = config.crop_size
    if config.is_training:
        rng = rng if rng is not None else np.random.default_rng()
        factors = config.scale_factors
        if factors is None:
            scale = rng.uniform(config.min_scale_factor, config.max_scale_factor)
        else:
            scale = factors[rng.integers(len(factors))] if len(factors) > 1 else factors[0]
        image, label = _resize_pair(image, label, scaled_size(image.shape[0], image.shape[1], scale))
        padded_h, padded_w = max(image.shape[0], crop_h), max(image.shape[1], crop_w)
        top = int(rng.integers(padded_h - crop_h + 1))
        left = int(rng.integers(padded_w - crop_w + 1))
        flip = rng.random() < FLIP_PROBABILITY
    else:
        top = left = 0
        flip = False

    # Pad bottom/right, then crop: only the overlap is copied.
    h = max(min(image.shape[0] - top, crop_h), 0)
    w = max(min(image.shape[1] - left, crop_w), 0)
    out_image = np.full((crop_h, crop_w, 3), MEAN_PIXEL, np.float32)
    out_image[:h, :w] = image[top : top + h, left : left + w]
    if flip:
        out_image = out_image[:, ::-1]
    out["image"] = np.ascontiguousarray(out_image)
    if label is not None:
        out_label = np.full((crop_h, crop_w, 1), config.ignore_label, np.int32)
        out_label[:h, :w] = label[top : top + h, left : left + w]
        if flip:
            out_label = out_label[:, ::-1]
        out["label"] = np.ascontiguousarray(out_label)
    if not config.is_training:
        if original_image.dtype != np.uint8:
            original_image = np.clip(np.round(original_image), 0, 255).astype(np.uint8)
        out["original_image"] = original_image
    return out


# ---------------------------------------------------------------------------
# Batches for Keras.


def _stack_padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Stacks arrays, zero-padding bottom/right to the largest (like padded_batch)."""
    shape = tuple(max(a.shape[d] for a in arrays) for d in range(arrays[0].ndim))
    if all(a.shape == shape for a in arrays):
        return np.stack(arrays)
    out = np.zeros((len(arrays),) + shape, arrays[0].dtype)
    for i, a in enumerate(arrays):
        out[(i,) + tuple(slice(0, s) for s in a.shape)] = a
    return out


class SegmentationPyDataset(keras.utils.PyDataset):
    """Batches of preprocessed samples for ``model.fit`` / ``evaluate``.

    Args:
        source: a ``FolderSource``, ``NpzSource`` or any sequence of sample
            dicts (``len`` and ``[i]``).
        config: the ``PreprocessConfig`` (training augmentation when
            ``config.is_training``).
        batch_size: examples per batch.
        seed: makes the order and augmentation of every epoch reproducible;
            None draws one (kept in ``self.seed``).
        shuffle: reorder each epoch; default ``config.is_training``.
        drop_remainder: drop a last, smaller batch; default
            ``config.is_training``.
        as_tuple: yield ``(images, labels)``; False yields the sample dicts
            batched (``image``, ``label``, ``image_name``, ``height``,
            ``width``, ``original_image`` zero-padded to the largest).
        workers, use_multiprocessing, max_queue_size: Keras' ``PyDataset``
            arguments. Use threads (the default) rather than processes under
            JAX.

    Example:
        >>> ds = SegmentationPyDataset(source, PreprocessConfig((360, 480)), 8,
        ...                            seed=0, workers=2)  # doctest: +SKIP
        >>> model.fit(ds, epochs=1)  # doctest: +SKIP
    """

    def __init__(
        self,
        source,
        config: PreprocessConfig,
        batch_size: int,
        *,
        seed: int | None = None,
        shuffle: bool | None = None,
        drop_remainder: bool | None = None,
        as_tuple: bool = True,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        if not isinstance(config, PreprocessConfig):
            raise TypeError(f"config must be a PreprocessConfig, got {type(config).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.source = source
        self.config = config
        self.batch_size = int(batch_size)
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.shuffle = config.is_training if shuffle is None else bool(shuffle)
        self.drop_remainder = config.is_training if drop_remainder is None else bool(drop_remainder)
        self.as_tuple = as_tuple
        self.epoch = 0
        self._lock = threading.Lock()
        self._orders: dict[int, np.ndarray] = {}
        n = len(source)
        if n == 0 or (self.drop_remainder and n < self.batch_size):
            raise ValueError(f"source has {n} examples: not enough for one batch of {self.batch_size}")

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_remainder else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order and augmentation ``[i]`` returns."""
        self.epoch = int(epoch)

    def on_epoch_end(self) -> None:
        # Keras stops its workers before calling this (and starts them before
        # ``on_epoch_begin``, which is therefore not used), so no batch of the
        # next epoch is made with the old counter. Keras also calls it once
        # when ``fit`` starts (``EpochIterator.reset``): fit's first epoch then
        # uses epoch 1. The sequence is the same from run to run, which is
        # what reproducibility needs.
        self.epoch += 1

    def order(self, epoch: int) -> np.ndarray:
        """Source indices in the order of ``epoch``."""
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                n = len(self.source)
                if self.shuffle:
                    order = np.random.default_rng([self.seed, epoch, 0]).permutation(n)
                else:
                    order = np.arange(n)
                self._orders = {epoch: order}  # keep only the current epoch
        return order

    def sample(self, position: int, epoch: int | None = None) -> dict[str, Any]:
        """The preprocessed sample at ``position`` of ``epoch`` (default: current)."""
        epoch = self.epoch if epoch is None else epoch
        index = int(self.order(epoch)[position])
        rng = np.random.default_rng([self.seed, epoch, 1, position])
        return preprocess_numpy(self.source[index], self.config, rng)

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        epoch = self.epoch
        start = index * self.batch_size
        stop = min(start + self.batch_size, len(self.source))
        samples = [self.sample(p, epoch) for p in range(start, stop)]
        if self.as_tuple:
            if "label" not in samples[0]:
                raise ValueError("as_tuple=True needs labelled examples; use as_tuple=False")
            return np.stack([s["image"] for s in samples]), np.stack([s["label"] for s in samples])
        batch = {
            "image": np.stack([s["image"] for s in samples]),
            "image_name": np.array([s["image_name"] for s in samples], dtype=np.str_),
            "height": np.array([s["height"] for s in samples], np.int32),
            "width": np.array([s["width"] for s in samples], np.int32),
        }
        if "label" in samples[0]:
            batch["label"] = np.stack([s["label"] for s in samples])
        if "original_image" in samples[0]:
            batch["original_image"] = _stack_padded([s["original_image"] for s in samples])
        return batch


def iterate_batches(dataset: SegmentationPyDataset, epochs: int = 1) -> Iterable:
    """Yields the batches of ``epochs`` epochs in order (no Keras machinery)."""
    for _ in range(epochs):
        for i in range(len(dataset)):
            yield dataset[i]
        dataset.on_epoch_end()
