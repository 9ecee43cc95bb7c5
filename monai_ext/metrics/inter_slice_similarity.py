"""Inter-slice similarity (Yu et al. 2019, Table 2): how a segmentation's slice-to-slice change compares with the
ground truth's, from the Dice of every pair of neighbouring slices."""

from __future__ import annotations

import torch
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, tensor_dim

__all__ = [
    "AdjacentSliceDiceMetric",
    "InterSliceSimilarityMetric",
    "adjacent_slice_dice",
    "inter_slice_similarity",
    "mean_adjacent_slice_dice",
]


def _slices(mask: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """``(B, C, *spatial)`` -> binary float ``(B, C, Z, pixels per slice)`` with the slices along ``spatial_dim``."""
    if mask.dim() < 4:
        raise ValueError(f"masks must be (B, C, *spatial) with at least 2 spatial axes, got {list(mask.shape)}.")
    check_spatial_dim(spatial_dim, mask.dim() - 2)
    return (mask > 0).movedim(tensor_dim(spatial_dim), 2).flatten(3).float()


def _pair_dice(mask: torch.Tensor, spatial_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice of slices ``z`` and ``z + 1`` (0 where both are empty) and whether either is non-empty, both
    ``(B, C, Z - 1)``."""
    m = _slices(mask, spatial_dim)
    a, b = m[:, :, :-1], m[:, :, 1:]
    sizes = a.sum(-1) + b.sum(-1)
    return 2 * (a * b).sum(-1) / sizes.clamp_min(1), sizes > 0


def adjacent_slice_dice(mask: torch.Tensor, spatial_dim: int = DEFAULT_SPATIAL_DIM, empty: float = 1.0) -> torch.Tensor:
    """Dice of every pair of neighbouring slices of a mask: the sequence Yu et al. 2019 (Table 2) compare.

    ``Dice(z) = 2 |S_z and S_{z+1}| / (|S_z| + |S_{z+1}|)`` for the slices ``S`` along ``spatial_dim``; ``empty`` for
    a pair of two empty slices (default 1: two empty slices agree, as MONAI's ``DiceMetric(ignore_empty=False)``
    scores an empty prediction of an empty truth).

    Args:
        mask: binary ``(B, C, *spatial)`` (one-hot classes or a single foreground channel); values > 0 are foreground.
        spatial_dim: the spatial axis the slices are taken along (default 2: the last of ``(B, C, H, W, D)``).
        empty: the value of a pair whose two slices are empty.

    Returns:
        ``(B, C, Z - 1)`` float tensor in ``[0, 1]`` (``Z`` slices along ``spatial_dim``).

    Raises:
        ValueError: for a mask with fewer than 2 spatial axes or a ``spatial_dim`` outside them.
    """
    dice, used = _pair_dice(mask, spatial_dim)
    return torch.where(used, dice, torch.full_like(dice, empty))


def inter_slice_similarity(
    y_pred: torch.Tensor, y: torch.Tensor, spatial_dim: int = DEFAULT_SPATIAL_DIM, empty: float = 1.0
) -> torch.Tensor:
    """The paper's inter-slice similarity: the L2 distance between the adjacent-slice Dice sequences of a prediction
    and of its ground truth (Yu et al. 2019, Table 2: "We compute the dice score between every pair of neighboring
    slices ... We use L2-distance to evaluate the similarity of inter-slice dice score of prediction and that of
    ground truth"). 0 when the prediction changes from slice to slice exactly as the truth does; lower is better.

    ``sqrt(sum_z (d_pred(z) - d_true(z))^2)`` over the ``Z - 1`` pairs, with ``d`` from :func:`adjacent_slice_dice`
    (``empty`` for two empty slices, so a channel empty in both masks scores 0). The sum is not divided by the
    number of pairs (the paper's plain L2 distance): compare volumes of one depth, or divide by ``sqrt(Z - 1)``.

    Args:
        y_pred: binary ``(B, C, *spatial)`` prediction.
        y: binary ground truth of the same shape.
        spatial_dim: the spatial axis the slices are taken along (default 2: the last).
        empty: the Dice of a pair of two empty slices (default 1).

    Returns:
        ``(B, C)`` float tensor, ``>= 0``.

    Raises:
        ValueError: for masks of different shapes or with fewer than 2 spatial axes, or a bad ``spatial_dim``.
    """
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y must have one shape, got {list(y_pred.shape)} and {list(y.shape)}.")
    diff = adjacent_slice_dice(y_pred, spatial_dim, empty) - adjacent_slice_dice(y, spatial_dim, empty)
    return diff.square().sum(-1).sqrt()


def mean_adjacent_slice_dice(mask: torch.Tensor, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> torch.Tensor:
    """Mean Dice of neighbouring slices of ONE mask: how smoothly a structure runs along ``spatial_dim`` (a
    description of a dataset, not the paper's Table 2 measure, which is :func:`inter_slice_similarity`).

    The mean of :func:`adjacent_slice_dice` over the pairs where either slice has foreground; NaN where no slice
    has any. A straight tube along the axis scores 1; thin tilted vessels score low.

    Args:
        mask: binary ``(B, C, *spatial)``.
        spatial_dim: the spatial axis the slices are taken along (default 2: the last).

    Returns:
        ``(B, C)`` float tensor in ``[0, 1]`` (NaN for an empty channel).

    Raises:
        ValueError: for a mask with fewer than 2 spatial axes or a ``spatial_dim`` outside them.
    """
    dice, used = _pair_dice(mask, spatial_dim)
    count = used.sum(-1)  # (B, C)
    mean = (dice * used).sum(-1) / count.clamp_min(1)
    return torch.where(count > 0, mean, torch.full_like(mean, float("nan")))


def _binary(name: str, mask: torch.Tensor) -> None:
    if not torch.all((mask == 0) | (mask == 1)):
        raise ValueError(f"{name} must be a binary mask (0 and 1 only): threshold or AsDiscrete(argmax, to_onehot) it.")


class _SliceMetric(CumulativeIterationMetric):
    """Buffers ``(B, C)`` values per call; :meth:`aggregate` reduces them with MONAI's ``do_metric_reduction``."""

    def __init__(
        self,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self.include_background = include_background
        self.reduction = MetricReduction(reduction)  # raises ValueError for an unknown name
        self.get_not_nans = get_not_nans

    def _channels(self, mask: torch.Tensor) -> torch.Tensor:
        return mask if self.include_background or mask.shape[1] == 1 else mask[:, 1:]

    def aggregate(self, reduction: MetricReduction | str | None = None):
        """Reduce the buffered ``(N, C)`` values: ``reduction`` (default the constructor's) as MONAI's metrics do,
        NaNs skipped (``"mean_batch"``: per class ``(C,)``; ``"none"``: ``(N, C)``). With ``get_not_nans``, also the
        count of non-NaN values.

        Raises:
            ValueError: before any call.
        """
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor) or data.numel() == 0:
            raise ValueError("nothing to aggregate: call the metric on at least one batch first.")
        f, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class InterSliceSimilarityMetric(_SliceMetric):
    """The paper's inter-slice similarity (:func:`inter_slice_similarity`): L2 distance between the adjacent-slice
    Dice sequences of the prediction and of the ground truth, per sample and class; lower is better.

    Call it as MONAI's ``DiceMetric``: ``metric(y_pred, y)`` with binarised one-hot ``(B, C, *spatial)`` masks (e.g.
    after ``AsDiscrete(argmax=True, to_onehot=C)``), then :meth:`aggregate`.

    Args:
        spatial_dim: the spatial axis the slices are taken along (default 2: the last).
        include_background: keep channel 0 of a multi-channel mask (default False, as MONAI's metrics).
        reduction: a MONAI ``MetricReduction`` (default ``"mean"``: one number; ``"mean_batch"``: per class).
        get_not_nans: :meth:`aggregate` also returns the number of values reduced.
        empty: the Dice of a pair of two empty slices (default 1).

    Raises:
        ValueError: for a bad ``spatial_dim`` or reduction; on a call for masks that are not binary, differ in
            shape or have too few dimensions.
    """

    def __init__(
        self,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        include_background: bool = False,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
        empty: float = 1.0,
    ) -> None:
        super().__init__(spatial_dim, include_background, reduction, get_not_nans)
        self.empty = empty

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        if y is None:
            raise ValueError("y (the ground truth) is required: the measure compares the prediction with it.")
        _binary("y_pred", y_pred)
        _binary("y", y)
        return inter_slice_similarity(self._channels(y_pred), self._channels(y), self.spatial_dim, self.empty)


class AdjacentSliceDiceMetric(_SliceMetric):
    """Mean adjacent-slice Dice of ONE mask (:func:`mean_adjacent_slice_dice`), to describe how smoothly a dataset's
    structures run along an axis. Call it with the mask as ``y_pred``; ``y`` is ignored. NaN (skipped by the
    reduction) for a channel with no foreground. Arguments as :class:`InterSliceSimilarityMetric` without ``empty``.

    Raises:
        ValueError: for a bad ``spatial_dim`` or reduction; on a call for a mask that is not binary or has too few
            dimensions.
    """

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:  # type: ignore[override]
        _binary("y_pred", y_pred)
        return mean_adjacent_slice_dice(self._channels(y_pred), self.spatial_dim)
