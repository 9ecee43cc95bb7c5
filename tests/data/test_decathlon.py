"""Tests of the Medical Segmentation Decathlon layout writer (``monai_ext.data.decathlon``), for both tasks."""

from __future__ import annotations

import importlib
import json

import nibabel as nib
import numpy as np
import pytest

from monai_ext.data import decathlon, write_msd_dataset
from monai_ext.data.tasks import TASKS

VESSEL_SHAPE = (40, 36, 32)  # non-cubic, to catch axis mix-ups
LESION_SHAPE = (64, 64, 32)  # the lesion task's default


def _write(out, **kwargs):
    args = {"num_train": 2, "num_test": 1, "shape": VESSEL_SHAPE, "spacing": (0.8, 0.9, 2.5), "seed": 5}
    args.update(kwargs)
    return write_msd_dataset(out, **args)


def test_msd_layout(tmp_path, capsys):
    out = tmp_path / "nested" / "Task01_Synth"
    json_path = _write(out)
    assert json_path == out / "dataset.json"
    assert capsys.readouterr().out == ""
    meta = json.loads(json_path.read_text())
    assert meta["tensorImageSize"] == "3D" and meta["modality"] == {"0": "CT"}
    assert meta["labels"] == {"0": "background", "1": "vessel", "2": "nodule"}
    assert meta["numTraining"] == 2 and meta["numTest"] == 1
    for key in ("name", "description", "reference", "licence"):
        assert isinstance(meta[key], str) and meta[key]
    assert meta["training"] == [
        {"image": f"./imagesTr/case_00{i}.nii.gz", "label": f"./labelsTr/case_00{i}.nii.gz"} for i in (0, 1)
    ]
    assert meta["test"] == ["./imagesTs/case_002.nii.gz"]
    assert meta["test_labeled"] == [{"image": "./imagesTs/case_002.nii.gz", "label": "./labelsTs/case_002.nii.gz"}]
    assert sorted(p.name for p in tmp_path.joinpath("nested").iterdir()) == ["Task01_Synth"]  # no temp dirs left

    spacing = np.array([0.8, 0.9, 2.5])
    expected = np.diag([*spacing, 1.0])
    expected[:3, 3] = -(np.array(VESSEL_SHAPE) - 1) * spacing / 2
    labels = []
    for pair in [*meta["training"], *meta["test_labeled"]]:
        img, lab = nib.load(out / pair["image"]), nib.load(out / pair["label"])
        for nii in (img, lab):
            assert nii.shape == VESSEL_SHAPE
            np.testing.assert_allclose(nii.affine, expected, atol=1e-5)
            np.testing.assert_allclose(nii.header.get_zooms(), spacing, atol=1e-6)
            assert int(nii.header["qform_code"]) == 1 and int(nii.header["sform_code"]) == 1
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        data = np.asarray(lab.dataobj)
        assert data.dtype == np.uint8 and set(np.unique(data).tolist()) == {0, 1, 2}
        assert float(np.asarray(img.dataobj)[data > 0].mean()) > 150
        labels.append(data)
    assert not np.array_equal(labels[0], labels[1]) and not np.array_equal(labels[1], labels[2])


def test_msd_deterministic_and_progress(tmp_path, capsys):
    a = _write(tmp_path / "a", num_train=1, num_test=1, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and "case_000" in lines[0] and "case_001" in lines[1]
    b = _write(tmp_path / "b", num_train=1, num_test=1)
    assert a.read_text() == b.read_text()
    for rel in ("imagesTr/case_000.nii.gz", "labelsTs/case_001.nii.gz"):
        np.testing.assert_array_equal(
            np.asarray(nib.load(a.parent / rel).dataobj), np.asarray(nib.load(b.parent / rel).dataobj)
        )


def test_msd_overwrite(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    _write(out, num_train=1, num_test=0)  # an existing empty directory is fine
    (out / "stale.txt").write_text("old")
    with pytest.raises(FileExistsError, match="pass overwrite=True .* or pick another directory"):
        _write(out, num_train=1, num_test=0)
    assert (out / "stale.txt").exists()
    _write(out, num_train=1, num_test=1, overwrite=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "dataset.json").read_text())["numTest"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        _write(tmp_path / "file", num_train=1, num_test=0, overwrite=True)


@pytest.mark.parametrize("existing", [False, True])
def test_msd_no_partial_output(tmp_path, monkeypatch, existing):
    out = tmp_path / "ds"
    if existing:
        out.mkdir()
        (out / "keep.txt").write_text("old")
    real_write, calls = decathlon._write_case, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(decathlon, "_write_case", failing_write)
    with pytest.raises(OSError, match="disk full"):
        _write(out, overwrite=True)
    if existing:  # the previous content is untouched
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ds"] if existing else [])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_train": -1}, r"num_train must be an integer >= 0, got -1"),
        ({"num_train": 0, "num_test": 0}, r"num_train \+ num_test must be >= 1"),
        ({"spacing": (1.0, 0.0, 1.0)}, r"spacing must be a sequence of 3 positive finite numbers \(mm\), got"),
        ({"spacing": (1.0, 1.0)}, r"spacing must be"),
        ({"shape": (16, 64, 64)}, r"each >= 24, got \(16, 64, 64\)"),
    ],
)
def test_msd_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _write(tmp_path / "ds", **kwargs)
    assert not (tmp_path / "ds").exists()


