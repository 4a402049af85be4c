"""A training run on disk: checkpoint files, the two model-config paths, errors that name the field."""

import os
import subprocess
import sys

import pytest

from deeplab_dpc import runs
from deeplab_dpc.core.model import ModelConfig


def _touch(path):
    path.write_bytes(b"")
    return str(path)


def test_checkpoints_are_listed_by_step_and_temporaries_are_ignored(tmp_path):
    assert runs.list_checkpoints(str(tmp_path / "missing")) == []
    assert runs.latest_checkpoint(str(tmp_path)) is None
    late = _touch(tmp_path / os.path.basename(runs.checkpoint_path(str(tmp_path), 1200)))
    early = _touch(tmp_path / "ckpt-00000300.weights.h5")
    _touch(tmp_path / ".ckpt-00009999.weights.h5.tmp-123")  # an interrupted save
    _touch(tmp_path / "ckpt-00005000.weights.h5.partial")
    assert runs.checkpoint_path("run", 7) == os.path.join("run", "ckpt-00000007.weights.h5")
    assert runs.list_checkpoints(str(tmp_path)) == [(300, early), (1200, late)]
    assert runs.latest_checkpoint(str(tmp_path)) == late
    assert runs.latest_checkpoint(early) == early  # a file is itself


def test_resolve_checkpoint_names_the_field(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"^checkpoint_path=.*nowhere does not exist"):
        runs.resolve_checkpoint(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"^checkpoint_path=.* holds no ckpt-<step>\.weights\.h5"):
        runs.resolve_checkpoint(str(tmp_path))
    other = _touch(tmp_path / "model.ckpt")
    with pytest.raises(FileNotFoundError, match=r"^checkpoint_path=.*model\.ckpt is not a Keras weights file"):
        runs.resolve_checkpoint(other)
    ckpt = _touch(tmp_path / "ckpt-00000010.weights.h5")
    assert runs.resolve_checkpoint(str(tmp_path)) == ckpt == runs.resolve_checkpoint(ckpt)


def test_the_two_model_config_paths(tmp_path):
    ckpt = _touch(tmp_path / "ckpt-00000010.weights.h5")
    beside = runs.checkpoint_model_config_path(ckpt)
    assert beside == os.path.join(str(tmp_path), runs.MODEL_CONFIG_NAME)  # not checked: it may be absent
    with pytest.raises(ValueError, match=r"^checkpoint_dir=.* has no model_config\.json: not a train_logdir"):
        runs.run_model_config_path(str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"^checkpoint_path=.*: no model_config\.json beside"):
        runs.load_model_config(str(tmp_path))
    config = ModelConfig(num_classes=3, context="none")
    config.save(beside)
    assert runs.run_model_config_path(str(tmp_path)) == beside
    assert runs.load_model_config(str(tmp_path)) == (config, ckpt)


def test_bad_model_config_names_the_field(tmp_path):
    _touch(tmp_path / "ckpt-00000010.weights.h5")
    (tmp_path / runs.MODEL_CONFIG_NAME).write_text('{"num_classes": 0}')
    with pytest.raises(ValueError, match=r"^checkpoint_path=.*: bad model config"):
        runs.load_model_config(str(tmp_path))


def test_repeated_model_flags_must_agree_with_the_run(tmp_path):
    config = ModelConfig(num_classes=3, context="none", output_stride=16)
    config.save(tmp_path / runs.MODEL_CONFIG_NAME)
    assert runs.resolve_model_config(str(tmp_path), output_stride=16, model_variant=None) == config
    with pytest.raises(ValueError, match=r"--output_stride=8 contradicts .*\(output_stride=16\)"):
        runs.resolve_model_config(str(tmp_path), output_stride=8)


def test_listing_checkpoints_does_not_import_keras():
    code = "import sys, deeplab_dpc.training.checkpoints, deeplab_dpc.runs; print('keras' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
