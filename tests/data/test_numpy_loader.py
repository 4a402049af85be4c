"""The TensorFlow-free loader: readers, list files, npz, PyDataset, no-TF and JAX runs."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import pytest

from deeplab_dpc.data import numpy_loader
from deeplab_dpc.data.numpy_loader import FolderSource, NpzSource, SegmentationPyDataset, write_npz
from deeplab_dpc.data.splits import read_list, split_entries
from deeplab_dpc.data.preprocess import PreprocessConfig

REPO = pathlib.Path(__file__).resolve().parents[2]


def png(array):
    ok, buf = cv2.imencode(".png", array)
    assert ok
    return buf.tobytes()


def make_segnet(root, split="train", sizes=((40, 48),) * 6, seed=0):
    """Writes a SegNet-layout split of random RGB images and labels 0..11."""
    rng = np.random.default_rng(seed)
    root = pathlib.Path(root)
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / f"{split}annot").mkdir(exist_ok=True)
    names = []
    for i, (h, w) in enumerate(sizes):
        name = f"img_{i:03d}"
        rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        (root / split / f"{name}.png").write_bytes(png(rgb[..., ::-1]))  # cv2 writes BGR
        (root / f"{split}annot" / f"{name}.png").write_bytes(png(rng.integers(0, 12, (h, w), dtype=np.uint8)))
        names.append(name)
    (root / f"{split}.txt").write_text("\n".join(names) + "\n")
    return root


# --------------------------------------------------------------------------- readers


def test_folder_source_reads_camvid(camvid_root):
    source = FolderSource.from_split(camvid_root, "val")
    assert len(source) == 101
    assert source.names == (camvid_root / "val.txt").read_text().split()
    sample = source[0]
    assert sample["image"].shape == (360, 480, 3) and sample["image"].dtype == np.uint8
    assert sample["label"].shape == (360, 480, 1) and sample["label"].dtype == np.uint8
    assert (sample["height"], sample["width"]) == (360, 480)
    # The files' pixels, in RGB order (OpenCV reads BGR), and the annotation's class ids:
    # this image holds all 11 classes and void (11).
    name = source.names[0]
    bgr = cv2.imread(str(camvid_root / "val" / f"{name}.png"))
    np.testing.assert_array_equal(sample["image"], bgr[:, :, ::-1])
    annotation = cv2.imread(str(camvid_root / "valannot" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    np.testing.assert_array_equal(sample["label"][..., 0], annotation)
    assert np.unique(sample["label"]).tolist() == list(range(12))
    # CamVid's sky (label 0) is pale blue: measured mean RGB (221, 254, 255).
    sky = sample["label"][..., 0] == 0
    assert sky.sum() == 15008
    assert sample["image"][sky][:, 2].mean() - sample["image"][sky][:, 0].mean() > 20


def test_label_remap_maps_void_to_ignore(tmp_path):
    root = make_segnet(tmp_path)
    plain = FolderSource.from_split(root, "train")[0]["label"]
    remapped = FolderSource.from_split(root, "train", label_remap={11: 255})[0]["label"]
    np.testing.assert_array_equal(remapped, np.where(plain == 11, 255, plain))


def test_missing_list_entries_name_the_list_file_and_line(tmp_path):
    root = make_segnet(tmp_path)
    (root / "train.txt").write_text("img_000\nimg_999\n\nimg_001\n")
    with pytest.raises(FileNotFoundError, match=r"train\.txt:2: image 'img_999'"):
        split_entries(root, "train")
    (root / "trainannot" / "img_001.png").unlink()
    (root / "train.txt").write_text("img_000\nimg_001\n")
    with pytest.raises(FileNotFoundError, match=r"train\.txt:2: label 'img_001'"):
        split_entries(root, "train")


def test_missing_list_file_and_unknown_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match="val"):
        split_entries(tmp_path, "val")
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_list(tmp_path / "nope.txt", tmp_path, None)
    make_segnet(tmp_path)
    with pytest.raises(ValueError, match="layout"):
        split_entries(tmp_path, "train", layout="coco")


def test_segnet_two_path_lists_are_rerooted(tmp_path):
    root = make_segnet(tmp_path)
    lines = [f"/SegNet/CamVid/train/img_{i:03d}.png /SegNet/CamVid/trainannot/img_{i:03d}.png" for i in range(3)]
    (root / "segnet_list.txt").write_text("\n".join(lines))
    entries = read_list(root / "segnet_list.txt", root / "train", root / "trainannot")
    assert [e.name for e in entries] == ["img_000", "img_001", "img_002"]
    assert entries[1].label_path == str(root / "trainannot" / "img_001.png")


def test_voc_layout_and_unlabelled_split(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "JPEGImages").mkdir()
    (tmp_path / "SegmentationClassRaw").mkdir()
    (tmp_path / "ImageSets" / "Segmentation").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "JPEGImages" / "2007_000032.jpg"), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "SegmentationClassRaw" / "2007_000032.png"), np.zeros((20, 30), np.uint8))
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000032\n")
    source = FolderSource.from_split(tmp_path, "val")
    assert source[0]["image"].shape == (20, 30, 3) and source[0]["label"].shape == (20, 30, 1)
    unlabelled = FolderSource.from_split(tmp_path, "val", labels=False)
    assert "label" not in unlabelled[0]


def test_colour_labels_are_refused(tmp_path):
    root = make_segnet(tmp_path)
    (root / "trainannot" / "img_000.png").write_bytes(png(np.zeros((40, 48, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"img_000\.png.*3 channels"):
        FolderSource.from_split(root, "train")[0]


def test_npz_formats_read_like_the_folder(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48), (30, 52), (40, 48)])
    folder = FolderSource.from_split(root, "train")
    images = [pathlib.Path(e.image_path).read_bytes() for e in folder.entries]
    labels = [pathlib.Path(e.label_path).read_bytes() for e in folder.entries]
    write_npz(tmp_path / "packed.npz", images, labels, folder.names)
    # Fixed-width byte strings and decoded arrays are read as well.
    np.savez(tmp_path / "bytes.npz", images=np.array(images, dtype=np.bytes_), labels=np.array(labels, dtype=np.bytes_))
    same_size = [folder[i] for i in (0, 2)]
    np.savez(
        tmp_path / "arrays.npz",
        images=np.stack([s["image"] for s in same_size]),
        labels=np.stack([s["label"][..., 0] for s in same_size]),
    )
    packed, fixed, arrays = NpzSource(tmp_path / "packed.npz"), NpzSource(tmp_path / "bytes.npz"), NpzSource(
        tmp_path / "arrays.npz"
    )
    assert packed.names == folder.names and len(fixed) == 3 and len(arrays) == 2
    for i in range(3):
        for key in ("image", "label"):
            np.testing.assert_array_equal(packed[i][key], folder[i][key])
            np.testing.assert_array_equal(fixed[i][key], folder[i][key])
    for j, i in enumerate((0, 2)):
        np.testing.assert_array_equal(arrays[j]["image"], folder[i]["image"])
        np.testing.assert_array_equal(arrays[j]["label"], folder[i]["label"])


def test_npz_object_arrays_are_refused(tmp_path):
    path = tmp_path / "pickled.npz"
    images = np.empty(2, dtype=object)
    images[0], images[1] = b"abc", b"defg"
    np.savez(path, images=images)  # savez pickles object arrays
    with pytest.raises(ValueError, match=r"pickled\.npz.*'images'.*objects"):
        NpzSource(path)


def test_npz_bad_contents_name_the_file(tmp_path):
    np.savez(tmp_path / "empty.npz", something=np.zeros(3))
    with pytest.raises(ValueError, match=r"empty\.npz.*no images"):
        NpzSource(tmp_path / "empty.npz")
    np.savez(tmp_path / "offsets.npz", image_bytes=np.zeros(10, np.uint8), image_offsets=np.array([0, 4, 12]))
    with pytest.raises(ValueError, match=r"offsets\.npz.*offsets"):
        NpzSource(tmp_path / "offsets.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        NpzSource(tmp_path / "missing.npz")
    # A file that is no zip at all (np.load would call it "pickled data") and a truncated one.
    (tmp_path / "text.npz").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match=r"text\.npz: not an \.npz \(zip\) archive"):
        NpzSource(tmp_path / "text.npz")
    write_npz(tmp_path / "whole.npz", [b"\x89PNG" * 100], [b"\x89PNG" * 50])
    data = (tmp_path / "whole.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) - 30])
    with pytest.raises(ValueError, match=r"cut\.npz: truncated or corrupt \.npz"):
        NpzSource(tmp_path / "cut.npz")


def test_label_resize_is_bit_identical_to_tf_nearest():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    label = rng.integers(0, 250, (90, 123, 1)).astype(np.int32)
    for out in [(59, 80), (180, 246), (45, 61), (135, 184), (91, 124), (7, 300)] + [
        tuple(rng.integers(5, 300, 2)) for _ in range(20)
    ]:
        expected = tf.image.resize(label, out, method="nearest").numpy()
        np.testing.assert_array_equal(numpy_loader.resize_label(label, out), expected, err_msg=str(out))


# --------------------------------------------------------------------------- PyDataset


def _train_dataset(root, seed, **kwargs):
    config = PreprocessConfig((32, 40), ignore_label=255)
    return SegmentationPyDataset(FolderSource.from_split(root, "train"), config, 4, seed=seed, **kwargs)


def test_pydataset_batches_shapes_and_length(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48)] * 10)
    ds = _train_dataset(root, seed=0)
    assert len(ds) == 2  # 10 // 4, remainder dropped in training
    images, labels = ds[1]
    assert images.shape == (4, 32, 40, 3) and images.dtype == np.float32
    assert labels.shape == (4, 32, 40, 1) and labels.dtype == np.int32
    assert 0.0 <= images.min() and images.max() <= 255.0
    with pytest.raises(IndexError):
        ds[2]
    eval_ds = SegmentationPyDataset(
        FolderSource.from_split(root, "train"), PreprocessConfig((48, 48), is_training=False), 4
    )
    assert len(eval_ds) == 3
    # Evaluation batches are the images themselves, in list order, padded at the bottom
    # with the mean pixel (127.5) and, in the labels, the ignore label.
    images, labels = eval_ds[2]  # images 8 and 9 (the last, partial batch)
    assert images.shape == (2, 48, 48, 3) and labels.shape == (2, 48, 48, 1)
    source = FolderSource.from_split(root, "train")
    for k, i in enumerate((8, 9)):
        np.testing.assert_array_equal(images[k, :40], source[i]["image"].astype(np.float32))
        np.testing.assert_array_equal(labels[k, :40], source[i]["label"].astype(np.int32))
        np.testing.assert_array_equal(images[k, 40:], 127.5)
        np.testing.assert_array_equal(labels[k, 40:], 255)


def test_pydataset_is_deterministic_per_seed_epoch_and_index(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48)] * 8)
    a, b, c = _train_dataset(root, 1), _train_dataset(root, 1), _train_dataset(root, 2)
    first = [a[i] for i in range(len(a))]
    for i in range(len(b)):
        np.testing.assert_array_equal(b[i][0], first[i][0])
        np.testing.assert_array_equal(b[i][1], first[i][1])
    assert any(not np.array_equal(c[i][0], first[i][0]) for i in range(len(c)))
    # Next epoch: new order and crops, the same for the same seed.
    a.on_epoch_end()
    b.set_epoch(1)
    assert a.epoch == 1
    assert any(not np.array_equal(a[i][0], first[i][0]) for i in range(len(a)))
    for i in range(len(a)):
        np.testing.assert_array_equal(a[i][0], b[i][0])
    # Threads in any order give the same batches.
    b.set_epoch(0)
    with ThreadPoolExecutor(2) as pool:
        threaded = list(pool.map(b.__getitem__, reversed(range(len(b)))))[::-1]
    for got, want in zip(threaded, first):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


def test_pydataset_eval_dicts_keep_names_and_pad_originals(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48), (30, 52), (20, 20)])
    config = PreprocessConfig((48, 56), is_training=False)
    ds = SegmentationPyDataset(FolderSource.from_split(root, "train"), config, 3, as_tuple=False)
    batch = ds[0]
    assert list(batch["image_name"]) == ["img_000", "img_001", "img_002"]
    assert batch["original_image"].shape == (3, 40, 52, 3) and batch["original_image"].dtype == np.uint8
    assert list(batch["height"]) == [40, 30, 20] and list(batch["width"]) == [48, 52, 20]
    second = FolderSource.from_split(root, "train")[1]["image"]
    np.testing.assert_array_equal(batch["original_image"][1, :30, :52], second)
    assert (batch["original_image"][2, 20:] == 0).all()


def test_pydataset_argument_errors(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48)] * 3)
    source = FolderSource.from_split(root, "train")
    with pytest.raises(ValueError, match="batch_size"):
        SegmentationPyDataset(source, PreprocessConfig((8, 8)), 0)
    with pytest.raises(ValueError, match="not enough"):
        SegmentationPyDataset(source, PreprocessConfig((8, 8)), 4)
    with pytest.raises(TypeError, match="PreprocessConfig"):
        SegmentationPyDataset(source, {"crop_size": (8, 8)}, 1)


# --------------------------------------------------------------------------- subprocesses


def _run_python(code, env_extra, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **env_extra)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


BLOCK_TF = """
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
"""

CHECK_NO_TF = """
loaded = sorted(m for m, mod in sys.modules.items() if m.startswith("tensorflow") and mod is not None)
assert not loaded, loaded
"""


def write_tfrecords(directory, folder, split="train"):
    tf = pytest.importorskip("tensorflow")
    from deeplab_dpc.data import tfrecord

    directory.mkdir()
    with tf.io.TFRecordWriter(str(directory / tfrecord.shard_name(split, 0, 1))) as writer:
        for e in folder.entries:
            image = pathlib.Path(e.image_path).read_bytes()
            h, w = folder[0]["image"].shape[:2]
            writer.write(tfrecord.encode_example(image, pathlib.Path(e.label_path).read_bytes(), e.name, "png", h, w))
    return directory


def test_tfrecord_source_reads_what_the_folder_holds(tmp_path):
    folder = FolderSource.from_split(make_segnet(tmp_path / "f", sizes=[(40, 48)] * 3), "train")
    records = numpy_loader.TFRecordSource(write_tfrecords(tmp_path / "rec", folder), "train", label_remap={11: 255})
    assert len(records) == 3
    for i in range(3):
        assert records[i]["image_name"] == folder[i]["image_name"]
        np.testing.assert_array_equal(records[i]["image"], folder[i]["image"])
        np.testing.assert_array_equal(records[i]["label"], np.where(folder[i]["label"] == 11, 255, folder[i]["label"]))


def test_loader_works_with_tensorflow_blocked(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48)] * 4)
    folder = FolderSource.from_split(root, "train")
    write_npz(tmp_path / "d.npz", [pathlib.Path(e.image_path).read_bytes() for e in folder.entries],
              [pathlib.Path(e.label_path).read_bytes() for e in folder.entries])
    records = write_tfrecords(tmp_path / "rec", folder)
    out = _run_python(
        BLOCK_TF
        + f"""
