"""Tests of ValidateImage / ValidateImaged: bad input becomes an error naming the file, good input passes unchanged."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from monai_ext.transforms import ValidateImage, ValidateImaged


def _img(*shape: int, dtype=torch.float32, name: str = "x.nii.gz") -> MetaTensor:
    return MetaTensor(torch.zeros(shape, dtype=dtype), meta={"filename_or_obj": name})


# ---------------------------------------------------------------- ValidateImage


def test_valid_image_is_returned_as_the_same_unchanged_object():
    img = _img(1, 4, 5, 6)
    img[0, 1, 2, 3] = 7.0
    before = img.clone()
    out = ValidateImage()(img)
    assert out is img
    assert torch.equal(out.as_tensor(), before.as_tensor())
    assert out.meta["filename_or_obj"] == "x.nii.gz"


def test_wrong_number_of_dims_names_file_and_shapes():
    expected = r"x\.nii\.gz: got an image of shape \(4, 5\) \(channel first: \(1, 4, 5\)\), expected a 3D volume"
    with pytest.raises(ValueError, match=expected):
        ValidateImage()(_img(1, 4, 5))
    with pytest.raises(ValueError, match=r"expected a 3D volume"):
        ValidateImage()(_img(1, 2, 4, 5, 6))


def test_spatial_dims_two_accepts_2d_and_refuses_3d():
    img = _img(1, 4, 5)
    assert ValidateImage(spatial_dims=2)(img) is img
    with pytest.raises(ValueError, match=r"expected a 2D volume; give 2D images \(NIfTI, NRRD"):
        ValidateImage(spatial_dims=2)(_img(1, 4, 5, 6))


def test_wrong_channel_count_names_file_and_expected_channels():
    with pytest.raises(ValueError, match=r"x\.nii\.gz: got 2 channel\(s\), the network expects 1;"):
        ValidateImage()(_img(2, 4, 4, 4))
    img = _img(4, 4, 4, 4)
    assert ValidateImage(num_channels=4)(img) is img
    assert ValidateImage(num_channels=None)(img) is img


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_voxels_are_counted_and_refused(value):
    img = _img(1, 4, 4, 4)
    img[0, 0, 0, :2] = value
    with pytest.raises(ValueError, match=r"x\.nii\.gz: 2 voxel\(s\) are NaN or infinite"):
        ValidateImage()(img)
    assert ValidateImage(check_finite=False)(img) is img


def test_non_finite_check_also_covers_half_precision():
    img = _img(1, 2, 2, 2, dtype=torch.float16)
    img[0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"1 voxel\(s\) are NaN or infinite"):
        ValidateImage()(img)


@pytest.mark.parametrize("dtype", [torch.int16, torch.uint8, torch.int64])
def test_integer_images_skip_the_finite_check(dtype):
    img = _img(1, 3, 3, 3, dtype=dtype)
    assert ValidateImage()(img) is img


def test_plain_tensor_without_metadata_is_named_in_memory():
    with pytest.raises(ValueError, match=r"<in-memory image>: got 3 channel\(s\)"):
        ValidateImage()(torch.zeros(3, 2, 2, 2))


# ---------------------------------------------------------------- ValidateImaged


def test_dict_valid_image_and_label_pass_through_unchanged():
    image, label = _img(1, 4, 5, 6), _img(1, 4, 5, 6, dtype=torch.uint8, name="y.nii.gz")
    data = {"image": image, "label": label, "other": "kept"}
    out = ValidateImaged()(data)
    assert out == data and out is not data  # a new dict ...
    assert out["image"] is image and out["label"] is label  # ... holding the same tensors


def test_dict_image_error_names_its_file():
    with pytest.raises(ValueError, match=r"img7\.nii\.gz: got 2 channel\(s\)"):
        ValidateImaged()({"image": _img(2, 4, 4, 4, name="img7.nii.gz")})


def test_dict_label_grid_mismatch_names_both_files_and_sizes():
    data = {"image": _img(1, 4, 5, 6, name="img.nii.gz"), "label": _img(1, 4, 5, 7, name="lab.nii.gz")}
    expected = r"lab\.nii\.gz has size \(4, 5, 7\) but its image img\.nii\.gz has \(4, 5, 6\); a label must be drawn"
    with pytest.raises(ValueError, match=expected):
        ValidateImaged()(data)


def test_dict_label_is_itself_validated_as_single_channel_and_finite():
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: got 2 channel\(s\)"):
        ValidateImaged()({"image": _img(1, 4, 4, 4), "label": _img(2, 4, 4, 4, name="lab.nii.gz")})
    label = _img(1, 4, 4, 4, name="lab.nii.gz")
    label[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"lab\.nii\.gz: 1 voxel\(s\) are NaN"):
        ValidateImaged()({"image": _img(1, 4, 4, 4), "label": label})


def test_dict_multichannel_image_with_single_channel_label_passes():
    data = {"image": _img(3, 4, 4, 4), "label": _img(1, 4, 4, 4)}
    assert ValidateImaged(num_channels=3)(data)["image"] is data["image"]


def test_dict_absent_label_or_no_label_key_skips_the_grid_check():
    image = _img(1, 4, 4, 4)
    assert ValidateImaged()({"image": image})["image"] is image
    data = {"image": image, "label": _img(1, 9, 9, 9)}
    assert ValidateImaged(label_key=None)(data)["label"] is data["label"]


def test_dict_missing_image_key_raises_unless_allowed():
    with pytest.raises(KeyError, match="image"):
        ValidateImaged()({"label": _img(1, 4, 4, 4)})
    # allowed and absent: nothing to compare the label with
    data = {"label": _img(1, 9, 9, 9)}
    assert ValidateImaged(allow_missing_keys=True)(data) == data


def test_dict_label_is_compared_with_the_first_image_key():
    data = {"ct": _img(1, 4, 4, 4), "pet": _img(1, 4, 4, 4), "label": _img(1, 4, 4, 4)}
    assert ValidateImaged(keys=["ct", "pet"])(data) == data
    data["label"] = _img(1, 4, 4, 5, name="lab.nii.gz")
    with pytest.raises(ValueError, match=r"lab\.nii\.gz has size \(4, 4, 5\) but its image x\.nii\.gz"):
        ValidateImaged(keys=["ct", "pet"])(data)


# ---------------------------------------------------------------- label values, label grid, size guard (issue 15)


def _on(grid: torch.Tensor, *shape: int, dtype=torch.float32, name: str = "x.nii.gz") -> MetaTensor:
    return MetaTensor(torch.zeros(shape, dtype=dtype), affine=grid, meta={"filename_or_obj": name})


@pytest.mark.parametrize(
    "value, dtype, message",
    [
        (7, torch.uint8, r"lab\.nii\.gz: label values 7 are outside 0\.\.2 \(num_classes=3; 1 voxel\(s\)\); relabel"),
        (0.5, torch.float32, r"lab\.nii\.gz: 1 label voxel\(s\) are not whole numbers \(e\.g\. 0\.5\)"),
    ],
)
def test_dict_label_values_outside_the_classes_are_refused(value, dtype, message):
    label = _img(1, 4, 4, 4, dtype=dtype, name="lab.nii.gz")
    label[0, 1, 2, 3] = value
    data = {"image": _img(1, 4, 4, 4), "label": label}
    with pytest.raises(ValueError, match=message):
        ValidateImaged(num_classes=3)(data)
    assert ValidateImaged()(data)["label"] is label  # num_classes not given: values not checked


def test_dict_label_values_in_range_pass():
    label = _img(1, 4, 4, 4, name="lab.nii.gz")
    label[0, :2] = 2.0
    data = {"image": _img(1, 4, 4, 4), "label": label}
    assert ValidateImaged(num_classes=3)(data)["label"] is label


def test_dict_label_with_another_affine_is_refused():
    image = _on(torch.eye(4, dtype=torch.float64), 1, 8, 8, 4, name="img.nii.gz")
    label = _on(torch.diag(torch.tensor([1.0, 1.0, 2.0, 1.0], dtype=torch.float64)), 1, 8, 8, 4, name="lab.nii.gz")
    with pytest.raises(
        ValueError, match=r"lab\.nii\.gz is not on the voxel grid of its image img\.nii\.gz: .*1 x 1 x 2 mm"
    ):
        ValidateImaged()({"image": image, "label": label})
    nudged = image.affine.clone()
    nudged[0, 3] = 0.05  # within the default 0.1 voxel
    assert ValidateImaged()({"image": image, "label": _on(nudged, 1, 8, 8, 4)})["image"] is image
    with pytest.raises(ValueError, match="not on the voxel grid"):
        ValidateImaged(grid_tolerance=0.01)({"image": image, "label": _on(nudged, 1, 8, 8, 4)})


def test_dict_label_grid_check_works_in_2d():
    image = _on(torch.eye(4, dtype=torch.float64), 1, 8, 8)
    flipped = torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="not on the voxel grid"):
        ValidateImaged(spatial_dims=2)({"image": image, "label": _on(flipped, 1, 8, 8)})


def test_size_guard_refuses_an_image_above_max_voxels_after_resampling():
    image = _on(torch.diag(torch.tensor([0.5, 0.5, 0.5, 1.0], dtype=torch.float64)), 1, 41, 41, 41, name="big.nii.gz")
    assert ValidateImage(max_voxels=21**3, pixdim=1.0)(image) is image  # 41 voxels of 0.5 mm -> 21 of 1 mm
    expected = r"big\.nii\.gz is too large: 41 x 41 x 41 voxels of 0\.5 x 0\.5 x 0\.5 mm make about 68,921 voxels,"
    with pytest.raises(ValueError, match=expected):
        ValidateImage(max_voxels=21**3)(image)  # not resampled: 68,921 voxels
    with pytest.raises(
        ValueError, match=r"resampled to 1 x 1 x 1 mm, make about 9,261 voxels \(about 0\.28 GiB of memory\)"
    ):
        ValidateImaged(max_voxels=100, pixdim=1.0, bytes_per_voxel=2**15)({"image": image})


def test_size_guard_counts_a_plain_tensor_as_1mm_voxels_and_skips_the_label():
    with pytest.raises(ValueError, match=r"<in-memory image> is too large: 4 x 4 x 4 voxels of 1 x 1 x 1 mm"):
        ValidateImage(max_voxels=63)(torch.zeros(1, 4, 4, 4))
    data = {"image": _img(1, 4, 4, 4), "label": _img(1, 4, 4, 4)}
    assert ValidateImaged(max_voxels=64)(data)["label"] is data["label"]
