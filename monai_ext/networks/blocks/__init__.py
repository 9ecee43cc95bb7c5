from monai_ext.networks.blocks.multi_view import MultiViewFuse, MultiViewStack, from_view, to_view, views_stackable
from monai_ext.networks.blocks.slice_attention import RSA, RecurrentSliceAttention, SliceAttention, slice_attention
from monai_ext.networks.blocks.slice_shift import SliceShift, shift_along, slice_shift
from monai_ext.networks.blocks.slice_shift_block import SliceShiftResBlock, SliceShiftUpBlock, add_slice_shift

__all__ = [
    "MultiViewFuse",
    "MultiViewStack",
    "RSA",
    "RecurrentSliceAttention",
    "SliceAttention",
    "SliceShift",
    "SliceShiftResBlock",
    "SliceShiftUpBlock",
    "add_slice_shift",
    "from_view",
    "shift_along",
    "slice_attention",
    "slice_shift",
    "to_view",
    "views_stackable",
]
