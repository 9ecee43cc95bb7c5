from monai_ext.metrics.inter_slice_similarity import InterSliceSimilarityMetric, inter_slice_similarity
from monai_ext.metrics.per_class import dice_per_class

__all__ = ["InterSliceSimilarityMetric", "dice_per_class", "inter_slice_similarity"]
