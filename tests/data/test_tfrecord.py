"""DeepLab's record format: exact round trips, hand-written DeepLab records, shard discovery."""

import os
import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import tfrecord
from deeplab_dpc.data.tfrecord import (
    decode_example,
    encode_example,
    iterate_records,
    read_records,
    shard_name,
    shard_paths,
)
from tools import build_camvid_data


def _rgb(height, width, seed):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png(rgb):
    return cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))[1].tobytes()


def _label_png(label):
    return cv2.imencode(".png", label)[1].tobytes()


def _write_shard(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


def _by_name(dataset):
    return {s["image_name"].numpy().decode(): {k: v.numpy() for k, v in s.items()} for s in dataset}


def test_png_round_trip_is_exact(tmp_path):
    images, labels = {}, {}
    records = []
    for i, (h, w) in enumerate([(37, 53), (20, 20), (64, 31)]):
        images[f"im{i}"] = _rgb(h, w, i)
        labels[f"im{i}"] = np.random.default_rng(10 + i).choice([0, 1, 2, 255], (h, w)).astype(np.uint8)
        records.append(encode_example(_png(images[f"im{i}"]), _label_png(labels[f"im{i}"]), f"im{i}", "png", h, w))
    _write_shard(tmp_path / shard_name("train", 0, 2), records[:2])
    _write_shard(tmp_path / shard_name("train", 1, 2), records[2:])

    decoded = _by_name(read_records(tmp_path, "train"))
    assert sorted(decoded) == ["im0", "im1", "im2"]
    for name, sample in decoded.items():
        assert sample["image"].dtype == np.uint8 and sample["label"].dtype == np.uint8
        np.testing.assert_array_equal(sample["image"], images[name])
        np.testing.assert_array_equal(sample["label"][..., 0], labels[name])
        assert sample["label"].shape == labels[name].shape + (1,)
        assert (sample["height"], sample["width"]) == images[name].shape[:2]


def test_jpeg_round_trip_matches_opencv_decode(tmp_path):
    rgb = _rgb(48, 40, 3)
    jpeg = cv2.imencode(".jpg", np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
    label = np.zeros((48, 40), np.uint8)
    _write_shard(tmp_path / shard_name("val", 0, 1), [encode_example(jpeg, _label_png(label), "j", "jpg", 48, 40)])

    record = next(iterate_records(tmp_path / shard_name("val", 0, 1)))
    assert record["image/format"] == b"jpeg"  # DeepLab's name for jpg
    assert record["image/encoded"] == jpeg  # stored as the original bytes

    sample = _by_name(read_records(tmp_path, "val"))["j"]
    reference = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert not np.array_equal(reference, rgb)  # lossy, so the comparison below means something
    np.testing.assert_array_equal(sample["image"], reference)


def test_record_written_by_hand_with_deeplab_keys(tmp_path):
    # As DeepLab's build_data.image_seg_to_tfexample writes it, built directly from the protos.
    rgb = _rgb(9, 7, 5)
    label = np.arange(63, dtype=np.uint8).reshape(9, 7) % 21
    image_png, label_png = _png(rgb), _label_png(label)

    def b(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def i(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": b(image_png),
        "image/filename": b(b"2007_000032"),
        "image/format": b(b"png"),
        "image/height": i(9),
        "image/width": i(7),
        "image/channels": i(3),
        "image/segmentation/class/encoded": b(label_png),
        "image/segmentation/class/format": b(b"png"),
    }))
    serialized = example.SerializeToString()

    sample = decode_example(tf.constant(serialized))
    np.testing.assert_array_equal(sample["image"].numpy(), rgb)
    np.testing.assert_array_equal(sample["label"].numpy()[..., 0], label)
    assert sample["image_name"].numpy() == b"2007_000032"
    assert (int(sample["height"]), int(sample["width"])) == (9, 7)
    assert sample["height"].dtype == tf.int32

    # The same record through a shard and tf.data, and through the pure-Python reader.
    _write_shard(tmp_path / "train-00000-of-00001.tfrecord", [serialized])
    np.testing.assert_array_equal(_by_name(read_records(tmp_path, "train"))["2007_000032"]["image"], rgb)
    raw = next(iterate_records(tmp_path / "train-00000-of-00001.tfrecord"))
    assert raw == {
        "image/encoded": image_png,
        "image/filename": b"2007_000032",
        "image/format": b"png",
        "image/height": 9,
        "image/width": 7,
        "image/channels": 3,
        "image/segmentation/class/encoded": label_png,
        "image/segmentation/class/format": b"png",
    }


def test_pure_python_parser_matches_protobuf():
    example = tf.train.Example(features=tf.train.Features(feature={
        "ints": tf.train.Feature(int64_list=tf.train.Int64List(value=[-5, 0, 2**40, 300])),
        "floats": tf.train.Feature(float_list=tf.train.FloatList(value=[0.5, -2.25])),
        "strings": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"a", b"", b"\x00\xff"])),
        "one": tf.train.Feature(int64_list=tf.train.Int64List(value=[-1])),
        "empty": tf.train.Feature(),
    }))
    parsed = tfrecord.parse_example(example.SerializeToString())
    assert parsed == {
        "ints": [-5, 0, 2**40, 300],
        "floats": [0.5, -2.25],
        "strings": [b"a", b"", b"\x00\xff"],
        "one": -1,
        "empty": [],
    }


