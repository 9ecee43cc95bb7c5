from monai_ext.inferers.flip import FlipInferer, flip_combinations
from monai_ext.inferers.multi_view import MultiViewInferer, fuse_views
from monai_ext.inferers.pad import PadInferer
from monai_ext.inferers.slice_group import SliceGroupInferer, slice_group_starts

__all__ = [
    "FlipInferer",
    "MultiViewInferer",
    "PadInferer",
    "SliceGroupInferer",
    "flip_combinations",
    "fuse_views",
    "slice_group_starts",
]
