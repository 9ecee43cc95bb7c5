from monai_ext.metrics.inter_slice_similarity import InterSliceSimilarityMetric, inter_slice_similarity
from monai_ext.metrics.overlap import OverlapMetric

__all__ = ["InterSliceSimilarityMetric", "OverlapMetric", "inter_slice_similarity"]
