from monai_ext.losses.exp_weighted_ce import (
    ExponentialWeightedCrossEntropyLoss,
    exponential_class_weights,
    lesion_fraction,
)

__all__ = ["ExponentialWeightedCrossEntropyLoss", "exponential_class_weights", "lesion_fraction"]
