"""The files of a split: list-file parsing, file lookup, label tables, and every reader agreeing on them."""

import os
import pathlib

import cv2
import numpy as np
import pytest

from deeplab_dpc.data import splits
from deeplab_dpc.data.splits import (
    IMAGE_EXTENSIONS,
    ListLine,
    example_name,
    find_file,
    label_table,
    parse_list,
    read_list,
    remap_table,
    split_entries,
)


def _touch(path):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return str(path)


# --------------------------------------------------------------------------- parsing


def test_parse_list_takes_names_files_paths_and_pairs():
    text = "a\n\n# comment\n/SegNet/CamVid/train/b.png /SegNet/CamVid/trainannot/b.png\nc.d  # why\n  e.JPG  \nsub/f\n"
    assert parse_list(text) == [
        ListLine(1, "a", "a", None),
        ListLine(4, "b", "/SegNet/CamVid/train/b.png", "/SegNet/CamVid/trainannot/b.png"),
        ListLine(5, "c.d", "c.d", None),  # not an image ending: part of the name
        ListLine(6, "e", "e.JPG", None),
        ListLine(7, "f", "sub/f", None),
    ]
    assert [example_name(f"x{ext}") for ext in IMAGE_EXTENSIONS] == ["x"] * len(IMAGE_EXTENSIONS)
    assert example_name("x.tif") == "x.tif"


def test_parse_list_refuses_three_fields_naming_the_line():
    with pytest.raises(ValueError, match=r"^lists/train\.txt:2: expected 'name' or 'image label', got 'a b c'"):
        parse_list("ok\na b c\n", "lists/train.txt")


def test_read_list_file_needs_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="list file not found: .*nope.txt"):
        splits.read_list_file(tmp_path / "nope.txt")
    (tmp_path / "l.txt").write_text("x.png y.png\nz\n")
    assert splits.list_names(tmp_path / "l.txt") == ["x", "z"]


# --------------------------------------------------------------------------- finding files


def test_find_file_tries_the_folder_then_search_folders_then_the_base_name(tmp_path):
    images, lists = tmp_path / "images", tmp_path / "lists"
    in_lists = _touch(lists / "sub" / "a.png")
    assert find_file("sub/a.png", images, search=[lists]) == in_lists
    in_images = _touch(images / "sub" / "a.png")
    assert find_file("sub/a.png", images, search=[lists]) == in_images  # the folder first
    rerooted = _touch(images / "b.png")
    assert find_file("/SegNet/CamVid/train/b.png", images) == rerooted
    assert find_file(in_lists, images) == in_lists  # an absolute path that exists
    assert find_file("missing.png", images, search=[lists]) is None


def test_stems_take_the_first_image_ending_that_exists(tmp_path):
    jpg = _touch(tmp_path / "a.jpg")
    assert find_file("a", tmp_path, extensions=IMAGE_EXTENSIONS) == jpg
    png = _touch(tmp_path / "a.png")
    assert find_file("a", tmp_path, extensions=IMAGE_EXTENSIONS) == png  # .png comes first
    assert find_file("a.jpg", tmp_path, extensions=IMAGE_EXTENSIONS) == jpg  # a file name is taken as written
    _touch(tmp_path / "c.tif")
    assert find_file("c", tmp_path, extensions=IMAGE_EXTENSIONS) is None
    assert find_file("c.tif", tmp_path, extensions=IMAGE_EXTENSIONS) is None  # not an accepted ending


def test_read_list_pairs_images_with_labels_and_names_every_missing_file(tmp_path):
    for name in ("a", "b"):
        _touch(tmp_path / "img" / f"{name}.jpeg")
        _touch(tmp_path / "lbl" / f"{name}_mask.png")
    (tmp_path / "train.txt").write_text("a\nb.jpeg\n")
    entries = read_list(tmp_path / "train.txt", tmp_path / "img", tmp_path / "lbl", label_suffix="_mask.png")
    assert [(e.name, os.path.basename(e.image_path), os.path.basename(e.label_path)) for e in entries] == [
        ("a", "a.jpeg", "a_mask.png"), ("b", "b.jpeg", "b_mask.png")]
    assert read_list(tmp_path / "train.txt", tmp_path / "img", None)[0].label_path is None
    (tmp_path / "bad.txt").write_text("a\n" + "".join(f"gone{i}\n" for i in range(12)) + "b\n")
    with pytest.raises(FileNotFoundError) as error:
        read_list(tmp_path / "bad.txt", tmp_path / "img", tmp_path / "lbl", label_suffix="_mask.png")
    message = str(error.value)
    assert message.startswith("12 listed file(s) missing")
    assert "bad.txt:2: image 'gone0' not found in" in message and "... and 2 more" in message
    with pytest.raises(FileNotFoundError, match=r"train\.txt:1: label 'a' not found in .*lbl"):
        read_list(tmp_path / "train.txt", tmp_path / "img", tmp_path / "lbl")  # no a.png there
    with pytest.raises(FileNotFoundError, match="label folder not found"):
        read_list(tmp_path / "train.txt", tmp_path / "img", tmp_path / "nowhere")
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no examples"):
        read_list(tmp_path / "empty.txt", tmp_path / "img", None)