from deeplab_dpc.data import numpy_loader
from deeplab_dpc.data.preprocess import PreprocessConfig
for source in (numpy_loader.FolderSource.from_split({str(root)!r}, "train"),
               numpy_loader.NpzSource({str(tmp_path / "d.npz")!r}),
               numpy_loader.TFRecordSource({str(records)!r}, "train")):
    ds = numpy_loader.SegmentationPyDataset(source, PreprocessConfig((32, 32)), 2, seed=0)
    images, labels = ds[1]
    assert images.shape == (2, 32, 32, 3) and labels.shape == (2, 32, 32, 1), (images.shape, labels.shape)
"""
        + CHECK_NO_TF
        + "print('ok')",
        {"KERAS_BACKEND": "numpy"},
    )
    assert out.strip().endswith("ok")


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_keras_fit_on_jax_from_the_pydataset(tmp_path):
    root = make_segnet(tmp_path, sizes=[(40, 48)] * 8)
    out = _run_python(
        BLOCK_TF
        + f"""
import keras, numpy as np
from deeplab_dpc.data import numpy_loader
from deeplab_dpc.data.preprocess import PreprocessConfig
assert keras.backend.backend() == "jax"
config = PreprocessConfig((32, 32), ignore_label=11)
# workers=1: Keras' threaded enqueuer (workers > 1) serves batches prefetched in
# one epoch at the start of the next, after on_epoch_end moved the dataset on, so
# a fit epoch is not one dataset epoch there (reported; see the loader's on_epoch_end).
ds = numpy_loader.SegmentationPyDataset(numpy_loader.FolderSource.from_split({str(root)!r}, "train"),
                                        config, 4, seed=0, workers=1)
inputs = keras.Input((32, 32, 3))
# (keras.layers.Rescaling is a tf.data-compatible layer that needs TensorFlow.)
x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
model = keras.Model(inputs, keras.layers.Conv2D(11, 1)(x))
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=11)
# Learning rate 0: each epoch's loss is the mean loss of that epoch's batches. Keras
# advances the epoch once as fit starts, so fit's epochs are the dataset's 1 and 2.
model.compile(keras.optimizers.SGD(0.0), loss)
expected = []
for epoch in (1, 2):
    ds.set_epoch(epoch)
    expected.append(np.mean([float(loss(y, model(x))) for x, y in (ds[i] for i in range(len(ds)))]))
ds.set_epoch(0)
assert len(ds) == 2 and abs(expected[0] - expected[1]) > 1e-4, expected  # new augmentation per epoch
history = model.fit(ds, epochs=2, verbose=0)
np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)
assert ds.epoch >= 2, ds.epoch  # each fit epoch moved to a new order/augmentation
"""
        + CHECK_NO_TF
        + "print('ok')",
        {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"},
    )
    assert out.strip().endswith("ok")
