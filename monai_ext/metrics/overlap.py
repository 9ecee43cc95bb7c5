"""Sample-average and voxel-average Dice and IoU of a binary (lesion) segmentation, as in RSANet."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import is_binary_tensor

__all__ = ["OverlapMetric"]

_METRICS = ("dice", "iou")
_AVERAGES = ("sample", "voxel")


class OverlapMetric(CumulativeIterationMetric):
    """Dice or IoU of the lesion class, averaged over samples or pooled over all voxels.

    RSANet (Zhang et al., MICCAI 2019, https://arxiv.org/abs/2002.12470) reports both averages:

    - ``average="sample"``: the score of each sample (volume), then their mean;
    - ``average="voxel"``: true positives, false positives and false negatives summed over every voxel of
      every sample, then one score (large lesion loads weigh more).

    Dice ``= 2 TP / (2 TP + FP + FN)``, IoU ``= TP / (TP + FP + FN)``. Each call buffers per-sample counts,
    so :meth:`aggregate` works after any number of calls and, through MONAI's buffers, across processes.

    Args:
        metric: ``"dice"`` or ``"iou"``.
        average: ``"sample"`` or ``"voxel"``.
        ignore_empty: as MONAI's ``DiceMetric``: a sample (or, for ``"voxel"``, the whole pool) with an empty
            ground truth scores NaN and is left out of the sample mean if True; if False it scores 1 when the
            prediction is empty too and 0 otherwise.

    Shapes:
        ``y_pred`` and ``y``: binarised ``(B, 1, *spatial)`` masks or one-hot ``(B, 2, *spatial)`` whose
        channel 1 is the lesion; both the same shape (or lists of channel-first tensors).
        A call returns the buffered counts ``(B, 3)``: TP, FP, FN voxels per sample.

    Raises:
        ValueError: for an unknown ``metric`` or ``average``; on a call for shapes that differ or are not
            ``(B, 1 or 2, *spatial)``; in :meth:`aggregate` when nothing has been buffered.
    """

    def __init__(self, metric: str = "dice", average: str = "sample", ignore_empty: bool = True) -> None:
        super().__init__()
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}.")
        if average not in _AVERAGES:
            raise ValueError(f"average must be one of {_AVERAGES}, got {average!r}.")
        self.metric = metric
        self.average = average
        self.ignore_empty = ignore_empty

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if y_pred.shape != y.shape or y_pred.dim() < 3 or y_pred.shape[1] not in (1, 2):
            raise ValueError(
                "y_pred and y must be binarised (B, 1, *spatial) masks or one-hot (B, 2, *spatial) of the same "
                f"shape, got {list(y_pred.shape)} and {list(y.shape)}."
            )
        is_binary_tensor(y_pred, "y_pred")
        is_binary_tensor(y, "y")
        pred = y_pred[:, -1].flatten(1) > 0  # (B, V): lesion channel, voxels flattened
        true = y[:, -1].flatten(1) > 0  # (B, V)
        tp = (pred & true).sum(dim=1)
        fp = (pred & ~true).sum(dim=1)
        fn = (~pred & true).sum(dim=1)
        return torch.stack([tp, fp, fn], dim=1)  # (B, 3) int64 counts

    def _score(self, counts: torch.Tensor) -> torch.Tensor:
        """Score of ``(..., 3)`` TP / FP / FN counts, with the empty-ground-truth rule applied."""
        tp, fp, fn = counts.double().unbind(-1)
        numerator, denominator = (2 * tp, 2 * tp + fp + fn) if self.metric == "dice" else (tp, tp + fp + fn)
        score = numerator / denominator.clamp_min(1)
        empty_truth = (tp + fn) == 0
        if self.ignore_empty:
            return torch.where(empty_truth, torch.full_like(score, float("nan")), score)
        return torch.where(empty_truth, (fp == 0).double(), score)

    def aggregate(self) -> torch.Tensor:
        """The averaged score over everything buffered so far (all processes): a float32 scalar tensor.

        Raises:
            ValueError: when nothing has been buffered yet.
        """
        counts = self.get_buffer()
        if not isinstance(counts, torch.Tensor) or counts.numel() == 0:
            raise ValueError("OverlapMetric has no buffered data: call it on (y_pred, y) before aggregate().")
        if self.average == "voxel":
            return self._score(counts.sum(dim=0)).float()
        return torch.nanmean(self._score(counts)).float()
