"""The RL controller: valid cells, log-probabilities that match its decisions, PPO that learns a toy
reward, and a search strategy that learns only from completed proposals and resumes exactly."""

import os

import numpy as np
import pytest
from optuna.trial import TrialState

from deeplab_dpc.core.spec import SearchSpace
from deeplab_dpc.nas import study as study_lib
from deeplab_dpc.nas.controller import Controller, ControllerConfig, controller_path
from deeplab_dpc.nas.search_config import SearchConfig, prepare_search_dir
from deeplab_dpc.nas.worker import run_worker
from tests.nas.test_study import make_config, start

SPACE = SearchSpace(num_branches=3)
SMALL = ControllerConfig(hidden=16, layers=1, learning_rate=0.05, batch_size=2, entropy_weight=0.0)


@pytest.fixture(scope="module")
def controller():
    return Controller(SPACE, SMALL, seed=0)


def test_the_controller_writes_only_valid_cells_deterministically(controller):
    seen = set()
    for i in range(12):
        actions, _ = controller.sample(np.random.default_rng(i))
        spec = controller.spec_of(actions)
        SPACE.validate(spec)
        assert (controller.actions_of(spec) == actions).all()
        seen.add(spec.canonical_hash())
    assert len(seen) >= 10  # an untrained controller explores
    a, la = controller.sample(np.random.default_rng(5))
    b, lb = controller.sample(np.random.default_rng(5))
    assert (a == b).all() and la == lb


def test_log_probabilities_match_the_sampled_decisions(controller):
    samples = [controller.sample(np.random.default_rng(100 + i)) for i in range(4)]
    actions = np.stack([a for a, _ in samples])
    np.testing.assert_allclose(controller.log_probs(actions), [lp for _, lp in samples], rtol=1e-5, atol=1e-5)
    # Branch 0's input has one valid choice (the backbone): probability 1.
    assert all(a[0] == 0 for a, _ in samples)


@pytest.mark.parametrize("algorithm", ["ppo", "reinforce"])
def test_updates_raise_the_probability_of_the_cell_that_is_always_rewarded_most(algorithm):
    c = Controller(
        SPACE, ControllerConfig(hidden=16, layers=1, learning_rate=0.05, algorithm=algorithm), seed=1
    )
    good, _ = c.sample(np.random.default_rng(1))
    bad, _ = c.sample(np.random.default_rng(2))
    batch = np.stack([good, bad])
    before = c.log_probs(batch)
    for _ in range(30):  # a toy reward: no training of cells
        c.update(batch, c.log_probs(batch), [1.0, 0.0])
    after = c.log_probs(batch)
    assert after[0] > before[0] + 1.0 and after[1] < before[1]


def test_config_errors_name_the_flag():
    with pytest.raises(ValueError, match="rl_algorithm='a2c' unknown"):
        ControllerConfig(algorithm="a2c")
    with pytest.raises(ValueError, match="rl_clip=1.5"):
        ControllerConfig(clip=1.5)
    with pytest.raises(ValueError, match="rl_batch_size=0"):
        SearchConfig(search_dir="/tmp/x", strategy="rl", rl_batch_size=0)


def test_the_rl_strategy_learns_from_completed_proposals_only_and_resumes_exactly(tmp_path):
    def config(name, max_trials):
        return make_config(
            tmp_path / name,
            strategy="rl",
            max_trials=max_trials,
            num_branches=3,
            objective="tests.nas.fakes:flaky",
            rl_hidden=16,
            rl_layers=1,
            rl_batch_size=2,
            rl_learning_rate=0.05,
        )

    whole = config("whole", 9)
    study = start(whole)
    run_worker(whole, "w")
    trials = study.get_trials()
    assert len(trials) == 9 and all(t.user_attrs.get("proposal") == "rl" for t in trials)
    learnable = [t.number for t in trials if t.state == TrialState.COMPLETE]
    with np.load(controller_path(os.path.join(whole.search_dir, "controller")), allow_pickle=False) as saved:
        consumed = [int(n) for n in saved["consumed"]]
    assert consumed and len(consumed) % 2 == 0 and set(consumed) <= set(learnable)  # never a failed trial
    assert all(t.user_attrs["rl_learnt_from"] <= 8 for t in trials)

    # The same search stopped after 4 trials and continued by a new worker (a new sampler, as a
    # restarted process has) proposes exactly the same cells.
    cut = config("cut", 4)
    start(cut)
    run_worker(cut, "w1")
    resumed = config("cut", 9)
    prepare_search_dir(resumed)
    run_worker(resumed, "w2")
    again = study_lib.load_study(resumed).get_trials()
    assert [t.params for t in again] == [t.params for t in trials]
    assert [t.user_attrs["rl_logp"] for t in again] == pytest.approx(
        [t.user_attrs["rl_logp"] for t in trials]
    )
