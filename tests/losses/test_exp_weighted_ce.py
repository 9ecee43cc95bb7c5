import math

import pytest
import torch
from torch.nn.modules.loss import _Loss

from monai_ext.losses import ExponentialWeightedCrossEntropyLoss, exponential_class_weights, lesion_fraction


def _hand_loss(logits, target, r):
    """Per-voxel loop: w[y] * -log softmax(logits)[y], averaged over voxels."""
    w_lesion = math.exp(r) / (math.exp(r) + math.exp(1 - r))
    w_background = math.exp(1 - r) / (math.exp(r) + math.exp(1 - r))
    total, count = 0.0, 0
    flat_logits = logits.movedim(1, -1).reshape(-1, 2).tolist()
    for (a, b), y in zip(flat_logits, target.reshape(-1).tolist()):
        log_p = (b if y == 1 else a) - math.log(math.exp(a) + math.exp(b))
        total += (w_lesion if y == 1 else w_background) * -log_p
        count += 1
    return total / count


def test_class_weights_by_hand():
    background, lesion = exponential_class_weights(0.25)
    e = math.exp
    assert lesion.item() == pytest.approx(e(0.25) / (e(0.25) + e(0.75)), rel=1e-6)
    assert background.item() == pytest.approx(e(0.75) / (e(0.25) + e(0.75)), rel=1e-6)
    assert (background + lesion).item() == pytest.approx(1.0)
    assert [w.item() for w in exponential_class_weights(0.5)] == pytest.approx([0.5, 0.5])


def test_lesion_fraction_of_tensor_and_list():
    assert lesion_fraction(torch.tensor([[0, 1], [0, 0]])) == 0.25
    # pooled over every voxel of maps of different sizes: (1 + 3) / (4 + 6)
    labels = [torch.tensor([0, 0, 0, 1]), torch.tensor([[1, 2, 0], [0, 0, 1]])]
    assert lesion_fraction(labels) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="at least one voxel"):
        lesion_fraction([])


@pytest.mark.parametrize("r", [0.1, 0.5, 0.9])
def test_loss_matches_hand_computation(r):
    logits = torch.randn(2, 2, 3, 4)
    target = torch.randint(0, 2, (2, 1, 3, 4))
    loss = ExponentialWeightedCrossEntropyLoss(r=r)(logits, target)
    assert loss.item() == pytest.approx(_hand_loss(logits, target, r), rel=1e-5)


def test_r_from_batch_by_default():
    logits = torch.randn(2, 2, 4, 4, 2)
    target = (torch.rand(2, 1, 4, 4, 2) > 0.7).float()
    r = lesion_fraction(target)
    torch.testing.assert_close(
        ExponentialWeightedCrossEntropyLoss()(logits, target), ExponentialWeightedCrossEntropyLoss(r=r)(logits, target)
    )
    assert ExponentialWeightedCrossEntropyLoss()(logits, target).item() == pytest.approx(_hand_loss(logits, target, r))


def test_target_with_or_without_channel_axis():
    logits, target = torch.randn(3, 2, 5), torch.randint(0, 2, (3, 5))
    loss = ExponentialWeightedCrossEntropyLoss(r=0.2)
    torch.testing.assert_close(loss(logits, target), loss(logits, target.unsqueeze(1)))


def test_reductions():
    logits, target = torch.randn(2, 2, 3, 3), torch.randint(0, 2, (2, 1, 3, 3))
    none = ExponentialWeightedCrossEntropyLoss(r=0.3, reduction="none")(logits, target)
    assert none.shape == (2, 1, 3, 3)
    torch.testing.assert_close(ExponentialWeightedCrossEntropyLoss(r=0.3, reduction="sum")(logits, target), none.sum())
    torch.testing.assert_close(ExponentialWeightedCrossEntropyLoss(r=0.3)(logits, target), none.mean())


def test_is_a_monai_style_loss_with_gradients():
    loss_fn = ExponentialWeightedCrossEntropyLoss(r=0.05)
    assert isinstance(loss_fn, _Loss)
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss_fn(logits, torch.randint(0, 2, (1, 4, 4))).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs, message",
    [({"r": 1.5}, r"r is a lesion fraction and must lie in \[0, 1\], got 1.5"), ({"reduction": "max"}, "max")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExponentialWeightedCrossEntropyLoss(**kwargs)


@pytest.mark.parametrize(
    "input_shape, target, message",
    [
        ((2, 3, 4), torch.zeros(2, 4), r"two-class logits \(B, 2, \*spatial\) .* got shape \[2, 3, 4\]"),
        ((2, 2), torch.zeros(2), r"two-class logits .* got shape \[2, 2\]"),
        ((2, 2, 4), torch.zeros(2, 5), r"target must be \(B, 1, \*spatial\) .* got \[2, 5\]"),
        ((2, 2, 4), torch.zeros(2, 2, 4), r"target must be .* got \[2, 2, 4\]"),
        ((1, 2, 3), torch.tensor([[0, 2, 1]]), r"target must hold 0 .* and 1 .*, got values in \[0, 2\]"),
    ],
)
def test_bad_inputs(input_shape, target, message):
    with pytest.raises(ValueError, match=message):
        ExponentialWeightedCrossEntropyLoss(r=0.1)(torch.randn(input_shape), target)
