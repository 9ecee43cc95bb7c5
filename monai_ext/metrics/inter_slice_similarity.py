"""Inter-slice similarity of a segmentation: how much a structure's mask changes from one slice to the next."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, tensor_dim

__all__ = ["InterSliceSimilarityMetric", "inter_slice_similarity"]


def inter_slice_similarity(mask: torch.Tensor, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> torch.Tensor:
    """Mean Dice between the masks of adjacent slices, per sample and channel.

    Yu et al., "Thickened 2D Networks for Efficient 3D Medical Image Segmentation", 2019, Table 2 compares targets
    by the similarity of neighbouring slices (vessels change more from slice to slice than organs do). Our
    reading: for each pair of adjacent slices ``(z, z+1)`` along ``spatial_dim`` where either mask is non-empty,
    ``Dice = 2 |A and B| / (|A| + |B|)``; the mean over those pairs. NaN where no slice has foreground.

    Args:
        mask: binary ``(B, C, *spatial)`` (one-hot classes or a single foreground channel).
        spatial_dim: the spatial axis the slices are taken along (default 2: the last of ``(B, C, H, W, D)``).

    Returns:
        ``(B, C)`` float tensor in ``[0, 1]`` (NaN for an empty channel).

    Raises:
        ValueError: for a mask with fewer than 2 spatial axes or a ``spatial_dim`` outside them.
    """
    if mask.dim() < 4:
        raise ValueError(f"mask must be (B, C, *spatial) with at least 2 spatial axes, got {list(mask.shape)}.")
    check_spatial_dim(spatial_dim, mask.dim() - 2)
    m = (mask > 0).movedim(tensor_dim(spatial_dim), 2).flatten(3).float()  # (B, C, Z, pixels per slice)
    a, b = m[:, :, :-1], m[:, :, 1:]  # slices z and z + 1
    sizes = a.sum(-1) + b.sum(-1)  # (B, C, Z - 1)
    dice = 2 * (a * b).sum(-1) / sizes.clamp_min(1)
    used = sizes > 0
    count = used.sum(-1)  # (B, C)
    mean = (dice * used).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


class InterSliceSimilarityMetric(CumulativeIterationMetric):
    """Inter-slice similarity (:func:`inter_slice_similarity`) of binarised masks, buffered per sample.

    Call it with the mask to measure as ``y_pred`` (a ground truth label to describe a dataset, or a prediction);
    ``y`` is ignored.

    Args:
        spatial_dim: the spatial axis the slices are taken along (default 2: the last).
        include_background: keep channel 0 of a multi-channel mask.
        reduction: ``"mean"`` (one number: the mean over samples and channels, NaNs skipped), ``"mean_channel"``
            (per channel, ``(C,)``) or ``"none"`` (``(N, C)``).

    Raises:
        ValueError: for a bad reduction or ``spatial_dim``; on a call for a mask with values other than 0 and 1 or too
            few dimensions.
    """

    def __init__(
        self, spatial_dim: int = DEFAULT_SPATIAL_DIM, include_background: bool = False, reduction: str = "mean"
    ) -> None:
        super().__init__()
        if reduction not in ("mean", "mean_channel", "none"):
            raise ValueError(f"reduction must be 'mean', 'mean_channel' or 'none', got {reduction!r}.")
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self.include_background = include_background
        self.reduction = reduction

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if not torch.all((y_pred == 0) | (y_pred == 1)):
            raise ValueError(
                "y_pred must be a binary mask (0 and 1 only): threshold or AsDiscrete(argmax, to_onehot) it."
            )
        if not self.include_background and y_pred.shape[1] > 1:
            y_pred = y_pred[:, 1:]
        return inter_slice_similarity(y_pred, self.spatial_dim)

    def aggregate(self) -> torch.Tensor:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("nothing to aggregate: call the metric on at least one mask first.")
        if self.reduction == "none":
            return data
        if self.reduction == "mean_channel":
            return data.nanmean(0)
        return data.nanmean()
