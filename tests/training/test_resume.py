"""Rerunning in a train_logdir resumes its run only when nothing that defines the run changed.

The refused case is the silent one: a cell with other atrous rates has weights
of the same shapes, so the checkpoint loads and training would continue the
old weights under a config file that misdescribes them.
"""

import hashlib
import json
import os
import re

import pytest
from absl import app, flags

from deeplab_dpc import synthetic, train as train_main
from deeplab_dpc.core.model import ModelConfig
from deeplab_dpc.core.spec import CellSpec
from deeplab_dpc.data.batches import DataConfig
from deeplab_dpc.training import checkpoints, train_lib
from deeplab_dpc.training.config import RESUMABLE_FIELDS, ResumeMismatch, TrainConfig, check_resume
from tests.training.tiny import tiny_train_config


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_resume")
    descriptor = synthetic.write_segnet_folders(root, {"train": 8, "val": 2}, 48, 48, num_classes=3)
    return str(root), descriptor


def _cell(rates):
    return CellSpec.from_list([
        {"op": "conv", "kernel": 3, "rate": list(rates[0]), "input": -1},
        {"op": "conv", "kernel": 3, "rate": list(rates[1]), "input": 0},
    ])


RATES = ((1, 6), (6, 3))
OTHER_RATES = ((1, 3), (12, 3))  # the same branches and shapes: only the dilation differs


def _config(dataset, logdir, rates=RATES, **kw):
    model = kw.pop("model", None) or ModelConfig(
        num_classes=3, context="dpc", dense_prediction_cell=_cell(rates), depth_multiplier=0.35, dropout_rate=0.0
    )
    fields = dict(train_crop_size=(48, 48), base_learning_rate=0.02, training_number_of_steps=4, log_steps=2)
    fields.update(kw)
    return tiny_train_config(dataset, logdir, model, **fields)


def _snapshot(directory):
    """{file name: sha256} of everything in the folder."""
    return {
        name: hashlib.sha256((directory / name).read_bytes()).hexdigest()
        for name in sorted(os.listdir(directory)) if (directory / name).is_file()
    }


def test_rerun_with_other_cell_rates_is_refused_and_a_logging_change_resumes(dataset, tmp_path, capsys):
    train_lib.train(_config(dataset, tmp_path), verbose=0)
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path))] == [2, 4]
    os.remove(checkpoints.checkpoint_path(str(tmp_path), 4))  # as if killed after step 2's checkpoint
    before = _snapshot(tmp_path)

    # Other DPC rates: the checkpoint would load (same shapes); refused, naming the flag and both values.
    with pytest.raises(ResumeMismatch) as error:
        train_lib.train(_config(dataset, tmp_path, rates=OTHER_RATES), verbose=0)
    message = str(error.value)
    assert message.startswith(f"train_logdir={tmp_path} already holds a run")
    changes = message.split("would change it: ")[1].split(". A resume")[0]
    assert changes.startswith("dense_prediction_cell_json: ") and changes.count(" -> ") == 1
    old, new = changes[len("dense_prediction_cell_json: "):].split(" -> ")
    assert json.loads(old) == _cell(RATES).to_list() and json.loads(new) == _cell(OTHER_RATES).to_list()
    assert _snapshot(tmp_path) == before  # no config, checkpoint or event file written or touched

    # A schedule change is refused too, and every refused field is listed.
    with pytest.raises(ResumeMismatch, match=r"base_learning_rate: 0\.02 -> 0\.05; training_number_of_steps: 4 -> 8\."):
        train_lib.train(_config(dataset, tmp_path, base_learning_rate=0.05, training_number_of_steps=8), verbose=0)
    assert _snapshot(tmp_path) == before

    # Logging and evaluation settings may change: the run resumes at step 2 and the config file follows.
    capsys.readouterr()
    changed = _config(dataset, tmp_path, log_steps=100, eval_split="val", eval_interval_steps=3, eval_crop_size=(48, 48))
    summary = train_lib.train(changed, verbose=1)
    assert summary["resumed_from"] == 2 and summary["step"] == 4
    assert [r["step"] for r in summary["history"]] == [4] and "val_miou" in summary["history"][0]
    assert [s for s, _ in checkpoints.list_checkpoints(str(tmp_path))] == [2, 4]
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert (saved["log_steps"], saved["eval_interval_steps"], saved["eval_split"]) == (100, 3, "val")
    assert TrainConfig.from_dict(saved) == changed
    # The progress bar counts this session's 2 steps, not an epoch of log_steps=100 (it showed 100/100).
    out = capsys.readouterr().out
    assert "2/2" in out and "/100" not in out


