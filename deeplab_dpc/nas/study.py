"""The search's study: one Optuna study in the storage its ``SearchConfig`` names, with the
search's strategy as its sampler and its pruner.

A search is made of:

* ``search_config``: what is searched (``SearchConfig``, validated) and the
  folder that holds it (``search_config.json``, checked when a search continues);
* ``trial_store``: the trials in the storage, what their attributes mean, and the
  recovery of trials left by killed workers, under the search's claim lock;
* ``worker``: the loop every worker process runs against the study (claim,
  dedup, pre-filter, train, record) and the rules it keeps;
* ``executors``: where workers run (local processes, Ray tasks) and the driver
  that starts and watches them (``run_search``).

``load_study`` opens the study for any of them: the driver and the workers
(which sample from it), re-ranking, the analysis and copies (which read it).
"""

from __future__ import annotations

import optuna

from deeplab_dpc.nas.samplers import make_sampler
from deeplab_dpc.nas.search_config import SearchConfig
from deeplab_dpc.nas.trial_store import open_storage


def load_study(config: SearchConfig, *, create: bool = False, sampler=None) -> optuna.Study:
    """The search's study, created if ``create``; Optuna's INFO lines are silenced."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(config.storage, create_tables=create)
    sampler = sampler or make_sampler(config.strategy, config.space, config.strategy_options())
    pruner = config.make_pruner()
    if create:
        return optuna.create_study(
            storage=storage,
            study_name=config.study_name,
            directions=config.directions,
            load_if_exists=True,
            sampler=sampler,
            pruner=pruner,
        )
    return optuna.load_study(storage=storage, study_name=config.study_name, sampler=sampler, pruner=pruner)
