from monai_ext.transforms.class_weights import ClassWeightCorrection, ClassWeightCorrectiond
from monai_ext.transforms.slice_groups import RandSliceGroup, RandSliceGroupd, slice_group
from monai_ext.transforms.validate import ValidateImage, ValidateImaged

__all__ = [
    "ClassWeightCorrection",
    "ClassWeightCorrectiond",
    "RandSliceGroup",
    "RandSliceGroupd",
    "ValidateImage",
    "ValidateImaged",
    "slice_group",
]
