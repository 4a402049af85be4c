"""A copy of a search: the same proxy trials in a new folder, without (by default) its re-ranking.

A study keeps one re-ranking's settings: ``rerank`` refuses other training or
evaluation flags, so that full scores made in different ways never mix. To
compare re-rankings (a longer fine-tuning, ``--ema_decay``, another crop)
over the very same proxy trials, copy the search and re-rank the copy:

    python -m deeplab_dpc.copy_search --search_dir=runs/search --output_dir=runs/search_ema
    python -m deeplab_dpc.rerank --flagfile=... --search_dir=runs/search_ema --ema_decay=0.999

``copy_search`` writes ``output_dir`` with its own SQLite study holding every
trial of the source with its number, state, values, intermediate values,
parameters and attributes (a trial still RUNNING in the source becomes FAIL,
"interrupted": the copy has no worker for it), the study's attributes except
the re-ranking's (``full_trial_*`` and ``rerank_settings``; kept with
``keep_full_scores``), ``search_config.json`` pointing at the new folder, and
the files a continued search reads (the RL controller's state,
``best_proxy_cell.json``). Re-ranking runs, stage-2 runs, TensorBoard logs
and worker logs stay in the source (stage-2 records keep their paths). The
copy is built under a temporary name and renamed into place, so a failed copy
leaves no half-written folder; an existing ``output_dir`` is refused.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import os
import shutil
from typing import Any

import optuna
from optuna.trial import TrialState

from deeplab_dpc.fileio import write_json
from deeplab_dpc.nas import rerank as rerank_lib
from deeplab_dpc.nas import trial_store
from deeplab_dpc.nas.search_config import BEST_PROXY_CELL, CONFIG_FILE, SearchConfig, resolve_storage

# Files and folders of a search folder that a continued search reads; the rest stays behind.
COPIED_PATHS = ("controller", BEST_PROXY_CELL)


def is_rerank_attr(key: str) -> bool:
    """Whether a study user attribute belongs to the re-ranking (its records and settings)."""
    return key.startswith(rerank_lib.FULL_PREFIX) or key == rerank_lib.SETTINGS


def copy_search(search_dir: str, output_dir: str, *, keep_full_scores: bool = False) -> dict[str, Any]:
    """Copies the search in ``search_dir`` to ``output_dir`` (see the module docstring).

    Returns ``{"output_dir", "trials", "states": {state: count}, "interrupted": [numbers],
    "full_scores_dropped": n}``. ValueError naming the folder if ``search_dir`` holds no search or
    ``output_dir`` exists.
    """
    source = rerank_lib.load_search_config(search_dir)
    output_dir = os.path.abspath(os.fspath(output_dir))
    if os.path.realpath(output_dir) == os.path.realpath(source.search_dir):
        raise ValueError(f"output_dir={output_dir} is the search being copied; name a new folder")
    if os.path.exists(output_dir):
        raise ValueError(f"output_dir={output_dir} exists; a copy goes to a new folder (nothing was written)")
    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    staging = os.path.join(parent, f".{os.path.basename(output_dir)}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        summary = _copy_into(source, staging, output_dir, keep_full_scores)
        os.rename(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary["output_dir"] = output_dir
    return summary


def _copy_into(source: SearchConfig, staging: str, final_dir: str, keep_full_scores: bool) -> dict:
    config = dataclasses.replace(source, search_dir=final_dir, storage=None)
    source_study = rerank_lib.open_study(source)
    storage = trial_store.open_storage(resolve_storage(None, staging))
    try:
        target = optuna.create_study(
            storage=storage, study_name=source.study_name, directions=source_study.directions
        )
        study_id = target._study_id
        system_attrs = source_study._storage.get_study_system_attrs(source_study._study_id)
        for key, value in system_attrs.items():
            storage.set_study_system_attr(study_id, key, value)
        dropped = 0
        for key, value in source_study._storage.get_study_user_attrs(source_study._study_id).items():
            if is_rerank_attr(key) and not keep_full_scores:
                dropped += key.startswith(rerank_lib.FULL_PREFIX)
                continue
            storage.set_study_user_attr(study_id, key, value)
        states: dict[str, int] = {}
        interrupted = []
        for trial in trial_store.all_trials(source_study):
            if trial.state == TrialState.RUNNING:
                trial = _as_interrupted(trial)
                interrupted.append(trial.number)
            number = storage.get_trial_number_from_id(
                storage.create_new_trial(study_id, template_trial=trial)
            )
            if number != trial.number:  # Numbers are what records, duplicates and retries refer to.
                raise RuntimeError(f"trial {trial.number} was copied as trial {number}")
            states[trial.state.name] = states.get(trial.state.name, 0) + 1
    finally:
        storage.engine.dispose()  # Closes SQLite before the folder is renamed.
    write_json(os.path.join(staging, CONFIG_FILE), config.to_dict())
    for name in COPIED_PATHS:
        path = os.path.join(source.search_dir, name)
        if os.path.isdir(path):
            shutil.copytree(path, os.path.join(staging, name))
        elif os.path.isfile(path):
            shutil.copy2(path, os.path.join(staging, name))
    return {
        "trials": sum(states.values()),
        "states": states,
        "interrupted": interrupted,
        "full_scores_dropped": dropped,
    }


def _as_interrupted(trial):
    """A RUNNING trial of the source as the copy records it: FAIL, interrupted, not retried."""
    reason = "running in the source search when it was copied"
    trial = copy.deepcopy(trial)
    trial.state = TrialState.FAIL
    trial.values = None
    trial.datetime_complete = datetime.datetime.now()
    trial.set_user_attr(trial_store.INTERRUPTED, reason)
    trial.set_user_attr(trial_store.ERROR, f"interrupted ({reason}); not retried in the copy")
    return trial
