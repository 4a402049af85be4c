"""tf.data input pipelines: source -> shuffle -> repeat -> decode+preprocess -> batch.

One sample dictionary feeds everything: training, evaluation, feature caching
and visualisation. ``build_dataset`` yields batches of it (``image`` float32
``[B, h, w, 3]``, ``label`` int32 ``[B, h, w, 1]``, ``image_name``,
``height``, ``width``, and for evaluation ``original_image`` uint8, zero-padded
to the largest in the batch), or with ``as_tuple=True`` ``(images, labels)``
pairs that ``model.fit`` takes directly.

Sources (``dataset_source``; the ``--dataset`` flag's forms):

* ``tfds:NAME[/CONFIG]``: a TensorFlow Datasets builder (``tfds.py``);
* ``folder`` / ``folder:segnet`` / ``folder:voc``: image and label files
  listed in ``<split>.txt`` (``splits.split_entries``, as the NumPy loader), read with
  ``tf.io.read_file``;
* anything else (``tfrecord``, a dataset name, a descriptor path): DeepLab
  TFRecord shards ``<split>-*-of-*.tfrecord`` in ``dataset_dir``
  (``tfrecord.py``).

Order of operations, chosen for cost: the shuffle buffer holds undecoded
elements (serialized records, file paths, encoded TFDS features), not decoded
images; decoding and preprocessing run together in one parallel ``map``.

Determinism: with a ``seed``, the file order, the shuffle, and each example's
augmentation seed (from ``tf.data.Dataset.random``, one per element of the
repeated stream) are fixed, and parallel stages keep their order, so two runs
give identical batches; every pass over a finite dataset reshuffles and draws
new augmentations, reproducibly. (A global ``tf.random.set_seed`` also enters
TF's op seeds, so it must be the same too.) Without a seed, order and
augmentation vary from run to run and parallel stages may reorder elements.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import tensorflow as tf

from deeplab_dpc.data import tfrecord
from deeplab_dpc.data.preprocess import PreprocessConfig, preprocess_sample
from deeplab_dpc.data.splits import remap_table, split_entries

AUTOTUNE = tf.data.AUTOTUNE
DEFAULT_SHUFFLE_BUFFER = 256
"""Elements in the training shuffle buffer. They are undecoded: ~0.4 MB each for
CamVid, ~2.5 MB for Cityscapes' 1024x2048 PNGs (~640 MB in all); shard order
is shuffled too, so mixing reaches beyond the buffer."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Undecoded elements and the function that decodes one into a sample dict.

    ``decode`` must run inside ``tf.data.Dataset.map``.
    """

    elements: tf.data.Dataset
    decode: Callable[[Any], dict[str, Any]]

    @classmethod
    def from_samples(cls, samples: tf.data.Dataset) -> "Source":
        """A source whose elements already are sample dicts (in-memory data, tests)."""
        return cls(samples, lambda sample: dict(sample))

    def samples(self, num_parallel_calls=AUTOTUNE, deterministic: bool = True) -> tf.data.Dataset:
        """The decoded sample dictionaries, in order."""
        return self.elements.map(self.decode, num_parallel_calls=num_parallel_calls, deterministic=deterministic)


def _label_lut(label_remap: Mapping[int, int] | None):
    table = remap_table(label_remap)
    return None if table is None else tf.constant(table, tf.uint8)


def _with_label_remap(decode, label_remap):
    lut = _label_lut(label_remap)
    if lut is None:
        return decode

    def remapped(element):
        sample = decode(element)
        if "label" in sample:
            sample["label"] = tf.gather(lut, tf.cast(sample["label"], tf.int32))
        return sample

    return remapped


def tfrecord_source(
    dataset_dir, split: str, *, shuffle_files: bool = False, seed: int | None = None, deterministic: bool = True
) -> Source:
    """DeepLab TFRecord shards of ``split``: serialized records + ``decode_example``."""
    files = tfrecord.shard_paths(dataset_dir, split)
    with_label = True
    for record in tfrecord.iterate_records(files[0]):
        with_label = bool(record.get(tfrecord.LABEL_ENCODED))
        break
    elements = tf.data.Dataset.from_tensor_slices(files)
    if shuffle_files:
        elements = elements.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    elements = elements.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(len(files), 16),
        num_parallel_calls=AUTOTUNE,
        deterministic=deterministic,
    )
    return Source(elements, lambda serialized: tfrecord.decode_example(serialized, with_label=with_label))


def _decode_label_file(contents, path):
    label = tf.io.decode_image(contents, channels=0, dtype=tf.uint8, expand_animations=False)
    check = tf.debugging.Assert(
        tf.equal(tf.shape(label)[2], 1),
        ["label must be a single-channel class-index PNG (convert colour/palette labels first):", path],
    )
    with tf.control_dependencies([check]):
        return tf.ensure_shape(tf.identity(label), [None, None, 1])


def folder_source(dataset_dir, split: str, *, layout: str = "auto", labels: bool = True) -> Source:
    """Listed image/label files (see ``splits.split_entries``), read with TF."""
    entries = split_entries(dataset_dir, split, layout=layout, labels=labels)
    table = {
        "image_path": [e.image_path for e in entries],
        "image_name": [e.name for e in entries],
    }
    if labels:
        table["label_path"] = [e.label_path for e in entries]

    def decode(element):
        # tfrecord.decode_image: JPEGs with the accurate IDCT, as OpenCV decodes them.
        image = tfrecord.decode_image(tf.io.read_file(element["image_path"]))
        shape = tf.shape(image)
        sample = {"image": image, "image_name": element["image_name"], "height": shape[0], "width": shape[1]}
        if "label_path" in element:
            label = _decode_label_file(tf.io.read_file(element["label_path"]), element["label_path"])
            check = tf.debugging.Assert(
                tf.reduce_all(tf.equal(tf.shape(label)[:2], shape[:2])),
                ["image and label sizes differ:", element["label_path"]],
            )
            with tf.control_dependencies([check]):
                sample["label"] = tf.identity(label)
        return sample

    return Source(tf.data.Dataset.from_tensor_slices(table), decode)


def make_source(
    spec: str | None,
    dataset_dir,
    split: str,
    *,
    shuffle_files: bool = False,
    seed: int | None = None,
    deterministic: bool = True,
    label_remap: Mapping[int, int] | None = None,
) -> Source:
    """Dispatches a ``--dataset`` spec to its ``Source`` (see the module docstring).

    Args:
        spec: ``tfds:NAME[/CONFIG]``, ``folder[:LAYOUT]``, or anything else
            (TFRecords in ``dataset_dir``).
        dataset_dir: TFRecord folder, TFDS ``data_dir`` (may be None) or the
            root of a folder layout.
        split: split name.
        shuffle_files: shuffle shard/file order (TFRecord, TFDS).
        seed: makes that order reproducible.
        label_remap: ``{stored value: label}`` applied after decoding (e.g.
            CamVid's raw void 11 -> 255 when reading the SegNet folders).
    """
    spec = spec or "tfrecord"
    if spec.startswith("tfds:"):
        from deeplab_dpc.data import tfds as tfds_lib  # noqa: PLC0415

        elements, decode = tfds_lib.tfds_elements(
            tfds_lib.parse_spec(spec),
            split,
            None if dataset_dir is None else str(dataset_dir),
            shuffle_files=shuffle_files,
            seed=seed,
        )
        source = Source(elements, decode)
    elif spec == "folder" or spec.startswith("folder:"):
        layout = spec.partition(":")[2] or "auto"
        source = folder_source(dataset_dir, split, layout=layout)
    else:
        if dataset_dir is None:
            raise ValueError(f"dataset {spec!r} reads TFRecords and needs a dataset_dir")
        source = tfrecord_source(
            dataset_dir, split, shuffle_files=shuffle_files, seed=seed, deterministic=deterministic
        )
    return Source(source.elements, _with_label_remap(source.decode, label_remap))


def dataset_source(spec: str | None, dataset_dir, split: str, **kwargs) -> tf.data.Dataset:
    """The decoded sample dictionaries of ``split`` from a ``--dataset`` spec, in order.

    Example:
        >>> ds = dataset_source("tfds:cityscapes/semantic_segmentation", None, "validation")  # doctest: +SKIP
        >>> ds = dataset_source("tfrecord", "/data/camvid_tfrecord", "val")  # doctest: +SKIP
    """
    return make_source(spec, dataset_dir, split, **kwargs).samples()


def _to_tuple(batch):
    if "label" not in batch:
        raise ValueError("as_tuple=True needs labelled examples; this source has no 'label'")
    return batch["image"], batch["label"]


def build_pipeline(
    source: Source | tf.data.Dataset,
    preprocess_config: PreprocessConfig,
    batch_size: int,
    *,
    is_training: bool | None = None,
    seed: int | None = None,
    shuffle_buffer: int | None = None,
    num_parallel_calls: int | None = AUTOTUNE,
    repeat: int | None = None,
    drop_remainder: bool | None = None,
    as_tuple: bool = False,
    prefetch: int | None = AUTOTUNE,
) -> tf.data.Dataset:
    """Shuffle, repeat, decode+preprocess, batch and prefetch a ``Source``.

    Arguments are those of ``build_dataset``; ``source`` may also be a
    ``tf.data.Dataset`` of sample dictionaries.
    """
    if not isinstance(preprocess_config, PreprocessConfig):
        raise TypeError(f"preprocess_config must be a PreprocessConfig, got {type(preprocess_config).__name__}")
    if is_training is None:
        is_training = preprocess_config.is_training
    elif bool(is_training) != preprocess_config.is_training:
        raise ValueError(
            f"is_training={is_training} but preprocess_config.is_training={preprocess_config.is_training}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if shuffle_buffer is not None and shuffle_buffer < 0:
        raise ValueError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
    if repeat is not None and (repeat == 0 or repeat < -1):
        raise ValueError(f"repeat must be None, -1 (forever) or a positive count, got {repeat}")
    if isinstance(source, tf.data.Dataset):
        source = Source.from_samples(source)

    deterministic = seed is not None or not is_training
    drop_remainder = is_training if drop_remainder is None else drop_remainder
    if repeat is None:
        repeat = -1 if is_training else 1
    if shuffle_buffer is None:
        shuffle_buffer = DEFAULT_SHUFFLE_BUFFER if is_training else 0

    ds = source.elements
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat != 1:
        ds = ds.repeat(None if repeat == -1 else repeat)

    config = preprocess_config
    decode = source.decode
    if config.is_training:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        ds = tf.data.Dataset.zip(ds, seeds)

        def process(element, example_seed):
            return preprocess_sample(decode(element), config, seed=example_seed)
    else:

        def process(element):
            return preprocess_sample(decode(element), config)

    ds = ds.map(process, num_parallel_calls=num_parallel_calls, deterministic=deterministic)
    if as_tuple:
        ds = ds.map(_to_tuple)
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    elif "original_image" in ds.element_spec:
        ds = ds.padded_batch(batch_size, drop_remainder=drop_remainder)
    else:
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if prefetch:
        ds = ds.prefetch(prefetch)
    return ds


def build_dataset(
    dataset_dir,
    split: str,
    preprocess_config: PreprocessConfig,
    batch_size: int,
    *,
    is_training: bool | None = None,
    seed: int | None = None,
    dataset: str | None = "tfrecord",
    shuffle_buffer: int | None = None,
    num_parallel_calls: int | None = AUTOTUNE,
    repeat: int | None = None,
    drop_remainder: bool | None = None,
    as_tuple: bool = False,
    prefetch: int | None = AUTOTUNE,
    label_remap: Mapping[int, int] | None = None,
) -> tf.data.Dataset:
    """Batches of preprocessed samples of ``split``.

    Args:
        dataset_dir: where the data is (see ``make_source``).
        split: split name.
        preprocess_config: preprocessing; its ``is_training`` selects
            augmentation.
        batch_size: examples per batch.
        is_training: shuffle, repeat forever and drop the remainder by
            default; defaults to (and must agree with)
            ``preprocess_config.is_training``.
        seed: makes file order, shuffling and augmentation reproducible.
        dataset: the ``--dataset`` spec (``tfrecord``, ``tfds:NAME[/CONFIG]``,
            ``folder[:LAYOUT]``).
        shuffle_buffer: undecoded elements to shuffle over; default
            ``DEFAULT_SHUFFLE_BUFFER`` for training, none for evaluation.
        num_parallel_calls: decode+preprocess parallelism.
        repeat: passes over the data; -1 forever; default forever for
            training (iteration-based, as DeepLab: give ``model.fit`` a
            ``steps_per_epoch``), once for evaluation.
        drop_remainder: drop a last, smaller batch; default ``is_training``.
        as_tuple: yield ``(images, labels)`` for ``model.fit``; otherwise
            dicts with names (evaluation, visualisation, feature caching).
        prefetch: batches to prefetch (None/0: none).
        label_remap: ``{stored value: label}`` applied after decoding.

    Example:
        >>> config = PreprocessConfig(crop_size=(360, 480))
        >>> ds = build_dataset("/data/camvid_tfrecord", "train", config, 8,
        ...                    seed=0, as_tuple=True)  # doctest: +SKIP
        >>> model.fit(ds, steps_per_epoch=100, epochs=3)  # doctest: +SKIP
    """
    if is_training is None:
        is_training = preprocess_config.is_training
    source = make_source(
        dataset,
        dataset_dir,
        split,
        shuffle_files=bool(is_training),
        seed=seed,
        deterministic=seed is not None or not is_training,
        label_remap=label_remap,
    )
    return build_pipeline(
        source,
        preprocess_config,
        batch_size,
        is_training=is_training,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        num_parallel_calls=num_parallel_calls,
        repeat=repeat,
        drop_remainder=drop_remainder,
        as_tuple=as_tuple,
        prefetch=prefetch,
    )
