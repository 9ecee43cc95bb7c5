"""Whole-volume inference with a network that segments groups of k consecutive slices (thickened 2D)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type

__all__ = ["SliceGroupInferer", "slice_group_starts"]

_PADDING_MODES = ("replicate", "constant")


def slice_group_starts(depth: int, num_slices: int, stride: int = 1) -> list[int]:
    """First-slice indices of the k-slice groups that cover ``depth`` slices: ``0, stride, 2 stride, ...`` while a
    group fits, plus one group ending at the last slice when the stride steps over it (every slice is covered).

    ``depth >= num_slices >= 1`` and ``1 <= stride <= num_slices``; with ``stride = 1`` consecutive groups overlap by
    ``num_slices - 1`` slices (the paper's inference), with ``stride = num_slices`` they tile.
    """
    if num_slices < 1 or stride < 1 or depth < num_slices:
        raise ValueError(f"need depth >= num_slices >= 1 and stride >= 1, got {depth}, {num_slices}, {stride}.")
    if stride > num_slices:
        raise ValueError(f"stride ({stride}) must be at most num_slices ({num_slices}): larger strides skip slices.")
    starts = list(range(0, depth - num_slices + 1, stride))
    if starts[-1] != depth - num_slices:
        starts.append(depth - num_slices)
    return starts


class SliceGroupInferer(Inferer):
    """Slide groups of ``num_slices`` consecutive slices along one axis of a volume and average every slice's
    predictions over the groups that contain it (Yu et al., "Thickened 2D Networks for Efficient 3D Medical Image
    Segmentation", 2019, https://arxiv.org/abs/1904.01150: stride 1, so ``k - 1`` slices of overlap).

    The network receives slabs ``(n, C, H', W', num_slices)`` (the slice axis moved last; ``H'``, ``W'`` the
    other two spatial axes in order) and must return ``(n, O, H', W', num_slices)``, as
    :class:`~monai_ext.networks.nets.Thickened2DNet` does. Groups start at ``0, stride, 2 stride, ...``, with one
    more group ending at the last slice when the stride steps over it (:func:`slice_group_starts`). A volume with
    fewer than ``num_slices`` slices is padded at the far end (``padding_mode``) and the padding cropped off.
    The returned values are the mean of the network outputs (what the network returns, e.g. logits).

    Args:
        num_slices: slices per group ``k``.
        spatial_axis: spatial axis of ``(B, C, X, Y, Z)`` inputs to slide along: 0, 1 or 2 (2: the last axis).
        stride: slices between the starts of consecutive groups, ``1 <= stride <= num_slices``.
        sw_batch_size: groups per network call.
        padding_mode: ``"replicate"`` (repeat the last slice) or ``"constant"`` (zeros) for short volumes.
        sw_device: device of the network calls (default: the input's); ``device``: device of the output
            (default: the input's).

    Shapes:
        ``inputs`` ``(B, C, X, Y, Z)``; returns ``(B, O, X, Y, Z)``, a MetaTensor with the input's meta data when
        the input is one.

    Raises:
        ValueError: for bad arguments; on a call for an input that is not 5D or a network output of another shape.
    """

    def __init__(
        self,
        num_slices: int,
        spatial_axis: int = 2,
        stride: int = 1,
        sw_batch_size: int = 1,
        padding_mode: str = "replicate",
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if num_slices < 1 or stride < 1 or sw_batch_size < 1:
            raise ValueError(
                f"num_slices, stride and sw_batch_size must be positive, got {num_slices}, {stride}, {sw_batch_size}."
            )
        if stride > num_slices:
            raise ValueError(
                f"stride ({stride}) must be at most num_slices ({num_slices}): larger strides skip slices."
            )
        if spatial_axis not in (0, 1, 2):
            raise ValueError(f"spatial_axis must be 0, 1 or 2 (a spatial axis of (B, C, X, Y, Z)), got {spatial_axis}.")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}.")
        self.num_slices = num_slices
        self.spatial_axis = spatial_axis
        self.stride = stride
        self.sw_batch_size = sw_batch_size
        self.padding_mode = padding_mode
        self.sw_device = sw_device
        self.device = device

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.dim() != 5:
            raise ValueError(
                f"SliceGroupInferer expects a (B, C, X, Y, Z) volume, got shape {list(inputs.shape)}; add the batch "
                "and channel axes (e.g. EnsureChannelFirstd and a DataLoader)."
            )
        k, axis = self.num_slices, self.spatial_axis + 2
        device = inputs.device if self.device is None else torch.device(self.device)
        sw_device = inputs.device if self.sw_device is None else torch.device(self.sw_device)
        x = torch.as_tensor(inputs).movedim(axis, -1)  # (B, C, H', W', D): slices last
        depth = x.shape[-1]
        if depth < k:  # pad at the far end, crop back below
            tail = x[..., -1:].expand(*x.shape[:-1], k - depth)
            x = torch.cat([x, tail if self.padding_mode == "replicate" else torch.zeros_like(tail)], dim=-1)
        b = x.shape[0]
        starts = slice_group_starts(x.shape[-1], k, self.stride)
        total: torch.Tensor | None = None
        count = torch.zeros(x.shape[-1], device=device)
        for i in range(0, len(starts), self.sw_batch_size):
            batch = starts[i : i + self.sw_batch_size]
            slabs = torch.cat([x[..., s : s + k] for s in batch]).to(sw_device)  # (len(batch) * B, C, H', W', k)
            out = network(slabs, *args, **kwargs)
            expected = (len(batch) * b, *slabs.shape[2:])
            if out.dim() != 5 or (out.shape[0], *out.shape[2:]) != expected:
                raise ValueError(
                    f"the network must map slabs {list(slabs.shape)} to (n, O, *{list(slabs.shape[2:])}), "
                    f"got {list(out.shape)}."
                )
            out = out.to(device=device, dtype=torch.float32)
            if total is None:
                total = torch.zeros(b, out.shape[1], *x.shape[2:], device=device)
            for j, s in enumerate(batch):
                total[..., s : s + k] += out[j * b : (j + 1) * b]
                count[s : s + k] += 1
        assert total is not None  # at least one group
        result = (total / count)[..., :depth].movedim(-1, axis)  # (B, O, X, Y, Z)
        if isinstance(inputs, MetaTensor):
            return convert_to_dst_type(result, inputs, device=device)[0]
        return result
