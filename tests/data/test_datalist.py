"""Tests of the checked Decathlon-style datalist loader: load_datalist, check_datalist, split_datalist."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_ext.data import check_datalist, load_datalist, split_datalist, write_msd_dataset


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    """A 3-training / 1-test synthetic dataset, written once per module (read-only for the tests)."""
    return write_msd_dataset(tmp_path_factory.mktemp("msd") / "d", num_train=3, num_test=1, shape=(32, 32, 32))


def _nifti(path: Path, shape: tuple[int, ...], dtype=np.float32) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros(shape, dtype=dtype), np.eye(4)), str(path))
    return str(path)


def _datalist(path: Path, items: list) -> Path:
    path.write_text(json.dumps({"training": items}))
    return path


# ---------------------------------------------------------------- load_datalist


def test_load_training_key_gives_absolute_existing_paths(msd):
    items = load_datalist(msd)
    assert len(items) == 3
    root = msd.parent.resolve()
    for i, item in enumerate(items):
        assert set(item) == {"image", "label"}
        for k, sub in (("image", "imagesTr"), ("label", "labelsTr")):
            p = Path(item[k])
            assert p.is_absolute() and p.is_file()
            assert p.resolve() == root / sub / f"case_{i:03d}.nii.gz"


def test_load_test_key_turns_plain_paths_into_image_dicts(msd):
    items = load_datalist(msd, key="test")
    assert len(items) == 1
    assert set(items[0]) == {"image"}
    p = Path(items[0]["image"])
    assert p.is_absolute() and p.resolve() == msd.parent.resolve() / "imagesTs" / "case_003.nii.gz"


def test_load_resolves_relative_paths_against_base_dir(msd, tmp_path):
    # a datalist stored elsewhere, its relative paths pointing into the dataset folder through base_dir
    moved = tmp_path / "lists" / "dl.json"
    moved.parent.mkdir()
    shutil.copy(msd, moved)
    with pytest.raises(FileNotFoundError, match=r"(?s)2 file.*lists/imagesTs/case_003"):
        load_datalist(moved, key="test_labeled")  # paths resolved against lists/, where nothing exists
    items = load_datalist(moved, key="test_labeled", base_dir=msd.parent)
    assert Path(items[0]["label"]).resolve() == msd.parent.resolve() / "labelsTs" / "case_003.nii.gz"


def test_missing_datalist_file_points_at_dataset_dir_option(tmp_path):
    missing = tmp_path / "nowhere" / "dataset.json"
    with pytest.raises(FileNotFoundError, match=r"datalist file .*dataset\.json not found.*--dataset_dir"):
        load_datalist(missing)


def test_missing_key_raises_value_error_naming_the_key(msd):
    with pytest.raises(ValueError, match=r"has no usable list 'validation'"):
        load_datalist(msd, key="validation")


def test_empty_list_raises_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"empty list 'training'"):
        load_datalist(_datalist(tmp_path / "dataset.json", []))


def test_missing_referenced_files_are_all_listed(tmp_path):
    img = _nifti(tmp_path / "img0.nii.gz", (8, 8, 8))
    dl = _datalist(
        tmp_path / "dataset.json",
        [
            {"image": "img0.nii.gz", "label": "lab0.nii.gz"},
            {"image": "img1.nii.gz", "label": "lab1.nii.gz"},
        ],
    )
    with pytest.raises(FileNotFoundError, match="3 file") as e:
        load_datalist(dl)
    msg = str(e.value)
    for name in ("lab0.nii.gz", "img1.nii.gz", "lab1.nii.gz"):
        assert str(tmp_path / name) in msg
    assert img not in msg


def test_more_than_ten_missing_files_are_truncated():
    items = [{"image": f"/nonexistent/img{i:02d}.nii.gz"} for i in range(12)]
    with pytest.raises(FileNotFoundError, match="12 file") as e:
        check_datalist(items)
    msg = str(e.value)
    assert "img09" in msg and "img10" not in msg and msg.endswith("...")


def test_check_false_skips_file_checks(tmp_path):
    dl = _datalist(tmp_path / "dataset.json", [{"image": "gone.nii.gz", "label": "gone_l.nii.gz"}])
    items = load_datalist(dl, check=False)
    assert items == [{"image": str(tmp_path / "gone.nii.gz"), "label": str(tmp_path / "gone_l.nii.gz")}]


def test_corrupt_nifti_is_reported_as_unreadable(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"this is not a NIfTI file at all" * 10)
    with pytest.raises(ValueError, match=r"cannot read .*bad\.nii\.gz as a NIfTI volume"):
        check_datalist([{"image": str(bad)}])


def test_2d_image_is_refused_as_not_a_3d_volume(tmp_path):
    img = _nifti(tmp_path / "slice.nii.gz", (16, 16))
    with pytest.raises(ValueError, match=r"slice\.nii\.gz has shape \(16, 16\): a 3D volume"):
        check_datalist([{"image": img}])


def test_image_label_shape_mismatch_names_both_sizes(tmp_path):
    img = _nifti(tmp_path / "img.nii.gz", (16, 16, 8))
    lab = _nifti(tmp_path / "lab.nii.gz", (16, 16, 9), np.uint8)
    with pytest.raises(ValueError, match=r"sizes differ.*\(16, 16, 8\).*\(16, 16, 9\)"):
        check_datalist([{"image": img, "label": lab}])


def test_matching_3d_image_and_label_pass(tmp_path):
    img = _nifti(tmp_path / "img.nii.gz", (16, 12, 8))
    lab = _nifti(tmp_path / "lab.nii.gz", (16, 12, 8), np.uint8)
    assert check_datalist([{"image": img, "label": lab}]) is None


def test_4d_image_with_expected_channels_passes_other_channel_counts_fail(tmp_path):
    img = _nifti(tmp_path / "mr.nii.gz", (16, 16, 8, 2))
    lab = _nifti(tmp_path / "lab.nii.gz", (16, 16, 8), np.uint8)
    dl = _datalist(tmp_path / "dataset.json", [{"image": "mr.nii.gz", "label": "lab.nii.gz"}])
    assert load_datalist(dl, num_channels=2) == [{"image": img, "label": lab}]
    with pytest.raises(
        ValueError, match=r"mr\.nii\.gz has 2 channels \(shape \(16, 16, 8, 2\)\), 3 expected; give the modalities"
    ):
        load_datalist(dl, num_channels=3)
    with pytest.raises(ValueError, match=r"shape \(16, 16, 8, 2\): a 3D volume \(X, Y, Z\) is expected;"):
        load_datalist(dl)  # num_channels not given: a 4D image is not accepted


def test_label_with_trailing_singleton_axis_matches_its_image(tmp_path):
    img = _nifti(tmp_path / "img.nii.gz", (16, 16, 8))
    lab = _nifti(tmp_path / "lab.nii.gz", (16, 16, 8, 1), np.uint8)
    assert check_datalist([{"image": img, "label": lab}]) is None


def test_label_with_several_components_is_refused(tmp_path):
    img = _nifti(tmp_path / "img.nii.gz", (16, 16, 8))
    lab = _nifti(tmp_path / "lab.nii.gz", (16, 16, 8, 3), np.uint8)
    with pytest.raises(ValueError, match=r"lab\.nii\.gz has 3 channels"):
        check_datalist([{"image": img, "label": lab}], num_channels=1)


def test_check_datalist_only_checks_the_given_keys(tmp_path):
    img = _nifti(tmp_path / "img.nii.gz", (16, 16, 8))
    # the label does not exist, but only "image" is checked
    assert check_datalist([{"image": img, "label": str(tmp_path / "none.nii.gz")}], keys=("image",)) is None


# ---------------------------------------------------------------- split_datalist


def test_split_takes_the_last_fraction_for_validation_deterministically():
    items = [{"image": f"{i}.nii.gz"} for i in range(10)]
    train, val = split_datalist(items, val_fraction=0.2)
    assert train == items[:8] and val == items[8:]
    assert split_datalist(items, val_fraction=0.2) == (train, val)
    train, val = split_datalist(items, val_fraction=0.5)
    assert train == items[:5] and val == items[5:]


def test_split_honours_min_val_and_keeps_one_training_case():
    items = list(range(5))
    assert split_datalist(items, val_fraction=0.0) == ([0, 1, 2, 3], [4])  # min_val=1
    assert split_datalist(items, val_fraction=0.0, min_val=0) == ([0, 1, 2, 3, 4], [])
    assert split_datalist(items, val_fraction=0.1, min_val=3) == ([0, 1], [2, 3, 4])
    assert split_datalist(items, val_fraction=0.9) == ([0], [1, 2, 3, 4])  # never all of them
    assert split_datalist([0, 1], val_fraction=0.5, min_val=5) == ([0], [1])


def test_split_single_case_is_used_for_both_and_empty_stays_empty():
    assert split_datalist([{"image": "a"}]) == ([{"image": "a"}], [{"image": "a"}])
    assert split_datalist([]) == ([], [])


def test_split_returns_new_lists_not_the_input():
    items = [1, 2, 3]
    train, val = split_datalist(tuple(items))
    assert isinstance(train, list) and isinstance(val, list)
    train.append(99)
    assert items == [1, 2, 3]


@pytest.mark.parametrize("fraction", [1.0, -0.1, 1.5])
def test_split_refuses_fraction_outside_zero_one(fraction):
    with pytest.raises(ValueError, match=rf"val_fraction must be in \[0, 1\), got {fraction}"):
        split_datalist([1, 2, 3], val_fraction=fraction)


# Validation sizes for 2..12 cases, recorded from split_datalist before it was rebuilt on monai.data.partition_dataset
# (commit 286685f); the validation cases are always the last ones. Python rounding: 5 * 0.5 -> 2, 6 * 0.25 -> 2.
SPLIT_SIZES = {
    (0.0, 0): [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    (0.0, 3): [1, 2, 3, 3, 3, 3, 3, 3, 3, 3, 3],
    (0.1, 0): [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    (0.2, 1): [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2],
    (0.25, 0): [0, 1, 1, 1, 2, 2, 2, 2, 2, 3, 3],
    (0.25, 2): [1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3],
    (0.5, 1): [1, 2, 2, 2, 3, 4, 4, 4, 5, 6, 6],
    (0.9, 1): [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
}


@pytest.mark.parametrize("fraction, min_val", list(SPLIT_SIZES))
def test_split_same_as_before_partition_dataset(fraction, min_val):
    for n, num_val in zip(range(2, 13), SPLIT_SIZES[fraction, min_val]):
        items = [{"image": f"{i}.nii.gz"} for i in range(n)]
        assert split_datalist(items, fraction, min_val) == (items[: n - num_val], items[n - num_val :]), n


@pytest.mark.parametrize("min_val", [-1, 1.5, None])
def test_split_refuses_bad_min_val(min_val):
    with pytest.raises(ValueError, match=rf"min_val must be an integer >= 0, got {min_val}"):
        split_datalist([1, 2, 3], min_val=min_val)
