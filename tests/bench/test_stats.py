"""The bench's one set of statistics helpers."""

from __future__ import annotations

import statistics

import pytest

from monai_ext.bench.stats import mean_range, ratio, spread


def test_spread_and_mean_range_by_hand():
    assert spread([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "min": 1.0, "max": 10.0}
    assert mean_range([0.2, 0.4, 0.9]) == pytest.approx({"mean": 0.5, "min": 0.2, "max": 0.9})
    with pytest.raises(statistics.StatisticsError):
        spread([])


def test_ratio_is_none_where_undefined():
    assert ratio(6.0, 3.0) == 2.0
    assert ratio(None, 3.0) is None and ratio(6.0, None) is None and ratio(6.0, 0.0) is None
