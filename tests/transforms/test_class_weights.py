import pytest
import torch
from monai.data import MetaTensor

from monai_ext.losses import exponential_class_weights
from monai_ext.transforms import ClassWeightCorrection, ClassWeightCorrectiond


def test_two_classes_move_the_decision_threshold_to_the_foreground_weight():
    background, lesion = exponential_class_weights(0.01)  # lesion weight 0.273, background 0.727
    fg = torch.linspace(0.0, 1.0, 101)
    probs = torch.stack([1 - fg, fg]).reshape(2, 101, 1, 1)
    out = ClassWeightCorrection([background, lesion])(probs)
    decided = out.argmax(0).flatten().bool()
    assert torch.equal(decided, fg > lesion / (background + lesion))
    assert decided[28] and not decided[27]  # threshold 0.2729 instead of 0.5


def test_matches_bayes_rule_by_hand_and_sums_to_one():
    probs = torch.tensor([0.5, 0.3, 0.2]).reshape(3, 1, 1)
    out = ClassWeightCorrection([1.0, 2.0, 0.5])(probs)
    expected = torch.tensor([0.5, 0.15, 0.4]) / 1.05
    assert torch.allclose(out.flatten(), expected)
    assert torch.allclose(out.sum(0), torch.ones(1, 1))


def test_equal_weights_change_nothing_and_metadata_survives():
    probs = MetaTensor(torch.softmax(torch.randn(2, 4, 4, 3), 0), meta={"filename_or_obj": "case.nii.gz"})
    out = ClassWeightCorrectiond("pred", [0.5, 0.5])({"pred": probs, "image": 1})
    assert isinstance(out["pred"], MetaTensor) and out["pred"].meta["filename_or_obj"] == "case.nii.gz"
    assert torch.allclose(out["pred"], probs)
    assert out["image"] == 1


@pytest.mark.parametrize("weights", [[1.0], [1.0, 0.0], [1.0, -1.0], [1.0, float("nan")]])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError, match="positive finite"):
        ClassWeightCorrection(weights)


def test_channel_count_must_match_the_weights():
    with pytest.raises(ValueError, match="C = 2 classes"):
        ClassWeightCorrection([1.0, 2.0])(torch.rand(3, 4, 4))
