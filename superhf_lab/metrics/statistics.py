"""Means with their uncertainty: the one home of the intervals evaluations and reports print."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def mean_and_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval (normal approximation, 1.96 standard errors)."""
    if not values:
        return float("nan"), float("nan")
    array = np.asarray(values, dtype=float)
    half_width = 1.96 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
    return float(array.mean()), float(half_width)


def mean_and_t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% interval from Student's t (NaN width for a single value)."""
    finite = [value for value in values if math.isfinite(value)]
    if not finite:
        return math.nan, math.nan
    if len(finite) == 1:
        return finite[0], math.nan
    sem = float(np.std(finite, ddof=1)) / math.sqrt(len(finite))
    return float(np.mean(finite)), float(stats.t.ppf(0.975, len(finite) - 1)) * sem
