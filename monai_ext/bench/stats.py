"""The statistics every benchmark suite reports.

One definition each: the spread of repeated timings (:func:`spread`), the mean and range over seeds
(:func:`mean_range`) and ratios that may be undefined (:func:`ratio`). Scores come from
:func:`monai_ext.metrics.dice_per_class` (MONAI's :class:`~monai.metrics.DiceMetric`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable

__all__ = ["mean_range", "ratio", "spread"]


def spread(values: Iterable[float]) -> dict[str, float]:
    """``{"median", "min", "max"}`` of repeated measurements (e.g. times).

    Raises:
        statistics.StatisticsError: for no values.
    """
    values = list(values)
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def mean_range(values: Iterable[float]) -> dict[str, float]:
    """``{"mean", "min", "max"}`` of results over runs (e.g. seeds).

    Raises:
        statistics.StatisticsError: for no values.
    """
    values = list(values)
    return {"mean": statistics.mean(values), "min": min(values), "max": max(values)}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
