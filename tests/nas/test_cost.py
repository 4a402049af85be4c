"""Cost-aware scores: MnasNet's mIoU x (cost / target) ** w orders cells as specified."""

import pytest
from optuna.trial import TrialState

from deeplab_dpc.nas import space as space_lib
from deeplab_dpc.nas.cost import cost_aware_score, score_of
from deeplab_dpc.nas.search_config import SearchConfig
from deeplab_dpc.nas.worker import run_worker
from tests.nas import fakes
from tests.nas.test_study import make_config, start

G = 1e9


def test_soft_trade_off_prefers_a_cheaper_cell_unless_the_costly_one_is_clearly_better():
    # Twice the cost needs 2 ** 0.07 - 1 = 5% more mIoU to tie.
    assert cost_aware_score(0.50, 2 * G, G) == pytest.approx(0.50 * 2**-0.07)
    assert cost_aware_score(0.49, G, G) > cost_aware_score(0.50, 2 * G, G)  # 0.490 > 0.476
    assert cost_aware_score(0.53, 2 * G, G) > cost_aware_score(0.49, G, G)  # 0.505 > 0.490
    assert cost_aware_score(0.49, 0.5 * G, G) > cost_aware_score(
        0.49, G, G
    )  # cheaper than the target: a bonus


def test_hard_constraint_ranks_by_miou_under_the_target_and_penalises_above():
    hard = dict(alpha=0.0, beta=-1.0)
    assert cost_aware_score(0.45, 0.5 * G, G, **hard) == 0.45  # no bonus below the target
    assert cost_aware_score(0.46, 0.9 * G, G, **hard) > cost_aware_score(0.45, 0.5 * G, G, **hard)
    assert cost_aware_score(0.60, 1.5 * G, G, **hard) == pytest.approx(0.40)  # 0.6 / 1.5
    assert cost_aware_score(0.60, 1.5 * G, G, **hard) < cost_aware_score(0.45, 0.5 * G, G, **hard)


def test_errors_name_what_is_wrong():
    with pytest.raises(ValueError, match="must be positive"):
        cost_aware_score(0.5, 0, G)
    with pytest.raises(KeyError, match="no 'latency'"):
        score_of({"miou": 0.5}, "latency", G, -0.07, -0.07)
    assert score_of({"miou": 0.5, "madds": 3 * G}, None, None, -0.07, -0.07) == 0.5
    with pytest.raises(ValueError, match="cost_target=None must be positive"):
        SearchConfig(search_dir="/tmp/x", cost_metric="madds")
    with pytest.raises(ValueError, match="cost_metric='flops' unknown"):
        SearchConfig(search_dir="/tmp/x", cost_metric="flops", cost_target=1.0)


def test_a_cost_aware_search_reports_the_weighed_score_and_keeps_the_miou(tmp_path):
    config = make_config(
        tmp_path, max_trials=4, cost_metric="madds", cost_target=1e8, cost_alpha=0.0, cost_beta=-1.0
    )
    study = start(config)
    run_worker(config, "w")
    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(done) == 4
    for t in done:  # the fake costs 2.5e8 multiply-adds: 2.5x the target, hard penalty
        miou = fakes.score(space_lib.params_to_spec(t.params, config.space))
        assert t.user_attrs["miou"] == pytest.approx(miou)
        assert t.value == pytest.approx(miou / 2.5) and t.user_attrs["score"] == t.value


def test_the_trial_line_shows_the_score_and_the_miou(tmp_path):
    from deeplab_dpc.nas.progress import trial_line

    config = make_config(tmp_path, max_trials=1, cost_metric="madds", cost_target=1e8)
    study = start(config)
    run_worker(config, "w")
    [trial] = study.get_trials()
    assert trial_line(trial).startswith(
        f"trial 0 done: score {trial.value:.3f} (proxy mIoU {trial.user_attrs['miou']:.3f}), 0.25 GMAdds"
    )
