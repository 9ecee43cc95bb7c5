from monai_ext.losses.exp_weighted_ce import (
    ExponentialWeightedCrossEntropyLoss,
    class_fractions,
    exponential_class_weights,
    lesion_fraction,
)
from monai_ext.losses.scaa_loss import SCAALoss

__all__ = [
    "ExponentialWeightedCrossEntropyLoss",
    "class_fractions",
    "exponential_class_weights",
    "lesion_fraction",
    "SCAALoss",
]
