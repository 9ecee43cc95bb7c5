"""Exponentially weighted cross-entropy: RSANet's loss for the lesion / background imbalance, for two or more classes.

Zhang et al. 2019 (RSANet, Sec. 3.1) weight lesion voxels ``e^r / (e^r + e^(1-r))`` and the others
``e^(1-r) / (e^r + e^(1-r))``, ``r`` the average lesion portion. With the class fractions ``p = (1 - r, r)`` that is
``w_c = e^(p_c) / sum_k e^(p_k)``, a softmax of the fractions, which is how it extends to ``C`` classes here: each
class is weighted from its own fraction, and ``C = 2`` gives the paper's weights exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.utils import LossReduction
from torch.nn.functional import cross_entropy
from torch.nn.modules.loss import _Loss

__all__ = ["ExponentialWeightedCrossEntropyLoss", "class_fractions", "exponential_class_weights", "lesion_fraction"]

_SUM_TOLERANCE = 1e-3  # how far given class fractions may sum from 1 (rounded, typed by hand)


def _label_maps(labels: torch.Tensor | np.ndarray | Sequence) -> list[torch.Tensor]:
    single = isinstance(labels, (torch.Tensor, np.ndarray))
    return [torch.as_tensor(m) for m in ([labels] if single else list(labels))]


def lesion_fraction(labels: torch.Tensor | Sequence[torch.Tensor]) -> float:
    """Fraction ``r`` of lesion voxels (label > 0), pooled over every voxel of every given label map.

    The paper's "average lesion portion"; pooling the voxels equals the mean of the per-case portions when the
    cases have one size.

    Args:
        labels: one label tensor (or array) of any shape, or a sequence of them (e.g. a training set's label maps,
            possibly of different sizes).

    Raises:
        ValueError: when there is no voxel at all.
    """
    maps = _label_maps(labels)
    total = sum(int(m.numel()) for m in maps)
    if total == 0:
        raise ValueError("lesion_fraction needs at least one voxel, got no labels or only empty tensors.")
    return sum(int(torch.count_nonzero(m > 0)) for m in maps) / total


def class_fractions(labels: torch.Tensor | Sequence[torch.Tensor], num_classes: int) -> torch.Tensor:
    """Fraction of the voxels in each class ``0 .. num_classes - 1``, pooled over every voxel of every label map.

    For two classes, ``class_fractions(labels, 2)`` is ``(1 - r, r)`` with ``r = lesion_fraction(labels)``.

    Args:
        labels: one label map (tensor or array, any shape, class indices of any dtype), or a sequence of them.
        num_classes: ``C``, at least 2.

    Returns:
        ``(C,)`` float64 tensor that sums to 1.

    Raises:
        ValueError: for ``num_classes < 2``, no voxel at all, or a label value that is not a class index
            ``0 .. C - 1``.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer of at least 2, got {num_classes!r}.")
    counts = torch.zeros(num_classes, dtype=torch.float64)
    for m in _label_maps(labels):
        if m.numel() == 0:
            continue
        flat = m.detach().reshape(-1).cpu()
        if flat.is_floating_point() and not torch.equal(flat, flat.round()):
            raise ValueError("labels must hold class indices (whole numbers), got fractional values.")
        flat = flat.long()
        low, high = int(flat.min()), int(flat.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"labels must hold class indices 0 .. {num_classes - 1} (num_classes={num_classes}), got values in "
                f"[{low}, {high}]; set num_classes to the number of classes, background included."
            )
        counts += torch.bincount(flat, minlength=num_classes).double()
    total = counts.sum()
    if total == 0:
        raise ValueError("class_fractions needs at least one voxel, got no labels or only empty tensors.")
    return counts / total


