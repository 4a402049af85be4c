"""Cost-aware search scores (issue 10): a cell's proxy mIoU weighed by what it costs.

MnasNet (Tan et al. 2019) rewards ``ACC x (COST / TARGET) ** w`` with
``w = alpha`` when the cost is at most the target and ``w = beta`` above it:
``alpha = beta = -0.07`` is its soft trade-off (a cell twice as costly must
score about 5% higher to tie), ``alpha = 0, beta = -1`` a hard constraint
(no reward for being cheaper than the target, a steep penalty above it). The
paper this project reproduces optimised mIoU alone: ``cost_metric=None``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

# Result keys a search can weigh or minimise: the proxy cell's analytical multiply-adds and
# parameters, and its measured inference latency (ms, batch 1, on the machine running the trial).
COST_METRICS = ("madds", "params", "latency_ms")


def cost_aware_score(
    miou: float, cost: float, target: float, alpha: float = -0.07, beta: float = -0.07
) -> float:
    """``miou * (cost / target) ** (alpha if cost <= target else beta)``."""
    if not (cost > 0 and target > 0 and math.isfinite(cost) and math.isfinite(target)):
        raise ValueError(f"cost ({cost}) and target ({target}) must be positive and finite")
    exponent = alpha if cost <= target else beta
    return float(miou) * (float(cost) / float(target)) ** exponent


def score_of(
    result: Mapping[str, Any], metric: str | None, target: float | None, alpha: float, beta: float
) -> float:
    """The value a trial reports: its mIoU, or the cost-aware score on ``result[metric]``."""
    miou = float(result["miou"])
    if metric is None:
        return miou
    if metric not in result:
        raise KeyError(
            f"the objective's result has no {metric!r} to weigh the score by (cost_metric={metric})"
        )
    return cost_aware_score(miou, float(result[metric]), float(target), alpha, beta)
