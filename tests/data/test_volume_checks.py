"""Tests of the volume checks shared by the datalist check and ValidateImaged: volume files read through MONAI's
readers (NIfTI, NRRD, MetaImage, DICOM), grid, label values, size guard."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage

from monai_ext.data.volume_checks import (
    GRID_TOLERANCE,
    check_label_values,
    check_same_grid,
    check_volume_data,
    check_volume_paths,
    check_voxel_budget,
    is_dicom_series,
    read_volume_header,
    read_volume_values,
    resampled_shape,
    target_pixdim,
    volume_format,
    voxel_spacing,
)
from tests.volume_files import write_dicom_series, write_itk

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


# ---------------------------------------------------------------- volume files, through MONAI's readers


def _itk_file(path: Path, array: np.ndarray, spacing=(0.8, 0.9, 2.5), vector: bool = False) -> str:
    return write_itk(path, array, spacing, vector=vector)


def _cut(path: str) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])


def _noise(shape) -> np.ndarray:
    return np.random.default_rng(0).normal(size=shape).astype(np.float32)


@pytest.mark.parametrize(
    "name, expected",
    [("a.nii.gz", "NIfTI"), ("A.NII", "NIfTI"), ("b.nrrd", "NRRD"), ("b.nhdr", "NRRD"), ("c.mha", "MetaImage")]
    + [("c.mhd", "MetaImage"), ("d.dcm", "DICOM"), ("e.png", None), ("f.nii.bak", None), ("g.raw", None)],
)
def test_volume_format_from_the_file_name(name, expected):
    assert volume_format(name) == expected


def test_a_folder_is_a_dicom_series_when_it_holds_dicom_files_named_or_not(tmp_path):
    assert write_dicom_series(tmp_path / "named", np.zeros((8, 8, 3))) and is_dicom_series(tmp_path / "named")
    assert volume_format(tmp_path / "named") == "DICOM"
    write_dicom_series(tmp_path / "bare", np.zeros((8, 8, 3)), suffix="")  # no extension: the DICM marker tells
    assert is_dicom_series(tmp_path / "bare")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x" * 200)
    assert not is_dicom_series(tmp_path / "other") and volume_format(tmp_path / "other") is None
    assert not is_dicom_series(tmp_path / "named" / "slice000.dcm")  # a file is not a series


def test_check_volume_paths_lists_the_missing_then_the_unsupported(tmp_path):
    good = tmp_path / "a.nrrd"
    good.write_bytes(b"")
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.vtk").write_bytes(b"")
    check_volume_paths([str(good)])
    with pytest.raises(
        FileNotFoundError, match=r"(?s)2 file\(s\) named in the datalist do not exist:.*x\.nii.*y\.nrrd"
    ):
        check_volume_paths([str(good), str(tmp_path / "x.nii"), str(tmp_path / "y.nrrd"), str(tmp_path / "b.png")])
    with pytest.raises(
        ValueError, match=r"(?s)2 file\(s\) given are not volumes.*b\.png.*c\.vtk.*Give NIfTI.*itk\.imwrite"
    ):
        check_volume_paths([str(good), str(tmp_path / "b.png"), str(tmp_path / "c.vtk")], "given")


@pytest.mark.parametrize("name", ["v.nrrd", "v.nhdr", "v.mha", "v.mhd", "v.nii.gz"])
def test_header_of_each_format_matches_what_load_image_reads(name, tmp_path):
    array = _noise((20, 24, 16))
    path = str(tmp_path / name)
    if name.endswith(".nii.gz"):
        nib.save(nib.Nifti1Image(array, np.diag([0.8, 0.9, 2.5, 1.0])), path)
    else:
        _itk_file(tmp_path / name, array)
    header = read_volume_header(path)
    loaded = LoadImage(image_only=True)(path)
    assert header.shape == tuple(loaded.shape) == (20, 24, 16) and header.channels == 1
    np.testing.assert_allclose(header.affine, loaded.affine.numpy(), atol=1e-6)
    np.testing.assert_allclose(voxel_spacing(header.affine), [0.8, 0.9, 2.5], rtol=1e-6)
    assert (header.image is not None) == name.endswith(".nii.gz")  # NIfTI: header only; ITK: read and dropped
    np.testing.assert_allclose(read_volume_values(header), loaded.numpy())
    check_volume_data(header)


def test_dicom_series_header_matches_what_load_image_reads(tmp_path):
    folder = write_dicom_series(tmp_path / "series", np.arange(8 * 10 * 4).reshape(8, 10, 4))
    header = read_volume_header(folder)
    loaded = LoadImage(image_only=True)(folder)
    assert header.format == "DICOM" and header.shape == tuple(loaded.shape) == (8, 10, 4)
    np.testing.assert_allclose(header.affine, loaded.affine.numpy(), atol=1e-6)


def test_multichannel_nrrd_channels_are_checked(tmp_path):
    path = _itk_file(tmp_path / "mr.nrrd", _noise((16, 16, 8, 3)), vector=True)
    assert read_volume_header(path, num_channels=3).channels == 3
    with pytest.raises(ValueError, match=r"mr\.nrrd has 3 channels \(shape \(16, 16, 8, 3\)\), 2 expected; give"):
        read_volume_header(path, num_channels=2)
    with pytest.raises(ValueError, match=r"mr\.nrrd has 3 channels .* 1 expected; a label is one channel"):
        read_volume_header(path, num_channels=1, is_image=False)


def test_2d_nrrd_is_refused_as_not_a_3d_volume(tmp_path):
    path = _itk_file(tmp_path / "slice.nrrd", _noise((16, 16)))
    with pytest.raises(ValueError, match=r"slice\.nrrd has shape \(16, 16\): a 3D volume \(X, Y, Z\) is expected"):
        read_volume_header(path)


@pytest.mark.parametrize("name, fmt", [("cut.nrrd", "NRRD"), ("cut.mha", "MetaImage")])
def test_truncated_itk_file_is_caught_when_its_header_is_read(name, fmt, tmp_path):
    path = _itk_file(tmp_path / name, _noise((20, 24, 16)))
    _cut(path)
    with pytest.raises(ValueError, match=rf"cannot read .*{name} as a {fmt} volume: ITKReader failed \(.*copy the"):
        read_volume_header(path)


def test_junk_with_a_volume_name_is_refused(tmp_path):
    path = tmp_path / "junk.nrrd"
    path.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"cannot read .*junk\.nrrd as a NRRD volume: ITKReader failed"):
        read_volume_header(str(path))


def test_unsupported_file_is_refused_before_any_reader_runs(tmp_path):
    path = tmp_path / "photo.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"(?s)photo\.png.*Give NIfTI"):
        read_volume_header(str(path))
