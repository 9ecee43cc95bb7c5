"""Tests of the task table (``monai_ext.data.tasks``): task names, per-case generators and seeds."""

from __future__ import annotations

import numpy as np
import pytest

from monai_ext.data import LABELS, LESION_LABELS, make_lesion_phantom, make_phantom
from monai_ext.data.tasks import OBLIQUE_TILT, TASKS, TaskSpec, _fewer_until_fits, case_seed, get_task

# Regression references: sha256 (tests/data/conftest.py) of (image, label) of TASKS[task].make_case((40, 36, 24), 5,
# index), with the note it printed, computed with the code before the split of monai_ext/data/synthetic.py (commit
# 286685f, numpy 2.4.6: synthetic._task_spec(task).make_case). The generated data must stay byte-for-byte identical.
CASES = [
    ("vessels", 0, "3 vessels, 3 nodules", "d1fa666f9d7782a5521f0ac29fca98b8c0dcbd46a5c5b3b7e7979b8eba2d772d"),
    ("vessels", 1, "4 vessels, 2 nodules", "80b9afec4c0f4246dedd51632d59983b968607863954b2cd3e90386bc8ee6f58"),
    ("lesions", 0, "5 lesions", "419bbcf458e33facc82bd88d5bb0872528300d04f93192d7adef96e1d6416544"),
    ("lesions", 1, "8 lesions", "577c5a203001c67c1808b5ff539375b560e3df6105435093973fd0a8930a0e4b"),
]


@pytest.mark.parametrize("task, index, note, digest", CASES)
def test_case_bytes_and_note_unchanged(sha256, task, index, note, digest):
    image, label, got_note = TASKS[task].make_case((40, 36, 24), 5, index)
    assert got_note == note
    assert sha256(image, label) == digest


def test_table_names_defaults_and_headers():
    assert list(TASKS) == ["vessels", "vessels_oblique", "lesions"]
    assert all(isinstance(spec, TaskSpec) for spec in TASKS.values())
    vessels, lesions = TASKS["vessels"], TASKS["lesions"]
    assert (vessels.shape, vessels.spacing) == ((64, 64, 64), (1.5, 1.5, 1.5))
    assert (lesions.shape, lesions.spacing) == ((64, 64, 32), (1.0, 1.0, 3.0))
    assert vessels.header["labels"] == {str(k): v for k, v in LABELS.items()}
    assert vessels.header["modality"] == {"0": "CT"} and vessels.header["tensorImageSize"] == "3D"
    assert lesions.header["labels"] == {str(k): v for k, v in LESION_LABELS.items()}
    assert lesions.header["modality"] == {"0": "T1", "1": "T2", "2": "FLAIR"}
    assert lesions.header["tensorImageSize"] == "4D"
    assert get_task("lesions") is lesions


def test_vessel_case_is_the_phantom_in_int16_hu():
    shape = (40, 36, 24)
    image, label, note = TASKS["vessels"].make_case(shape, 5, 0)
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == shape
    phantom, phantom_label = make_phantom(shape, case_seed(5, 0), 3, 3)  # the counts the note gives
    np.testing.assert_array_equal(image, np.clip(np.rint(phantom), -1024, 3071).astype(np.int16))
    np.testing.assert_array_equal(label, phantom_label)


def test_oblique_vessel_case_is_the_tilted_phantom():
    shape = (48, 48, 40)
    spec = TASKS["vessels_oblique"]
    assert (spec.shape, spec.spacing) == (TASKS["vessels"].shape, TASKS["vessels"].spacing)
    assert spec.header["labels"] == TASKS["vessels"].header["labels"] and spec.header["modality"] == {"0": "CT"}
    assert spec.header["name"] != TASKS["vessels"].header["name"]
    image, label, note = spec.make_case(shape, 5, 0)
    assert image.dtype == np.int16 and label.dtype == np.uint8 and image.shape == shape
    vessels, nodules = (int(word) for word in note.split() if word.isdigit())
    phantom, phantom_label = make_phantom(shape, case_seed(5, 0), vessels, nodules, tilt=OBLIQUE_TILT)
    np.testing.assert_array_equal(image, np.clip(np.rint(phantom), -1024, 3071).astype(np.int16))
    np.testing.assert_array_equal(label, phantom_label)
    straight, _, _ = TASKS["vessels"].make_case(shape, 5, 0)
    assert not np.array_equal(image, straight)


def test_lesion_case_is_the_phantom_channels_last():
    shape = (40, 36, 24)
    image, label, _ = TASKS["lesions"].make_case(shape, 5, 0)
    phantom, phantom_label = make_lesion_phantom(shape, case_seed(5, 0), 5)
    assert image.dtype == np.float32 and image.shape == (*shape, 3)
    np.testing.assert_array_equal(image, phantom)
    np.testing.assert_array_equal(label, phantom_label)


def test_small_volume_gets_fewer_objects_but_one_of_each(components):
    drawn = np.random.default_rng(case_seed(0, 0, stream=1)).integers(2, 5, size=2)
    assert drawn.tolist() == [4, 4]  # what case 0 of seed 0 asks for
    _, label, note = TASKS["vessels"].make_case((24, 24, 24), 0, 0)
    assert note == "1 vessels, 2 nodules"  # a 24-voxel volume holds fewer
    assert len(components(label == 1)) == 1 and len(components(label == 2)) == 2


def test_fewer_until_fits_drops_the_largest_count_first():
    calls = []

    def make(*counts):
        calls.append(counts)
        if sum(counts) > 3:
            raise RuntimeError("does not fit")
        return np.zeros(1), np.zeros(1)

    _, _, counts = _fewer_until_fits(make, (3, 2))
    assert counts == (1, 2) and calls == [(3, 2), (2, 2), (1, 2)]  # on a tie the first count loses one
    calls.clear()
    _, _, counts = _fewer_until_fits(make, (5,))
    assert counts == (3,) and calls == [(5,), (4,), (3,)]


def test_fewer_until_fits_raises_when_one_of_each_does_not_fit():
    def make(*counts):
        raise RuntimeError("does not fit")

    with pytest.raises(RuntimeError, match="does not fit"):
        _fewer_until_fits(make, (2, 2))


def test_case_seed_is_deterministic_and_separates_cases_and_streams():
    assert case_seed(0, 3) == case_seed(0, 3)
    seeds = {case_seed(s, i, stream) for s in (0, 1) for i in range(4) for stream in (0, 1)}
    assert len(seeds) == 16
    assert all(0 <= s < 2**32 for s in seeds)


@pytest.mark.parametrize("task", ["mri", None, ["vessels"], "Vessels"])
def test_unknown_task_names_the_choices(task):
    with pytest.raises(ValueError, match=r"task must be one of 'vessels', 'vessels_oblique', 'lesions', got"):
        get_task(task)
