"""Label colormaps and label visualisation, in NumPy only.

A colormap is an ``[N, 3]`` uint8 array: row ``i`` is the RGB colour of class
id ``i``. The tables are DeepLab's (``utils/get_dataset_colormap.py``) plus
SegNet's CamVid colours:

* ``pascal``: the PASCAL VOC palette, 256 entries (bit-interleaved ids); also
  the default for PASCAL-Person-Part and user-defined datasets;
* ``cityscapes``: the 19 train-id colours of the Cityscapes benchmark;
* ``ade20k``: 151 entries, entry 0 (the ignored "other" class) black;
* ``camvid``: SegNet's 11 classes (sky, building, pole, road, sidewalk, tree,
  sign/symbol, fence, car, pedestrian, bicyclist).

``label_to_color`` paints the ignore label black and refuses any other value
that has no colour (a ValueError naming the value), so a label map that does
not belong to the colormap's dataset is caught rather than drawn.

Example:

>>> label = np.array([[0, 1], [255, 10]], dtype=np.uint8)
>>> label_to_color(label, "camvid")[0, 1].tolist()   # building
[128, 0, 0]
>>> label_to_color(label, "camvid")[1, 0].tolist()   # ignore label -> black
[0, 0, 0]
"""

from __future__ import annotations

from typing import Union

import numpy as np

Colormap = Union[str, np.ndarray]


def _pascal_colormap(num_entries: int = 256) -> np.ndarray:
    """The PASCAL VOC palette: the bits of the id spread over R, G and B."""
    colormap = np.zeros((num_entries, 3), dtype=np.int64)
    ind = np.arange(num_entries, dtype=np.int64)
    for shift in reversed(range(8)):
        for channel in range(3):
            colormap[:, channel] |= ((ind >> channel) & 1) << shift
        ind >>= 3
    return colormap.astype(np.uint8)


_CITYSCAPES = [
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),  # traffic light
    (220, 220, 0),  # traffic sign
    (107, 142, 35),  # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),  # sky
    (220, 20, 60),  # person
    (255, 0, 0),  # rider
    (0, 0, 142),  # car
    (0, 0, 70),  # truck
    (0, 60, 100),  # bus
    (0, 80, 100),  # train
    (0, 0, 230),  # motorcycle
    (119, 11, 32),  # bicycle
]

# DeepLab's create_ade20k_label_colormap (entry 0 is the ignored "other").
_ADE20K = [
    (0, 0, 0), (120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50),
    (4, 200, 3), (120, 120, 80), (140, 140, 140), (204, 5, 255), (230, 230, 230),
    (4, 250, 7), (224, 5, 255), (235, 255, 7), (150, 5, 61), (120, 120, 70),
    (8, 255, 51), (255, 6, 82), (143, 255, 140), (204, 255, 4), (255, 51, 7),
    (204, 70, 3), (0, 102, 200), (61, 230, 250), (255, 6, 51), (11, 102, 255),
    (255, 7, 71), (255, 9, 224), (9, 7, 230), (220, 220, 220), (255, 9, 92),
    (112, 9, 255), (8, 255, 214), (7, 255, 224), (255, 184, 6), (10, 255, 71),
    (255, 41, 10), (7, 255, 255), (224, 255, 8), (102, 8, 255), (255, 61, 6),
    (255, 194, 7), (255, 122, 8), (0, 255, 20), (255, 8, 41), (255, 5, 153),
    (6, 51, 255), (235, 12, 255), (160, 150, 20), (0, 163, 255), (140, 140, 140),
    (250, 10, 15), (20, 255, 0), (31, 255, 0), (255, 31, 0), (255, 224, 0),
    (153, 255, 0), (0, 0, 255), (255, 71, 0), (0, 235, 255), (0, 173, 255),
    (31, 0, 255), (11, 200, 200), (255, 82, 0), (0, 255, 245), (0, 61, 255),
    (0, 255, 112), (0, 255, 133), (255, 0, 0), (255, 163, 0), (255, 102, 0),
    (194, 255, 0), (0, 143, 255), (51, 255, 0), (0, 82, 255), (0, 255, 41),
    (0, 255, 173), (10, 0, 255), (173, 255, 0), (0, 255, 153), (255, 92, 0),
    (255, 0, 255), (255, 0, 245), (255, 0, 102), (255, 173, 0), (255, 0, 20),
    (255, 184, 184), (0, 31, 255), (0, 255, 61), (0, 71, 255), (255, 0, 204),
    (0, 255, 194), (0, 255, 82), (0, 10, 255), (0, 112, 255), (51, 0, 255),
    (0, 194, 255), (0, 122, 255), (0, 255, 163), (255, 153, 0), (0, 255, 10),
    (255, 112, 0), (143, 255, 0), (82, 0, 255), (163, 255, 0), (255, 235, 0),
    (8, 184, 170), (133, 0, 255), (0, 255, 92), (184, 0, 255), (255, 0, 31),
    (0, 184, 255), (0, 214, 255), (255, 0, 112), (92, 255, 0), (0, 224, 255),
    (112, 224, 255), (70, 184, 160), (163, 0, 255), (153, 0, 255), (71, 255, 0),
    (255, 0, 163), (255, 204, 0), (255, 0, 143), (0, 255, 235), (133, 255, 0),
    (255, 0, 235), (245, 0, 255), (255, 0, 122), (255, 245, 0), (10, 190, 212),
    (214, 255, 0), (0, 204, 255), (20, 0, 255), (255, 255, 0), (0, 153, 255),
    (0, 41, 255), (0, 255, 204), (41, 0, 255), (41, 255, 0), (173, 0, 255),
    (0, 245, 255), (71, 0, 255), (122, 0, 255), (0, 255, 184), (0, 92, 255),
    (184, 255, 0), (0, 133, 255), (255, 214, 0), (25, 194, 194), (102, 255, 0),
    (92, 0, 255),
]

