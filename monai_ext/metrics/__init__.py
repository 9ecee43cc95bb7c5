from monai_ext.metrics.inter_slice_similarity import (
    AdjacentSliceDiceMetric,
    InterSliceSimilarityMetric,
    adjacent_slice_dice,
    inter_slice_similarity,
    mean_adjacent_slice_dice,
)
from monai_ext.metrics.per_class import dice_per_class

__all__ = [
    "AdjacentSliceDiceMetric",
    "InterSliceSimilarityMetric",
    "adjacent_slice_dice",
    "dice_per_class",
    "inter_slice_similarity",
    "mean_adjacent_slice_dice",
]
