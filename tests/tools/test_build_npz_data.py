"""tools/build_npz_data.py and data/packing.py: packed splits read back as the source reads."""

import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from absl import app, flags

from deeplab_dpc import synthetic
from deeplab_dpc.data import packing
from deeplab_dpc.data.batches import DataConfig, make_batches, open_source
from deeplab_dpc.data.conversion import ConversionError
from deeplab_dpc.data.preprocess import PreprocessConfig
from tests.tools.test_build_tools import REPO, run_tool
from tools import build_npz_data


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("segnet")
    descriptor = synthetic.write_segnet_folders(root, {"train": 6, "val": 3}, 40, 56, num_classes=4)
    # Raw value 9 stands for void, as 11 does in CamVid's SegNet labels.
    name = sorted(os.listdir(root / "val"))[0]
    label = cv2.imread(str(root / "valannot" / name), cv2.IMREAD_UNCHANGED)
    label[:5, :7] = 9
    cv2.imwrite(str(root / "valannot" / name), label)
    return root, descriptor


def _samples(source):
    return [source[i] for i in range(len(source))]


def test_png_packing_is_lossless_and_applies_the_label_remap(folders, tmp_path):
    root, descriptor = folders
    run_tool(build_npz_data, dataset=descriptor, dataset_format="folder", dataset_dir=root,
             label_remap="9:255", output_dir=tmp_path, image_format="png")
    assert sorted(os.listdir(tmp_path)) == ["train.npz", "val.npz"]
    for split in ("train", "val"):
        original = _samples(open_source(DataConfig(descriptor, str(root), "folder", label_remap={9: 255}), split))
        packed = _samples(open_source(DataConfig(descriptor, str(tmp_path), "npz"), split))
        assert [s["image_name"] for s in packed] == [s["image_name"] for s in original]
        for a, b in zip(original, packed):
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
    assert (packed[0]["label"] == 255).sum() == 35  # the remapped void block, no remap needed on reading


def test_jpeg_packing_keeps_labels_exact_and_images_close(folders, tmp_path):
    root, descriptor = folders
    data = DataConfig(descriptor, str(root), "folder", label_remap={9: 255})
    png = packing.pack_dataset(packing.PackConfig(data, ("val",), str(tmp_path / "png"), image_format="png"))
    jpeg = packing.pack_dataset(packing.PackConfig(data, ("val",), str(tmp_path / "jpeg"), jpeg_quality=95))
    assert jpeg["val"].num_examples == 3 and jpeg["val"].num_bytes < png["val"].num_bytes
    original = _samples(open_source(data, "val"))
    packed = _samples(open_source(DataConfig(descriptor, str(tmp_path / "jpeg"), "npz"), "val"))
    error = lambda x, y: np.abs(x.astype(int) - y.astype(int)).mean()  # noqa: E731
    for a, b in zip(original, packed):
        np.testing.assert_array_equal(a["label"], b["label"])
        # Generated images are per-pixel noise, JPEG's worst case; still far closer than another image.
        assert error(a["image"], b["image"]) < 10 < error(a["image"], original[-1 if a is original[0] else 0]["image"])


def test_packed_split_gives_the_same_eval_batches(folders, tmp_path):
    root, descriptor = folders
    source = DataConfig(descriptor, str(root), "folder:segnet", loader="numpy", label_remap={9: 255})
    packing.pack_dataset(packing.PackConfig(source, ("val",), str(tmp_path), image_format="png"))
    packed = DataConfig(descriptor, str(tmp_path), "npz", loader="numpy")
    eval_pre = PreprocessConfig(crop_size=(48, 64), is_training=False, ignore_label=255)
    for a, b in zip(make_batches(source, "val", eval_pre, 2), make_batches(packed, "val", eval_pre, 2)):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_bad_label_names_the_example_and_leaves_no_file(folders, tmp_path):
    root, descriptor = folders
    # Without the remap, the raw value 9 is neither a class (< 4) nor the ignore label.
    config = packing.PackConfig(DataConfig(descriptor, str(root), "folder"), ("train", "val"), str(tmp_path))
    with pytest.raises(ConversionError, match=r"split 'val' example 'val_00000.*values \[9\]"):
        packing.pack_dataset(config)
    assert os.listdir(tmp_path) == ["train.npz"], "the good split stays, the bad one leaves nothing"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--jpeg_quality=0"], "--jpeg_quality=0 must be in 1..100"),
        (["--dataset_format=npz"], "dataset_format=npz: the dataset is packed already"),
        (["--dataset_format=lmdb"], "--dataset_format='lmdb' is unknown"),
        (["--splits="], "--splits is empty"),
    ],
)
def test_bad_flags_name_the_flag(folders, tmp_path, args, message):
    root, descriptor = folders
    fv = flags.FlagValues()
    build_npz_data.define_flags(fv)
    fv(["prog", f"--dataset={descriptor}", f"--dataset_dir={root}", f"--output_dir={tmp_path}",
        "--dataset_format=folder", *args])
    with pytest.raises(app.UsageError, match=message):
        build_npz_data.config_from_flags(fv)


def test_runs_as_a_module_without_tensorflow(folders, tmp_path):
    root, descriptor = folders
    code = (
        "import sys, runpy; sys.modules['tensorflow'] = None\n"
        "sys.argv = ['build_npz_data'] + sys.argv[1:]\n"
        "runpy.run_module('tools.build_npz_data', run_name='__main__')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, f"--dataset={descriptor}", "--dataset_format=folder", f"--dataset_dir={root}",
         "--label_remap=9:255", f"--output_dir={tmp_path}", "--splits=val"],
        cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "val: 3 examples" in result.stderr
    assert os.listdir(tmp_path) == ["val.npz"]


def test_reader_threads_default_to_one_per_core(folders):
    root, descriptor = folders
    assert DataConfig(descriptor, str(root), "folder").workers == os.cpu_count()
    assert DataConfig(descriptor, str(root), "folder", num_workers=3).workers == 3
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        DataConfig(descriptor, str(root), "folder", num_workers=-1)