# SegNet's CamVid colours, class ids 0..10 (id 11, void, is the ignore label).
_CAMVID = [
    (128, 128, 128),  # sky
    (128, 0, 0),  # building
    (192, 192, 128),  # pole
    (128, 64, 128),  # road
    (60, 40, 222),  # sidewalk
    (128, 128, 0),  # tree
    (192, 128, 128),  # sign/symbol
    (64, 64, 128),  # fence
    (64, 0, 128),  # car
    (64, 64, 0),  # pedestrian
    (0, 128, 192),  # bicyclist
]


def _frozen(table) -> np.ndarray:
    array = np.asarray(table, dtype=np.uint8).reshape(-1, 3)
    array.setflags(write=False)
    return array


COLORMAPS: dict[str, np.ndarray] = {
    "pascal": _frozen(_pascal_colormap(256)),
    "cityscapes": _frozen(_CITYSCAPES),
    "ade20k": _frozen(_ADE20K),
    "camvid": _frozen(_CAMVID),
}


def get_colormap(name: str) -> np.ndarray:
    """Returns a writable copy of the named ``[N, 3]`` uint8 colormap.

    Raises:
      ValueError: unknown name (the message lists the valid names).
    """
    try:
        return COLORMAPS[name].copy()
    except (KeyError, TypeError):
        raise ValueError(f"unknown colormap {name!r}; valid names: {', '.join(sorted(COLORMAPS))}") from None


def _as_colormap(colormap: Colormap) -> tuple[np.ndarray, str]:
    if isinstance(colormap, str):
        return get_colormap(colormap), repr(colormap)
    array = np.asarray(colormap)
    if array.ndim != 2 or array.shape[1] != 3:
        raise ValueError(f"a colormap must be [N, 3]; got shape {array.shape}")
    return array.astype(np.uint8), f"of {len(array)} entries"


def label_to_color(label: np.ndarray, colormap: Colormap, *, ignore_label: int | None = 255) -> np.ndarray:
    """Paints a label map with a colormap.

    Args:
      label: integer array ``[H, W]`` (or ``[H, W, 1]``) of class ids.
      colormap: a name in ``COLORMAPS`` or an ``[N, 3]`` array.
      ignore_label: this value is painted black, whatever the colormap says
        for it; None to give it no special meaning.

    Returns:
      ``[H, W, 3]`` uint8 RGB image.

    Raises:
      ValueError: a value that is neither a colormap entry nor the ignore
        label (the message names the values), or a non-integer label.
    """
    label = np.asarray(label)
    if label.ndim == 3 and label.shape[-1] == 1:
        label = label[..., 0]
    if label.ndim != 2:
        raise ValueError(f"label must be [H, W] or [H, W, 1]; got shape {label.shape}")
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise ValueError(f"label must hold integer class ids; got dtype {label.dtype}")
    cmap, cmap_name = _as_colormap(colormap)
    values = label.astype(np.int64)
    ignored = values == ignore_label if ignore_label is not None else np.zeros(values.shape, bool)
    valid = (values >= 0) & (values < len(cmap))
    bad = ~(valid | ignored)
    if bad.any():
        shown = np.unique(values[bad])[:5].tolist()
        raise ValueError(
            f"label values {shown} have no colour in colormap {cmap_name} ({len(cmap)} entries) "
            f"and are not the ignore label {ignore_label}"
        )
    color = np.zeros(label.shape + (3,), dtype=np.uint8)
    painted = valid & ~ignored
    color[painted] = cmap[values[painted]]
    return color


def overlay(
    image: np.ndarray,
    label: np.ndarray,
    colormap: Colormap,
    alpha: float = 0.5,
    *,
    ignore_label: int | None = 255,
) -> np.ndarray:
    """Blends label colours over an image.

    Each labelled pixel becomes ``np.rint((1 - alpha) * image + alpha * colour)``
    (ties round to even); pixels with the ignore label keep the image unchanged.

    Args:
      image: ``[H, W, 3]`` uint8 RGB image.
      label: ``[H, W]`` (or ``[H, W, 1]``) class ids.
      colormap: a name in ``COLORMAPS`` or an ``[N, 3]`` array.
      alpha: weight of the label colour, in [0, 1].
      ignore_label: pixels with this value are left as the image.

    Returns:
      ``[H, W, 3]`` uint8.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3]; got shape {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1]; got {alpha}")
    color = label_to_color(label, colormap, ignore_label=ignore_label)
    if color.shape[:2] != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]} and label {color.shape[:2]} sizes differ")
    blended = np.rint((1.0 - alpha) * image.astype(np.float64) + alpha * color.astype(np.float64))
    out = np.clip(blended, 0, 255).astype(np.uint8)
    label2d = np.asarray(label).reshape(image.shape[:2])
    if ignore_label is not None:
        keep = label2d == ignore_label
        out[keep] = image[keep]
    return out
