"""Tests of the multi-channel brain-MRI-like lesion phantom (``monai_ext.data.lesions``)."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.data import LESION_LABELS, MODALITIES, lesions, make_lesion_phantom

SHAPE = (64, 64, 32)  # the default


# Regression reference: sha256 (tests/data/conftest.py) of make_lesion_phantom((40, 36, 24), seed=3, num_lesions=3),
# computed with the code before the split of monai_ext/data/synthetic.py (commit 286685f, numpy 2.4.6). The generated
# data must stay byte-for-byte identical.
PHANTOM_SHA256 = "8e919190e4482ad9157ab89eba621bb2a465301c08fb84b6c4024cd7743e8394"


def test_phantom_bytes_unchanged(sha256):
    assert sha256(*make_lesion_phantom((40, 36, 24), seed=3, num_lesions=3)) == PHANTOM_SHA256


def test_phantom_shapes_dtypes_labels(components):
    assert LESION_LABELS == {0: "background", 1: "lesion"}
    assert MODALITIES == ("T1", "T2", "FLAIR")
    image, label = make_lesion_phantom(seed=1)
    assert image.shape == (*SHAPE, 3) and label.shape == SHAPE
    assert image.dtype == np.float32 and label.dtype == np.uint8
    assert set(np.unique(label).tolist()) == {0, 1}
    assert image.min() >= 0.0 and image.max() <= 1.0
    assert float(np.median(image[:3, :3])) < 0.1  # air: noise only
    assert len(components(label == 1)) == 6  # lesions do not touch each other

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


def test_small_volume_shrinks_or_raises(components):
    _, label = make_lesion_phantom((32, 32, 24), seed=0, num_lesions=3)  # fits with smaller lesions
    assert len(components(label == 1)) == 3
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
