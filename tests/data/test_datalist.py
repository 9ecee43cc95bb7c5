"""Tests of the checked Decathlon-style datalist loader: load_datalist, check_datalist, split_datalist."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_ext.data import Datalist, check_datalist, load_datalist, split_datalist, write_msd_dataset
from monai_ext.data.datalist import find_volumes
from tests.volume_files import write_dicom_series, write_itk


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


# ---------------------------------------------------------------- bad input caught up front (issue 15)


def _case(tmp_path: Path, name: str, shape=(16, 16, 8), affine=None, label=None, label_affine=None) -> dict:
    """A noise image (float32: a cut through its gzip cuts the voxels, not the header) and, when ``label`` is given,
    its label, as NIfTI files."""
    affine = np.eye(4) if affine is None else affine
    img = tmp_path / f"{name}.nii.gz"
    img.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=shape).astype(np.float32), affine), str(img))
    item = {"image": str(img)}
    if label is not None:
        lab = tmp_path / f"{name}_label.nii.gz"
        nib.save(nib.Nifti1Image(label, affine if label_affine is None else label_affine), str(lab))
        item["label"] = str(lab)
    return item


def _truncate(path: str, fraction: float = 1 / 3) -> None:
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction)])


def test_truncated_gzip_passes_the_header_read_but_is_caught_up_front(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "cut.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(size=(32, 32, 16)).astype(np.float32), np.eye(4)), str(path))
    _truncate(str(path))
    assert nib.load(str(path)).shape == (32, 32, 16)  # the header alone still reads: the old check let it through
    with pytest.raises(EOFError):
        np.asanyarray(nib.load(str(path)).dataobj)  # ... and loading it mid-run failed like this
    with pytest.raises(
        ValueError, match=r"cut\.nii\.gz is truncated or damaged: reading its voxel data failed .*; copy"
    ):
        check_datalist([{"image": str(path)}])


def test_truncated_uncompressed_nifti_is_caught_from_its_size(tmp_path):
    path = tmp_path / "cut.nii"
    nib.save(nib.Nifti1Image(np.ones((16, 16, 8), np.float32), np.eye(4)), str(path))
    _truncate(str(path), 0.5)
    with pytest.raises(
        ValueError, match=r"cut\.nii is truncated: its header describes 8544 bytes, the file holds 4272;"
    ):
        check_datalist([{"image": str(path)}])


def test_truncated_label_is_caught_too(tmp_path):
    noisy = np.random.default_rng(0).integers(0, 3, (16, 16, 8)).astype(np.uint8)  # so that half the file is voxels
    item = _case(tmp_path, "c", label=noisy)
    _truncate(item["label"], 0.5)
    with pytest.raises(ValueError, match=r"c_label\.nii\.gz is truncated"):
        check_datalist([item])


def test_header_checks_of_every_case_run_before_any_voxel_is_read(tmp_path):
    # the first case is truncated, the second has a 2D image: the cheap header check reports the second first
    first = _case(tmp_path, "a")
    _truncate(first["image"])
    second = {"image": _nifti(tmp_path / "flat.nii.gz", (16, 16))}
    with pytest.raises(ValueError, match=r"flat\.nii\.gz has shape \(16, 16\)"):
        check_datalist([first, second])


@pytest.mark.parametrize(
    "label, message",
    [
        (7, r"label values 7 are outside 0\.\.2 \(num_classes=3; 1 voxel\(s\)\); relabel those voxels"),
        (255, r"label values 255 are outside 0\.\.2"),
        (0.5, r"1 label voxel\(s\) are not whole numbers \(e\.g\. 0\.5\); a label holds class indices 0\.\.2"),
        (-1.0, r"label values -1 are outside 0\.\.2"),
    ],
)
def test_label_values_are_refused_unless_class_indices(tmp_path, label, message):
    values = np.zeros((16, 16, 8), np.uint8 if isinstance(label, int) else np.float32)
    values[1, 2, 3] = label
    item = _case(tmp_path, "c", label=values)
    with pytest.raises(ValueError, match=rf"c_label\.nii\.gz: {message}"):
        check_datalist([item], num_classes=3)
    assert check_datalist([item]) is None  # without num_classes, values are not checked


def test_float_label_with_whole_values_in_range_passes(tmp_path):
    values = np.zeros((16, 16, 8), np.float32)
    values[:4] = 2.0
    assert check_datalist([_case(tmp_path, "c", label=values)], num_classes=3) is None


def _flip_x(affine: np.ndarray, size: int) -> np.ndarray:
    flipped = affine.copy()
    flipped[:, 0] *= -1
    flipped[0, 3] = affine[0, 3] + (size - 1) * affine[0, 0]
    return flipped


@pytest.mark.parametrize(
    "label_affine, message",
    [
        (np.diag([1.0, 1.0, 2.0, 1.0]), r"spacing 1 x 1 x 1 mm, orientation RAS; label: spacing 1 x 1 x 2 mm"),
        (_flip_x(np.eye(4), 16), r"orientation RAS; label: spacing 1 x 1 x 1 mm, orientation LAS"),
        (np.array([[1, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), r"up to 0\.5 mm apart"),
    ],
    ids=["spacing", "orientation", "half-voxel shift"],
)
def test_label_on_another_grid_is_refused(tmp_path, label_affine, message):
    item = _case(tmp_path, "c", label=np.zeros((16, 16, 8), np.uint8), label_affine=label_affine)
    expected = r"c_label\.nii\.gz is not on the voxel grid of its image .*c\.nii\.gz: both are 16 x 16 x 8 voxels"
    with pytest.raises(ValueError, match=expected + ".*" + message + r".*Resample the label onto its image's grid"):
        check_datalist([item])


def test_label_grid_within_the_tolerance_passes(tmp_path):
    nudged = np.eye(4)
    nudged[0, 3] = 0.05  # header rounding: 0.05 voxel, under the default 0.1
    item = _case(tmp_path, "c", label=np.zeros((16, 16, 8), np.uint8), label_affine=nudged)
    assert check_datalist([item]) is None
    with pytest.raises(ValueError, match="not on the voxel grid"):
        check_datalist([item], grid_tolerance=0.01)


def test_size_guard_counts_voxels_after_resampling_to_pixdim(tmp_path):
    item = _case(tmp_path, "big", shape=(40, 40, 20), affine=np.diag([0.5, 0.5, 2.0, 1.0]))  # 32,000 voxels
    assert check_datalist([item], max_voxels=32_000) is None  # not resampled
    # at 1 x 1 x 1 mm: 20.5 x 20.5 x 39 (first to last voxel centre, as MONAI's Spacing) = 16,390 voxels
    assert check_datalist([item], max_voxels=16_390, pixdim=[1.0, 1.0, 1.0]) is None
    expected = (
        r"big\.nii\.gz is too large: 40 x 40 x 20 voxels of 0\.5 x 0\.5 x 2 mm, resampled to 0\.5 x 0\.5 x 0\.5 mm, "
        r"make about 123,200 voxels \(about 0\.47 GiB of memory\), above max_voxels=64000, the largest volume this "
        r"bundle processes; crop the image to the region you need, or raise max_voxels \(e\.g\. --max_voxels 123200\)"
    )
    with pytest.raises(ValueError, match=expected):
        check_datalist([item], max_voxels=64_000, pixdim=0.5, bytes_per_voxel=4096)


def test_size_guard_is_checked_before_reading_any_voxel(tmp_path):
    truncated = _case(tmp_path, "a")
    _truncate(truncated["image"])
    big = _case(tmp_path, "b", shape=(40, 40, 20))
    with pytest.raises(ValueError, match=r"b\.nii\.gz is too large"):
        check_datalist([truncated, big], max_voxels=10_000)


def test_same_file_name_in_two_folders_is_refused_when_outputs_share_a_folder(tmp_path):
    a, b = _case(tmp_path / "site_a", "case_001"), _case(tmp_path / "site_b", "case_001")
    c = {"image": _nifti(tmp_path / "site_b" / "case_002.nii", (16, 16, 8))}
    d = {"image": _nifti(tmp_path / "site_c" / "case_002.nii.gz", (16, 16, 8))}  # .nii and .nii.gz: same output
    assert check_datalist([a, b, c, d]) is None  # only with unique_names
    with pytest.raises(ValueError, match="2 output name") as e:
        check_datalist([a, b, c, d], unique_names=True)
    msg = str(e.value)
    assert f"case_001: {a['image']}, {b['image']}" in msg and f"case_002: {c['image']}, {d['image']}" in msg
    assert "Rename the files so that their names differ, or run each folder on its own" in msg
    assert check_datalist([a, c], unique_names=True) is None


def test_load_datalist_passes_the_checks_on(tmp_path):
    values = np.zeros((16, 16, 8), np.uint8)
    values[0, 0, 0] = 4
    item = _case(tmp_path, "c", label=values)
    dl = _datalist(tmp_path / "dataset.json", [{"image": "c.nii.gz", "label": "c_label.nii.gz"}])
    assert load_datalist(dl, num_classes=5) == [item]
    with pytest.raises(ValueError, match=r"label values 4 are outside 0\.\.3"):
        load_datalist(dl, num_classes=4)


# ---------------------------------------------------------------- Datalist: read when the data are used


def test_datalist_is_not_read_until_used(tmp_path):
    missing = Datalist(tmp_path / "nowhere" / "dataset.json", "training", tmp_path, num_classes=3)
    assert not missing.loaded and "not read yet" in repr(missing)
    train, val = missing.split(0.5)  # splitting reads nothing either
    with pytest.raises(FileNotFoundError, match=r"datalist file .*dataset\.json not found.*--dataset_dir"):
        len(train)
    with pytest.raises(FileNotFoundError, match="not found"):
        list(missing)


def test_missing_as_empty_counts_no_case_until_checked(tmp_path):
    # what an inference engine built with no data present sees (MONAI's property checks build the engines) ...
    missing = Datalist(tmp_path / "nowhere" / "dataset.json", "test", tmp_path, missing_as_empty=True)
    assert len(missing) == 0 and not missing.loaded
    # ... while check(), which the bundle's run calls before its engine, and any use of the items report it
    with pytest.raises(FileNotFoundError, match=r"datalist file .*dataset\.json not found.*--dataset_dir"):
        missing.check()
    with pytest.raises(FileNotFoundError, match="not found"):
        list(missing)


def test_datalist_check_reads_once_and_len_then_counts_the_items(msd):
    dl = Datalist(msd, "training", num_classes=3)
    assert dl.check() is dl and dl.loaded and len(dl) == len(dl.items) > 0


def test_datalist_reads_checks_and_keeps_the_items_once(msd, monkeypatch):
    import monai_ext.data.datalist as module

    calls = []
    monkeypatch.setattr(module, "check_datalist", lambda items, **kw: calls.append(kw))
    dl = Datalist(msd, "training", num_classes=3, max_voxels=10**6)
    assert len(dl) == 3 and dl[0] == load_datalist(msd, check=False)[0]
    assert list(dl) == dl[:] == load_datalist(msd, check=False)
    assert dl.loaded and len(calls) == 1 and calls[0]["num_classes"] == 3 and calls[0]["max_voxels"] == 10**6


def test_datalist_split_parts_match_split_datalist_and_read_the_parent_once(msd):
    dl = Datalist(msd, "training")
    train, val = dl.split(0.34)
    assert (list(train), list(val)) == split_datalist(load_datalist(msd), 0.34)
    assert "validation part" in repr(val) and dl.loaded
    assert pickle.loads(pickle.dumps(train))[:] == train[:]  # DataLoader workers may pickle it


def test_datalist_refuses_unknown_arguments_and_bad_split_at_construction(msd):
    with pytest.raises(TypeError, match="num_class"):
        Datalist(msd, "training", num_class=3)
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\)"):
        Datalist(msd).split(1.5)


def test_datalist_runs_the_checks_when_first_used(tmp_path):
    values = np.zeros((16, 16, 8), np.uint8)
    values[0, 0, 0] = 7
    _case(tmp_path, "c", label=values)
    dl = Datalist(
        _datalist(tmp_path / "dataset.json", [{"image": "c.nii.gz", "label": "c_label.nii.gz"}]), num_classes=3
    )
    with pytest.raises(ValueError, match=r"c_label\.nii\.gz: label values 7 are outside 0\.\.2"):
        dl[0]


# ---------------------------------------------------------------- one image, a folder, other formats (issue 16)


def test_one_image_file_is_one_case_whatever_the_key(tmp_path):
    nii = _case(tmp_path, "a")["image"]
    nrrd = write_itk(tmp_path / "b.nrrd", np.zeros((16, 16, 8), np.float32))
    assert load_datalist(nii, key="test") == [{"image": nii}]
    assert load_datalist(Path(nrrd), key="anything") == [{"image": nrrd}]


def test_a_folder_gives_its_volumes_in_name_order_and_passes_over_other_files(tmp_path):
    b = _case(tmp_path, "b")["image"]
    a = write_itk(tmp_path / "a.mha", np.zeros((16, 16, 8), np.float32))
    series = write_dicom_series(tmp_path / "c_series", np.zeros((16, 16, 4)))
    (tmp_path / "dataset.json").write_text("{}")
    (tmp_path / "notes.txt").write_text("")
    (tmp_path / "empty").mkdir()
    assert find_volumes(tmp_path) == [a, b, series]
    assert load_datalist(tmp_path, key="test") == [{"image": a}, {"image": b}, {"image": series}]


def test_a_dicom_series_folder_is_one_case(tmp_path):
    series = write_dicom_series(tmp_path / "ct", np.zeros((16, 16, 4)))
    assert find_volumes(series) == [series]
    assert load_datalist(series) == [{"image": series}]


def test_a_folder_without_volumes_or_a_missing_input_is_refused(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no volume found in the folder .* \(it holds: scan\.png\); give a folder"):
        load_datalist(tmp_path)
    (tmp_path / "scan.png").unlink()
    with pytest.raises(ValueError, match=r"\(it holds: nothing\)"):
        find_volumes(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"input .*scan\.nrrd not found; point the bundle .*--input <an image"):
        load_datalist(tmp_path / "scan.nrrd")
    with pytest.raises(FileNotFoundError, match=r"is not a folder"):
        find_volumes(tmp_path / "absent")


def test_an_image_file_of_another_format_is_refused_with_the_formats(tmp_path):
    (tmp_path / "scan.vtk").write_bytes(b"")
    with pytest.raises(ValueError, match=r"(?s)1 file\(s\) given as input are not volumes.*scan\.vtk.*Give NIfTI"):
        load_datalist(tmp_path / "scan.vtk")


def test_datalist_entries_of_other_formats_are_all_listed(tmp_path):
    good = _case(tmp_path, "a")
    dl = _datalist(tmp_path / "dataset.json", [good, {"image": "b.png"}, {"image": "c.txt"}])
    (tmp_path / "b.png").write_bytes(b"")
    (tmp_path / "c.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"(?s)2 file\(s\) named in the datalist are not volumes.*b\.png.*c\.txt"):
        load_datalist(dl)


def test_nrrd_images_and_labels_get_every_check(tmp_path):
    image = write_itk(tmp_path / "c.nrrd", np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32))
    values = np.zeros((16, 16, 8), np.uint8)
    values[2:4, 2:4, 2:4] = 2
    label = write_itk(tmp_path / "c_label.nrrd", values)
    assert load_datalist(_datalist(tmp_path / "dl.json", [{"image": image, "label": label}]), num_classes=3)
    with pytest.raises(ValueError, match=r"c_label\.nrrd: label values 2 are outside 0\.\.1"):
        check_datalist([{"image": image, "label": label}], num_classes=2)
    other = write_itk(tmp_path / "o_label.nrrd", values, spacing=(1.0, 1.0, 2.0))
    with pytest.raises(ValueError, match=r"o_label\.nrrd is not on the voxel grid of its image .*c\.nrrd"):
        check_datalist([{"image": image, "label": other}])
    with pytest.raises(ValueError, match=r"c\.nrrd is too large"):
        check_datalist([{"image": image}], max_voxels=100)
    # a NIfTI label on the NRRD image's grid: both headers are read through MONAI's readers, in RAS
    nib.save(nib.Nifti1Image(values, np.diag([-1.0, -1.0, 1.0, 1.0])), str(tmp_path / "n_label.nii.gz"))
    check_datalist([{"image": image, "label": str(tmp_path / "n_label.nii.gz")}], num_classes=3)


def test_truncated_nrrd_is_caught_up_front(tmp_path):
    good = _case(tmp_path, "a")
    bad = write_itk(tmp_path / "b.nrrd", np.random.default_rng(0).normal(size=(16, 16, 8)).astype(np.float32))
    _truncate(bad, 0.5)
    with pytest.raises(ValueError, match=r"cannot read .*b\.nrrd as a NRRD volume: ITKReader failed .*copy the file"):
        load_datalist(_datalist(tmp_path / "dataset.json", [good, {"image": bad}]))


def test_the_datalist_of_a_folder_is_read_when_used(tmp_path):
    dl = Datalist(tmp_path / "in", "test")
    assert not dl.loaded and "in'" in repr(dl)
    with pytest.raises(FileNotFoundError, match="input .* not found"):
        len(dl)
    _case(tmp_path / "in", "a")
    assert len(Datalist(tmp_path / "in", "test")) == 1
