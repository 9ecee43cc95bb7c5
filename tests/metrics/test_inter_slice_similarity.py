"""Inter-slice similarity: the paper's L2 distance of adjacent-slice Dice sequences by hand, empty slices, every
slice axis, MONAI reductions; the one-mask mean adjacent-slice Dice."""

from __future__ import annotations

import math

import pytest
import torch

from monai_ext.metrics import (
    AdjacentSliceDiceMetric,
    InterSliceSimilarityMetric,
    adjacent_slice_dice,
    inter_slice_similarity,
    mean_adjacent_slice_dice,
)


def _three_slices() -> torch.Tensor:
    """(1, 1, 4, 4, 4): slice 0 has 4 pixels, slice 1 two of them, slices 2 and 3 are empty."""
    m = torch.zeros(1, 1, 4, 4, 4)
    m[0, 0, :2, :2, 0] = 1
    m[0, 0, :2, :1, 1] = 1
    return m


def test_adjacent_slice_dice_by_hand_with_empty_pairs():
    m = _three_slices()
    # pairs (0, 1): 2 * 2 / (4 + 2); (1, 2): one side empty, 0; (2, 3): both empty -> `empty`
    torch.testing.assert_close(adjacent_slice_dice(m), torch.tensor([[[2 / 3, 0.0, 1.0]]]))
    torch.testing.assert_close(adjacent_slice_dice(m, empty=0.5), torch.tensor([[[2 / 3, 0.0, 0.5]]]))
    for spatial_dim in (0, 1):  # the same sequence along the other axes
        moved = m.movedim(4, 2 + spatial_dim)
        torch.testing.assert_close(adjacent_slice_dice(moved, spatial_dim), adjacent_slice_dice(m))


def test_inter_slice_similarity_is_the_l2_distance_of_the_two_sequences():
    truth = _three_slices()  # sequence (2/3, 0, 1)
    pred = torch.zeros_like(truth)
    pred[0, 0, :2, :2, 0:3] = 1  # a straight piece over slices 0-2: sequence (1, 1, 0)
    expected = math.sqrt((1 - 2 / 3) ** 2 + (1 - 0) ** 2 + (0 - 1) ** 2)
    assert inter_slice_similarity(pred, truth).item() == pytest.approx(expected)
    assert inter_slice_similarity(truth, truth).item() == 0.0
    # a shifted copy of the truth changes the same way from slice to slice: distance 0 on its own pairs only
    shifted = truth.roll(1, dims=4)  # slices 1, 2 hold the shape, 3 and 0 empty: (0, 2/3, 0)
    assert inter_slice_similarity(shifted, truth).item() == pytest.approx(math.sqrt((2 / 3) ** 2 + (2 / 3) ** 2 + 1))
    # along another axis: both masks moved alike give the same number
    assert inter_slice_similarity(pred.movedim(4, 2), truth.movedim(4, 2), spatial_dim=0).item() == pytest.approx(
        expected
    )


def test_metric_one_hot_classes_background_and_monai_reductions():
    y = torch.zeros(2, 3, 6, 6, 5)
    y[:, 1, 1:3, 1:3, :] = 1  # class 1: a tube in both samples
    y[0, 2, 2, 2, 1:3] = 1  # class 2 in sample 0 only: the same pixel in slices 1 and 2
    y[:, 0] = 1 - y[:, 1:].amax(1)
    pred = y.clone()
    pred[1, 1, 1:3, 1:3, 4] = 0  # sample 1 loses the tube's last slice: pair (3, 4) Dice 1 -> 0
    pred[1, 0] = 1 - pred[1, 1:].amax(0)
    by_hand = torch.stack([inter_slice_similarity(pred[:, 1:], y[:, 1:])[:, c] for c in range(2)], 1)
    assert by_hand[1, 0].item() == pytest.approx(1.0) and by_hand[0].abs().sum() == 0  # and class 2: 0 (both empty)

    metric = InterSliceSimilarityMetric(reduction="none")
    metric(pred[:1], y[:1])  # two iterations are buffered like MONAI's metrics
    metric(pred[1:], y[1:])
    torch.testing.assert_close(metric.aggregate(), by_hand)
    torch.testing.assert_close(metric.aggregate("mean_batch"), by_hand.mean(0))  # per class
    assert metric.aggregate("mean").item() == pytest.approx(by_hand.mean().item())
    counted = InterSliceSimilarityMetric(include_background=True, reduction="mean_batch", get_not_nans=True)
    counted(pred, y)
    value, not_nans = counted.aggregate()
    assert value.shape == (3,) and not_nans.tolist() == [2, 2, 2]
    metric.reset()
    with pytest.raises(ValueError, match="nothing to aggregate"):
        metric.aggregate()


def test_mean_adjacent_slice_dice_of_one_mask():
    tube = torch.zeros(1, 1, 8, 8, 6)
    tube[..., 3:5, 3:5, :] = 1
    assert mean_adjacent_slice_dice(tube).item() == 1.0
    dot = torch.zeros(1, 1, 8, 8, 6)
    for z in range(6):
        dot[0, 0, z, z, z] = 1  # a different pixel in every slice
    assert mean_adjacent_slice_dice(dot).item() == 0.0
    # pairs (0, 1) and (1, 2) count, (2, 3) (both empty) does not
    assert mean_adjacent_slice_dice(_three_slices()).item() == pytest.approx((2 / 3 + 0) / 2)
    assert math.isnan(mean_adjacent_slice_dice(torch.zeros(1, 1, 4, 4, 4)).item())
    y = torch.zeros(2, 3, 6, 6, 5)
    y[:, 1, 1:3, 1:3, :] = 1
    y[0, 2, 2, 2, 1:3] = 1  # class 2 in sample 0 only: pairs (0,1) 0, (1,2) 1, (2,3) 0
    y[:, 0] = 1 - y[:, 1:].amax(1)
    metric = AdjacentSliceDiceMetric(reduction="mean_batch")
    metric(y_pred=y)
    per_class = metric.aggregate()  # background dropped, the NaN of sample 1 class 2 skipped
    assert per_class.shape == (2,) and per_class[0].item() == 1.0 and per_class[1].item() == pytest.approx(1 / 3)


def test_errors():
    with pytest.raises(ValueError, match="MetricReduction"):
        InterSliceSimilarityMetric(reduction="sum_everything")
    with pytest.raises(ValueError, match="at least 2 spatial axes"):
        adjacent_slice_dice(torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        inter_slice_similarity(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), spatial_dim=2)
    with pytest.raises(ValueError, match="spatial_dim counts spatial axes"):
        InterSliceSimilarityMetric(spatial_dim=-1)
    with pytest.raises(ValueError, match="one shape"):
        inter_slice_similarity(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ValueError, match="y_pred must be a binary mask"):
        InterSliceSimilarityMetric()(torch.full((1, 1, 4, 4, 4), 0.5), torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(ValueError, match="y must be a binary mask"):
        InterSliceSimilarityMetric()(torch.zeros(1, 1, 4, 4, 4), torch.full((1, 1, 4, 4, 4), 2.0))
    with pytest.raises(ValueError, match="ground truth"):
        InterSliceSimilarityMetric()(torch.zeros(1, 1, 4, 4, 4))