def test_encode_example_fields():
    record = tfrecord.parse_example(encode_example(b"img", b"lbl", "name", "png", 3, 4))
    assert record == {
        "image/encoded": b"img",
        "image/filename": b"name",
        "image/format": b"png",
        "image/height": 3,
        "image/width": 4,
        "image/channels": 3,
        "image/segmentation/class/encoded": b"lbl",
        "image/segmentation/class/format": b"png",
    }
    with pytest.raises(ValueError, match="unsupported image format 'tiff'"):
        encode_example(b"img", b"lbl", "name", "tiff", 3, 4)


def test_unlabelled_records_have_no_label(tmp_path):
    rgb = _rgb(6, 5, 1)
    serialized = encode_example(_png(rgb), None, "t0", "png", 6, 5)
    assert "image/segmentation/class/encoded" not in tfrecord.parse_example(serialized)

    sample = decode_example(tf.constant(serialized))  # eager: decided by the record
    assert "label" not in sample
    np.testing.assert_array_equal(sample["image"].numpy(), rgb)

    _write_shard(tmp_path / shard_name("test", 0, 1), [serialized])
    samples = list(read_records(tmp_path, "test"))
    assert len(samples) == 1 and set(samples[0]) == {"image", "image_name", "height", "width"}

    with pytest.raises(tf.errors.InvalidArgumentError, match="record has no label"):
        decode_example(tf.constant(serialized), with_label=True)


def test_shard_paths_takes_only_complete_shards_of_the_split(tmp_path):
    for name in [
        "train-00001-of-00003.tfrecord",
        "train-00000-of-00003.tfrecord",
        "train_aug-00000-of-00001.tfrecord",  # another split
        ".train-00002-of-00003.tfrecord.tmp-1234",  # being written
        "train.manifest.json",
        "train-00002-of-00003.tfrecord.bak",
    ]:
        (tmp_path / name).write_bytes(b"")
    assert [os.path.basename(p) for p in shard_paths(tmp_path, "train")] == [
        "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord",
    ]
    assert [os.path.basename(p) for p in shard_paths(str(tmp_path), "train_aug")] == [
        "train_aug-00000-of-00001.tfrecord"
    ]


def test_shard_paths_errors_name_folder_and_split(tmp_path):
    (tmp_path / "val-00000-of-00001.tfrecord").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=f"split 'train' in {tmp_path}.*splits found there: val"):
        shard_paths(tmp_path, "train")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        shard_paths(tmp_path / "nowhere", "train")
    (tmp_path / "val-00000-of-00002.tfrecord").write_bytes(b"")
    with pytest.raises(ValueError, match="different totals"):
        shard_paths(tmp_path, "val")


def test_truncated_shard_is_named(tmp_path):
    path = tmp_path / shard_name("train", 0, 1)
    _write_shard(path, [encode_example(b"x" * 100, b"y", f"n{i}", "png", 1, 1) for i in range(3)])
    assert tfrecord.count_records(path) == 3
    assert tfrecord.count_examples(tmp_path, "train") == 3
    assert len(list(iterate_records(path, verify_data_crc=True))) == 3
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(tfrecord.RecordError, match=f"{path}: truncated record"):
        list(iterate_records(path))
    with pytest.raises(tfrecord.RecordError, match=str(path)):
        tfrecord.count_records(path)
    corrupt = bytearray(data)
    corrupt[-20] ^= 0xFF
    path.write_bytes(bytes(corrupt))
    with pytest.raises(tfrecord.RecordError, match="corrupt record data"):
        list(iterate_records(path, verify_data_crc=True))


def test_camvid_files_round_trip(tmp_path, camvid_root):
    examples = build_camvid_data.list_examples(str(camvid_root), "train")[:5]
    result = build_camvid_data.convert(
        examples, str(tmp_path), "train",
        build_camvid_data.conversion.ShardingConfig(num_shards=2, num_workers=2, progress=False),
    )
    assert result.num_examples == 5 and len(shard_paths(tmp_path, "train")) == 2

    decoded = _by_name(read_records(tmp_path, "train"))
    assert sorted(decoded) == sorted(e.name for e in examples)
    saw_void = False
    for example in examples:
        sample = decoded[example.name]
        image = cv2.imread(example.image_path, cv2.IMREAD_COLOR)[..., ::-1]
        raw = cv2.imread(example.label_path, cv2.IMREAD_UNCHANGED)
        assert image.shape == (360, 480, 3) and raw.shape == (360, 480)
        np.testing.assert_array_equal(sample["image"], image)
        expected = np.where(raw == 11, 255, raw)
        np.testing.assert_array_equal(sample["label"][..., 0], expected)
        saw_void |= bool((raw == 11).any())
        assert set(np.unique(sample["label"])) <= set(range(11)) | {255}
        # The stored image is the original file, byte for byte.
        stored = {r["image/filename"]: r for p in shard_paths(tmp_path, "train") for r in iterate_records(p)}
        assert stored[example.name.encode()]["image/encoded"] == pathlib.Path(example.image_path).read_bytes()
    assert saw_void, "the first CamVid images should contain void pixels"
