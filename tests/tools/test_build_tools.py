"""Each tools/build_*_data.py main() on a tiny generated layout produces the right records."""

import collections
import json
import os
import pathlib
import subprocess
import sys
import types

import cv2
import numpy as np
import pytest
from absl import flags
from PIL import Image

from deeplab_dpc.data import colormaps, tfrecord
from tools import (
    build_ade20k_data,
    build_camvid_data,
    build_cityscapes_data,
    build_folder_data,
    build_person_part_data,
    build_voc2012_data,
)

REPO = pathlib.Path(__file__).resolve().parents[2]


def run_tool(module, **flag_values):
    """Runs ``module.main`` as its ``__main__`` would, with a private FlagValues."""
    fv = flags.FlagValues()
    module.define_flags(fv)
    argv = fv(["prog"] + [f"--{k}={v}" for k, v in flag_values.items()])
    module.main(argv, fv)


def _rgb(path, size=(8, 10), seed=0, ext=None):
    rgb = np.random.default_rng(seed).integers(0, 256, size + (3,), dtype=np.uint8)
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())
    return rgb


def _grey(path, label):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), label.astype(np.uint8))


def _palette(path, indices):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(colormaps.get_colormap("pascal").reshape(-1).tolist())
    image.save(path)


def _records(output_dir, split):
    """name -> raw record, over the complete shards of ``split``."""
    return {
        r["image/filename"].decode(): r
        for p in tfrecord.shard_paths(output_dir, split)
        for r in tfrecord.iterate_records(p)
    }


def _label(record):
    return cv2.imdecode(np.frombuffer(record["image/segmentation/class/encoded"], np.uint8), cv2.IMREAD_UNCHANGED)


COMMON = {"num_workers": 2, "num_shards": 2}


# --------------------------------------------------------------------------- CamVid


def _camvid_layout(root, counts):
    for split, count in counts.items():
        names = []
        for i in range(count):
            name = f"{split}_{i:03d}"
            _rgb(root / split / f"{name}.png", seed=i)
            label = np.full((8, 10), i % 11, np.uint8)
            label[0, :] = 11  # void
            _grey(root / f"{split}annot" / f"{name}.png", label)
            names.append(name)
        (root / f"{split}.txt").write_text("\n".join(names) + "\n")


def test_camvid_main(tmp_path):
    _camvid_layout(tmp_path / "camvid", {"train": 5, "val": 3})
    out = tmp_path / "out"
    run_tool(build_camvid_data, camvid_root=tmp_path / "camvid", output_dir=out, splits="train,val,trainval", **COMMON)
    assert tfrecord.count_examples(out, "train") == 5
    assert tfrecord.count_examples(out, "val") == 3
    assert tfrecord.count_examples(out, "trainval") == 8
    label = _label(_records(out, "train")["train_004"])
    assert (label[0] == 255).all() and (label[1:] == 4).all()  # void 11 -> 255
    manifest = json.loads((out / "train.manifest.json").read_text())
    assert manifest["config"]["camvid_root"] == str(tmp_path / "camvid")
    assert manifest["config"]["sharding"]["num_shards"] == 2


