"""The files of a split: list files, the image formats every reader takes, image -> label paths, label tables.

One pure definition (the standard library and NumPy: no TensorFlow, OpenCV or
Keras) behind every reader of image folders, so they cannot drift: the tf.data
pipeline (``input_pipeline.folder_source``), the NumPy loader
(``numpy_loader.FolderSource``) and the TFRecord conversion
(``conversion.examples_from_list``) accept the same list files, find the same
files for them and remap labels through the same tables.

List files hold one example a line; blank lines and ``#`` comments are skipped.
A line is either

* one field: a name (``2007_000032``), a file name (``0001TP_006690.png``) or a
  path; the image is ``find_file(field, image_dir, extensions=IMAGE_EXTENSIONS)``
  and the label ``label_dir/<name><label_suffix>``; or
* two fields ``image label`` (SegNet's own lists), each found by ``find_file``,
  which also re-roots SegNet's absolute ``/SegNet/CamVid/...`` paths.

The example's name is the first field's base name without its image extension.

Example:
    >>> [(line.name, line.label) for line in parse_list("a\\n# skipped\\nimg/b.png annot/b.png\\n")]
    [('a', None), ('b', 'annot/b.png')]
"""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
"""Image files every reader decodes to the same pixels: TensorFlow's ``decode_image`` (tf.data and the
TFRecord conversion, which stores the file's bytes) and OpenCV's ``imdecode`` (the NumPy loader)."""

LABEL_SUFFIX = ".png"
"""What follows the example's name in a label file's name (single-channel class-id PNGs)."""

_MAX_LISTED_MISSING = 10


@dataclasses.dataclass(frozen=True)
class ListLine:
    """One example line of a list file: its line number, name and fields (``label`` None for one field)."""

    lineno: int
    name: str
    image: str
    label: str | None


@dataclasses.dataclass(frozen=True)
class Entry:
    """One listed example: its name and files (``label_path`` None if unlabelled)."""

    name: str
    image_path: str
    label_path: str | None


