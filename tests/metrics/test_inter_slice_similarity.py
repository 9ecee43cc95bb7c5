"""Inter-slice similarity: adjacent-slice Dice by hand, empty channels, the cumulative metric."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.metrics import InterSliceSimilarityMetric, inter_slice_similarity


def test_a_straight_tube_is_1_and_a_moving_dot_is_0():
    tube = torch.zeros(1, 1, 8, 8, 6)
    tube[..., 3:5, 3:5, :] = 1
    assert inter_slice_similarity(tube).item() == 1.0
    dot = torch.zeros(1, 1, 8, 8, 6)
    for z in range(6):
        dot[0, 0, z, z, z] = 1  # a different pixel in every slice
    assert inter_slice_similarity(dot).item() == 0.0


def test_by_hand_on_three_slices_and_other_axes():
    m = torch.zeros(1, 1, 4, 4, 4)
    m[0, 0, :2, :2, 0] = 1  # 4 pixels
    m[0, 0, :2, :1, 1] = 1  # 2 pixels, all inside slice 0's
    # slices 2 and 3 empty: pair (1, 2) counts (one side non-empty, Dice 0), pair (2, 3) does not
    expected = (2 * 2 / (4 + 2) + 0.0) / 2
    assert math.isclose(inter_slice_similarity(m).item(), expected, rel_tol=1e-6)
    assert math.isclose(inter_slice_similarity(m.movedim(4, 2), spatial_dim=0).item(), expected, rel_tol=1e-6)
    metric = InterSliceSimilarityMetric(spatial_dim=1, include_background=True)
    metric(y_pred=m.movedim(4, 3))
    assert math.isclose(metric.aggregate().item(), expected, rel_tol=1e-6)


def test_empty_channel_is_nan_and_metric_aggregates():
    y = torch.zeros(2, 3, 6, 6, 5)
    y[:, 1, 1:3, 1:3, :] = 1  # class 1: a tube in both samples
    y[0, 2, 2, 2, 1:3] = 1  # class 2 in sample 0 only: two slices, same pixel
    y[:, 0] = 1 - y[:, 1:].amax(1)
    values = inter_slice_similarity(y)
    assert values.shape == (2, 3)
    assert math.isnan(values[1, 2].item()) and values[0, 2].item() == pytest.approx((1.0 + 0 + 0) / 3)
    metric = InterSliceSimilarityMetric(reduction="mean_channel")
    metric(y_pred=y[:1])
    metric(y_pred=y[1:])
    per_class = metric.aggregate()
    assert per_class.shape == (2,)  # background dropped
    assert per_class[0].item() == 1.0 and per_class[1].item() == pytest.approx(1 / 3)
    total = InterSliceSimilarityMetric()
    total(y_pred=y)
    assert total.aggregate().item() == pytest.approx((1 + 1 + 1 / 3) / 3)
    none = InterSliceSimilarityMetric(reduction="none", include_background=True)
    none(y_pred=y)
    assert none.aggregate().shape == (2, 3)


def test_errors():
    with pytest.raises(ValueError, match="reduction must be"):
        InterSliceSimilarityMetric(reduction="sum")
    with pytest.raises(ValueError, match="nothing to aggregate"):
        InterSliceSimilarityMetric().aggregate()
    with pytest.raises(ValueError, match="at least 2 spatial axes"):
        inter_slice_similarity(torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        inter_slice_similarity(torch.zeros(1, 1, 4, 4), spatial_dim=2)
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        InterSliceSimilarityMetric(spatial_dim=-1)
    with pytest.raises(ValueError, match="binarized|binarised|binary"):
        InterSliceSimilarityMetric()(y_pred=torch.full((1, 1, 4, 4, 4), 0.5))
