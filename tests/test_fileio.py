"""Atomic writes: a reader sees the old file or the whole new one, never a half-written one."""

import os

import pytest

from deeplab_dpc.fileio import atomic_path, write_json
from deeplab_dpc.training.checkpoints import CheckpointManager, list_checkpoints


def test_atomic_path_renames_on_success_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.png"
    with atomic_path(target, suffix=".png") as tmp:
        assert tmp.endswith(".png") and os.path.basename(tmp).startswith(".out.png.tmp-")
        assert not target.exists(), "nothing visible under the final name while writing"
        with open(tmp, "wb") as f:
            f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"first"
    assert sorted(os.listdir(target.parent)) == ["out.png"], "the temporary file is removed"
    write_json(tmp_path / "c.json", {"a": 1})
    assert (tmp_path / "c.json").read_text() == '{\n "a": 1\n}\n'


class _FakeModel:
    def __init__(self, fail=False):
        self.fail = fail

    def save_weights(self, path):
        assert path.endswith(".weights.h5"), "Keras refuses other endings"
        with open(path, "wb") as f:
            f.write(b"weights")
        if self.fail:
            raise OSError("killed while writing")


def test_checkpoint_manager_never_leaves_a_partial_checkpoint(tmp_path):
    manager = CheckpointManager(str(tmp_path), max_to_keep=2)
    for step in (10, 20, 30):
        manager.save(_FakeModel(), step)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [20, 30]
    with pytest.raises(OSError, match="killed"):
        manager.save(_FakeModel(fail=True), 40)
    assert [s for s, _ in list_checkpoints(str(tmp_path))] == [20, 30]
    assert manager.latest().endswith("ckpt-00000030.weights.h5")
    assert sorted(os.listdir(tmp_path)) == ["ckpt-00000020.weights.h5", "ckpt-00000030.weights.h5"]
