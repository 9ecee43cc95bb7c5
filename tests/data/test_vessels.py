"""Tests of the synthetic CT-like vessel/nodule phantom (``monai_ext.data.vessels``)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.data import LABELS, make_phantom

SHAPE = (40, 36, 32)  # non-cubic, to catch axis mix-ups

# Regression reference: sha256 (tests/data/conftest.py) of make_phantom((40, 36, 24), seed=3), computed with the code
# before the split of monai_ext/data/synthetic.py into checks/geometry/vessels/tasks/decathlon (commit 286685f,
# numpy 2.4.6). The generated data must stay byte-for-byte identical.
PHANTOM_SHA256 = "5a41b4fc0077babbf2e6c6a1235c79291eb38b3e8c9ed1329dbe1e4b8a328bef"


def test_phantom_bytes_unchanged(sha256):
    assert sha256(*make_phantom((40, 36, 24), seed=3)) == PHANTOM_SHA256


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


def test_phantom_counts_and_noise(components):
    _, label = make_phantom(SHAPE, seed=1, num_vessels=2, num_nodules=0)
    assert set(np.unique(label).tolist()) == {0, 1}
    assert len(components(label == 1)) == 2
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


def test_axial_slices_ambiguous_only_3d_decides(components):
    # pooled over 8 volumes (24 vessels, 24 nodules) so that the random radii average out
    stats = {v: {"area": [], "mean": [], "extent": []} for v in (1, 2)}
    for seed in range(8):
        image, label = make_phantom((40, 40, 40), seed=seed)
        for value in (1, 2):
            comps = components(label == value)
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


def _elongation(section: np.ndarray) -> float:
    """Ratio of the long to the short axis of a 2D mask, from the second moments of its voxel positions."""
    eig = np.linalg.eigvalsh(np.cov(np.argwhere(section).astype(float).T))
    return float(np.sqrt(eig[1] / max(eig[0], 1e-9)))


def test_oblique_vessels_tilted_sections_match_the_nodules(components):
    # pooled over 6 volumes (18 vessels, 18 nodules)
    stats = {v: {"area": [], "mean": [], "elongation": [], "extent": []} for v in (1, 2)}
    for seed in range(6):
        image, label = make_phantom((48, 48, 48), seed=seed, tilt=(15, 45))
        assert image.shape == label.shape == (48, 48, 48) and set(np.unique(label)) == {0, 1, 2}
        for value in (1, 2):
            comps = components(label == value)
            assert len(comps) == 3  # objects do not touch
            for comp in comps:
                zs = np.nonzero(comp.any(axis=(0, 1)))[0]
                stats[value]["extent"].append(int(zs.max() - zs.min() + 1))
                if value == 1:  # the main axis of the vessel's voxels: 15-45 degrees from z (voxelisation: +-2)
                    axis = np.linalg.eigh(np.cov(np.argwhere(comp).astype(float).T))[1][:, -1]
                    assert 13.0 <= np.degrees(np.arccos(abs(axis[2]))) <= 47.0
                for k in zs:
                    section = comp[:, :, k]
                    if section.sum() >= 5:  # not the caps' last voxels
                        stats[value]["area"].append(int(section.sum()))
                        stats[value]["mean"].append(float(image[:, :, k][section].mean()))
                        stats[value]["elongation"].append(_elongation(section))
    # per axial slice, vessels and nodules look alike: area, intensity and the ellipse's elongation ...
    for key in ("area", "mean", "elongation"):
        vessel, nodule = np.asarray(stats[1][key]), np.asarray(stats[2][key])
        mv, mn = np.median(vessel), np.median(nodule)
        assert abs(mv - mn) <= 0.35 * max(mv, mn), (key, mv, mn)
        assert _best_threshold_accuracy(vessel, nodule) < 0.8, key
    assert np.median(stats[1]["elongation"]) > 1.05  # the sections are ellipses, not disks
    # ... while vessels still cross at least half the depth and nodules are compact
    assert min(stats[1]["extent"]) >= 24 > 2 * max(stats[2]["extent"])


def test_oblique_phantom_is_deterministic_and_differs_from_the_straight_one():
    a = make_phantom((40, 36, 32), seed=1, tilt=(15, 45))
    b = make_phantom((40, 36, 32), seed=1, tilt=(15, 45))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], make_phantom((40, 36, 32), seed=1)[1])


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
        ({"tilt": (45, 15)}, r"tilt must satisfy 0 <= low <= high <= 60 degrees"),
        ({"tilt": (10, 70)}, r"tilt must satisfy 0 <= low <= high <= 60 degrees"),
        ({"tilt": 30}, r"tilt must be None or \(low, high\) in degrees, got 30"),
        ({"tilt": (1, 2, 3)}, r"tilt must be None or \(low, high\)"),
    ],
)
def test_phantom_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_phantom(**kwargs)


def test_phantom_too_many_objects():
    with pytest.raises(RuntimeError, match="use a larger shape or fewer objects"):
        make_phantom((24, 24, 24), num_vessels=6, num_nodules=6)
