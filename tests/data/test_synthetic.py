"""Tests of the synthetic vessel/nodule phantom and its MSD-layout writer."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.data import LABELS, make_phantom, synthetic, write_msd_dataset

SHAPE = (40, 36, 32)  # non-cubic, to catch axis mix-ups


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """26-connected components of a boolean volume (max-pool label propagation; scipy is not a dependency)."""
    m = torch.from_numpy(mask)[None, None].float()
    ids = torch.arange(1, mask.size + 1, dtype=torch.float32).reshape(m.shape) * m
    while True:
        new = torch.nn.functional.max_pool3d(ids, 3, 1, 1) * m
        if torch.equal(new, ids):
            break
        ids = new
    ids_np = ids[0, 0].numpy()
    return [ids_np == v for v in np.unique(ids_np[ids_np > 0])]


def test_phantom_shapes_dtypes_labels():
    image, label = make_phantom(SHAPE, seed=3)
    assert image.shape == SHAPE and label.shape == SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, 1, 2}
    assert LABELS == {0: "background", 1: "vessel", 2: "nodule"}
    # CT-like HU: air in the corners, soft tissue in the body, bright objects
    assert abs(float(np.median(image[:3, :3])) + 1000) < 10
    body = image[SHAPE[0] // 2 - 3 : SHAPE[0] // 2 + 3, SHAPE[1] // 2 - 3 : SHAPE[1] // 2 + 3][
        label[SHAPE[0] // 2 - 3 : SHAPE[0] // 2 + 3, SHAPE[1] // 2 - 3 : SHAPE[1] // 2 + 3] == 0
    ]
    assert -150 < float(np.median(body)) < 80
    assert 150 < float(np.median(image[label > 0])) < 280


def test_phantom_counts_and_noise():
    _, label = make_phantom(SHAPE, seed=1, num_vessels=2, num_nodules=0)
    assert set(np.unique(label).tolist()) == {0, 1}
    assert len(_components(label == 1)) == 2
    image, label = make_phantom(SHAPE, seed=1, num_vessels=0, num_nodules=0, noise_std=0.0)
    assert not label.any()
    assert float(image[:3, :3].std()) == 0.0


def test_phantom_deterministic():
    a = make_phantom(SHAPE, seed=7)
    b = make_phantom(SHAPE, seed=7)
    c = make_phantom(SHAPE, seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def _best_threshold_accuracy(a: np.ndarray, b: np.ndarray) -> float:
    """Balanced accuracy of the best single threshold separating samples ``a`` from ``b`` (0.5: indistinguishable)."""
    best = 0.5
    for th in np.unique(np.concatenate([a, b])):
        acc = 0.5 * ((a >= th).mean() + (b < th).mean())
        best = max(best, acc, 1 - acc)
    return float(best)


def test_axial_slices_ambiguous_only_3d_decides():
    # pooled over 8 volumes (24 vessels, 24 nodules) so that the random radii average out
    stats = {v: {"area": [], "mean": [], "extent": []} for v in (1, 2)}
    for seed in range(8):
        image, label = make_phantom((40, 40, 40), seed=seed)
        for value in (1, 2):
            comps = _components(label == value)
            assert len(comps) == 3  # objects do not touch
            for comp in comps:
                zs = np.nonzero(comp.any(axis=(0, 1)))[0]
                stats[value]["extent"].append(int(zs.max() - zs.min() + 1))
                centres = []
                for k in zs:
                    sl = comp[:, :, k]
                    stats[value]["area"].append(int(sl.sum()))
                    stats[value]["mean"].append(float(image[:, :, k][sl].mean()))
                    centres.append(np.argwhere(sl).mean(axis=0))
                if value == 1:  # vessels are tilted/curved: the cross-section moves across slices
                    assert np.ptp(np.asarray(centres), axis=0).max() > 1.0
    # per axial slice, vessels and nodules look alike: similar cross-section area and intensity ...
    for key in ("area", "mean"):
        vessel, nodule = np.asarray(stats[1][key]), np.asarray(stats[2][key])
        mv, mn = np.median(vessel), np.median(nodule)
        assert abs(mv - mn) <= 0.35 * max(mv, mn), (key, mv, mn)
        assert _best_threshold_accuracy(vessel, nodule) < 0.8, key
    # ... while their extent along z separates them perfectly
    assert min(stats[1]["extent"]) > 2 * max(stats[2]["extent"])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shape": (64, 64)}, r"shape must be a sequence of 3 integers, each >= 24, got \(64, 64\)"),
        ({"shape": (64, 20, 64)}, r"each >= 24, got \(64, 20, 64\)"),
        ({"shape": (64.0, 64, 64)}, r"3 integers"),
        ({"shape": 64}, r"got 64"),
        ({"num_vessels": -1}, r"num_vessels must be an integer >= 0, got -1"),
        ({"num_nodules": 1.5}, r"num_nodules must be an integer >= 0, got 1.5"),
        ({"noise_std": -1.0}, r"noise_std must be a finite number >= 0"),
        ({"seed": -3}, r"seed must be a non-negative integer, got -3"),
    ],
)
def test_phantom_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(**kwargs)


def test_phantom_too_many_objects():
    with pytest.raises(RuntimeError, match="use a larger shape or fewer objects"):
        make_phantom((24, 24, 24), num_vessels=6, num_nodules=6)


def _write(out, **kwargs):
    args = {"num_train": 2, "num_test": 1, "shape": SHAPE, "spacing": (0.8, 0.9, 2.5), "seed": 5}
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
    expected[:3, 3] = -(np.array(SHAPE) - 1) * spacing / 2
    labels = []
    for pair in [*meta["training"], *meta["test_labeled"]]:
        img, lab = nib.load(out / pair["image"]), nib.load(out / pair["label"])
        for nii in (img, lab):
            assert nii.shape == SHAPE
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
    real_write, calls = synthetic._write_case, []

    def failing_write(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        real_write(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_write_case", failing_write)
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
