"""Engine parts for MONAI's workflows (``SupervisedTrainer`` / ``SupervisedEvaluator``)."""

from monai_ext.engines.slice_sampling import RandomSlicesPrepareBatch

__all__ = ["RandomSlicesPrepareBatch"]