def test_split_entries_finds_the_layout(tmp_path):
    _touch(tmp_path / "JPEGImages" / "x.jpg")
    _touch(tmp_path / "SegmentationClassRaw" / "x.png")
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("x\n")
    [entry] = split_entries(tmp_path, "val")
    assert entry.image_path == str(tmp_path / "JPEGImages" / "x.jpg")
    with pytest.raises(FileNotFoundError, match=r"no list file for split 'train'.*train\.txt"):
        split_entries(tmp_path, "train")
    with pytest.raises(ValueError, match="unknown layout 'coco'"):
        split_entries(tmp_path, "val", layout="coco")


# --------------------------------------------------------------------------- label tables


def test_label_tables():
    table = label_table({11: 255, 300: 0})
    assert table.dtype == np.uint8 and table.shape == (256,)
    assert table[[0, 10, 11, 12]].tolist() == [0, 10, 255, 12]
    assert label_table({7: 0}, default=255)[[6, 7, 8]].tolist() == [255, 0, 255]
    with pytest.raises(ValueError, match=r"^label_lut: 1 -> 256: targets must be in 0\.\.255"):
        label_table({1: 256}, what="label_lut")
    assert remap_table(None) is None and remap_table({}) is None
    assert remap_table({11: 255})[11] == 255
    with pytest.raises(ValueError, match=r"^label_remap: 300 -> 0: stored values must be in 0\.\.255"):
        remap_table({300: 0})


# --------------------------------------------------------------------------- every reader agrees


def _write(path, array):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.fixture
def mixed_split(tmp_path):
    """A SegNet-layout split with one image per accepted ending, listed in every way a list allows."""
    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    lines, expected = [], {}
    for i, ext in enumerate(IMAGE_EXTENSIONS):
        name = f"im{i}"
        bgr = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        _write(root / "train" / f"{name}{ext}", bgr)
        label = rng.integers(0, 3, (12, 16), dtype=np.uint8)
        _write(root / "trainannot" / f"{name}.png", label)
        decoded = cv2.imread(str(root / "train" / f"{name}{ext}"))[..., ::-1]  # JPEG is lossy: what it decodes to
        expected[name] = (decoded, label)
        lines.append([name, f"{name}{ext}", f"/SegNet/CamVid/train/{name}{ext} /SegNet/CamVid/trainannot/{name}.png",
                      f"train/{name}{ext} trainannot/{name}.png"][i % 4])
    (root / "train.txt").write_text("# every kind of line\n" + "\n".join(lines) + "\n")
    return root, expected


def _check(samples, expected):
    names = []
    for sample in samples:
        name = sample["image_name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        names.append(name)
        image, label = expected[name]
        np.testing.assert_array_equal(np.asarray(sample["image"]), image, err_msg=name)
        np.testing.assert_array_equal(np.asarray(sample["label"])[..., 0], label, err_msg=name)
    assert names == sorted(expected)


def test_every_reader_takes_the_same_list_file_and_endings(mixed_split, tmp_path):
    """NumPy loader, tf.data folders, and TFRecords converted from the list: same examples, same pixels."""
    tf = pytest.importorskip("tensorflow")
    from deeplab_dpc.data import conversion, input_pipeline, numpy_loader

    root, expected = mixed_split
    folder = numpy_loader.FolderSource.from_split(root, "train")
    _check([folder[i] for i in range(len(folder))], expected)
    _check(list(input_pipeline.folder_source(root, "train").samples().as_numpy_iterator()), expected)

    examples = conversion.examples_from_list(root / "train.txt", root / "train", root / "trainannot")
    quiet = conversion.ShardingConfig(num_shards=1, num_workers=1, progress=False)
    conversion.convert_split(examples, tmp_path / "records", "train", num_classes=3, ignore_label=255, sharding=quiet)
    records = numpy_loader.TFRecordSource(tmp_path / "records", "train")
    _check([records[i] for i in range(len(records))], expected)
    del tf


def test_every_reader_refuses_an_ending_that_one_cannot_decode(mixed_split):
    pytest.importorskip("tensorflow")
    from deeplab_dpc.data import conversion, input_pipeline, numpy_loader

    root, _ = mixed_split
    _write(root / "train" / "odd.tif", np.zeros((12, 16, 3), np.uint8))
    _write(root / "trainannot" / "odd.png", np.zeros((12, 16), np.uint8))
    with open(root / "train.txt", "a") as f:
        f.write("odd.tif\n")
    message = r"train\.txt:\d+: image 'odd\.tif' not found"
    with pytest.raises(FileNotFoundError, match=message):
        numpy_loader.FolderSource.from_split(root, "train")
    with pytest.raises(FileNotFoundError, match=message):
        input_pipeline.folder_source(root, "train")
    with pytest.raises(conversion.ConversionError, match=message):
        conversion.examples_from_list(root / "train.txt", root / "train", root / "trainannot")
