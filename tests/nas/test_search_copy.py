"""copy_search: the same proxy trials in a new folder, re-ranked there with other settings; moved folders."""

import dataclasses
import io
import os
import shutil
import subprocess
import sys

import pytest
from optuna.trial import TrialState

from deeplab_dpc.nas import rerank as rerank_lib
from deeplab_dpc.nas import search_copy
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import ConfigMismatch, prepare_search_dir
from tests.nas import test_rerank
from tests.nas.test_rerank import FakeTraining, rerank_config, standard_study

dataset = test_rerank.dataset  # the generated dataset the re-ranking's training flags read (a fixture)


def trial_view(t):
    return (t.number, t.state, t.values, t.params, t.user_attrs, t.intermediate_values, t.datetime_start)


def reranked_search(tmp_path, dataset, monkeypatch):
    """The standard study with its best two cells re-ranked by the fake training."""
    search, study = standard_study(tmp_path)
    config = rerank_config(tmp_path, dataset, search, top_k=2)
    FakeTraining(monkeypatch)
    rerank_lib.run_rerank(config, stream=io.StringIO(), verbose=0)
    assert set(rerank_lib.full_scores(study)) == {1, 4}
    return search, study, config


def test_a_copy_holds_the_same_trials_and_reranks_with_other_settings(tmp_path, dataset, monkeypatch):
    search, study, config = reranked_search(tmp_path, dataset, monkeypatch)
    changed = dataclasses.replace(config, train=dataclasses.replace(config.train, base_learning_rate=0.1))
    with pytest.raises(rerank_lib.SettingsMismatch, match="python -m deeplab_dpc.copy_search --search_dir="):
        rerank_lib.run_rerank(changed, stream=io.StringIO(), verbose=0)

    out = str(tmp_path / "copy")
    summary = search_copy.copy_search(search.search_dir, out)
    assert summary["trials"] == 6 and summary["full_scores_dropped"] == 2 and summary["interrupted"] == []
    assert summary["states"] == {"COMPLETE": 5, "FAIL": 1}
    copied = rerank_lib.load_search_config(out)
    assert copied.search_dir == out and copied.storage == "sqlite:///" + os.path.join(out, "study.db")
    assert dataclasses.replace(copied, search_dir=search.search_dir, storage=search.storage) == search
    copy_study = rerank_lib.open_study(copied)
    assert [trial_view(t) for t in trial_store.all_trials(copy_study)] == [
        trial_view(t) for t in trial_store.all_trials(study)
    ]
    assert rerank_lib.full_scores(copy_study) == {} and rerank_lib.SETTINGS not in copy_study.user_attrs

    # The copy re-ranks with the other settings, into its own folder; the source keeps its scores.
    in_copy = dataclasses.replace(
        changed,
        search_dir=out,
        train=dataclasses.replace(changed.train, train_logdir=os.path.join(out, "rerank")),
    )
    assert rerank_lib.run_rerank(in_copy, stream=io.StringIO(), verbose=0)["trained"] == 2
    assert set(rerank_lib.full_scores(copy_study)) == {1, 4}
    assert rerank_lib.full_scores(copy_study)[1]["full_run_dir"].startswith(out)
    source_records = rerank_lib.full_scores(study)
    assert source_records[1]["full_run_dir"].startswith(search.search_dir)
    assert study.user_attrs[rerank_lib.SETTINGS]["train"]["base_learning_rate"] == 0.05


def test_keep_full_scores_copies_the_reranking_too(tmp_path, dataset, monkeypatch):
    search, study, _ = reranked_search(tmp_path, dataset, monkeypatch)
    out = str(tmp_path / "kept")
    summary = search_copy.copy_search(search.search_dir, out, keep_full_scores=True)
    assert summary["full_scores_dropped"] == 0
    copy_study = rerank_lib.open_study(rerank_lib.load_search_config(out))
    assert rerank_lib.full_scores(copy_study) == rerank_lib.full_scores(study)
    assert copy_study.user_attrs[rerank_lib.SETTINGS] == study.user_attrs[rerank_lib.SETTINGS]


def test_a_running_trial_is_copied_as_interrupted_and_uncounted(tmp_path):
    search, study = standard_study(tmp_path)
    running = study.ask()  # a worker's trial, still training
    summary = search_copy.copy_search(search.search_dir, str(tmp_path / "copy"))
    assert summary["interrupted"] == [running.number]
    copy_study = rerank_lib.open_study(rerank_lib.load_search_config(str(tmp_path / "copy")))
    trial = trial_store.all_trials(copy_study)[running.number]
    assert trial.state == TrialState.FAIL and trial.user_attrs[trial_store.INTERRUPTED]
    assert not trial_store.counts_toward_budget(trial)
    assert trial_store.all_trials(study)[running.number].state == TrialState.RUNNING  # the source untouched


def test_an_existing_output_dir_or_the_search_itself_is_refused(tmp_path, monkeypatch):
    search, _ = standard_study(tmp_path)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ValueError, match=r"^output_dir=.*taken exists"):
        search_copy.copy_search(search.search_dir, str(tmp_path / "taken"))
    with pytest.raises(ValueError, match=r"^output_dir=.* is the search being copied"):
        search_copy.copy_search(search.search_dir, search.search_dir)
    with pytest.raises(ValueError, match="^search_dir=.* has no search_config.json"):
        search_copy.copy_search(str(tmp_path / "taken"), str(tmp_path / "new"))
    # A copy that fails halfway leaves nothing behind: no folder, no staging folder.
    os.makedirs(os.path.join(search.search_dir, "controller"))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(shutil, "copytree", broken)
    with pytest.raises(OSError, match="disk full"):
        search_copy.copy_search(search.search_dir, str(tmp_path / "half"))
    assert sorted(os.listdir(tmp_path)) == ["search", "taken"]


def test_a_moved_search_folder_reads_its_own_study_not_the_original(tmp_path):
    search, study = standard_study(tmp_path)
    moved = str(tmp_path / "moved")
    shutil.copytree(search.search_dir, moved)  # cp -r, or a folder carried to another machine
    config = rerank_lib.load_search_config(moved)
    assert config.search_dir == moved and config.storage == "sqlite:///" + os.path.join(moved, "study.db")
    rerank_lib.record_full_score(rerank_lib.open_study(config), 1, {"full_miou": 0.5})
    assert set(rerank_lib.full_scores(rerank_lib.open_study(config))) == {1}
    assert rerank_lib.full_scores(study) == {}  # the original was not written
    # The search continues in the moved folder (its config is its own, not a changed one).
    prepare_search_dir(dataclasses.replace(search, search_dir=moved, storage=None, max_trials=50))
    assert rerank_lib.load_search_config(moved).max_trials == 50
    with pytest.raises(ConfigMismatch, match="num_branches"):
        prepare_search_dir(
            dataclasses.replace(search, search_dir=moved, storage=None, num_branches=3)
        )


def test_the_entry_point_copies_and_names_a_bad_flag(tmp_path):
    search, _ = standard_study(tmp_path)
    out = tmp_path / "copy"
    command = [sys.executable, "-m", "deeplab_dpc.copy_search", f"--search_dir={search.search_dir}"]
    done = subprocess.run(command + [f"--output_dir={out}"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith(f"copied 6 trials (5 complete, 1 fail) to {out}\n")
    again = subprocess.run(command + [f"--output_dir={out}"], capture_output=True, text=True)
    assert again.returncode != 0 and f"--output_dir={out} exists" in again.stderr
    missing = subprocess.run(command, capture_output=True, text=True)
    assert missing.returncode != 0 and "--output_dir is required" in missing.stderr
