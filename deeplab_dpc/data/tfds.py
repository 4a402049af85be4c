"""TensorFlow Datasets builders as sources of the project's sample dictionary.

``--dataset=tfds:NAME[/CONFIG]`` reads a TFDS builder, e.g.
``tfds:cityscapes/semantic_segmentation`` (whose archives users download
manually into TFDS' ``manual_dir``), and maps its features onto the sample
dictionary every other source produces: ``image`` uint8 ``[H, W, 3]``,
``label`` uint8 ``[H, W, 1]`` (when the builder has labels), ``image_name``,
``height``, ``width``.

Which feature is which is a table (``FEATURE_MAPS``), keyed by builder name;
a builder not in the table is probed for the usual names (``image`` /
``image_left``; ``segmentation_mask`` / ``segmentation_label``). A mapping may
carry a lookup table for label values:

* Cityscapes: TFDS stores ``*_gtFine_labelIds.png`` (ids 0..33); DeepLab
  trains on the 19 ``trainId`` classes with 255 ignored, so ids map through
  ``CITYSCAPES_ID_TO_TRAIN_ID`` (cityscapesScripts' ``labels.py``).
* Oxford-IIIT Pet: trimap values 1 (pet), 2 (background), 3 (border) become
  1, 0 and 255 (border ignored): a two-class segmentation.

Images and labels are read encoded (``tfds.decode.SkipDecoding``), so that
shuffling holds bytes and decoding runs in the pipeline's parallel map.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from deeplab_dpc.data import tfrecord

# cityscapesScripts labels.py: id -> trainId (255 = ignored).
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                         23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_ID_TO_TRAIN_ID: tuple[int, ...] = tuple(_CITYSCAPES_TRAIN_IDS.get(i, 255) for i in range(256))
"""256-entry lookup table: Cityscapes label id -> train id (255 ignored)."""

OXFORD_PET_TRIMAP: tuple[int, ...] = tuple({1: 1, 2: 0}.get(i, 255) for i in range(256))
"""256-entry lookup table: pet trimap 1/2/3 -> pet 1, background 0, border 255."""


@dataclasses.dataclass(frozen=True)
class FeatureMap:
    """Which TFDS features hold the image, the label and the example name.

    Args:
        image: feature name of the RGB image.
        label: feature name of the single-channel label image, or None.
        name: feature name of a string id, or None (names become "").
        label_lut: optional 256-entry table applied to label values.
    """

    image: str
    label: str | None
    name: str | None = None
    label_lut: tuple[int, ...] | None = None

    def __post_init__(self):
        if self.label_lut is not None:
            lut = tuple(int(v) for v in self.label_lut)
            if len(lut) != 256 or not all(0 <= v <= 255 for v in lut):
                raise ValueError("label_lut must have 256 entries in 0..255")
            object.__setattr__(self, "label_lut", lut)


FEATURE_MAPS: dict[str, FeatureMap] = {
    "cityscapes": FeatureMap("image_left", "segmentation_label", "image_id", CITYSCAPES_ID_TO_TRAIN_ID),
    "oxford_iiit_pet": FeatureMap("image", "segmentation_mask", "file_name", OXFORD_PET_TRIMAP),
}
"""Builder name (without config) -> its ``FeatureMap``."""

_IMAGE_KEYS = ("image", "image_left")
_LABEL_KEYS = ("segmentation_mask", "segmentation_label", "label_image")
_NAME_KEYS = ("image_id", "file_name", "filename", "image/filename")


def parse_spec(spec: str) -> str:
    """``"tfds:NAME[/CONFIG]"`` -> ``"NAME[/CONFIG]"`` (ValueError otherwise)."""
    if not spec.startswith("tfds:") or not spec[len("tfds:"):].strip("/"):
        raise ValueError(f"expected 'tfds:NAME[/CONFIG]', got {spec!r}")
    return spec[len("tfds:"):].strip("/")


def feature_map_for(name: str, features: Mapping[str, Any]) -> FeatureMap:
    """The ``FeatureMap`` of builder ``name`` (``NAME[/CONFIG]``), checked against its features.

    A builder in ``FEATURE_MAPS`` keeps its label only if the chosen config
    has it (Cityscapes' disparity configs have none). Others are probed.

    Raises:
        ValueError: no image feature; the message lists the features and
            the known builders.
    """
    base = name.split("/")[0].split(":")[0]
    keys = set(features)
    mapping = FEATURE_MAPS.get(base)
    if mapping is None:
        image = next((k for k in _IMAGE_KEYS if k in keys), None)
        label = next((k for k in _LABEL_KEYS if k in keys), None)
        id_key = next((k for k in _NAME_KEYS if k in keys), None)
        if image is None:
            raise ValueError(
                f"TFDS builder {name!r}: no image feature among {sorted(keys)}; add a FeatureMap to "
                f"deeplab_dpc.data.tfds.FEATURE_MAPS (known: {sorted(FEATURE_MAPS)})"
            )
        return FeatureMap(image, label, id_key)
    if mapping.image not in keys:
        raise ValueError(f"TFDS builder {name!r}: feature {mapping.image!r} missing (has {sorted(keys)})")
    if mapping.label is not None and mapping.label not in keys:
        mapping = dataclasses.replace(mapping, label=None, label_lut=None)
    if mapping.name is not None and mapping.name not in keys:
        mapping = dataclasses.replace(mapping, name=None)
    return mapping


def _is_image_feature(feature) -> bool:
    import tensorflow_datasets as tfds

    return isinstance(feature, tfds.features.Image)


def make_decoder(mapping: FeatureMap, encoded: bool = True) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A function: one TFDS example (features as read) -> the sample dictionary.

    Args:
        mapping: the builder's ``FeatureMap``.
        encoded: the image/label features are still encoded bytes
            (``SkipDecoding``) rather than decoded tensors.
    """
    import tensorflow as tf

    lut = tf.constant(mapping.label_lut, tf.uint8) if mapping.label_lut is not None else None

    def decode(example):
        image = example[mapping.image]
        if encoded:
            image = tfrecord.decode_image(image)  # JPEGs with the accurate IDCT, as elsewhere
        image = tf.ensure_shape(tf.convert_to_tensor(image), [None, None, 3])
        shape = tf.shape(image)
        sample = {
            "image": image,
            "image_name": tf.convert_to_tensor(example[mapping.name] if mapping.name else "", tf.string),
            "height": shape[0],
            "width": shape[1],
        }
        if mapping.label is not None:
            label = example[mapping.label]
            if encoded:
                label = tf.io.decode_image(label, channels=1, dtype=tf.uint8, expand_animations=False)
            label = tf.ensure_shape(tf.convert_to_tensor(label), [None, None, 1])
            if label.dtype != tf.uint8:
                label = tf.cast(label, tf.uint8)
            if lut is not None:
                label = tf.gather(lut, tf.cast(label, tf.int32))
            sample["label"] = label
        return sample

    return decode


def tfds_elements(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    shuffle_files: bool = False,
    seed: int | None = None,
    skip_decoding: bool = True,
):
    """``(elements, decode)``: a TFDS split read undecoded, and its decoder.

    Args:
        name: ``NAME[/CONFIG]`` (no ``tfds:`` prefix).
        split: a TFDS split string (``"train"``, ``"validation[:10%]"``, ...).
        data_dir: TFDS data folder (None: TFDS' default).
        shuffle_files: interleave the split's files in a shuffled order.
        seed: makes that order reproducible.
        skip_decoding: read image features as encoded bytes and decode them
            in ``decode`` (False: TFDS decodes them).
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    features = builder.info.features
    mapping = feature_map_for(name, features)
    decoders = {
        key: tfds.decode.SkipDecoding()
        for key in (mapping.image, mapping.label)
        if skip_decoding and key is not None and _is_image_feature(features[key])
    }
    encoded = mapping.image in decoders
    if mapping.label is not None and (mapping.label in decoders) != encoded:
        raise ValueError(f"TFDS builder {name!r}: image and label features must both be images")
    read_config = tfds.ReadConfig(shuffle_seed=seed, try_autocache=False)
    elements = builder.as_dataset(
        split=split, shuffle_files=shuffle_files, decoders=decoders or None, read_config=read_config
    )
    return elements, make_decoder(mapping, encoded=encoded)


def load_samples(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    shuffle_files: bool = False,
    seed: int | None = None,
    skip_decoding: bool = True,
    num_parallel_calls: int | None = None,
):
    """A ``tf.data.Dataset`` of sample dictionaries from TFDS ``name``/``split``.

    Example:
        >>> ds = load_samples("cityscapes/semantic_segmentation", "validation")  # doctest: +SKIP
        >>> sorted(next(iter(ds)))  # doctest: +SKIP
        ['height', 'image', 'image_name', 'label', 'width']
    """
    import tensorflow as tf

    elements, decode = tfds_elements(
        name, split, data_dir, shuffle_files=shuffle_files, seed=seed, skip_decoding=skip_decoding
    )
    return elements.map(decode, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE, deterministic=True)
