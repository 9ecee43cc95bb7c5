"""Dice of each class between two label maps, for reports that name the classes (the demo, the benchmark)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from monai.metrics import DiceMetric

__all__ = ["dice_per_class"]


def dice_per_class(
    pred: torch.Tensor | np.ndarray, truth: torch.Tensor | np.ndarray, labels: Mapping[int, str]
) -> dict[str, float]:
    """Dice of each foreground class between two label maps, with MONAI's :class:`~monai.metrics.DiceMetric`.

    An empty class follows DiceMetric's ``ignore_empty=True``: where ``truth`` holds no voxel of a class its Dice is
    NaN, whatever the prediction (average over cases with ``numpy.nanmean``).

    Args:
        pred, truth: class-index maps of one case, the same shape (any number of spatial axes, no channel axis).
        labels: class value -> name (``{0: "background", 1: "vessel", ...}``); the background (0) is not scored.

    Returns:
        ``{name: dice}`` for every foreground class of ``labels``.

    Raises:
        ValueError: for maps of different shapes.
    """
    pred, truth = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(truth))
    if pred.shape != truth.shape:
        raise ValueError(f"pred and truth must have one shape, got {list(pred.shape)} and {list(truth.shape)}.")
    classes = max(labels) + 1
    metric = DiceMetric(include_background=False, reduction="none", ignore_empty=True, num_classes=classes)
    scores = metric(pred[None, None].long(), truth[None, None].long())[0]  # (classes - 1,): classes 1 .. K - 1
    return {name: float(scores[value - 1]) for value, name in sorted(labels.items()) if value > 0}
