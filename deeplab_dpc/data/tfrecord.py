"""DeepLab's TFRecord format: writing examples, finding shards, reading them.

Each record is a serialized ``tf.train.Example`` with DeepLab's keys
(``datasets/build_data.py``):

==================================  ==========================================
``image/encoded``                   the image file's original bytes
``image/filename``                  example name (file stem), bytes
``image/format``                    ``png`` | ``jpeg`` | ...
``image/height``, ``image/width``   int64
``image/channels``                  int64, 3
``image/segmentation/class/encoded``  8-bit PNG of class ids
``image/segmentation/class/format``   ``png``
==================================  ==========================================

An unlabelled example (a test split) has no ``image/segmentation/class/*``
features at all. Shards are named ``<split>-%05d-of-%05d.tfrecord``; a shard is
only ever visible under that name once it is complete (the writer in
``conversion.py`` writes under a hidden temporary name and renames).

Two readers:

* ``read_records`` / ``decode_example``: tf.data, TF ops, for training;
* ``iterate_records``: pure Python (no TensorFlow import), yielding the raw
  feature values of each record, for tests, tools and TensorFlow-free hosts.

TensorFlow is imported only by the functions that need it.

Example:

>>> paths = shard_paths("/data/camvid_tfrecord", "train")   # doctest: +SKIP
>>> record = next(iterate_records(paths[0]))                 # doctest: +SKIP
>>> record["image/height"], record["image/filename"]         # doctest: +SKIP
(360, b'0001TP_006690')
"""

from __future__ import annotations

import logging
import os
import re
import struct
from typing import Any, Iterator

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"

SHARD_SUFFIX = ".tfrecord"

# DeepLab's map from file format names to the names stored in records.
_FORMAT_NAMES = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "bmp": "bmp", "gif": "gif"}

_log = logging.getLogger(__name__)


def _tf():
    import tensorflow as tf  # noqa: PLC0415 - kept out of import time on purpose

    return tf


# --------------------------------------------------------------------------- shard names


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-%05d-of-%05d.tfrecord``, DeepLab's shard name."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} outside 0..{num_shards - 1}")
    return f"{split}-{index:05d}-of-{num_shards:05d}{SHARD_SUFFIX}"


_SHARD_RE = re.compile(r"^(?P<split>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})" + re.escape(SHARD_SUFFIX) + "$")


def parse_shard_name(filename: str) -> tuple[str, int, int] | None:
    """``(split, index, num_shards)`` of a shard file name, or None."""
    match = _SHARD_RE.match(os.path.basename(filename))
    if match is None:
        return None
    return match["split"], int(match["index"]), int(match["total"])


def shard_paths(dataset_dir: str | os.PathLike, split: str) -> list[str]:
    """The complete shards of ``split`` in ``dataset_dir``, sorted by index.

    Only files under the final shard name are returned; a shard still being
    written has a hidden temporary name and is never seen here. If fewer than
    the announced ``-of-N`` shards are present (an interrupted conversion) a
    warning is logged and the present ones are returned.

    Raises:
      FileNotFoundError: no shard of ``split`` (the message names the folder,
        the split, and the splits that are there).
      ValueError: shards of the split announce different totals (two
        conversions with different shard counts mixed in one folder).
    """
    dataset_dir = os.fspath(dataset_dir)
    try:
        names = os.listdir(dataset_dir)
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset folder {dataset_dir} does not exist (looking for split {split!r})") from None
    found: list[tuple[int, int, str]] = []
    other_splits: set[str] = set()
    for name in names:
        parsed = parse_shard_name(name)
        if parsed is None:
            continue
        if parsed[0] == split:
            found.append((parsed[1], parsed[2], os.path.join(dataset_dir, name)))
        else:
            other_splits.add(parsed[0])
    if not found:
        there = f"; splits found there: {', '.join(sorted(other_splits))}" if other_splits else ""
        raise FileNotFoundError(
            f"no TFRecord shards of split {split!r} in {dataset_dir} "
            f"(expected files named {split}-00000-of-NNNNN{SHARD_SUFFIX}){there}"
        )
    totals = sorted({total for _, total, _ in found})
    if len(totals) > 1:
        raise ValueError(
            f"shards of split {split!r} in {dataset_dir} announce different totals {totals}: "
            "two conversions were mixed in one folder"
        )
    found.sort()
    if len(found) < totals[0]:
        _log.warning(
            "split %r in %s: only %d of %d shards are complete (interrupted conversion?)",
            split, dataset_dir, len(found), totals[0],
        )
    return [path for _, _, path in found]


