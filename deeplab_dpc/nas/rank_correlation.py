"""Spearman's rank correlation, average ranks for ties: how well one score orders cells as another does.

Plain functions of numbers, shared by what compares rankings: re-ranking (proxy against full
mIoU), the analysis of a search, the fidelity study and its ground truth.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks: [10, 20, 20, 30] -> [1, 2.5, 2.5, 4]."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ordered = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and ordered[j + 1] == ordered[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's correlation of the average ranks of ``x`` and ``y``.

    NaN when fewer than 2 pairs or when either side has all values equal (no ranking).
    ValueError for sequences of different lengths or non-finite values.
    """
    if len(x) != len(y):
        raise ValueError(f"spearman_rho needs pairs: {len(x)} x values, {len(y)} y values")
    if not np.all(np.isfinite(np.asarray(x, float))) or not np.all(np.isfinite(np.asarray(y, float))):
        raise ValueError("spearman_rho: values must be finite")
    if len(x) < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    dx, dy = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float(np.sum(dx * dx)) * float(np.sum(dy * dy)))
    if denominator == 0:
        return float("nan")
    return float(np.sum(dx * dy)) / denominator