def _expected_affine(shape, spacing):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) * np.asarray(spacing) / 2
    return affine


def test_msd_lesions_layout_defaults(tmp_path, capsys, components):
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

    expected = _expected_affine(LESION_SHAPE, (1.0, 1.0, 3.0))
    for pair in [*meta["training"], *meta["test_labeled"]]:
        img, lab = nib.load(out / pair["image"]), nib.load(out / pair["label"])
        assert img.shape == (*LESION_SHAPE, 3) and lab.shape == LESION_SHAPE
        for nii in (img, lab):
            np.testing.assert_allclose(nii.affine, expected, atol=1e-5)
            np.testing.assert_allclose(nii.header.get_zooms()[:3], (1.0, 1.0, 3.0), atol=1e-6)
            assert int(nii.header["qform_code"]) == 1 and int(nii.header["sform_code"]) == 1
        data, seg = np.asarray(img.dataobj), np.asarray(lab.dataobj)
        assert data.dtype == np.float32 and 0.0 <= data.min() and data.max() <= 1.0
        assert seg.dtype == np.uint8 and set(np.unique(seg).tolist()) == {0, 1}
        assert 4 <= len(components(seg == 1)) <= 8
        # FLAIR (channel 2) is bright in the lesions
        assert float(data[..., 2][seg == 1].mean()) > float(data[..., 2][seg == 0].mean()) + 0.3


def test_msd_lesions_explicit_shape_spacing_deterministic(tmp_path):
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
        ({"task": "mri"}, r"task must be one of 'vessels', 'vessels_oblique', 'lesions', got 'mri'"),
        ({"task": None}, r"task must be one of 'vessels', 'vessels_oblique', 'lesions', got None"),
        ({"task": "lesions", "spacing": (1.0, 1.0, -3.0)}, r"spacing must be a sequence of 3 positive finite"),
        ({"task": "lesions", "shape": (64, 64, 20)}, r"each >= 24, got \(64, 64, 20\)"),
    ],
)
def test_msd_lesions_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        write_msd_dataset(tmp_path / "ds", num_train=1, num_test=0, **kwargs)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("task", ["vessels", "vessels_oblique", "lesions"])
def test_written_arrays_are_the_task_cases(tmp_path, task):
    shape = (40, 36, 24)
    json_path = write_msd_dataset(tmp_path / task, num_train=1, num_test=1, shape=shape, seed=5, task=task)
    meta = json.loads(json_path.read_text())
    assert {"name", "description", "reference", "licence"} <= meta.keys()
    assert {k: meta[k] for k in TASKS[task].header} == TASKS[task].header
    importlib.import_module(meta["reference"].split()[0])  # the reference names a module that exists
    for index, pair in enumerate([*meta["training"], *meta["test_labeled"]]):
        image, label, _ = TASKS[task].make_case(shape, 5, index)
        stored_image = np.asarray(nib.load(json_path.parent / pair["image"]).dataobj)
        stored_label = np.asarray(nib.load(json_path.parent / pair["label"]).dataobj)
        assert stored_image.dtype == image.dtype and stored_label.dtype == np.uint8
        np.testing.assert_array_equal(stored_image, image)
        np.testing.assert_array_equal(stored_label, label)
