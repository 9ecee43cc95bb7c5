import pytest
import torch
from monai.data import MetaTensor

from monai_ext.losses import ExponentialWeightedCrossEntropyLoss, exponential_class_weights
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


@pytest.mark.parametrize("swapped", [False, True])
def test_undoes_what_the_weighted_loss_teaches_for_three_classes(swapped):
    # voxels that all look alike, labelled 0 / 1 / 2 in proportions p: the logits that minimise RSANet's weighted
    # loss give softmax proportional to w_c p_c; the correction with the loss's weights gives p back
    p = torch.tensor([0.6, 0.3, 0.1])
    target = torch.repeat_interleave(torch.arange(3), (p * 100).round().long()).reshape(1, 100)
    loss_fn = ExponentialWeightedCrossEntropyLoss(r=[0.9, 0.07, 0.03], swapped=swapped)
    logits = torch.zeros(3, requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=200, tolerance_grad=1e-10, tolerance_change=1e-12)

    def closure():
        optimizer.zero_grad()
        loss = loss_fn(logits.reshape(1, 3, 1).expand(1, 3, 100), target)
        loss.backward()
        return loss

    optimizer.step(closure)
    learned = torch.softmax(logits.detach(), 0).reshape(3, 1)
    weights = exponential_class_weights([0.9, 0.07, 0.03], swapped=swapped)
    assert not torch.allclose(learned.flatten(), p, atol=1e-2)  # the weighted posterior is off
    torch.testing.assert_close(ClassWeightCorrection(weights)(learned).flatten(), p, atol=1e-4, rtol=0)
