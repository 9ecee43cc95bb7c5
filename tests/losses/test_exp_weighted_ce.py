import math

import numpy as np
import pytest
import torch
from torch.nn.modules.loss import _Loss

from monai_ext.losses import (
    ExponentialWeightedCrossEntropyLoss,
    class_fractions,
    exponential_class_weights,
    lesion_fraction,
)


def _paper_weights(r, swapped=False):
    """Zhang et al. 2019, Sec. 3.1, as written: lesion e^r / (e^r + e^(1-r)), others e^(1-r) / (e^r + e^(1-r));
    ``swapped`` exchanges the two. Returns ``[background, lesion]``."""
    lesion, others = math.exp(r), math.exp(1 - r)
    weights = [others / (lesion + others), lesion / (lesion + others)]
    return weights[::-1] if swapped else weights


def _hand_loss(logits, target, weights):
    """Per-voxel loop: weights[y] * -log softmax(logits)[y], averaged over voxels; ``weights`` one per class, or a
    number r for the paper's two-class weights."""
    if not isinstance(weights, list):
        weights = _paper_weights(weights)
    total, count = 0.0, 0
    flat_logits = logits.movedim(1, -1).reshape(-1, logits.shape[1]).tolist()
    for row, y in zip(flat_logits, target.reshape(-1).tolist()):
        log_p = row[int(y)] - math.log(sum(math.exp(v) for v in row))
        total += weights[int(y)] * -log_p
        count += 1
    return total / count


def test_class_weights_by_hand():
    background, lesion = exponential_class_weights(0.25)
    e = math.exp
    assert lesion.item() == pytest.approx(e(0.25) / (e(0.25) + e(0.75)), rel=1e-6)
    assert background.item() == pytest.approx(e(0.75) / (e(0.25) + e(0.75)), rel=1e-6)
    assert (background + lesion).item() == pytest.approx(1.0)
    assert [w.item() for w in exponential_class_weights(0.5)] == pytest.approx([0.5, 0.5])
    assert exponential_class_weights(0.01).tolist() == pytest.approx([0.7271, 0.2729], abs=1e-4)  # rare lesion


@pytest.mark.parametrize("r", [0.0, 0.0057, 0.3, 1.0])
@pytest.mark.parametrize("swapped", [False, True])
def test_two_class_fractions_give_the_papers_weights(r, swapped):
    # the C-class rule e^(p_c) / sum_k e^(p_k) at C = 2, from a number r or from the fractions (1 - r, r)
    expected = _paper_weights(r, swapped)
    assert exponential_class_weights(r, swapped=swapped).tolist() == pytest.approx(expected, rel=1e-6)
    assert exponential_class_weights([1 - r, r], swapped=swapped).tolist() == pytest.approx(expected, rel=1e-6)


def test_three_class_weights_by_hand():
    p = [0.9, 0.07, 0.03]
    total = sum(math.exp(v) for v in p)
    assert exponential_class_weights(p).tolist() == pytest.approx([math.exp(v) / total for v in p], rel=1e-6)
    swapped_total = sum(math.exp(1 - v) for v in p)
    assert exponential_class_weights(torch.tensor(p, dtype=torch.float64), swapped=True).tolist() == pytest.approx(
        [math.exp(1 - v) / swapped_total for v in p], rel=1e-9
    )
    assert exponential_class_weights(torch.tensor(p, dtype=torch.float64)).dtype == torch.float64


def test_class_fractions():
    labels = [torch.tensor([0, 0, 2, 1]), np.array([[0, 1, 2], [0, 0, 0]], dtype=np.float32)]
    torch.testing.assert_close(class_fractions(labels, 3), torch.tensor([6, 2, 2], dtype=torch.float64) / 10)
    assert class_fractions(labels, 4).tolist() == pytest.approx([0.6, 0.2, 0.2, 0.0])  # an absent class: 0
    binary = torch.tensor([[0, 1], [0, 0]])
    assert class_fractions(binary, 2).tolist() == pytest.approx([1 - lesion_fraction(binary), lesion_fraction(binary)])


