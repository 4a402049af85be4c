"""Spearman's rho on known rankings, ties included, against SciPy's."""

import numpy as np
import pytest

from deeplab_dpc.nas import rank_correlation


def test_average_ranks_share_tied_places():
    assert rank_correlation.average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    assert rank_correlation.average_ranks([3, 1, 3, 3]).tolist() == [3.0, 1.0, 3.0, 3.0]
    assert rank_correlation.average_ranks([0.5, 0.2, 0.9]).tolist() == [2.0, 1.0, 3.0]


def test_spearman_on_known_rankings():
    assert rank_correlation.spearman_rho([1, 2, 3, 4, 5], [2, 4, 6, 8, 100]) == pytest.approx(1.0)
    assert rank_correlation.spearman_rho([1, 2, 3, 4, 5], [0.9, 0.7, 0.5, 0.3, 0.1]) == pytest.approx(-1.0)
    # No ties: 1 - 6 * sum(d^2) / (n (n^2 - 1)) = 1 - 6 * 4 / 120.
    assert rank_correlation.spearman_rho([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    # Ties, by hand: ranks x [1, 2.5, 2.5, 4], y [1, 3, 2, 4]; centred products sum to 4.5, squares
    # to 4.5 and 5: rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9).
    assert rank_correlation.spearman_rho([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(np.sqrt(0.9), abs=1e-12)
    assert np.isnan(rank_correlation.spearman_rho([1, 1, 1], [1, 2, 3]))  # no ranking on one side
    assert np.isnan(rank_correlation.spearman_rho([1], [2]))
    with pytest.raises(ValueError, match="needs pairs: 2 x values, 3 y values"):
        rank_correlation.spearman_rho([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="finite"):
        rank_correlation.spearman_rho([1, float("nan")], [1, 2])


def test_spearman_equals_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.integers(0, 6, 30).astype(float)
        y = x + rng.integers(-3, 4, 30)
        assert rank_correlation.spearman_rho(x, y) == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-12)