# --------------------------------------------------------------------------- writing


def normalize_format(image_format: str) -> str:
    """DeepLab's stored format name: ``jpg`` -> ``jpeg``; ValueError if unknown."""
    try:
        return _FORMAT_NAMES[image_format.lower()]
    except KeyError:
        raise ValueError(f"unsupported image format {image_format!r}; supported: {', '.join(sorted(_FORMAT_NAMES))}") from None


def encode_example(
    image_bytes: bytes,
    label_bytes: bytes | None,
    filename: str,
    image_format: str,
    height: int,
    width: int,
    channels: int = 3,
    label_format: str = "png",
) -> bytes:
    """A serialized ``tf.train.Example`` with DeepLab's keys.

    Args:
      image_bytes: the encoded image file, stored unchanged.
      label_bytes: the encoded label (a PNG of class ids); None or empty for
        an unlabelled example, whose record then has no label features.
      filename: example name (DeepLab stores the file stem).
      image_format: ``png``, ``jpeg`` (or ``jpg``), ``bmp``, ``gif``.
      height, width, channels: the decoded image's shape.
      label_format: format of ``label_bytes``.
    """
    tf = _tf()
    if height <= 0 or width <= 0:
        raise ValueError(f"{filename}: image size must be positive; got {height}x{width}")

    def _bytes(value: bytes) -> Any:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def _int(value: int) -> Any:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))

    feature = {
        IMAGE_ENCODED: _bytes(image_bytes),
        IMAGE_FILENAME: _bytes(filename.encode("utf-8")),
        IMAGE_FORMAT: _bytes(normalize_format(image_format).encode("ascii")),
        IMAGE_HEIGHT: _int(height),
        IMAGE_WIDTH: _int(width),
        IMAGE_CHANNELS: _int(channels),
    }
    if label_bytes:
        feature[LABEL_ENCODED] = _bytes(label_bytes)
        feature[LABEL_FORMAT] = _bytes(label_format.encode("ascii"))
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString()


# --------------------------------------------------------------------------- tf.data reading


def _feature_spec(tf) -> dict[str, Any]:
    return {
        IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
        IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
        IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
        IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
        IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
        LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
        LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
    }


