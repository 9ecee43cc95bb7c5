from monai_ext.inferers.autocast import AutocastInferer, autocast
from monai_ext.inferers.context_slices import ContextSliceInferer, SliceTrainingPadInferer
from monai_ext.inferers.flip import FlipInferer, flip_combinations
from monai_ext.inferers.multi_view import MultiViewInferer, fuse_views
from monai_ext.inferers.neighbour_slices import NeighbourSliceInferer, neighbour_channels
from monai_ext.inferers.pad import PadInferer
from monai_ext.inferers.shared_buffers import SharedBuffersInferer
from monai_ext.inferers.shared_early_stage import SharedEarlyStage
from monai_ext.inferers.slice_group import SliceGroupInferer

__all__ = [
    "AutocastInferer",
    "ContextSliceInferer",
    "FlipInferer",
    "MultiViewInferer",
    "NeighbourSliceInferer",
    "PadInferer",
    "SharedBuffersInferer",
    "SharedEarlyStage",
    "SliceGroupInferer",
    "SliceTrainingPadInferer",
    "autocast",
    "flip_combinations",
    "fuse_views",
    "neighbour_channels",
]
