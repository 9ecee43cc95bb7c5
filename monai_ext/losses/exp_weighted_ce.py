"""Exponentially weighted cross-entropy (RSANet's loss for the lesion / background imbalance)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.utils import LossReduction
from torch.nn.functional import cross_entropy
from torch.nn.modules.loss import _Loss

__all__ = ["ExponentialWeightedCrossEntropyLoss", "exponential_class_weights", "lesion_fraction"]


def lesion_fraction(labels: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """Fraction ``r`` of lesion voxels (label > 0), pooled over every voxel of every given label map.

    Args:
        labels: one label tensor of any shape, or a sequence of them (e.g. a training set's label maps,
            possibly of different sizes).

    Raises:
        ValueError: when there is no voxel at all.
    """
    maps = [labels] if isinstance(labels, torch.Tensor) else list(labels)
    total = sum(int(m.numel()) for m in maps)
    if total == 0:
        raise ValueError("lesion_fraction needs at least one voxel, got no labels or only empty tensors.")
    return sum(int(torch.count_nonzero(torch.as_tensor(m) > 0)) for m in maps) / total


def exponential_class_weights(r: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """RSANet's class weights for lesion fraction ``r``: ``(background, lesion)``.

    Lesion ``e^r / (e^r + e^(1-r)) = sigmoid(2r - 1)``, background ``e^(1-r) / (e^r + e^(1-r)) = sigmoid(1 - 2r)``;
    they sum to 1.
    """
    if not isinstance(r, torch.Tensor):
        r = torch.tensor(float(r))
    return torch.sigmoid(1 - 2 * r), torch.sigmoid(2 * r - 1)


class ExponentialWeightedCrossEntropyLoss(_Loss):
    """Two-class cross-entropy with RSANet's exponential class weights.

    From Zhang et al., "RSANet: Recurrent Slice-wise Attention Network for Multiple Sclerosis Lesion
    Segmentation", MICCAI 2019 (https://arxiv.org/abs/2002.12470). With lesion fraction ``r`` the voxels
    labelled lesion are weighted ``e^r / (e^r + e^(1-r))`` and background voxels ``e^(1-r) / (e^r + e^(1-r))``
    (:func:`exponential_class_weights`); the loss of voxel ``i`` is ``w[y_i] * CE_i``.

    Args:
        r: lesion fraction in ``[0, 1]``, e.g. ``lesion_fraction(training_labels)``. ``None`` (default):
            computed from each batch's target.
        reduction: ``"mean"`` (sum of weighted voxel losses divided by the number of voxels, not by the sum
            of weights as ``torch.nn.CrossEntropyLoss`` does), ``"sum"``, or ``"none"`` (``(B, 1, *spatial)``).

    Shapes:
        input: logits ``(B, 2, *spatial)`` (channel 0 background, 1 lesion).
        target: ``(B, 1, *spatial)`` or ``(B, *spatial)``, values 0 / 1 (any dtype).

    Raises:
        ValueError: for ``r`` outside ``[0, 1]`` or an unknown ``reduction``; in ``forward`` for an input
            without two channels, a target whose shape does not match, or target values other than 0 and 1.
    """

    def __init__(self, r: float | None = None, reduction: LossReduction | str = LossReduction.MEAN) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if r is not None and not 0.0 <= r <= 1.0:
            raise ValueError(f"r is a lesion fraction and must lie in [0, 1], got {r}.")
        self.r = r

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if input.dim() < 3 or input.shape[1] != 2:
            raise ValueError(
                f"input must be two-class logits (B, 2, *spatial) with at least one spatial axis, "
                f"got shape {list(input.shape)}."
            )
        spatial = input.shape[2:]
        if target.dim() == input.dim() and target.shape[1] == 1:
            target = target[:, 0]  # (B, 1, *spatial) -> (B, *spatial)
        if target.shape != (input.shape[0], *spatial):
            raise ValueError(
                f"target must be (B, 1, *spatial) or (B, *spatial) = {[input.shape[0], 1, *spatial]} or "
                f"{[input.shape[0], *spatial]} for input {list(input.shape)}, got {list(target.shape)}."
            )
        target = target.long()
        if target.numel() > 0 and (target.min() < 0 or target.max() > 1):
            raise ValueError(
                f"target must hold 0 (background) and 1 (lesion), got values in [{target.min()}, {target.max()}]."
            )
        r = (target > 0).float().mean() if self.r is None else torch.tensor(self.r)
        background, lesion = exponential_class_weights(r.to(device=input.device, dtype=input.dtype))
        weights = torch.stack([background, lesion])  # (2,): weight per class index
        loss = weights[target] * cross_entropy(input, target, reduction="none")  # (B, *spatial)
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss.unsqueeze(1)  # (B, 1, *spatial)
