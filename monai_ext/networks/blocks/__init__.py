from monai_ext.networks.blocks.context_encoder import ContextEncoder3D, GlobalDescriptor
from monai_ext.networks.blocks.cpu_conv import (
    ChannelsLastConv2d,
    OneDNNConv3d,
    conv2d_channels_last,
    conv3d_onednn,
    fast_cpu_convs,
    plain_convolutions,
)
from monai_ext.networks.blocks.deformable_attention import (
    MSDeformableAttention,
    deformable_attention_core,
    deformable_attention_grid_sample,
    deformable_reference_points,
)
from monai_ext.networks.blocks.detrans import DeTransEncoder, DeTransLayer, SinePositionEncoding, sine_position_encoding
from monai_ext.networks.blocks.msfa import MSFA, MultiSliceFeatureAggregation, aggregate_slices
from monai_ext.networks.blocks.multi_view import (
    MULTI_VIEW_ORDER,
    MultiViewFuse,
    MultiViewStack,
    from_view,
    to_view,
    view_axes,
    views_stackable,
)
from monai_ext.networks.blocks.multiplexing import ESM, EarlyStageMultiplexing
from monai_ext.networks.blocks.slice_attention import (
    RSA,
    RSA_PAPER_ORDER,
    RecurrentSliceAttention,
    SliceAttention,
    plane_axes,
    slice_attention,
)
from monai_ext.networks.blocks.slice_sensitive_attention import (
    SSA,
    ConcatLink,
    DotLink,
    SliceSensitiveAttention,
    SwitchableNorm,
    channel_affinity,
    channel_attention,
)
from monai_ext.networks.blocks.slice_shift import SliceShift, shift_along, slice_shift
from monai_ext.networks.blocks.slice_shift_block import SliceShiftResBlock, SliceShiftUpBlock, add_slice_shift

__all__ = [
    "ChannelsLastConv2d",
    "ConcatLink",
    "ContextEncoder3D",
    "DeTransEncoder",
    "DeTransLayer",
    "DotLink",
    "ESM",
    "EarlyStageMultiplexing",
    "GlobalDescriptor",
    "MSDeformableAttention",
    "MSFA",
    "MULTI_VIEW_ORDER",
    "MultiSliceFeatureAggregation",
    "MultiViewFuse",
    "MultiViewStack",
    "OneDNNConv3d",
    "RSA",
    "RSA_PAPER_ORDER",
    "RecurrentSliceAttention",
    "SSA",
    "SinePositionEncoding",
    "SliceAttention",
    "SliceSensitiveAttention",
    "SliceShift",
    "SliceShiftResBlock",
    "SliceShiftUpBlock",
    "SwitchableNorm",
    "add_slice_shift",
    "aggregate_slices",
    "channel_affinity",
    "channel_attention",
    "conv2d_channels_last",
    "conv3d_onednn",
    "deformable_attention_core",
    "deformable_attention_grid_sample",
    "deformable_reference_points",
    "fast_cpu_convs",
    "from_view",
    "plain_convolutions",
    "plane_axes",
    "shift_along",
    "sine_position_encoding",
    "slice_attention",
    "slice_shift",
    "to_view",
    "view_axes",
    "views_stackable",
]
