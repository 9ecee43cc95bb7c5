"""Figures of what the networks learned."""

from monai_ext.visualize.attention_depth import bundle_depth_attention_png, depth_attention, save_depth_attention_png
from monai_ext.visualize.figures import pyplot, save_png

__all__ = ["bundle_depth_attention_png", "depth_attention", "pyplot", "save_depth_attention_png", "save_png"]