def decode_image(encoded):
    """Decodes image bytes to uint8 ``[H, W, 3]`` RGB with TF ops, as OpenCV and Pillow do.

    ``tf.io.decode_image(channels=3, expand_animations=False)``, except that
    JPEGs are decoded with the accurate integer IDCT (``INTEGER_ACCURATE``,
    libjpeg's ISLOW): TensorFlow's default is the fast IDCT, which differs
    from OpenCV's and Pillow's decode of the same file by up to ~5 levels, so
    a TensorFlow-free loader would see other pixels.
    """
    tf = _tf()
    encoded = tf.convert_to_tensor(encoded, dtype=tf.string)
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def decode_example(serialized, *, with_label: bool | None = None) -> dict[str, Any]:
    """Parses and decodes one record with TF ops (usable inside ``tf.data``).

    Args:
      serialized: scalar string tensor, one serialized ``tf.train.Example``.
      with_label: whether to decode the label. None decides by the record when
        run eagerly (no label bytes -> no ``"label"`` key); inside a traced
        function (``Dataset.map``) the structure must be fixed, so None means
        True there, and a record without label bytes then fails with a clear
        message. ``read_records`` looks at the split's first record and passes
        the right value.

    Returns:
      A dict: ``"image"`` uint8 ``[H, W, 3]`` (``decode_image``:
      ``tf.io.decode_image``, channels=3, no animation; JPEGs with the
      accurate IDCT, pixel-identical to OpenCV), ``"label"`` uint8 ``[H, W, 1]`` (left out for
      unlabelled records), ``"image_name"`` string, ``"height"`` and
      ``"width"`` int32 (of the decoded image).
    """
    tf = _tf()
    parsed = tf.io.parse_single_example(serialized, _feature_spec(tf))
    image = decode_image(parsed[IMAGE_ENCODED])
    shape = tf.shape(image)
    sample = {
        "image": image,
        "image_name": parsed[IMAGE_FILENAME],
        "height": shape[0],
        "width": shape[1],
    }
    label_bytes = parsed[LABEL_ENCODED]
    if with_label is None:
        with_label = bool(tf.strings.length(label_bytes) > 0) if tf.executing_eagerly() else True
    if with_label:
        has_label = tf.debugging.Assert(
            tf.strings.length(label_bytes) > 0,
            ["record has no label (image/segmentation/class/encoded is empty); pass with_label=False "
             "for unlabelled splits. Record:", parsed[IMAGE_FILENAME]],
        )
        with tf.control_dependencies([has_label]):
            label = tf.io.decode_image(label_bytes, channels=1, dtype=tf.uint8, expand_animations=False)
        label.set_shape([None, None, 1])
        same_size = tf.debugging.Assert(
            tf.reduce_all(tf.equal(tf.shape(label)[:2], shape[:2])),
            ["label and image sizes differ in record", parsed[IMAGE_FILENAME], tf.shape(label), shape],
        )
        with tf.control_dependencies([same_size]):
            sample["label"] = tf.identity(label)
    return sample


def read_records(dataset_dir: str | os.PathLike, split: str, *, shuffle_files: bool = False, seed: int | None = None):
    """A ``tf.data.Dataset`` of decoded examples (dicts, see ``decode_example``).

    Shards are read in parallel (an interleave over the files) and records
    decoded in parallel, both with AUTOTUNE. Without ``shuffle_files`` the
    order is fixed from run to run; with it, the shard order is reshuffled
    each epoch (``seed`` makes that reproducible). Shuffling examples, batching
    and augmentation belong to the input pipeline.

    Whether examples carry a ``"label"`` is decided from the split's first
    record (a test split converted without labels has none).
    """
    tf = _tf()
    files = shard_paths(dataset_dir, split)
    with_label = _first_record_has_label(files)
    ds = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.map(lambda s: decode_example(s, with_label=with_label), num_parallel_calls=tf.data.AUTOTUNE)


def _first_record_has_label(files: list[str]) -> bool:
    for path in files:
        for record in iterate_records(path):
            return bool(record.get(LABEL_ENCODED))
    return True


# --------------------------------------------------------------------------- pure-Python reading


class RecordError(ValueError):
    """A corrupt or truncated TFRecord file (the message names it and the offset)."""