def test_camvid_entry_point_runs_as_a_module(tmp_path):
    _camvid_layout(tmp_path / "camvid", {"val": 2})
    out = tmp_path / "out"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.build_camvid_data", f"--camvid_root={tmp_path / 'camvid'}",
         f"--output_dir={out}", "--splits=val", "--num_shards=1"],
        cwd=REPO, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert tfrecord.count_examples(out, "val") == 2
    assert "val: 2 examples in 1 shards" in proc.stderr
    # A missing required flag is a usage error, not a traceback.
    proc = subprocess.run([sys.executable, "-m", "tools.build_camvid_data", f"--output_dir={out}"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "camvid_root" in proc.stderr


def test_camvid_missing_split_folder_is_named(tmp_path):
    with pytest.raises(ValueError, match=f"no folder {tmp_path}/train"):
        build_camvid_data.list_examples(str(tmp_path), "train")


# --------------------------------------------------------------------------- Cityscapes

_Label = collections.namedtuple("Label", ["name", "id", "trainId"])


@pytest.fixture
def fake_cityscapesscripts(monkeypatch):
    """A stand-in for cityscapesscripts.helpers.labels with part of the real table."""
    labels = types.ModuleType("cityscapesscripts.helpers.labels")
    labels.labels = [
        _Label("unlabeled", 0, 255), _Label("road", 7, 0), _Label("sidewalk", 8, 1),
        _Label("parking", 9, 255), _Label("car", 26, 13), _Label("bicycle", 33, 18),
        _Label("license plate", -1, -1),
    ]
    helpers = types.ModuleType("cityscapesscripts.helpers")
    helpers.labels = labels
    package = types.ModuleType("cityscapesscripts")
    package.helpers = helpers
    monkeypatch.setitem(sys.modules, "cityscapesscripts", package)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers", helpers)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", labels)


def _cityscapes_layout(root, counts):
    for split, cities in counts.items():
        for city, count in cities.items():
            for i in range(count):
                stem = f"{city}_{i:06d}_000019"
                _rgb(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=i)
                ids = np.array([[0, 7, 8, 9, 26, 33, 7, 7, 7, 7]] * 8, np.uint8)
                _grey(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", ids)


def test_cityscapes_main(tmp_path, fake_cityscapesscripts):
    _cityscapes_layout(tmp_path / "cs", {"train": {"aachen": 3, "bochum": 2}, "val": {"lindau": 2}, "test": {"berlin": 2}})
    out = tmp_path / "out"
    run_tool(build_cityscapes_data, cityscapes_root=tmp_path / "cs", output_dir=out, splits="train,val,test", **COMMON)
    assert tfrecord.count_examples(out, "train") == 5
    assert tfrecord.count_examples(out, "val") == 2
    records = _records(out, "train")
    assert sorted(records)[0] == "aachen_000000_000019"
    # label ids -> train ids: unlabeled 0 -> 255, road 7 -> 0, sidewalk 8 -> 1, parking 9 -> 255, car -> 13, ...
    assert _label(records["bochum_000001_000019"])[0].tolist() == [255, 0, 1, 255, 13, 18, 0, 0, 0, 0]
    test = _records(out, "test")
    assert len(test) == 2 and all("image/segmentation/class/encoded" not in r for r in test.values())


def test_cityscapes_without_the_package_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cityscapesscripts", None)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers", None)
    monkeypatch.setitem(sys.modules, "cityscapesscripts.helpers.labels", None)
    with pytest.raises(ImportError, match="pip install cityscapesscripts"):
        build_cityscapes_data.train_id_table()


def test_cityscapes_real_label_table():
    pytest.importorskip("cityscapesscripts.helpers.labels")
    table = build_cityscapes_data.train_id_table()
    assert sorted(table) == list(range(34))
    assert (table[7], table[8], table[11], table[23], table[24], table[26], table[33]) == (0, 1, 2, 10, 11, 13, 18)
    assert table[0] == table[1] == table[9] == table[29] == 255
    assert sorted(v for v in table.values() if v != 255) == list(range(19))


# --------------------------------------------------------------------------- PASCAL VOC (+ SBD train_aug)


def _voc_layout(root):
    voc = root / "VOC2012"
    names = {"train": ["2007_000001", "2007_000002", "2007_000003"], "val": ["2007_000004", "2007_000005"]}
    for split, stems in names.items():
        for i, stem in enumerate(stems):
            _rgb(voc / "JPEGImages" / f"{stem}.jpg", seed=i)
            indices = np.zeros((8, 10), np.uint8)
            indices[2:5, 2:6] = 15  # person
            indices[2, 2:6] = 255  # object border
            _palette(voc / "SegmentationClass" / f"{stem}.png", indices)
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    # SBD: images only VOC has not labelled, with .mat labels.
    from scipy import io as sio

    sbd = root / "sbd"
    (sbd / "cls").mkdir(parents=True)
    sbd_train, sbd_val = ["2008_000010", "2008_000011", "2007_000004"], ["2008_000012", "2007_000001"]
    for i, stem in enumerate(["2008_000010", "2008_000011", "2008_000012"]):
        _rgb(voc / "JPEGImages" / f"{stem}.jpg", seed=10 + i)
        sio.savemat(sbd / "cls" / f"{stem}.mat", {"GTcls": {"Segmentation": np.full((8, 10), 7, np.uint8)}})
    (sbd / "train.txt").write_text("\n".join(sbd_train) + "\n")
    (sbd / "val.txt").write_text("\n".join(sbd_val) + "\n")
    return voc, sbd


def test_voc_main_with_train_aug(tmp_path):
    voc, sbd = _voc_layout(tmp_path)
    out = tmp_path / "out"
    run_tool(
        build_voc2012_data,
        image_folder=voc / "JPEGImages",
        semantic_segmentation_folder=voc / "SegmentationClass",
        list_folder=voc / "ImageSets" / "Segmentation",
        sbd_root=sbd,
        output_dir=out,
        **COMMON,
    )
    assert tfrecord.count_examples(out, "train") == 3
    assert tfrecord.count_examples(out, "val") == 2
    # train_aug = VOC train + SBD train + SBD val - VOC val: 3 + 3 new, 2007_000004 (VOC val) left out.
    aug = _records(out, "train_aug")
    assert sorted(aug) == ["2007_000001", "2007_000002", "2007_000003", "2008_000010", "2008_000011", "2008_000012"]
    # Palette PNGs read as class ids, not colours; SBD labels from the .mat files.
    label = _label(aug["2007_000001"])
    assert label[3, 3] == 15 and label[2, 3] == 255 and label[0, 0] == 0
    assert (_label(aug["2008_000011"]) == 7).all()
    assert aug["2007_000001"]["image/format"] == b"jpeg"


def test_train_aug_names():
    assert build_voc2012_data.train_aug_names(["a", "b"], ["c"], ["c", "d", "a"], ["e", "d"]) == ["a", "b", "d", "e"]


# --------------------------------------------------------------------------- PASCAL-Person-Part


def test_person_part_main(tmp_path):
    root = tmp_path / "pp"
    for split, stems in {"train": ["2008_000003", "2008_000008"], "val": ["2008_000015"]}.items():
        for i, stem in enumerate(stems):
            _rgb(root / "JPEGImages" / f"{stem}.jpg", seed=i)
            _grey(root / "gt" / f"{stem}.png", np.arange(80).reshape(8, 10) % 7)
        (root / "list").mkdir(exist_ok=True)
        (root / "list" / f"{split}_id.txt").write_text("\n".join(stems) + "\n")
    out = tmp_path / "out"
    run_tool(build_person_part_data, image_folder=root / "JPEGImages", semantic_segmentation_folder=root / "gt",
             list_folder=root / "list", output_dir=out, **COMMON)
    assert tfrecord.count_examples(out, "train") == 2 and tfrecord.count_examples(out, "val") == 1
    assert _label(_records(out, "val")["2008_000015"]).max() == 6


def test_person_part_rejects_values_beyond_its_seven_classes(tmp_path):
    root = tmp_path / "pp"
    _rgb(root / "img" / "a.jpg")
    _grey(root / "gt" / "a.png", np.full((8, 10), 7))
    (root / "list").mkdir()
    (root / "list" / "train.txt").write_text("a\n")
    with pytest.raises(ValueError, match=r"label .*gt/a.png holds values \[7\]"):
        run_tool(build_person_part_data, image_folder=root / "img", semantic_segmentation_folder=root / "gt",
                 list_folder=root / "list", output_dir=tmp_path / "out", splits="train")


# --------------------------------------------------------------------------- ADE20K


def test_ade20k_main(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    for split, folder, count in (("train", "training", 3), ("val", "validation", 2)):
        for i in range(count):
            stem = f"ADE_{folder[:5]}_{i:08d}"
            _rgb(root / "images" / folder / f"{stem}.jpg", seed=i)
            _grey(root / "annotations" / folder / f"{stem}.png", np.arange(80).reshape(8, 10) * 2 % 151)
    out = tmp_path / "out"
    run_tool(build_ade20k_data, ade20k_root=root, output_dir=out, shuffle_seed=3, **COMMON)
    assert tfrecord.count_examples(out, "train") == 3 and tfrecord.count_examples(out, "val") == 2
    label = _label(_records(out, "val")["ADE_valid_00000001"])
    assert label.max() == 150 and label.min() == 0  # 0 is ADE20K's ignore label


# --------------------------------------------------------------------------- any folder


def test_folder_main_with_descriptor_and_label_map(tmp_path):
    for i in range(4):
        _rgb(tmp_path / "images" / f"im{i}.png", seed=i)
        _grey(tmp_path / "labels" / f"im{i}_mask.png", np.array([[0, 1, 2, 9] * 2 + [0, 0]] * 8))
    (tmp_path / "list.txt").write_text("im0\nim2\nim3\n")
    descriptor = {"name": "mine", "num_classes": 3, "ignore_label": 255, "splits": {"train": 3}}
    (tmp_path / "mine.json").write_text(json.dumps(descriptor))
    out = tmp_path / "out"
    run_tool(build_folder_data, image_dir=tmp_path / "images", label_dir=tmp_path / "labels",
             list_file=tmp_path / "list.txt", split="train", dataset=tmp_path / "mine.json",
             label_suffix="_mask.png", label_map="9:255", output_dir=out, **COMMON)
    records = _records(out, "train")
    assert sorted(records) == ["im0", "im2", "im3"]
    assert _label(records["im2"])[0, :4].tolist() == [0, 1, 2, 255]

    # Without the label map, value 9 is out of range for 3 classes: the file is named.
    with pytest.raises(ValueError, match=r"label .*labels/im0_mask.png holds values \[9\]"):
        run_tool(build_folder_data, image_dir=tmp_path / "images", label_dir=tmp_path / "labels",
                 split="train", dataset=tmp_path / "mine.json", label_suffix="_mask.png",
                 output_dir=tmp_path / "out2", **COMMON)


def test_folder_main_without_labels_or_list(tmp_path):
    for i in range(3):
        _rgb(tmp_path / "images" / f"t{i}.jpg", seed=i)
    out = tmp_path / "out"
    run_tool(build_folder_data, image_dir=tmp_path / "images", split="test", dataset="camvid", output_dir=out,
             num_shards=1)
    records = _records(out, "test")
    assert sorted(records) == ["t0", "t1", "t2"]
    assert all("image/segmentation/class/encoded" not in r for r in records.values())


def test_folder_bad_label_map_is_a_usage_error(tmp_path):
    from absl import app

    with pytest.raises(app.UsageError, match="'9-255'"):
        run_tool(build_folder_data, image_dir=tmp_path, split="train", dataset="camvid", output_dir=tmp_path,
                 label_map="9-255")