@pytest.mark.parametrize(
    "labels, num_classes, message",
    [
        (torch.tensor([0, 1, 2]), 2, r"class indices 0 .. 1 \(num_classes=2\), got values in \[0, 2\]"),
        (torch.tensor([0, -1]), 2, r"got values in \[-1, 0\]"),
        (torch.tensor([0.0, 0.5]), 2, "whole numbers"),
        (torch.tensor([0, 1]), 1, "num_classes must be an integer of at least 2, got 1"),
        ([], 2, "at least one voxel"),
    ],
)
def test_class_fractions_bad_arguments(labels, num_classes, message):
    with pytest.raises(ValueError, match=message):
        class_fractions(labels, num_classes)


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


@pytest.mark.parametrize("swapped", [False, True])
def test_three_classes_match_hand_computation(swapped):
    logits = torch.randn(2, 3, 3, 4)
    target = torch.randint(0, 3, (2, 1, 3, 4))
    p = [0.8, 0.15, 0.05]
    w = [math.exp(1 - v if swapped else v) for v in p]
    expected = _hand_loss(logits, target, [v / sum(w) for v in w])
    loss = ExponentialWeightedCrossEntropyLoss(r=p, swapped=swapped)(logits, target)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_swapped_two_classes_match_hand_computation():
    logits, target = torch.randn(2, 2, 3, 4), torch.randint(0, 2, (2, 1, 3, 4))
    loss = ExponentialWeightedCrossEntropyLoss(r=0.1, swapped=True)(logits, target)
    assert loss.item() == pytest.approx(_hand_loss(logits, target, _paper_weights(0.1, swapped=True)), rel=1e-5)


def test_three_class_fractions_from_batch_by_default():
    logits = torch.randn(2, 3, 4, 4, 2)
    target = torch.randint(0, 3, (2, 1, 4, 4, 2))
    p = class_fractions(target, 3)
    loss = ExponentialWeightedCrossEntropyLoss()(logits, target)
    torch.testing.assert_close(loss, ExponentialWeightedCrossEntropyLoss(r=p)(logits, target))
    w = [math.exp(v) for v in p.tolist()]
    assert loss.item() == pytest.approx(_hand_loss(logits, target, [v / sum(w) for v in w]), rel=1e-5)


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
    [
        ({"r": 1.5}, r"r is a lesion fraction and must lie in \[0, 1\], got 1.5"),
        ({"r": [1.0]}, r"one number in \[0, 1\] per class, at least two .* got \[1.0\]"),
        ({"r": [0.5, -0.1, 0.6]}, r"one number in \[0, 1\] per class"),
        ({"r": [0.5, 0.4]}, r"must sum to 1 .* got \[0.5, 0.4\]"),
        ({"r": [[0.5, 0.5]]}, "one number in"),
        ({"reduction": "max"}, "max"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExponentialWeightedCrossEntropyLoss(**kwargs)


@pytest.mark.parametrize(
    "r, input_shape, target, message",
    [
        (0.1, (2, 1, 4), torch.zeros(2, 4), r"logits \(B, C, \*spatial\) with C >= 2 .* got shape \[2, 1, 4\]"),
        (0.1, (2, 2), torch.zeros(2), r"logits .* at least one spatial axis, got shape \[2, 2\]"),
        (0.1, (2, 2, 4), torch.zeros(2, 5), r"target must be \(B, 1, \*spatial\) .* got \[2, 5\]"),
        (0.1, (2, 2, 4), torch.zeros(2, 2, 4), r"target must be .* got \[2, 2, 4\]"),
        (0.1, (1, 2, 3), torch.tensor([[0, 2, 1]]), r"class indices 0 .. 1 .* got values in \[0, 2\]"),
        (None, (1, 3, 3), torch.tensor([[0, 3, 1]]), r"class indices 0 .. 2 .* 3-class logits, got .* \[0, 3\]"),
        (0.1, (1, 3, 3), torch.tensor([[0, 2, 1]]), r"fractions of 2 classes \(a single r means two\).* 3 channels"),
        ([0.5, 0.3, 0.2], (1, 2, 3), torch.tensor([[0, 1, 1]]), r"fractions of 3 classes .* 2 channels"),
    ],
)
def test_bad_inputs(r, input_shape, target, message):
    with pytest.raises(ValueError, match=message):
        ExponentialWeightedCrossEntropyLoss(r=r)(torch.randn(input_shape), target)
