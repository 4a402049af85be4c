"""Colormaps: known colours of known classes, ignore -> black, overlay arithmetic."""

import numpy as np
import pytest

from deeplab_dpc.data import colormaps
from deeplab_dpc.data.colormaps import get_colormap, label_to_color, overlay


@pytest.mark.parametrize(
    "name, class_id, rgb",
    [
        ("cityscapes", 0, (128, 64, 128)),  # road
        ("cityscapes", 13, (0, 0, 142)),  # car
        ("cityscapes", 18, (119, 11, 32)),  # bicycle
        ("camvid", 0, (128, 128, 128)),  # sky
        ("camvid", 1, (128, 0, 0)),  # building
        ("camvid", 4, (60, 40, 222)),  # sidewalk
        ("camvid", 10, (0, 128, 192)),  # bicyclist
        ("pascal", 0, (0, 0, 0)),  # background
        ("pascal", 1, (128, 0, 0)),  # aeroplane
        ("pascal", 15, (192, 128, 128)),  # person
        ("pascal", 255, (224, 224, 192)),  # VOC's border colour
        ("ade20k", 0, (0, 0, 0)),  # "other", ignored
        ("ade20k", 1, (120, 120, 120)),  # wall
        ("ade20k", 150, (92, 0, 255)),  # flag
    ],
)
def test_known_colours(name, class_id, rgb):
    assert tuple(get_colormap(name)[class_id]) == rgb


def test_sizes_and_dtype():
    sizes = {name: len(cmap) for name, cmap in colormaps.COLORMAPS.items()}
    assert sizes == {"pascal": 256, "cityscapes": 19, "ade20k": 151, "camvid": 11}
    assert all(c.dtype == np.uint8 and c.shape[1] == 3 for c in colormaps.COLORMAPS.values())
    # Distinct colours per class: the visualisation must tell classes apart.
    for name in ("cityscapes", "camvid", "pascal"):
        cmap = colormaps.COLORMAPS[name]
        assert len({tuple(c) for c in cmap}) == len(cmap), name


def test_get_colormap_returns_a_copy_and_tables_are_read_only():
    cmap = get_colormap("camvid")
    cmap[0] = (1, 2, 3)
    assert tuple(get_colormap("camvid")[0]) == (128, 128, 128)
    with pytest.raises(ValueError):
        colormaps.COLORMAPS["camvid"][0] = (1, 2, 3)


def test_unknown_colormap_lists_valid_names():
    with pytest.raises(ValueError, match="unknown colormap 'nope'.*ade20k, camvid, cityscapes, pascal"):
        get_colormap("nope")


def test_label_to_color_paints_classes_and_ignore_black():
    label = np.array([[0, 1], [255, 3]], dtype=np.uint8)
    color = label_to_color(label, "camvid")
    assert color.dtype == np.uint8 and color.shape == (2, 2, 3)
    assert color[0, 0].tolist() == [128, 128, 128]
    assert color[0, 1].tolist() == [128, 0, 0]
    assert color[1, 0].tolist() == [0, 0, 0]
    assert color[1, 1].tolist() == [128, 64, 128]
    # [H, W, 1] labels are accepted.
    np.testing.assert_array_equal(label_to_color(label[..., None], "camvid"), color)


def test_ignore_wins_over_a_colour_entry():
    # PASCAL has a colour at 255, but 255 is the ignore label -> black.
    label = np.array([[255, 1]], dtype=np.uint8)
    assert label_to_color(label, "pascal")[0, 0].tolist() == [0, 0, 0]
    assert label_to_color(label, "pascal", ignore_label=None)[0, 0].tolist() == [224, 224, 192]


def test_out_of_range_value_is_named():
    label = np.array([[0, 11, 37]], dtype=np.int32)
    with pytest.raises(ValueError, match=r"label values \[11, 37\].*'camvid'.*11 entries"):
        label_to_color(label, "camvid")
    with pytest.raises(ValueError, match=r"\[-1\]"):
        label_to_color(np.array([[-1]]), "cityscapes")
    with pytest.raises(ValueError, match="integer"):
        label_to_color(np.array([[0.5]]), "cityscapes")


def test_custom_colormap_array():
    cmap = np.array([[1, 2, 3], [4, 5, 6]])
    assert label_to_color(np.array([[1, 0]]), cmap).tolist() == [[[4, 5, 6], [1, 2, 3]]]


def test_overlay_arithmetic():
    image = np.array([[[100, 100, 100], [10, 20, 30], [0, 255, 7]]], dtype=np.uint8)
    label = np.array([[1, 0, 255]], dtype=np.uint8)
    out = overlay(image, label, "camvid", alpha=0.25)
    # (1 - a) * image + a * colour, rounded: building (128, 0, 0), sky (128, 128, 128).
    assert out[0, 0].tolist() == [107, 75, 75]
    # 7.5 + 32 = 39.5 -> 40 and 22.5 + 32 = 54.5 -> 54: ties round to even (np.rint).
    assert out[0, 1].tolist() == [40, 47, 54]
    assert out[0, 2].tolist() == [0, 255, 7]  # ignored: the image unchanged
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, label, "camvid", alpha=0.0), image)
    full = overlay(image, label, "camvid", alpha=1.0)
    assert full[0, 0].tolist() == [128, 0, 0] and full[0, 2].tolist() == [0, 255, 7]


def test_overlay_checks_shapes_and_alpha():
    image = np.zeros((2, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="sizes differ"):
        overlay(image, np.zeros((2, 3), np.uint8), "camvid")
    with pytest.raises(ValueError, match="alpha"):
        overlay(image, np.zeros((2, 2), np.uint8), "camvid", alpha=1.5)
