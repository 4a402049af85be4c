"""Conversion: verified pairs, errors naming files, shards that are whole or invisible, resume."""

import json
import os
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from deeplab_dpc.data import conversion, tfrecord
from deeplab_dpc.data.conversion import (
    ConversionError,
    ShardingConfig,
    SourceExample,
    convert_split,
    label_lut,
    plan_shards,
)

QUIET = ShardingConfig(num_shards=3, num_workers=2, progress=False)


def _write_image(path, rgb):
    path = str(path)
    if path.endswith(".jpg"):
        ok = cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    else:
        ok = cv2.imwrite(path, np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return path


def _write_label(path, label):
    assert cv2.imwrite(str(path), label.astype(np.uint8))
    return str(path)


def _make_examples(root, count, *, size=(12, 16), values=(0, 1, 2, 255), ext=".png", seed=0, prefix="ex"):
    """``count`` random image/label pairs under ``root``; returns examples and the arrays."""
    rng = np.random.default_rng(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "lbl").mkdir(exist_ok=True)
    examples, arrays = [], {}
    for i in range(count):
        name = f"{prefix}{i:03d}"
        rgb = rng.integers(0, 256, size + (3,), dtype=np.uint8)
        label = rng.choice(values, size).astype(np.uint8)
        image_path = _write_image(root / "img" / (name + ext), rgb)
        label_path = _write_label(root / "lbl" / (name + ".png"), label)
        examples.append(SourceExample(image_path, label_path, name))
        arrays[name] = (rgb, label)
    return examples, arrays


def _read_all(output_dir, split):
    """name -> (image, label) decoded with the tf.data reader."""
    out = {}
    for sample in tfrecord.read_records(output_dir, split):
        name = sample["image_name"].numpy().decode()
        out[name] = (sample["image"].numpy(), sample["label"].numpy()[..., 0] if "label" in sample else None)
    return out


def _count(output_dir, split):
    return tfrecord.count_examples(output_dir, split)


# --------------------------------------------------------------------------- pure functions


def test_plan_shards():
    assert plan_shards(10, num_shards=4) == [3, 3, 2, 2]
    assert plan_shards(10, num_shards=1) == [10]
    assert plan_shards(3, num_shards=10) == [1, 1, 1]  # never an empty shard
    assert plan_shards(10, examples_per_shard=4) == [4, 4, 2]
    assert plan_shards(8, examples_per_shard=4) == [4, 4]
    assert sum(plan_shards(367, num_shards=4)) == 367
    with pytest.raises(ValueError):
        plan_shards(0, num_shards=2)
    with pytest.raises(ValueError):
        plan_shards(5, num_shards=2, examples_per_shard=2)


def test_sharding_from_flags():
    assert ShardingConfig.from_flags(num_shards=4).num_shards == 4
    s = ShardingConfig.from_flags(num_shards=4, examples_per_shard=50, num_workers=0)
    assert (s.num_shards, s.examples_per_shard, s.num_workers) == (None, 50, None)
    with pytest.raises(ValueError):
        ShardingConfig(num_shards=0)


def test_label_lut():
    camvid = label_lut({11: 255})
    label = np.array([[0, 10, 11, 12]], np.uint8)
    assert camvid(label).tolist() == [[0, 10, 255, 12]]  # 12 unchanged: caught later by the range check
    assert camvid(label).dtype == np.uint8
    strict = label_lut({7: 0, 8: 1}, default=255)
    assert strict(np.array([[7, 8, 9, 0]], np.uint8)).tolist() == [[0, 1, 255, 255]]
    # Wider dtypes (16-bit label PNGs) take the slow path with the same result.
    assert strict(np.array([[7, 8, 9, 300]], np.uint16)).tolist() == [[0, 1, 255, 255]]
    assert camvid(np.array([[11, 300]], np.uint16)).tolist() == [[255, 300]]
    with pytest.raises(ValueError):
        label_lut({1: 256})


def test_read_label_gives_palette_indices(tmp_path):
    indices = np.array([[0, 1, 15], [255, 20, 0]], np.uint8)
    image = Image.fromarray(indices, mode="P")
    palette = np.random.default_rng(0).integers(0, 256, 768).astype(np.uint8)
    image.putpalette(palette.tolist())
    image.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(conversion.read_label(str(tmp_path / "voc.png")), indices)
    # Grey 16-bit labels keep their values.
    Image.fromarray(np.array([[0, 300]], np.uint16)).save(tmp_path / "wide.png")
    assert conversion.read_label(str(tmp_path / "wide.png")).tolist() == [[0, 300]]


# --------------------------------------------------------------------------- round trips


def test_png_and_jpeg_round_trip(tmp_path):
    pngs, arrays = _make_examples(tmp_path / "p", 5)
    jpegs, jarrays = _make_examples(tmp_path / "j", 2, ext=".jpg", seed=1, prefix="jpeg")
    result = convert_split(pngs + jpegs, tmp_path / "out", "train", num_classes=3, ignore_label=255, sharding=QUIET)
    assert result.num_examples == 7 and result.shards_written == 3 and result.shards_skipped == 0
    assert [os.path.basename(p) for p in tfrecord.shard_paths(tmp_path / "out", "train")] == [
        "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord",
    ]
    decoded = _read_all(tmp_path / "out", "train")
    assert len(decoded) == 7
    for name, (rgb, label) in arrays.items():
        np.testing.assert_array_equal(decoded[name][0], rgb)
        np.testing.assert_array_equal(decoded[name][1], label)
    for example in jpegs:
        reference = cv2.imread(example.image_path, cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(decoded[example.name][0], reference)
        np.testing.assert_array_equal(decoded[example.name][1], jarrays[example.name][1])
    manifest = json.loads((tmp_path / "out" / "train.manifest.json").read_text())
    assert manifest["complete"] and manifest["shard_sizes"] == [3, 2, 2] and manifest["num_examples"] == 7


def test_label_fn_and_palette_labels(tmp_path):
    (tmp_path / "img").mkdir()
    rgb = np.zeros((4, 5, 3), np.uint8)
    indices = np.array([[0, 1, 2, 11, 11]] * 4, np.uint8)
    _write_image(tmp_path / "img" / "a.png", rgb)
    image = Image.fromarray(indices, mode="P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [255, 255, 255] * 253)
    image.save(tmp_path / "a_label.png")
    example = SourceExample(str(tmp_path / "img" / "a.png"), str(tmp_path / "a_label.png"), "a")
    convert_split([example], tmp_path / "out", "val", num_classes=11, ignore_label=255,
                  label_fn=label_lut({11: 255}), sharding=QUIET)
    _, label = _read_all(tmp_path / "out", "val")["a"]
    assert label.tolist() == [[0, 1, 2, 255, 255]] * 4


def test_unlabelled_examples(tmp_path):
    examples, arrays = _make_examples(tmp_path, 2)
    examples = [SourceExample(e.image_path, None, e.name) for e in examples]
    convert_split(examples, tmp_path / "out", "test", num_classes=3, ignore_label=255, sharding=QUIET)
    decoded = _read_all(tmp_path / "out", "test")
    assert all(label is None for _, label in decoded.values())
    np.testing.assert_array_equal(decoded["ex000"][0], arrays["ex000"][0])


def test_progress_line_without_tqdm(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if tqdm were not installed
    examples, _ = _make_examples(tmp_path, 3)
    convert_split(examples, tmp_path / "out", "train", num_classes=3, ignore_label=255,
                  sharding=ShardingConfig(num_shards=1, progress=True))
    assert "train: 3/3 examples" in capsys.readouterr().err


def test_shuffle_seed_is_deterministic(tmp_path):
    examples, _ = _make_examples(tmp_path, 6)

    def names(out, seed):
        convert_split(examples, out, "train", num_classes=3, ignore_label=255,
                      sharding=ShardingConfig(num_shards=2, shuffle_seed=seed, progress=False))
        return [r["image/filename"] for p in tfrecord.shard_paths(out, "train") for r in tfrecord.iterate_records(p)]

    first, again, listed = names(tmp_path / "a", 7), names(tmp_path / "b", 7), names(tmp_path / "c", None)
    assert first == again and sorted(first) == listed and first != listed


# --------------------------------------------------------------------------- errors name the file


def _convert(examples, out, **kwargs):
    kwargs.setdefault("num_classes", 3)
    kwargs.setdefault("ignore_label", 255)
    return convert_split(examples, out, "train", sharding=QUIET, **kwargs)


def test_size_mismatch_names_both_files(tmp_path):
    examples, _ = _make_examples(tmp_path, 3)
    _write_label(examples[1].label_path, np.zeros((12, 15), np.uint8))
    with pytest.raises(ConversionError, match=r"label .*ex001.png is 12x15 \(HxW\) but image .*ex001.png is 12x16"):
        _convert(examples, tmp_path / "out")


def test_out_of_range_label_names_file_and_values(tmp_path):
    examples, _ = _make_examples(tmp_path, 3)
    _write_label(examples[2].label_path, np.full((12, 16), 7, np.uint8))
    with pytest.raises(ConversionError, match=r"label .*lbl/ex002.png holds values \[7\].*< 3.*ignore label 255"):
        _convert(examples, tmp_path / "out")


def test_undecodable_image_is_named(tmp_path):
    examples, _ = _make_examples(tmp_path, 3)
    data = open(examples[1].image_path, "rb").read()
    with open(examples[1].image_path, "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated PNG
    with pytest.raises(ConversionError, match=r"cannot decode image .*img/ex001.png"):
        _convert(examples, tmp_path / "out")
    with open(examples[1].image_path, "wb") as f:
        f.write(b"not an image at all")
    with pytest.raises(ConversionError, match=r"image .*img/ex001.png is not a PNG, JPEG or BMP"):
        _convert(examples, tmp_path / "out2")


def test_undecodable_or_colour_label_is_named(tmp_path):
    examples, _ = _make_examples(tmp_path, 2)
    with open(examples[0].label_path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(ConversionError, match=r"cannot decode label .*lbl/ex000.png"):
        _convert(examples, tmp_path / "out")
    _write_image(examples[0].label_path, np.zeros((12, 16, 3), np.uint8))
    with pytest.raises(ConversionError, match=r"label .*lbl/ex000.png is a RGB image"):
        _convert(examples, tmp_path / "out")


def test_missing_files_are_named_before_any_work(tmp_path):
    examples, _ = _make_examples(tmp_path, 3)
    os.remove(examples[2].label_path)
    with pytest.raises(ConversionError, match=r"label file .*lbl/ex002.png does not exist \(for image .*ex002.png\)"):
        _convert(examples, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written
    os.remove(examples[1].image_path)
    with pytest.raises(ConversionError, match=r"image file .*img/ex001.png does not exist"):
        _convert(examples, tmp_path / "out")


def test_list_file_naming_a_missing_image(tmp_path):
    _make_examples(tmp_path, 2)
    (tmp_path / "train.txt").write_text("ex000\nex001\nex999\n")
    with pytest.raises(ConversionError, match=r"train\.txt:3: image 'ex999' not found in .*img \(endings \.png, "):
        conversion.examples_from_list(tmp_path / "train.txt", tmp_path / "img", tmp_path / "lbl")


def test_duplicate_names_are_refused(tmp_path):
    examples, _ = _make_examples(tmp_path, 2)
    twice = [examples[0], SourceExample(examples[1].image_path, examples[1].label_path, "ex000")]
    with pytest.raises(ConversionError, match="two examples are named 'ex000'"):
        _convert(twice, tmp_path / "out")


# --------------------------------------------------------------------------- interruption and resume


class _FailOn:
    """A label function that raises on the n-th label it sees."""

    def __init__(self, n):
        self.n, self.seen = n, 0

    def __call__(self, label):
        self.seen += 1
        if self.seen == self.n:
            raise RuntimeError("simulated crash")
        return label


def test_interrupted_conversion_leaves_only_whole_shards_and_resumes(tmp_path):
    examples, arrays = _make_examples(tmp_path, 10)
    out = tmp_path / "out"
    sharding = ShardingConfig(examples_per_shard=3, num_workers=1, progress=False)  # shards of 3, 3, 3, 1
    with pytest.raises(ConversionError, match=r"label .*lbl/ex007.png: label conversion failed.*simulated crash"):
        convert_split(examples, out, "train", num_classes=3, ignore_label=255, label_fn=_FailOn(8), sharding=sharding)
    # Examples 0..5 made two whole shards; shard 2 (examples 6..8) was in progress.
    complete = tfrecord.shard_paths(out, "train")
    assert [os.path.basename(p) for p in complete] == ["train-00000-of-00004.tfrecord", "train-00001-of-00004.tfrecord"]
    assert _count(out, "train") == 6
    assert sorted(os.listdir(out)) == sorted([os.path.basename(p) for p in complete] + ["train.manifest.json"])
    assert not json.loads((out / "train.manifest.json").read_text())["complete"]
    before = {p: os.stat(p).st_mtime_ns for p in complete}

    result = convert_split(examples, out, "train", num_classes=3, ignore_label=255, sharding=sharding)
    assert (result.shards_skipped, result.shards_written, result.examples_written) == (2, 2, 4)
    assert {p: os.stat(p).st_mtime_ns for p in complete} == before  # not rewritten
    assert len(tfrecord.shard_paths(out, "train")) == 4 and _count(out, "train") == 10
    decoded = _read_all(out, "train")
    assert sorted(decoded) == sorted(arrays)
    for name, (rgb, label) in arrays.items():
        np.testing.assert_array_equal(decoded[name][0], rgb)
        np.testing.assert_array_equal(decoded[name][1], label)
    assert json.loads((out / "train.manifest.json").read_text())["complete"]


def test_killed_writer_leaves_an_invisible_partial_file_that_a_rerun_removes(tmp_path, monkeypatch):
    examples, _ = _make_examples(tmp_path, 4)
    out = tmp_path / "out"
    sharding = ShardingConfig(num_shards=2, num_workers=1, progress=False)
    real_replace = os.replace
    calls = []

    def dying_replace(src, dst):  # the process "dies" right before renaming its second shard
        if str(dst).endswith(".tfrecord"):
            calls.append(dst)
            if len(calls) == 2:
                raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(conversion.os, "replace", dying_replace)
    # An uncatchable death would also leave the temp file; simulate one by keeping it.
    monkeypatch.setattr(conversion.os, "remove", lambda path: None)
    with pytest.raises(KeyboardInterrupt):
        convert_split(examples, out, "train", num_classes=3, ignore_label=255, sharding=sharding)
    monkeypatch.undo()

    leftovers = [n for n in os.listdir(out) if ".tmp-" in n]
    assert len(leftovers) == 1 and leftovers[0].startswith(".train-00001-of-00002.tfrecord.tmp-")
    assert tfrecord.count_records(out / leftovers[0]) == 2  # a whole-looking file, but hidden from readers
    assert [os.path.basename(p) for p in tfrecord.shard_paths(out, "train")] == ["train-00000-of-00002.tfrecord"]

    result = convert_split(examples, out, "train", num_classes=3, ignore_label=255, sharding=sharding)
    assert (result.shards_skipped, result.shards_written) == (1, 1)
    assert _count(out, "train") == 4
    assert not [n for n in os.listdir(out) if ".tmp-" in n]


def test_rerun_with_another_list_is_refused(tmp_path):
    examples, _ = _make_examples(tmp_path, 4)
    out = tmp_path / "out"
    _convert(examples, out)
    with pytest.raises(ConversionError, match="different names_sha256"):
        _convert(examples[::-1], out)
    with pytest.raises(ConversionError, match="different shard_sizes"):
        _convert(examples[:3], out)
    with pytest.raises(ConversionError, match="different num_shards"):
        convert_split(examples, out, "train", num_classes=3, ignore_label=255,
                      sharding=ShardingConfig(num_shards=2, progress=False))
    # Same inputs: nothing to do.
    result = _convert(examples, out)
    assert result.shards_written == 0 and result.shards_skipped == 3


def test_shards_without_manifest_are_refused(tmp_path):
    examples, _ = _make_examples(tmp_path, 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "train-00000-of-00007.tfrecord").write_bytes(b"")
    with pytest.raises(ConversionError, match="already holds shards of split 'train'"):
        _convert(examples, out)
