"""tf.data pipelines: sources, batching, determinism, parity with the NumPy loader."""

import pathlib

import cv2
import numpy as np
import pytest
import tensorflow as tf

from deeplab_dpc.data import numpy_loader, tfrecord
from deeplab_dpc.data.input_pipeline import build_dataset, build_pipeline, dataset_source
from deeplab_dpc.data.preprocess import PreprocessConfig


def png(array):
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def random_samples(n=6, sizes=((40, 48),), seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        out.append(
            {
                "image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                "label": rng.integers(0, 12, (h, w, 1), dtype=np.uint8),
                "image_name": f"ex_{i:03d}",
            }
        )
    return out


def write_tfrecords(directory, split, samples, num_shards=2, labels=True):
    """Shards written with part 1's encoder (PNG bytes, DeepLab keys)."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for shard in range(num_shards):
        path = directory / tfrecord.shard_name(split, shard, num_shards)
        with tf.io.TFRecordWriter(str(path)) as writer:
            for s in samples[shard::num_shards]:
                h, w = s["image"].shape[:2]
                writer.write(
                    tfrecord.encode_example(
                        png(s["image"][..., ::-1]),
                        png(s["label"][..., 0]) if labels else None,
                        s["image_name"],
                        "png",
                        h,
                        w,
                    )
                )
    return directory


def write_npz(path, samples):
    numpy_loader.write_npz(
        path,
        [png(s["image"][..., ::-1]) for s in samples],
        [png(s["label"][..., 0]) for s in samples],
        [s["image_name"] for s in samples],
    )
    return path


def in_memory(samples):
    return tf.data.Dataset.from_tensor_slices(
        {k: np.stack([s[k] for s in samples]) for k in ("image", "label", "image_name")}
    )


def batches(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        tf.nest.assert_same_structure(x, y)
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y)):
            np.testing.assert_array_equal(u, v)


TRAIN = PreprocessConfig((32, 40), ignore_label=255)
EVAL = PreprocessConfig((48, 56), is_training=False, ignore_label=255)


# --------------------------------------------------------------------------- shapes


def test_training_tuples_from_tfrecords(tmp_path):
    samples = random_samples(6)
    write_tfrecords(tmp_path, "train", samples)
    ds = build_dataset(tmp_path, "train", TRAIN, 4, seed=0, as_tuple=True)
    assert ds.element_spec[0].shape.as_list() == [4, 32, 40, 3]
    assert ds.element_spec[1].shape.as_list() == [4, 32, 40, 1]
    assert (ds.element_spec[0].dtype, ds.element_spec[1].dtype) == (tf.float32, tf.int32)
    got = batches(ds, 5)  # repeats forever: 20 examples from 6
    assert len(got) == 5
    values = np.unique(np.concatenate([b[1].ravel() for b in got]))
    assert set(values) <= set(range(12)) | {255}


def test_eval_dicts_cover_the_split_once_in_order(tmp_path):
    samples = random_samples(5, sizes=[(40, 48), (30, 52)])
    write_tfrecords(tmp_path, "val", samples, num_shards=1)
    ds = build_dataset(tmp_path, "val", EVAL, 2)
    got = batches(ds, 10)
    assert [len(b["image_name"]) for b in got] == [2, 2, 1]  # remainder kept
    names = [n.decode() for b in got for n in b["image_name"]]
    assert names == [s["image_name"] for s in samples]
    first = got[0]
    assert first["original_image"].shape == (2, 40, 52, 3)  # zero-padded to the largest
    np.testing.assert_array_equal(first["original_image"][1, :30, :52], samples[1]["image"])
    np.testing.assert_array_equal(first["label"][1, :30, :52], samples[1]["label"])
    np.testing.assert_array_equal(first["label"][1, 30:], 255)
    np.testing.assert_array_equal(first["image"][1, :, 52:], 127.5)
    assert list(first["height"]) == [40, 30] and list(first["width"]) == [48, 52]


def test_unlabelled_split_gives_dicts_without_labels(tmp_path):
    write_tfrecords(tmp_path, "test", random_samples(3), num_shards=1, labels=False)
    got = batches(build_dataset(tmp_path, "test", EVAL, 3), 1)[0]
    assert "label" not in got and got["image"].shape == (3, 48, 56, 3)
    with pytest.raises(ValueError, match="as_tuple"):
        build_dataset(tmp_path, "test", EVAL, 3, as_tuple=True)


def test_argument_errors(tmp_path):
    source = in_memory(random_samples(2))
    with pytest.raises(ValueError, match="is_training"):
        build_pipeline(source, EVAL, 2, is_training=True)
    with pytest.raises(ValueError, match="batch_size"):
        build_pipeline(source, EVAL, 0)
    with pytest.raises(ValueError, match="repeat"):
        build_pipeline(source, EVAL, 2, repeat=0)
    with pytest.raises(TypeError, match="PreprocessConfig"):
        build_pipeline(source, {"crop_size": (2, 2)}, 2)
    with pytest.raises(FileNotFoundError, match="train"):
        build_dataset(tmp_path, "train", TRAIN, 2)


# --------------------------------------------------------------------------- determinism


def test_same_seed_same_batches_different_seed_different_crops(tmp_path):
    write_tfrecords(tmp_path, "train", random_samples(8, sizes=[(40, 48), (36, 60)]), num_shards=3)

    def first(seed):
        return batches(build_dataset(tmp_path, "train", TRAIN, 4, seed=seed, as_tuple=True), 4)

    a = first(3)
    assert_batches_equal(a, first(3))
    b = first(4)
    assert any(not np.array_equal(x[0], y[0]) for x, y in zip(a, b))


def test_each_pass_reshuffles_and_reaugments_reproducibly():
    samples = random_samples(8)

    def passes(seed):
        ds = build_pipeline(in_memory(samples), TRAIN, 4, seed=seed, repeat=1, as_tuple=True)
        return [batches(ds, 2) for _ in range(2)]  # iterate the same dataset twice

    first, again = passes(5), passes(5)
    assert_batches_equal(first[0], again[0])
    assert_batches_equal(first[1], again[1])
    assert not np.array_equal(first[0][0][0], first[1][0][0])


def test_in_memory_source_matches_eager_preprocessing_without_augmentation():
    samples = random_samples(3)
    got = batches(build_pipeline(in_memory(samples), EVAL, 3), 1)[0]
    from deeplab_dpc.data.preprocess import preprocess_sample

    for i, s in enumerate(samples):
        eager = preprocess_sample(s, EVAL)
        np.testing.assert_array_equal(got["image"][i], eager["image"].numpy())
        np.testing.assert_array_equal(got["label"][i], eager["label"].numpy())


# --------------------------------------------------------------------------- parity with NumPy


def _numpy_batches(source, config, batch_size, n):
    ds = numpy_loader.SegmentationPyDataset(source, config, batch_size, as_tuple=False)
    return [ds[i] for i in range(min(n, len(ds)))]


def _assert_same_eval_batches(tf_batches, np_batches, exact_images=True):
    assert len(tf_batches) == len(np_batches)
    for t, n in zip(tf_batches, np_batches):
        assert [x.decode() for x in t["image_name"]] == list(n["image_name"])
        np.testing.assert_array_equal(t["label"], n["label"])
        assert t["image"].dtype == n["image"].dtype and t["label"].dtype == n["label"].dtype
        if exact_images:
            np.testing.assert_array_equal(t["image"], n["image"])
            np.testing.assert_array_equal(t["original_image"], n["original_image"])
        else:
            np.testing.assert_allclose(t["image"], n["image"], atol=5e-3)


def test_numpy_loader_equals_tf_pipeline_on_camvid(camvid_root):
    config = PreprocessConfig((360, 480), is_training=False, ignore_label=255)
    remap = {11: 255}
    tf_batches = batches(build_dataset(camvid_root, "val", config, 4, dataset="folder", label_remap=remap), 2)
    source = numpy_loader.FolderSource.from_split(camvid_root, "val", label_remap=remap)
    np_batches = _numpy_batches(source, config, 4, 2)
    _assert_same_eval_batches(tf_batches, np_batches)
    assert 255 in tf_batches[0]["label"]  # void was remapped in both


def test_numpy_loader_equals_tf_pipeline_on_generated_data(tmp_path):
    samples = random_samples(5, sizes=[(40, 48), (30, 52)])
    write_tfrecords(tmp_path / "rec", "val", samples, num_shards=2)
    write_npz(tmp_path / "val.npz", samples)
    tf_batches = batches(build_dataset(tmp_path / "rec", "val", EVAL, 2), 10)
    # TFRecord shards interleave: compare by name through the NumPy sources.
    order = [n.decode() for b in tf_batches for n in b["image_name"]]
    for source in (numpy_loader.NpzSource(tmp_path / "val.npz"), numpy_loader.TFRecordSource(tmp_path / "rec", "val")):
        by_name = {s["image_name"]: s for s in (source[i] for i in range(len(source)))}
        by_name = [by_name[name] for name in order]
        _assert_same_eval_batches(tf_batches, _numpy_batches(by_name, EVAL, 2, 10))
    # With resizing the two differ by float rounding only.
    resized = EVAL.replace(min_resize_value=30, max_resize_value=45)
    tf_batches = batches(build_dataset(tmp_path / "rec", "val", resized, 2), 10)
    _assert_same_eval_batches(tf_batches, _numpy_batches(by_name, resized, 2, 10), exact_images=False)


def test_jpeg_folders_decode_identically_in_tf_and_numpy(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "val").mkdir()
    (tmp_path / "valannot").mkdir()
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (45, 61, 3), dtype=np.uint8), (7, 7), 2)
    cv2.imwrite(str(tmp_path / "val" / "a.jpg"), smooth, [cv2.IMWRITE_JPEG_QUALITY, 80])
    cv2.imwrite(str(tmp_path / "valannot" / "a.png"), rng.integers(0, 5, (45, 61), dtype=np.uint8))
    (tmp_path / "val.txt").write_text("a\n")
    tf_batches = batches(build_dataset(tmp_path, "val", EVAL, 1, dataset="folder"), 1)
    np_batches = _numpy_batches(numpy_loader.FolderSource.from_split(tmp_path, "val"), EVAL, 1, 1)
    _assert_same_eval_batches(tf_batches, np_batches)


def test_same_pipeline_for_folder_and_tfrecord_sources(tmp_path):
    samples = random_samples(4)
    write_tfrecords(tmp_path / "rec", "train", samples, num_shards=1)
    root = tmp_path / "folder"
    (root / "train").mkdir(parents=True)
    (root / "trainannot").mkdir()
    for s in samples:
        (root / "train" / f"{s['image_name']}.png").write_bytes(png(s["image"][..., ::-1]))
        (root / "trainannot" / f"{s['image_name']}.png").write_bytes(png(s["label"][..., 0]))
    (root / "train.txt").write_text("\n".join(s["image_name"] for s in samples))
    a = batches(build_dataset(tmp_path / "rec", "train", TRAIN, 2, seed=9, as_tuple=True), 3)
    b = batches(build_dataset(root, "train", TRAIN, 2, seed=9, as_tuple=True, dataset="folder"), 3)
    assert_batches_equal(a, b)


# --------------------------------------------------------------------------- dispatch and fit


def test_dataset_source_dispatch(tmp_path):
    samples = random_samples(3)
    write_tfrecords(tmp_path, "val", samples, num_shards=1)
    for spec in ("tfrecord", "camvid", None):
        got = [s["image_name"].numpy().decode() for s in dataset_source(spec, tmp_path, "val")]
        assert got == [s["image_name"] for s in samples]
    with pytest.raises(ValueError, match="tfds:NAME"):
        dataset_source("tfds:", None, "val")
    with pytest.raises(FileNotFoundError, match="no list file"):
        dataset_source("folder", tmp_path, "val")


def test_model_fit_consumes_the_tuple_dataset(tmp_path):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data feeding is tested on the TensorFlow backend")
    write_tfrecords(tmp_path, "train", random_samples(6), num_shards=1)
    ds = build_dataset(tmp_path, "train", TRAIN, 2, seed=0, as_tuple=True)
    model = keras.Sequential([keras.Input((32, 40, 3)), keras.layers.Conv2D(12, 1)])
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
    # Learning rate 0: the weights stay put, so fit's loss is the mean loss of the
    # first two (image, label) batches of the same seeded pipeline.
    model.compile(keras.optimizers.SGD(0.0), loss)
    again = build_dataset(tmp_path, "train", TRAIN, 2, seed=0, as_tuple=True)
    expected = [float(loss(labels, model(images))) for images, labels in again.take(2)]
    assert abs(expected[0] - expected[1]) > 1e-3  # two different batches
    history = model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
    assert history.history["loss"][0] == pytest.approx(np.mean(expected), rel=1e-5)
