"""Tests of the volume checks shared by the datalist check and ValidateImaged: grid, label values, size guard."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_ext.data.volume_checks import (
    GRID_TOLERANCE,
    check_label_values,
    check_same_grid,
    check_voxel_budget,
    resampled_shape,
    target_pixdim,
    voxel_spacing,
)

# voxel axes (i, j, k) stored as (S, L, P): axis i runs up, j to the left, k to the back; spacing 2, 0.5, 1 mm
SLP = np.array([[0, -0.5, 0, 10], [0, 0, -1.0, 20], [2.0, 0, 0, 30], [0, 0, 0, 1]])


def test_voxel_spacing_is_the_length_of_each_affine_column():
    np.testing.assert_allclose(voxel_spacing(SLP), [2.0, 0.5, 1.0])
    np.testing.assert_allclose(voxel_spacing(np.diag([0.7, 0.7, 3.0, 1.0])), [0.7, 0.7, 3.0])


@pytest.mark.parametrize(
    "pixdim, expected",
    [(1.5, (1.5, 1.5, 1.5)), ([1.0, 2.0], (1.0, 2.0, 2.0)), ((1, 1, 3, 9), (1.0, 1.0, 3.0)), ([0, -1, 2], (0, -1, 2))],
)
def test_target_pixdim_reads_pixdim_as_monai_spacing_does(pixdim, expected):
    assert target_pixdim(pixdim) == expected


@pytest.mark.parametrize("pixdim", [[], "1.5", [1.0, float("nan")], None])
def test_target_pixdim_refuses_what_is_not_numbers(pixdim):
    with pytest.raises(ValueError, match="pixdim must be a number or a sequence of numbers"):
        target_pixdim(pixdim)


def test_resampled_shape_reads_pixdim_in_ras_axis_order():
    # voxel axis i is S (the third RAS axis), j is L/R (the first), k is P/A (the second)
    expected = (9 * 2 / 4 + 1, 39 * 0.5 / 0.25 + 1, 20.0)  # first to last voxel centre, as MONAI's Spacing
    assert resampled_shape((10, 40, 20), SLP, [0.25, 1.0, 4.0]) == pytest.approx(expected)
    assert resampled_shape((10, 40, 20), SLP, None) == (10.0, 40.0, 20.0)
    assert resampled_shape((10, 40, 20), SLP, [0, 0, 1.0]) == pytest.approx((19.0, 40.0, 20.0))  # <= 0 keeps an axis


def test_resampled_shape_matches_monai_spacing():
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    img = MetaTensor(torch.zeros(1, 10, 40, 20), affine=torch.as_tensor(SLP))
    out = Spacing(pixdim=[0.25, 1.0, 4.0])(Orientation(axcodes="RAS", labels=None)(img))
    estimate = resampled_shape((10, 40, 20), SLP, [0.25, 1.0, 4.0])  # along the input's voxel axes (S, L, P)
    assert tuple(out.shape[1:]) == (round(estimate[1]), round(estimate[2]), round(estimate[0]))  # RAS order


def test_voxel_budget_returns_the_estimate_and_refuses_above_it():
    assert check_voxel_budget("x.nii.gz", (64, 64, 32), np.eye(4), None, 64 * 64 * 32) == 64 * 64 * 32
    assert check_voxel_budget("x.nii.gz", (64, 64, 32), np.eye(4), 2.0, 20_000) == round(32.5 * 32.5 * 16.5)
    with pytest.raises(
        ValueError,
        match=r"x\.nii\.gz is too large: 64 x 64 x 32 voxels of 1 x 1 x 1 mm make about 131,072 voxels, above",
    ):
        check_voxel_budget("x.nii.gz", (64, 64, 32), np.eye(4), None, 100_000)


@pytest.mark.parametrize("max_voxels", [0, -5, 1.5, None])
def test_voxel_budget_refuses_a_bad_limit(max_voxels):
    with pytest.raises(ValueError, match="max_voxels must be an integer >= 1"):
        check_voxel_budget("x", (4, 4, 4), np.eye(4), None, max_voxels)


def test_same_grid_returns_the_distance_and_refuses_beyond_the_tolerance():
    shifted = np.eye(4)
    shifted[2, 3] = 0.05
    assert check_same_grid("i", "l", (8, 8, 8), np.eye(4), shifted) == pytest.approx(0.05)
    assert check_same_grid("i", "l", (8, 8, 8), np.eye(4), np.eye(4)) == 0.0
    with pytest.raises(ValueError, match=r"l is not on the voxel grid of its image i: .* up to 0\.05 mm apart"):
        check_same_grid("i", "l", (8, 8, 8), np.eye(4), shifted, tolerance=0.01)
    with pytest.raises(ValueError, match=r"grid tolerance must be a number of voxels >= 0"):
        check_same_grid("i", "l", (8, 8, 8), np.eye(4), shifted, tolerance=-1)


def test_same_grid_measures_the_far_corner_so_a_small_spacing_error_counts():
    # 0.1 % spacing error: 0.001 mm at the first voxel, 0.2 mm at voxel 200, beyond 0.1 voxel
    scaled = np.diag([1.001, 1.0, 1.0, 1.0])
    assert GRID_TOLERANCE == 0.1
    check_same_grid("i", "l", (20, 8, 8), np.eye(4), scaled)
    with pytest.raises(ValueError, match=r"spacing 1 x 1 x 1 mm, orientation RAS; label: spacing 1\.001 x 1 x 1 mm"):
        check_same_grid("i", "l", (201, 8, 8), np.eye(4), scaled)


def test_same_grid_works_for_2d_images():
    assert check_same_grid("i", "l", (8, 8), np.eye(3), np.eye(3)) == 0.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32, bool])
def test_label_values_in_range_pass(dtype):
    values = np.zeros((4, 4, 4), dtype)
    values[0] = 1
    assert check_label_values(values, 2, "l") is None
    assert check_label_values(torch.as_tensor(values), 2, "l") is None
    assert check_label_values(np.zeros((0, 4), dtype), 2, "l") is None


def test_label_values_message_lists_at_most_five_values_and_counts_voxels():
    values = np.arange(12, dtype=np.int16).reshape(3, 4)
    with pytest.raises(
        ValueError, match=r"l: label values 3, 4, 5, 6, 7, \.\.\. are outside 0\.\.2 \(num_classes=3; 9 v"
    ):
        check_label_values(values, 3, "l")


def test_nan_in_a_float_label_is_not_a_class_index():
    values = np.zeros(4, np.float32)
    values[0] = np.nan
    with pytest.raises(ValueError, match=r"l: 1 label voxel\(s\) are not whole numbers \(e\.g\. nan\)"):
        check_label_values(values, 2, "l")


def test_label_of_a_non_numeric_type_is_refused():
    with pytest.raises(ValueError, match=r"a label of type complex64 is not a map of class indices"):
        check_label_values(np.zeros(3, np.complex64), 2, "l")


def test_label_values_refuse_a_bad_num_classes():
    with pytest.raises(ValueError, match="num_classes must be an integer >= 1"):
        check_label_values(np.zeros(3, np.uint8), 0, "l")
