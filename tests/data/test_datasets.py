"""Dataset descriptors: DeepLab's numbers, user-defined JSON files, errors that name the field."""

import copy
import dataclasses
import json
import pathlib
import pickle
import subprocess
import sys

import pytest

from deeplab_dpc.data import colormaps
from deeplab_dpc.data.datasets import DATASETS, DatasetDescriptor, DescriptorError, get_dataset

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_deeplab_numbers():
    # DeepLab's datasets/data_generator.py (Cityscapes test: 1525; train_aug: SBD + VOC).
    expected = {
        "cityscapes": (19, 255, {"train": 2975, "val": 500, "test": 1525}),
        "pascal_voc_seg": (21, 255, {"train": 1464, "train_aug": 10582, "trainval": 2913, "val": 1449}),
        "pascal_person_part": (7, 255, {"train": 1716, "val": 1817}),
        "ade20k": (151, 0, {"train": 20210, "val": 2000}),
        "camvid": (11, 255, {"train": 367, "val": 101, "test": 233}),
    }
    assert set(DATASETS) == set(expected)
    for name, (num_classes, ignore, splits) in expected.items():
        d = get_dataset(name)
        assert d.name == name
        assert (d.num_classes, d.ignore_label) == (num_classes, ignore)
        assert {k: d.splits[k] for k in splits} == splits
        assert len(d.class_names) == d.num_classes
    assert get_dataset("cityscapes").splits["trainval"] == 2975 + 500
    assert get_dataset("camvid").splits["trainval"] == 367 + 101
    assert get_dataset("pascal_voc_seg").splits["trainval"] == 1464 + 1449


def test_class_names_match_colormaps():
    assert get_dataset("cityscapes").class_names[0] == "road"
    assert get_dataset("cityscapes").class_names[13] == "car"
    assert get_dataset("camvid").class_names[:2] == ("sky", "building")
    assert get_dataset("camvid").class_names[10] == "bicyclist"
    assert get_dataset("pascal_voc_seg").class_names[15] == "person"
    assert get_dataset("ade20k").class_names[1] == "wall" and get_dataset("ade20k").class_names[150] == "flag"
    for d in DATASETS.values():
        assert len(colormaps.COLORMAPS[d.colormap]) >= d.num_classes


def test_descriptors_are_immutable():
    d = get_dataset("camvid")
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.num_classes = 12
    with pytest.raises(TypeError):
        d.splits["train"] = 1
    with pytest.raises(TypeError):
        d.splits.update(train=1)
    assert hash(d) == hash(get_dataset("camvid"))


def test_descriptors_pickle_copy_and_serialise():
    # Search executors pickle configs; entry points write resolved configs as JSON.
    d = get_dataset("cityscapes")
    assert pickle.loads(pickle.dumps(d)) == d
    assert copy.deepcopy(d) == d
    assert json.loads(json.dumps(dataclasses.asdict(d)))["splits"]["val"] == 500


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown dataset 'kitti'.*ade20k, camvid, cityscapes, pascal_person_part"):
        get_dataset("kitti")


def test_split_size_error_lists_splits():
    with pytest.raises(ValueError, match="no split 'test'.*train, val"):
        get_dataset("ade20k").split_size("test")


def _write(tmp_path, data, name="mine.json"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if not isinstance(data, str) else data)
    return path


GOOD = {
    "name": "roads",
    "num_classes": 3,
    "ignore_label": 255,
    "splits": {"train": 12, "val": 4},
    "class_names": ["road", "car", "other"],
    "colormap": "cityscapes",
}


def test_user_defined_descriptor_round_trip(tmp_path):
    d = get_dataset(str(_write(tmp_path, GOOD)))
    assert d.to_dict() == GOOD
    assert DatasetDescriptor.from_dict(d.to_dict()) == d
    # Optional fields take defaults.
    minimal = {k: GOOD[k] for k in ("name", "num_classes", "ignore_label", "splits")}
    d = get_dataset(_write(tmp_path, minimal, "min.json"))
    assert d.class_names == ("class_0", "class_1", "class_2") and d.colormap == "pascal"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"num_classes": "3"}, "num_classes"),
        ({"num_classes": 0}, "num_classes"),
        ({"ignore_label": 300}, "ignore_label"),
        ({"ignore_label": True}, "ignore_label"),
        ({"splits": {"train": -1}}, "splits"),
        ({"splits": []}, "splits"),
        ({"class_names": ["road", "car"]}, "class_names"),
        ({"class_names": "road"}, "class_names"),
        ({"colormap": "rainbow"}, "colormap"),
        ({"colormap": "camvid", "num_classes": 12, "class_names": [str(i) for i in range(12)]}, "colormap"),
        ({"num_clases": 3}, "num_clases"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path, change, field):
    path = _write(tmp_path, {**GOOD, **change})
    with pytest.raises(ValueError) as info:
        get_dataset(str(path))
    message = str(info.value)
    assert str(path) in message and repr(field) in message
    assert isinstance(info.value, DescriptorError) and info.value.field == field


def test_missing_field_is_named(tmp_path):
    data = dict(GOOD)
    del data["ignore_label"]
    with pytest.raises(ValueError, match=r"mine.json: field 'ignore_label': missing"):
        get_dataset(str(_write(tmp_path, data)))


def test_bad_json_and_missing_file_are_named(tmp_path):
    path = _write(tmp_path, '{"name": "x",', "broken.json")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        get_dataset(str(path))
    with pytest.raises(ValueError, match="absent.json does not exist"):
        get_dataset(str(tmp_path / "absent.json"))
    with pytest.raises(ValueError, match="must be a JSON object"):
        get_dataset(str(_write(tmp_path, "[1, 2]", "list.json")))


def test_data_package_imports_no_tensorflow():
    # Descriptors, colormaps and the pure-Python record reader must work on hosts without
    # TensorFlow; tfrecord and conversion import it only inside the functions that need it.
    code = (
        "import sys\n"
        "import deeplab_dpc.data, deeplab_dpc.data.datasets, deeplab_dpc.data.colormaps\n"
        "import deeplab_dpc.data.tfrecord, deeplab_dpc.data.conversion\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
