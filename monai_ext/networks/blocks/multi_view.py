"""Orthogonal views of one volume through one shared network (SSH-UNet's multi-view scheme).

A view is named by its slice axis, a spatial axis of ``(B, C, H, W, D)`` counted as in MONAI's ``SliceInferer``
(see :mod:`monai_ext.networks.layout`). Every view holds its slices on its last axis, where a network with
``(3, 3, 1)`` kernels expects them; the in-slice axes are ordered as in the SSH-UNet release, so that weights
converted from it (:func:`monai_ext.networks.compat.load_sshunet_release`) compute what the release computes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import get_conv_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from monai_ext.networks.blocks.folded import (
    ELEMENTWISE_ACTIVATIONS,
    can_overwrite,
    conv_folded,
    foldable_conv,
    foldable_norm,
    instance_norm_folded,
)
from monai_ext.networks.layout import check_spatial_axes

__all__ = [
    "MULTI_VIEW_ORDER",
    "MultiViewFuse",
    "MultiViewStack",
    "from_view",
    "to_view",
    "view_axes",
    "views_stackable",
]

MULTI_VIEW_ORDER = (0, 1, 2)
"""SSH-UNet's three views by slice axis, in the release's order (its views are summed in this order)."""


def to_view(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """The view of ``x`` ``(B, C, H, W, D)`` whose slices lie on spatial axis ``spatial_dim``, slices last.

    Spatial axes 0 and ``spatial_dim`` swap (the release's view: its slices first), then the first and last
    spatial axes swap (slices last). ``spatial_dim=2`` is ``x`` itself (axial slices ``(H, W)``); 0 gives
    ``(B, C, D, W, H)``; 1 gives ``(B, C, D, H, W)``. :func:`from_view` undoes it.
    """
    return x.transpose(2, spatial_dim + 2).transpose(2, 4)


def view_axes(spatial_dim: int) -> tuple[int, int, int]:
    """The spatial axes of ``(H, W, D)`` in the order the view of slice axis ``spatial_dim`` holds them (the rule of
    :func:`to_view`, on axis numbers): ``(2, 1, 0)``, ``(2, 0, 1)``, ``(0, 1, 2)`` for slice axes 0, 1, 2."""
    axes = [0, 1, 2]
    axes[0], axes[spatial_dim] = axes[spatial_dim], axes[0]
    axes[0], axes[2] = axes[2], axes[0]
    return axes[0], axes[1], axes[2]


def from_view(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """Undo :func:`to_view`: bring a tensor in the layout of the view of slice axis ``spatial_dim`` back to
    ``(B, C, H, W, D)``."""
    return x.transpose(2, 4).transpose(2, spatial_dim + 2)


def views_stackable(x: torch.Tensor, spatial_dims_order: list[int]) -> bool:
    """True when the views of ``x`` for the slice axes ``spatial_dims_order`` all have the same shape, so they can
    share one batch (for the three views: a cubic volume)."""
    first = to_view(x, spatial_dims_order[0]).shape
    for s in spatial_dims_order[1:]:
        if to_view(x, s).shape != first:
            return False
    return True


class MultiViewStack(nn.Module):
    """Put the views of a volume into the batch, for one shared-weight network.

    Args:
        spatial_dims_order: the slice axis of each view, distinct spatial axes 0-2; default
            :data:`MULTI_VIEW_ORDER` ``(0, 1, 2)``.

    Shapes:
        input ``(B, C, H, W, D)`` whose views share one shape; output ``(V * B, C, *view)`` with
        ``V = len(spatial_dims_order)`` views in that order (see :func:`to_view`).

    Raises:
        ValueError: for a bad ``spatial_dims_order``; in ``forward``, a non-5D input or views of different shapes
            (run the shared network on each ``to_view(x, s)`` instead, as :class:`monai_ext.networks.nets.SSHUNet`
            does).
    """

    def __init__(self, spatial_dims_order: Sequence[int] = MULTI_VIEW_ORDER) -> None:
        super().__init__()
        self.spatial_dims_order = list(check_spatial_axes(spatial_dims_order))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5:
            raise ValueError(f"MultiViewStack expects (B, C, H, W, D), got shape {list(x.shape)}.")
        if not views_stackable(x, self.spatial_dims_order):
            raise ValueError(
                f"MultiViewStack needs views of one shape to batch them (slice axes {self.spatial_dims_order}), got "
                f"spatial sizes {list(x.shape[2:])}; run the shared network on each to_view(x, s) separately instead."
            )
        return torch.cat([to_view(x, s) for s in self.spatial_dims_order], dim=0)


class MultiViewFuse(nn.Module):
    """Bring the views back to ``(H, W, D)``, sum them, and map them to logits.

    The head follows the SSH-UNet release (Ugwu et al. 2023, https://arxiv.org/abs/2307.12853): 1x1x1 conv
    (``in -> in``, bias), norm, activation, 1x1x1 conv (``in -> out``, bias). Parameter names ``conv1.conv.*`` and
    ``conv.conv.*`` match it.

    Args:
        spatial_dims: must be 3.
        in_channels: feature channels of each view.
        out_channels: output channels (classes).
        spatial_dims_order: the slice axis of each view, as for :class:`MultiViewStack`; default ``(0, 1, 2)``.
        norm_name: norm between the two convs (MONAI factory name); default the release's plain instance norm.
        act_name: activation between the two convs (in place on the norm's output: no new tensor).
        dropout: dropout of the convs.

    Shapes:
        ``forward``: ``(V * B, C, *view)`` (views stacked as by :class:`MultiViewStack`) -> ``(B, out, H, W, D)``.
        ``fuse_views``: a list of ``V`` tensors ``(B, C, *view)``, each in its view's layout -> ``(B, out, H, W,
        D)``.

    Raises:
        ValueError: for ``spatial_dims != 3`` or a bad ``spatial_dims_order``; in ``forward``, a batch that is not
            a multiple of the number of views.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        spatial_dims_order: Sequence[int] = MULTI_VIEW_ORDER,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = ("leakyrelu", {"inplace": True}),
        dropout: tuple | str | float | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims != 3:
            raise ValueError(f"MultiViewFuse fuses views of a 3D volume: spatial_dims must be 3, got {spatial_dims}.")
        self.spatial_dims_order = list(check_spatial_axes(spatial_dims_order))
        self.conv1 = get_conv_layer(
            3, in_channels, in_channels, kernel_size=1, stride=1, dropout=dropout, bias=True, act=None, norm=None,
            conv_only=False,
        )  # fmt: skip
        self.norm = get_norm_layer(name=norm_name, spatial_dims=3, channels=in_channels)
        self.act = get_act_layer(name=act_name)
        self.conv = get_conv_layer(
            3, in_channels, out_channels, kernel_size=1, stride=1, dropout=dropout, bias=True, act=None, norm=None,
            conv_only=False,
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num_views = len(self.spatial_dims_order)
        if x.shape[0] % num_views != 0:
            raise ValueError(
                f"MultiViewFuse expects the {num_views} views stacked in the batch, got batch {x.shape[0]}."
            )
        return self.fuse_views(list(x.chunk(num_views, dim=0)))

    @torch.jit.export
    def fuse_views(self, views: list[torch.Tensor]) -> torch.Tensor:
        fused = from_view(views[0], self.spatial_dims_order[0])
        for k in range(1, len(self.spatial_dims_order)):
            fused = fused + from_view(views[k], self.spatial_dims_order[k])
        return self.conv(self.act(self.norm(self.conv1(fused))))

    def foldable(self) -> bool:
        """Whether :meth:`head_folded` computes the head of ``fuse_views``: plain 1x1x1 convs (no dropout), instance
        norm without running statistics, an elementwise activation."""
        convs_ok = foldable_conv(self.conv1) and foldable_conv(self.conv)
        return convs_ok and foldable_norm(self.norm) and isinstance(self.act, ELEMENTWISE_ACTIVATIONS)

    def head_folded(self, fused: torch.Tensor, batch: int, pool: list[torch.Tensor] | None = None) -> torch.Tensor:
        """The head (conv, norm, activation, conv) on the already summed views, folded as the view of slice axis 2
        (:mod:`monai_ext.networks.blocks.folded`): ``(N * D, C, H, W)`` channels-last, ``N = batch`` -> ``(N * D,
        out, H, W)``. Valid when :meth:`foldable`. With ``pool`` (inference only) the first conv overwrites
        ``fused``."""
        conv1 = self.conv1.conv
        conv = self.conv.conv
        inplace = can_overwrite()
        pooled = pool if inplace else None
        out = conv_folded(fused, batch, conv1.weight, conv1.bias, conv1.stride, conv1.padding, pooled, inplace)
        norm = self.norm
        out = self.act(instance_norm_folded(out, batch, norm.weight, norm.bias, norm.eps, inplace))
        return conv_folded(out, batch, conv.weight, conv.bias, conv.stride, conv.padding, pooled)