def test_the_entry_point_turns_a_refused_resume_into_a_usage_error(dataset, tmp_path):
    root, descriptor = dataset
    spec = tmp_path / "cell.json"
    spec.write_text(json.dumps(_cell(OTHER_RATES).to_list()))
    run = tmp_path / "run"
    run.mkdir()
    config = _config(dataset, run)
    config.save(str(run))
    before = _snapshot(run)
    fv = flags.FlagValues()
    train_main.define_flags(fv)
    fv(["train", f"--dataset={descriptor}", f"--dataset_dir={root}", "--dataset_format=folder:segnet",
        f"--train_logdir={run}", f"--dense_prediction_cell_json={spec}", "--depth_multiplier=0.35"])
    with pytest.raises(app.UsageError, match=rf"^--train_logdir={run} already holds a run.*dense_prediction_cell_json: "):
        train_main.train_from_flags(fv, verbose=0)
    assert _snapshot(run) == before


def test_which_changes_a_resume_allows(dataset, tmp_path):
    config = _config(dataset, tmp_path)
    assert check_resume(config, has_checkpoints=False)  # a new run: write its config
    config.save(str(tmp_path))
    assert not check_resume(config, has_checkpoints=True)  # the same run: nothing to write
    allowed = dict(log_steps=7, save_interval_secs=60.0, keep_checkpoint_max=2, eval_split="val",
                   eval_interval_steps=5, eval_crop_size=(64, 64), eval_max_examples=3, num_summary_images=1,
                   jit_compile=True, train_logdir=str(tmp_path))
    assert check_resume(_config(dataset, tmp_path, **allowed), has_checkpoints=True)
    assert set(allowed) <= RESUMABLE_FIELDS
    root, descriptor = dataset
    refused = {
        "train_batch_size": dict(train_batch_size=2),
        "train_crop_size": dict(train_crop_size=(32, 32)),
        "momentum": dict(momentum=0.5),
        "top_k_percent_pixels": dict(top_k_percent_pixels=0.5),
        "seed": dict(seed=2),
        "fine_tune_batch_norm": dict(fine_tune_batch_norm=False),
        "num_classes (of the dataset)": dict(model=ModelConfig(num_classes=4, context="dpc", dense_prediction_cell=_cell(RATES),
                                                              depth_multiplier=0.35, dropout_rate=0.0)),
        "depth_multiplier": dict(model=ModelConfig(num_classes=3, context="dpc", dense_prediction_cell=_cell(RATES),
                                                   depth_multiplier=0.5, dropout_rate=0.0)),
        "label_remap": dict(data=DataConfig(dataset=descriptor, dataset_dir=root, dataset_format="folder:segnet",
                                            label_remap={2: 255})),
    }
    for flag, change in refused.items():
        with pytest.raises(ResumeMismatch, match=f"would change it: {re.escape(flag)}: "):
            check_resume(_config(dataset, tmp_path, **change), has_checkpoints=True)


def test_a_config_file_from_before_a_field_existed_compares_with_its_default(dataset, tmp_path):
    config = _config(dataset, tmp_path)
    config.save(str(tmp_path))
    path = tmp_path / "train_config.json"
    saved = json.loads(path.read_text())
    del saved["batch_norm_warm_start"]  # written before the flag existed (the old behaviour: True)
    path.write_text(json.dumps(saved))
    assert not check_resume(config, has_checkpoints=True)
    with pytest.raises(ResumeMismatch, match="batch_norm_warm_start: true -> false"):
        check_resume(_config(dataset, tmp_path, batch_norm_warm_start=False), has_checkpoints=True)


def test_checkpoints_without_a_train_config_are_not_resumed_blindly(dataset, tmp_path):
    (tmp_path / "ckpt-00000010.weights.h5").write_bytes(b"")
    with pytest.raises(ResumeMismatch, match=f"train_logdir={tmp_path} holds checkpoints but no train_config.json"):
        check_resume(_config(dataset, tmp_path), has_checkpoints=True)