def _crc32c_table() -> list[int]:
    table = []
    for n in range(256):
        crc = n
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc(data: bytes) -> int:
    """The masked CRC-32C that frames TFRecord (and TensorBoard event) records."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def iterate_serialized(path: str | os.PathLike, *, verify_data_crc: bool = False) -> Iterator[bytes]:
    """The records of one TFRecord file, as bytes (no TensorFlow).

    The length checksum of every record is verified; the data checksum only
    with ``verify_data_crc`` (pure Python: slow for large records).

    Raises:
      RecordError: truncated or corrupt file, naming it and the byte offset.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        offset = 0
        while True:
            header = f.read(12)
            if not header:
                return
            if len(header) < 12:
                raise RecordError(f"{path}: truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            (length_crc,) = struct.unpack("<I", header[8:])
            if masked_crc(header[:8]) != length_crc:
                raise RecordError(f"{path}: corrupt record length at byte {offset}")
            data = f.read(length)
            footer = f.read(4)
            if len(data) < length or len(footer) < 4:
                raise RecordError(f"{path}: truncated record at byte {offset} ({length} bytes announced)")
            if verify_data_crc and masked_crc(data) != struct.unpack("<I", footer)[0]:
                raise RecordError(f"{path}: corrupt record data at byte {offset}")
            offset += 16 + length
            yield data


def count_records(path: str | os.PathLike) -> int:
    """Number of records in one TFRecord file, reading only the headers."""
    path = os.fspath(path)
    count = 0
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset = 0
        while offset < size:
            header = f.read(12)
            if len(header) < 12:
                raise RecordError(f"{path}: truncated record header at byte {offset}")
            (length,) = struct.unpack("<Q", header[:8])
            if masked_crc(header[:8]) != struct.unpack("<I", header[8:])[0]:
                raise RecordError(f"{path}: corrupt record length at byte {offset}")
            offset += 16 + length
            if offset > size:
                raise RecordError(f"{path}: truncated record at byte {offset - 16 - length}")
            f.seek(offset)
            count += 1
    return count


def count_examples(dataset_dir: str | os.PathLike, split: str) -> int:
    """Number of examples in the complete shards of ``split``."""
    return sum(count_records(p) for p in shard_paths(dataset_dir, split))


def iterate_records(path: str | os.PathLike, *, verify_data_crc: bool = False) -> Iterator[dict[str, Any]]:
    """The examples of one TFRecord file as raw feature values (no TensorFlow).

    Each record becomes a dict: feature key -> its values, as ``bytes``,
    ``int`` or ``float``; a feature holding exactly one value is unwrapped
    (``record["image/height"] == 360``), others are lists.
    """
    for data in iterate_serialized(path, verify_data_crc=verify_data_crc):
        yield parse_example(data)


def parse_example(serialized: bytes) -> dict[str, Any]:
    """Parses a serialized ``tf.train.Example`` in pure Python (protobuf wire format)."""
    buf = memoryview(serialized)
    result: dict[str, Any] = {}
    for field, wire, value in _fields(buf):
        if field != 1 or wire != 2:  # Example.features
            continue
        for entry_field, entry_wire, entry in _fields(value):  # Features.feature (map entries)
            if entry_field != 1 or entry_wire != 2:
                continue
            key, values = "", []
            for f, w, v in _fields(entry):
                if f == 1 and w == 2:
                    key = bytes(v).decode("utf-8")
                elif f == 2 and w == 2:
                    values = _parse_feature(v)
            result[key] = values[0] if len(values) == 1 else values
    return result


def _parse_feature(buf: memoryview) -> list:
    values: list = []
    for kind, wire, payload in _fields(buf):
        if wire != 2:
            continue
        for f, w, v in _fields(payload):
            if f != 1:
                continue
            if kind == 1:  # BytesList
                values.append(bytes(v))
            elif kind == 2:  # FloatList: packed or not
                if w == 2:
                    values.extend(struct.unpack(f"<{len(v) // 4}f", v))
                elif w == 5:
                    values.append(struct.unpack("<f", v)[0])
            elif kind == 3:  # Int64List: packed or not
                if w == 2:
                    pos = 0
                    while pos < len(v):
                        number, pos = _varint(v, pos)
                        values.append(_signed(number))
                elif w == 0:
                    values.append(_signed(v))
    return values


def _signed(number: int) -> int:
    return number - (1 << 64) if number >= 1 << 63 else number


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint in a serialized Example")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise RecordError("malformed varint in a serialized Example")


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    pos, end = 0, len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise RecordError(f"unsupported protobuf wire type {wire} in a serialized Example")
        if pos > end:
            raise RecordError("truncated field in a serialized Example")
        yield field, wire, value
