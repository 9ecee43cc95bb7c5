from monai_ext.transforms.class_weights import ClassWeightCorrection, ClassWeightCorrectiond
from monai_ext.transforms.validate import ValidateImage, ValidateImaged

__all__ = ["ClassWeightCorrection", "ClassWeightCorrectiond", "ValidateImage", "ValidateImaged"]
