"""Dataset descriptors: a table of immutable facts about each dataset.

A ``DatasetDescriptor`` says how many classes a dataset has, which label value
is ignored, how many examples each split holds, the class names and the
colormap to draw it with. ``DATASETS`` holds the built-in ones; a user-defined
dataset is a small JSON file with the same fields, loaded by ``get_dataset``:

.. code-block:: json

    {"name": "my_roads", "num_classes": 3, "ignore_label": 255,
     "splits": {"train": 120, "val": 30},
     "class_names": ["road", "car", "other"], "colormap": "pascal"}

``class_names`` may be left out (``class_0``, ``class_1``, ... are used) and
``colormap`` defaults to ``"pascal"``; every other field is required.

Split sizes follow DeepLab's ``datasets/data_generator.py``; DeepLab's newest
version names the Cityscapes splits ``train_fine``/``val_fine``/``test_fine``,
here they are ``train``/``val``/``test``, as the conversion tools write them.
CamVid is SegNet's 11-class version: its class 11 ("void") becomes the ignore
label 255 when converted (``tools/build_camvid_data.py``).

No TensorFlow here.

Example:

>>> get_dataset("cityscapes").splits["val"]
500
>>> get_dataset("camvid").ignore_label
255
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

from deeplab_dpc.data import colormaps


class DescriptorError(ValueError):
    """A descriptor field with a bad value: ``field`` names it, ``source`` the file."""

    def __init__(self, field: str, reason: str, source: str | None = None):
        where = f"dataset descriptor {source}: " if source else ""
        super().__init__(f"{where}field {field!r}: {reason}")
        self.field = field
        self.reason = reason
        self.source = source


class FrozenDict(dict):
    """A dict that refuses changes; pickles, copies and serialises as a dict."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("dataset descriptors are immutable")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return (type(self), (dict(self),))

    def __hash__(self):
        return hash(tuple(sorted(self.items())))


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
    """Immutable facts about one dataset.

    Args:
      name: dataset name.
      num_classes: number of classes, including a background class if any.
      ignore_label: label value left out of losses and metrics (0..255, as
        labels are stored as 8-bit PNGs); it may be a class index (ADE20K: 0).
      splits: split name -> number of examples.
      class_names: one name per class id.
      colormap: a key of ``colormaps.COLORMAPS`` with at least ``num_classes``
        entries.
    """

    name: str
    num_classes: int
    ignore_label: int
    splits: Mapping[str, int]
    class_names: tuple[str, ...]
    colormap: str

    def __post_init__(self):
        _check(isinstance(self.name, str) and self.name, "name", f"must be a non-empty string; got {self.name!r}")
        _check(
            _is_int(self.num_classes) and 1 <= self.num_classes <= 256,
            "num_classes",
            f"must be an integer in 1..256; got {self.num_classes!r}",
        )
        _check(
            _is_int(self.ignore_label) and 0 <= self.ignore_label <= 255,
            "ignore_label",
            f"must be an integer in 0..255; got {self.ignore_label!r}",
        )
        _check(isinstance(self.splits, Mapping) and len(self.splits) > 0, "splits", "must be a non-empty mapping split -> size")
        for split, size in self.splits.items():
            _check(isinstance(split, str) and split, "splits", f"split names must be non-empty strings; got {split!r}")
            _check(_is_int(size) and size >= 0, "splits", f"size of split {split!r} must be an integer >= 0; got {size!r}")
        object.__setattr__(self, "splits", FrozenDict(self.splits))
        _check(
            not isinstance(self.class_names, str) and all(isinstance(n, str) for n in self.class_names),
            "class_names",
            "must be a list of strings",
        )
        object.__setattr__(self, "class_names", tuple(self.class_names))
        _check(
            len(self.class_names) == self.num_classes,
            "class_names",
            f"has {len(self.class_names)} names for num_classes={self.num_classes}",
        )
        _check(
            self.colormap in colormaps.COLORMAPS,
            "colormap",
            f"unknown colormap {self.colormap!r}; valid names: {', '.join(sorted(colormaps.COLORMAPS))}",
        )
        entries = len(colormaps.COLORMAPS[self.colormap])
        _check(
            entries >= self.num_classes,
            "colormap",
            f"{self.colormap!r} has {entries} colours, fewer than num_classes={self.num_classes}",
        )

    def split_size(self, split: str) -> int:
        """Number of examples in ``split``; ValueError listing the valid splits."""
        try:
            return self.splits[split]
        except KeyError:
            raise ValueError(
                f"dataset {self.name!r} has no split {split!r}; valid splits: {', '.join(self.splits)}"
            ) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready fields; ``from_dict(d.to_dict()) == d``."""
        return {
            "name": self.name,
            "num_classes": self.num_classes,
            "ignore_label": self.ignore_label,
            "splits": dict(self.splits),
            "class_names": list(self.class_names),
            "colormap": self.colormap,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DatasetDescriptor":
        """Builds a descriptor from JSON-like data; DescriptorError names a bad field."""
        if not isinstance(data, Mapping):
            raise DescriptorError("<root>", f"must be a JSON object; got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        for key in data:
            if key not in known:
                raise DescriptorError(key, f"unknown field; valid fields: {', '.join(sorted(known))}")
        for key in ("name", "num_classes", "ignore_label", "splits"):
            if key not in data:
                raise DescriptorError(key, "missing")
        num_classes = data["num_classes"]
        class_names = data.get("class_names")
        if class_names is None and _is_int(num_classes) and num_classes > 0:
            class_names = tuple(f"class_{i}" for i in range(num_classes))
        if not isinstance(class_names, (list, tuple)):
            raise DescriptorError("class_names", f"must be a list of strings; got {class_names!r}")
        return cls(
            name=data["name"],
            num_classes=num_classes,
            ignore_label=data["ignore_label"],
            splits=data["splits"],
            class_names=tuple(class_names),
            colormap=data.get("colormap", "pascal"),
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise DescriptorError(field, message)


_CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "rider", "car",
    "truck", "bus", "train", "motorcycle", "bicycle",
)

_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus",
    "car", "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike",
    "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)

_PERSON_PART_CLASSES = (
    "background", "head", "torso", "upper arms", "lower arms", "upper legs", "lower legs",
)

# ADE20K SceneParsing (objectInfo150.txt); id 0 is "other", the ignore label.
_ADE20K_CLASSES = ("other",) + (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed",
    "windowpane", "grass", "cabinet", "sidewalk", "person", "earth", "door",
    "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub",
    "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace",
    "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill",
    "bench", "countertop", "stove", "palm", "kitchen island", "computer",
    "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel",
    "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land",
    "bannister", "escalator", "ottoman", "bottle", "buffet", "poster", "stage",
    "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag",
    "minibike", "cradle", "oven", "ball", "food", "step", "tank", "trade name",
    "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)

_CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "sidewalk", "tree", "sign/symbol",
    "fence", "car", "pedestrian", "bicyclist",
)

DATASETS: dict[str, DatasetDescriptor] = {
    d.name: d
    for d in (
        DatasetDescriptor(
            name="cityscapes",
            num_classes=19,
            ignore_label=255,
            splits={"train": 2975, "val": 500, "trainval": 3475, "test": 1525},
            class_names=_CITYSCAPES_CLASSES,
            colormap="cityscapes",
        ),
        DatasetDescriptor(
            name="pascal_voc_seg",
            num_classes=21,
            ignore_label=255,
            splits={"train": 1464, "train_aug": 10582, "trainval": 2913, "val": 1449},
            class_names=_VOC_CLASSES,
            colormap="pascal",
        ),
        DatasetDescriptor(
            name="pascal_person_part",
            num_classes=7,
            ignore_label=255,
            splits={"train": 1716, "val": 1817},
            class_names=_PERSON_PART_CLASSES,
            colormap="pascal",
        ),
        DatasetDescriptor(
            name="ade20k",
            num_classes=151,
            ignore_label=0,
            splits={"train": 20210, "val": 2000},
            class_names=_ADE20K_CLASSES,
            colormap="ade20k",
        ),
        DatasetDescriptor(
            name="camvid",
            num_classes=11,
            ignore_label=255,
            splits={"train": 367, "val": 101, "trainval": 468, "test": 233},
            class_names=_CAMVID_CLASSES,
            colormap="camvid",
        ),
    )
}


def load_descriptor(path: str | os.PathLike) -> DatasetDescriptor:
    """Reads a user-defined descriptor from a JSON file.

    Raises:
      ValueError: unreadable file, bad JSON, or a bad field; the message names
        the file (and the field).
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"cannot read dataset descriptor {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"dataset descriptor {path} is not valid JSON: {e}") from None
    try:
        return DatasetDescriptor.from_dict(data)
    except DescriptorError as e:
        raise DescriptorError(e.field, e.reason, source=path) from None


def get_dataset(name_or_path: str | os.PathLike) -> DatasetDescriptor:
    """A built-in descriptor by name, or a user-defined one from a JSON file.

    Args:
      name_or_path: a key of ``DATASETS``, or a path to a JSON descriptor.

    Raises:
      ValueError: unknown name (the message lists the valid names), or a bad
        descriptor file (the message names the file and the field).
    """
    key = os.fspath(name_or_path)
    if key in DATASETS:
        return DATASETS[key]
    if key.endswith(".json") or os.path.sep in key or os.path.exists(key):
        if not os.path.isfile(key):
            raise ValueError(f"dataset descriptor file {key} does not exist")
        return load_descriptor(key)
    raise ValueError(
        f"unknown dataset {key!r}; valid names: {', '.join(sorted(DATASETS))}, "
        "or the path of a JSON descriptor file"
    )
