from monai_ext.transforms.validate import ValidateImage, ValidateImaged

__all__ = ["ValidateImage", "ValidateImaged"]