def _as_fractions(r: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    """``r`` as a ``(C,)`` tensor of class fractions: a scalar lesion fraction becomes ``(1 - r, r)``. Raises a
    ValueError for values outside ``[0, 1]``, fewer than two classes, or fractions that do not sum to 1."""
    given = r if isinstance(r, torch.Tensor) else torch.as_tensor(r, dtype=torch.float64)
    values = given.detach().cpu().double().tolist()  # checked in float64: messages show the numbers given
    if not given.is_floating_point() or not isinstance(r, torch.Tensor):
        given = given.to(torch.get_default_dtype())
    if given.dim() == 0:
        if not 0.0 <= values <= 1.0:
            raise ValueError(f"r is a lesion fraction and must lie in [0, 1], got {values}.")
        return torch.stack([1 - given, given])
    if given.dim() != 1 or len(values) < 2 or not all(0.0 <= v <= 1.0 for v in values):
        raise ValueError(
            f"class fractions must be one number in [0, 1] per class, at least two (background first), got {values}."
        )
    if abs(sum(values) - 1.0) > _SUM_TOLERANCE:
        raise ValueError(f"class fractions must sum to 1 (every voxel in one class), got {values} (sum {sum(values)}).")
    return given


def _weights(fractions: torch.Tensor, swapped: bool) -> torch.Tensor:
    """``softmax(p)`` (the paper's weights), or ``softmax(1 - p)`` with ``swapped``, over the last axis."""
    return torch.softmax(1 - fractions if swapped else fractions, dim=-1)


def exponential_class_weights(r: float | Sequence[float] | torch.Tensor, swapped: bool = False) -> torch.Tensor:
    """RSANet's class weights, one per class, summing to 1.

    For two classes, with lesion fraction ``r``: lesion ``e^r / (e^r + e^(1-r)) = sigmoid(2r - 1)`` and background
    ``e^(1-r) / (e^r + e^(1-r)) = sigmoid(1 - 2r)`` (Zhang et al. 2019, Sec. 3.1): the rarer class gets the smaller
    weight. For ``C`` classes with fractions ``p``: ``w_c = e^(p_c) / sum_k e^(p_k)``, which is the same at ``C = 2``.
    ``swapped=True`` gives ``w_c = e^(1 - p_c) / sum_k e^(1 - p_k)`` (the two weights exchanged when ``C = 2``), so the
    rarer class gets the larger weight.

    Args:
        r: the lesion fraction of a two-class task (a number in ``[0, 1]``, e.g. :func:`lesion_fraction`), or the
            fraction of each of ``C`` classes, background first, summing to 1 (e.g. :func:`class_fractions`).
        swapped: weight each class from ``1 - p_c`` instead of ``p_c``.

    Returns:
        ``(C,)`` tensor (``(background, lesion)`` for a number ``r``); the dtype of a floating tensor ``r``, else the
        default dtype.

    Raises:
        ValueError: for a number outside ``[0, 1]``, fewer than two fractions, or fractions that do not sum to 1.
    """
    return _weights(_as_fractions(r), swapped)


class ExponentialWeightedCrossEntropyLoss(_Loss):
    """Cross-entropy with RSANet's exponential class weights, for two or more classes.

    From Zhang et al., "RSANet: Recurrent Slice-wise Attention Network for Multiple Sclerosis Lesion
    Segmentation", MICCAI 2019 (https://arxiv.org/abs/2002.12470), Sec. 3.1: lesion voxels are weighted
    ``e^r / (e^r + e^(1-r))`` and the others ``e^(1-r) / (e^r + e^(1-r))``, ``r`` the average lesion portion. With
    ``C`` classes of fractions ``p``, class ``c`` is weighted ``e^(p_c) / sum_k e^(p_k)`` (the paper's weights at
    ``C = 2``; ``swapped`` exchanges them, see :func:`exponential_class_weights`). The loss of voxel ``i`` is
    ``w[y_i] * CE_i``.

    Args:
        r: the lesion fraction of a two-class task (a number in ``[0, 1]``, e.g. ``lesion_fraction(labels)``), or the
            ``C`` class fractions, background first (e.g. ``class_fractions(labels, C)``). ``None`` (default):
            the class fractions of each batch's target.
        swapped: weight each class from ``1 - p_c`` instead of ``p_c``, so that rare classes weigh more (not the
            paper's weights).
        reduction: ``"mean"`` (sum of weighted voxel losses divided by the number of voxels, not by the sum
            of weights as ``torch.nn.CrossEntropyLoss`` does), ``"sum"``, or ``"none"`` (``(B, 1, *spatial)``).

    Shapes:
        input: logits ``(B, C, *spatial)``, ``C >= 2`` (channel 0 background; for two classes 1 is lesion).
        target: ``(B, 1, *spatial)`` or ``(B, *spatial)``, class indices ``0 .. C - 1`` (any dtype).

    Raises:
        ValueError: for an ``r`` that :func:`exponential_class_weights` refuses or an unknown ``reduction``; in
            ``forward`` for an input with fewer than two channels or no spatial axis, a target whose shape does not
            match, target values outside ``0 .. C - 1``, or an ``r`` for another number of classes than ``C``.
    """

    def __init__(
        self,
        r: float | Sequence[float] | torch.Tensor | None = None,
        swapped: bool = False,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        self.r = r
        self.fractions = None if r is None else _as_fractions(r).detach().clone()
        self.swapped = swapped

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        num_classes = input.shape[1] if input.dim() > 1 else 0
        if input.dim() < 3 or num_classes < 2:
            raise ValueError(
                f"input must be logits (B, C, *spatial) with C >= 2 classes and at least one spatial axis, "
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
        if target.numel() > 0 and (target.min() < 0 or target.max() >= num_classes):
            raise ValueError(
                f"target must hold class indices 0 .. {num_classes - 1} (0 background) for {num_classes}-class "
                f"logits, got values in [{target.min()}, {target.max()}]."
            )
        if self.fractions is None:
            counts = torch.bincount(target.reshape(-1), minlength=num_classes)
            fractions = counts.to(input.dtype) / max(target.numel(), 1)
        elif self.fractions.numel() != num_classes:
            raise ValueError(
                f"r gives the fractions of {self.fractions.numel()} classes (a single r means two), but the input "
                f"has {num_classes} channels; give one fraction per class, e.g. "
                f"monai_ext.losses.class_fractions(labels, {num_classes})."
            )
        else:
            fractions = self.fractions.to(device=input.device, dtype=input.dtype)
        weights = _weights(fractions, self.swapped)  # (C,): weight per class index
        loss = weights[target] * cross_entropy(input, target, reduction="none")  # (B, *spatial)
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss.unsqueeze(1)  # (B, 1, *spatial)
