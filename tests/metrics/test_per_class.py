"""dice_per_class: MONAI DiceMetric per named class, NaN for a class absent from the truth (the demo and the bench)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from monai_ext.data import LABELS
from monai_ext.metrics import dice_per_class


def test_dice_per_class_by_hand():
    truth = np.array([0, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 2, 2, 2, 1])
    scores = dice_per_class(pred, truth, LABELS)
    assert scores == pytest.approx({"vessel": 2 * 1 / (2 + 2), "nodule": 2 * 2 / (3 + 2)})
    assert dice_per_class(torch.from_numpy(pred), torch.from_numpy(truth), LABELS) == scores  # torch or numpy


def test_a_class_absent_from_the_truth_scores_nan_as_monai_ignore_empty():
    truth = torch.tensor([0, 1, 0, 0, 0])
    pred = torch.tensor([0, 1, 1, 2, 0])  # nodule predicted once, absent from the truth
    scores = dice_per_class(pred, truth, LABELS)
    assert scores["vessel"] == pytest.approx(2 / 3) and math.isnan(scores["nodule"])
    assert all(math.isnan(v) for v in dice_per_class(np.zeros(3), np.zeros(3), LABELS).values())  # both empty
    # the same numbers as MONAI's DiceMetric with its defaults on one-hot maps
    one_hot = [torch.nn.functional.one_hot(t, 3).T[None].float() for t in (pred, truth)]
    expected = DiceMetric(include_background=False, reduction="none")(*one_hot)[0]
    assert torch.allclose(torch.tensor(list(scores.values())), expected, equal_nan=True)


def test_dice_per_class_refuses_maps_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        dice_per_class(np.zeros((2, 3)), np.zeros((3, 2)), LABELS)
