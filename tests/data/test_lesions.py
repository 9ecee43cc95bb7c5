"""Tests of the multi-channel brain-MRI-like lesion phantom and its MSD-layout writer (``task="lesions"``)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.data import LESION_LABELS, MODALITIES, lesions, make_lesion_phantom, write_msd_dataset

SHAPE = (64, 64, 32)  # the default


def _num_components(mask: np.ndarray) -> int:
    """Number of 26-connected components of a boolean volume (max-pool label propagation; scipy is not a dependency)."""
    m = torch.from_numpy(mask)[None, None].float()
    ids = torch.arange(1, mask.size + 1, dtype=torch.float32).reshape(m.shape) * m
    while True:
        new = torch.nn.functional.max_pool3d(ids, 3, 1, 1) * m
        if torch.equal(new, ids):
            return int(torch.unique(ids[ids > 0]).numel())
        ids = new


def test_phantom_shapes_dtypes_labels():
    assert LESION_LABELS == {0: "background", 1: "lesion"}
    assert MODALITIES == ("T1", "T2", "FLAIR")
    image, label = make_lesion_phantom(seed=1)
    assert image.shape == (*SHAPE, 3) and label.shape == SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, 1}
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert float(np.median(image[:3, :3])) < 0.1  # air: noise only
    assert _num_components(label == 1) == 6  # lesions do not touch each other

    image, label = make_lesion_phantom((40, 36, 24), seed=2, num_lesions=0, noise_std=0.0)
    assert image.shape == (40, 36, 24, 3) and not label.any()
    assert float(image[:3, :3].max()) == 0.0


def test_phantom_deterministic():
    a = make_lesion_phantom(seed=7)
    b = make_lesion_phantom(seed=7)
    c = make_lesion_phantom(seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


@pytest.mark.parametrize("seed", [0, 3])
def test_lesion_fraction(seed):
    _, label = make_lesion_phantom(seed=seed)
    assert 0.002 <= label.mean() <= 0.02


def test_small_volume_shrinks_or_raises():
    _, label = make_lesion_phantom((32, 32, 24), seed=0, num_lesions=3)  # fits with smaller lesions
    assert _num_components(label == 1) == 3
    with pytest.raises(RuntimeError, match="use a larger shape or fewer lesions"):
        make_lesion_phantom((24, 24, 24), num_lesions=20)


@pytest.mark.parametrize("seed", [0, 5])
def test_channel_contrasts(seed):
    image, label, tissues = lesions._lesion_phantom(SHAPE, seed, 6, 0.03)
    lesion = label == 1
    wm = (tissues["wm"] > 0.99) & ~lesion
    csf = tissues["csf"] > 0.99
    t1, t2, flair = (image[..., c] for c in range(3))

    def mean(channel, mask):
        return float(channel[mask].mean())

    # T1: lesions iso- to hypo-intense, CSF dark
    assert mean(t1, lesion) <= mean(t1, wm) + 0.02
    assert mean(t1, csf) < mean(t1, wm) - 0.4
    # T2: lesions and CSF bright, close to each other
    assert mean(t2, lesion) > mean(t2, wm) + 0.25
    assert mean(t2, csf) > mean(t2, wm) + 0.4
    assert abs(mean(t2, lesion) - mean(t2, csf)) < 0.25
    # FLAIR: lesions bright, CSF dark
    assert mean(flair, lesion) > mean(flair, wm) + 0.25
    assert mean(flair, csf) < mean(flair, wm) - 0.25

    # thresholding at the median lesion intensity: on T2 most bright voxels are CSF, FLAIR separates the lesions
    any_csf = tissues["csf"] > 0.5
    bright_t2 = t2 >= np.median(t2[lesion])
    assert lesion[bright_t2].mean() < 0.5 and any_csf[bright_t2].mean() > 0.5
    bright_flair = flair >= np.median(flair[lesion])
    assert lesion[bright_flair].mean() > 0.9


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (64, 64)}, r"shape must be a sequence of 3 integers, each >= 24, got \(64, 64\)"),
        ({"shape": (64, 64, 16)}, r"each >= 24, got \(64, 64, 16\)"),
        ({"num_lesions": -1}, r"num_lesions must be an integer >= 0, got -1"),
        ({"num_lesions": 2.0}, r"num_lesions must be an integer >= 0, got 2.0"),
        ({"num_lesions": True}, r"num_lesions must be an integer >= 0, got True"),
        ({"noise_std": -0.1}, r"noise_std must be a finite number >= 0, got -0.1"),
        ({"noise_std": float("nan")}, r"noise_std must be a finite number >= 0, got nan"),
        ({"noise_std": "0.1"}, r"noise_std must be a finite number >= 0"),
        ({"seed": -3}, r"seed must be a non-negative integer, got -3"),
    ],
)
def test_phantom_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_lesion_phantom(**kwargs)


def _expected_affine(shape, spacing):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) * np.asarray(spacing) / 2
    return affine


def test_msd_layout_defaults(tmp_path, capsys):
    out = tmp_path / "Task02_Lesions"
    json_path = write_msd_dataset(out, num_train=2, num_test=1, seed=4, progress=True, task="lesions")
    assert json_path == out / "dataset.json"
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all(line.endswith(" lesions)") for line in lines)
    meta = json.loads(json_path.read_text())
    assert meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    assert meta["labels"] == {"0": "background", "1": "lesion"}
    assert meta["numTraining"] == 2 and meta["numTest"] == 1
    assert meta["generator"] == {"task": "lesions", "seed": 4, "shape": [64, 64, 32], "spacing": [1.0, 1.0, 3.0]}
    for key in ("name", "description", "reference", "licence"):
        assert isinstance(meta[key], str) and meta[key]
    assert meta["training"] == [
        {"image": f"./imagesTr/case_00{i}.nii.gz", "label": f"./labelsTr/case_00{i}.nii.gz"} for i in (0, 1)
    ]
    assert meta["test"] == ["./imagesTs/case_002.nii.gz"]
    assert meta["test_labeled"] == [{"image": "./imagesTs/case_002.nii.gz", "label": "./labelsTs/case_002.nii.gz"}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Task02_Lesions"]  # no temp dirs left

    expected = _expected_affine(SHAPE, (1.0, 1.0, 3.0))
    for pair in [*meta["training"], *meta["test_labeled"]]:
        img, lab = nib.load(out / pair["image"]), nib.load(out / pair["label"])
        assert img.shape == (*SHAPE, 3) and lab.shape == SHAPE
        for nii in (img, lab):
            np.testing.assert_allclose(nii.affine, expected, atol=1e-5)
            np.testing.assert_allclose(nii.header.get_zooms()[:3], (1.0, 1.0, 3.0), atol=1e-6)
            assert int(nii.header["qform_code"]) == 1 and int(nii.header["sform_code"]) == 1
        data, seg = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1.0
        assert seg.dtype == np.uint8 and set(np.unique(seg).tolist()) == {0, 1}
        assert 4 <= _num_components(seg == 1) <= 8
        # FLAIR (channel 2) is bright in the lesions
        assert float(data[..., 2][seg == 1].mean()) > float(data[..., 2][seg == 0].mean()) + 0.3


def test_msd_explicit_shape_spacing_deterministic(tmp_path):
    kwargs = {"num_train": 1, "num_test": 1, "shape": (48, 44, 24), "spacing": (0.9, 0.8, 2.5), "task": "lesions"}
    a = write_msd_dataset(tmp_path / "a", **kwargs)
    b = write_msd_dataset(tmp_path / "b", **kwargs)
    assert a.read_text() == b.read_text()
    assert json.loads(a.read_text())["generator"]["spacing"] == [0.9, 0.8, 2.5]
    for rel in ("imagesTr/case_000.nii.gz", "labelsTs/case_001.nii.gz"):
        x, y = nib.load(a.parent / rel), nib.load(b.parent / rel)
        np.testing.assert_array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
        np.testing.assert_allclose(x.affine, _expected_affine((48, 44, 24), (0.9, 0.8, 2.5)), atol=1e-5)
    assert nib.load(a.parent / "imagesTr/case_000.nii.gz").shape == (48, 44, 24, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "mri"}, r"task must be one of 'vessels', 'lesions', got 'mri'"),
        ({"task": None}, r"task must be one of 'vessels', 'lesions', got None"),
        ({"task": "lesions", "spacing": (1.0, 1.0, -3.0)}, r"spacing must be a sequence of 3 positive finite"),
        ({"task": "lesions", "shape": (64, 64, 20)}, r"each >= 24, got \(64, 64, 20\)"),
    ],
)
def test_msd_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_msd_dataset(tmp_path / "ds", num_train=1, num_test=0, **kwargs)
    assert not (tmp_path / "ds").exists()
