"""MONAI Label loads the app class from this file (``--app`` points at this folder)."""

from monai_ext.label.app import MonaiExtLabelApp

__all__ = ["MonaiExtLabelApp"]
