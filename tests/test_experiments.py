"""Every experiments/**/*.flags parses into a valid TrainConfig and carries its header."""

import pathlib

import pytest
from absl import flags

from deeplab_dpc import train as train_main

REPO = pathlib.Path(__file__).resolve().parents[1]
FLAGFILES = sorted((REPO / "experiments").rglob("*.flags"))


def test_the_promised_flagfiles_exist():
    names = {str(p.relative_to(REPO / "experiments")) for p in FLAGFILES}
    assert {"camvid/mobilenet_v2_dpc.flags", "camvid/mobilenet_v2_aspp.flags", "camvid/xception_65_dpc.flags",
            "cityscapes/mobilenet_v2_dpc.flags"} <= names
    assert any(n.startswith("pascal_voc_seg/") for n in names)
    assert any(n.startswith("pascal_person_part/") for n in names)


@pytest.mark.parametrize("path", FLAGFILES, ids=lambda p: str(p.relative_to(REPO / "experiments")))
def test_flagfile_parses_into_a_train_config(path, tmp_path, monkeypatch):
    header = [line for line in path.read_text().splitlines() if line.startswith("#")]
    text = "\n".join(header)
    for key in ("Command:", "Sized for:", "Expected"):
        assert key in text, f"{path.name}: header lacks {key!r}"
    monkeypatch.chdir(REPO)  # spec paths in flagfiles are relative to the repository
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", f"--flagfile={path}", f"--dataset_dir={tmp_path}", f"--train_logdir={tmp_path / 'run'}",
        "--tf_initial_checkpoint="])
    config = train_main.config_from_flags(fv)
    assert config.train_crop_size[0] >= config.model.output_stride
    assert config.model.num_classes == config.data.descriptor.num_classes
    if "dpc" in path.stem:
        assert config.model.context == "dpc" and len(config.model.dense_prediction_cell.branches) == 5
