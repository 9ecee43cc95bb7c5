from monai_ext.metrics.overlap import OverlapMetric

__all__ = ["OverlapMetric"]