def example_name(field: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> str:
    """A field's base name, without its extension when that is an image extension (``c.d`` stays ``c.d``)."""
    base = os.path.basename(field)
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in extensions else base


def parse_list(text: str, where: str = "list file", extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[ListLine]:
    """The example lines of a list file's text.

    Raises:
        ValueError: a line with more than two fields (naming ``where`` and the line).
    """
    lines = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise ValueError(f"{where}:{lineno}: expected 'name' or 'image label', got {line.strip()!r}")
        lines.append(ListLine(lineno, example_name(fields[0], extensions), fields[0], (fields[1:] or [None])[0]))
    return lines


def read_list_file(list_file: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[ListLine]:
    """``parse_list`` of a file; FileNotFoundError when it is not there."""
    list_file = os.fspath(list_file)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    with open(list_file, encoding="utf-8") as f:
        return parse_list(f.read(), list_file, extensions)


def list_names(list_file: str | os.PathLike) -> list[str]:
    """The example names of a list file, in order."""
    return [line.name for line in read_list_file(list_file)]


def find_file(
    field: str,
    folder: str | os.PathLike,
    *,
    search: Sequence[str | os.PathLike] = (),
    extensions: Sequence[str] | None = None,
) -> str | None:
    """The existing file a list field names, or None.

    Looked for, in order: ``folder/field`` (``field`` itself when absolute),
    ``<dir>/field`` for each folder of ``search`` (the list file's folder, the
    dataset root), and ``folder/<base name of field>`` (re-rooting paths
    written on another machine). With ``extensions``, a field that does not
    end in one of them is a stem: each place is tried with each extension
    appended, in that order.
    """
    folder = os.fspath(folder)
    relative = field.lstrip("/\\")
    places = [os.path.join(folder, field)]
    places += [os.path.join(os.fspath(d), relative) for d in search]
    places.append(os.path.join(folder, os.path.basename(field)))
    is_stem = extensions is not None and os.path.splitext(field)[1].lower() not in extensions
    for place in dict.fromkeys(places):
        for path in [place + ext for ext in extensions] if is_stem else [place]:
            if os.path.isfile(path):
                return path
    return None


def label_path(label_dir: str | os.PathLike, name: str, label_suffix: str = LABEL_SUFFIX) -> str:
    """The label file of an example named on a one-field line: ``label_dir/<name><label_suffix>``."""
    return os.path.join(os.fspath(label_dir), name + label_suffix)


def read_list(
    list_file: str | os.PathLike,
    image_dir: str | os.PathLike,
    label_dir: str | os.PathLike | None,
    *,
    root: str | os.PathLike | None = None,
    image_extensions: Sequence[str] = IMAGE_EXTENSIONS,
    label_suffix: str = LABEL_SUFFIX,
) -> list[Entry]:
    """The examples a list file names, every file checked to exist.

    Args:
        list_file: the list (see the module docstring).
        image_dir: folder of images.
        label_dir: folder of labels; None for unlabelled examples.
        root: the dataset root, searched for two-field lines' relative paths
            (default: the list file's folder).
        image_extensions: accepted image endings.
        label_suffix: what follows the name in a label file's name.

    Raises:
        FileNotFoundError: the list file or a folder is missing, or listed
            files are (the message names the list file, the lines and fields).
        ValueError: a malformed line; a list of no examples.
    """
    list_file = os.fspath(list_file)
    image_dir = os.fspath(image_dir)
    label_dir = os.fspath(label_dir) if label_dir is not None else None
    list_dir = os.path.dirname(list_file) or "."
    search = (list_dir, os.fspath(root) if root is not None else list_dir)
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"list file not found: {list_file}")
    for what, folder in (("image folder", image_dir), ("label folder", label_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise FileNotFoundError(f"{what} not found: {folder} (list file {list_file})")

    entries, missing = [], []
    for line in read_list_file(list_file, image_extensions):
        image = find_file(line.image, image_dir, search=search, extensions=image_extensions)
        if image is None:
            missing.append(
                f"{list_file}:{line.lineno}: image {line.image!r} not found in {image_dir} "
                f"(endings {', '.join(image_extensions)})"
            )
            continue
        label = None
        if label_dir is not None:
            if line.label is None:
                label = label_path(label_dir, line.name, label_suffix)
                label = label if os.path.isfile(label) else None
            else:
                label = find_file(line.label, label_dir, search=search)
            if label is None:
                missing.append(f"{list_file}:{line.lineno}: label {line.label or line.image!r} not found in {label_dir}")
                continue
        entries.append(Entry(line.name, image, label))
    if missing:
        shown = "\n  ".join(missing[:_MAX_LISTED_MISSING])
        more = f"\n  ... and {len(missing) - _MAX_LISTED_MISSING} more" if len(missing) > _MAX_LISTED_MISSING else ""
        raise FileNotFoundError(f"{len(missing)} listed file(s) missing:\n  {shown}{more}")
    if not entries:
        raise ValueError(f"list file {list_file} lists no examples")
    return entries


LAYOUTS = ("segnet", "voc")


def layout_paths(root: str | os.PathLike, split: str, layout: str) -> tuple[str, str, str]:
    """(list file, image folder, label folder) of ``split`` in a known layout.

    ``segnet``: ``<split>.txt``, ``<split>/``, ``<split>annot/`` (CamVid as SegNet ships it);
    ``voc``: ``ImageSets/Segmentation/<split>.txt``, ``JPEGImages/``, ``SegmentationClassRaw/``.
    """
    root = os.fspath(root)
    if layout == "segnet":
        return os.path.join(root, f"{split}.txt"), os.path.join(root, split), os.path.join(root, f"{split}annot")
    if layout == "voc":
        return (
            os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt"),
            os.path.join(root, "JPEGImages"),
            os.path.join(root, "SegmentationClassRaw"),
        )
    raise ValueError(f"unknown layout {layout!r}; valid: {sorted(LAYOUTS)} or 'auto'")


def split_entries(root: str | os.PathLike, split: str, *, layout: str = "auto", labels: bool = True) -> list[Entry]:
    """The examples of ``split`` under ``root`` in a known layout.

    Args:
        root: dataset folder.
        split: e.g. ``"train"``, ``"val"``.
        layout: ``"segnet"``, ``"voc"`` (see ``layout_paths``) or ``"auto"``
            (the first whose list file exists).
        labels: False reads images only (e.g. a test split).
    """
    if layout == "auto":
        found = [name for name in LAYOUTS if os.path.isfile(layout_paths(root, split, name)[0])]
        if not found:
            looked = ", ".join(layout_paths(root, split, name)[0] for name in LAYOUTS)
            raise FileNotFoundError(f"no list file for split {split!r} under {root} (looked for {looked})")
        layout = found[0]
    list_file, image_dir, label_dir = layout_paths(root, split, layout)
    return read_list(list_file, image_dir, label_dir if labels else None, root=root)


# ---------------------------------------------------------------------------------------------------------
# Label values.


def label_table(mapping: Mapping[int, int], *, default: int | None = None, what: str = "label_remap") -> np.ndarray:
    """A 256-entry uint8 table: value -> ``mapping[value]``, else ``default`` (None: the value itself).

    Sources outside 0..255 get no entry (an 8-bit label never holds them).

    Raises:
        ValueError: a target or ``default`` outside 0..255, naming ``what``.
    """
    for source, target in mapping.items():
        if not 0 <= int(target) <= 255:
            raise ValueError(f"{what}: {int(source)} -> {int(target)}: targets must be in 0..255")
    if default is not None and not 0 <= int(default) <= 255:
        raise ValueError(f"{what}: default {default} is outside 0..255")
    table = np.arange(256, dtype=np.uint8) if default is None else np.full(256, default, dtype=np.uint8)
    for source, target in mapping.items():
        if 0 <= int(source) <= 255:
            table[int(source)] = int(target)
    return table


def remap_table(label_remap: Mapping[int, int] | None) -> np.ndarray | None:
    """``label_remap`` (``{stored value: label}``, applied to decoded 8-bit labels) as a table; None if empty.

    Raises:
        ValueError: a value outside 0..255, naming ``label_remap``.
    """
    if not label_remap:
        return None
    for source in label_remap:
        if not 0 <= int(source) <= 255:
            raise ValueError(f"label_remap: {int(source)} -> {int(label_remap[source])}: stored values must be in 0..255")
    return label_table(label_remap, what="label_remap")
