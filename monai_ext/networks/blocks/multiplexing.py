"""Early-stage multiplexing (ESM): the first part of a backbone run on each mini-group of slices, then fused."""

from __future__ import annotations

import torch
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["ESM", "EarlyStageMultiplexing"]


class EarlyStageMultiplexing(nn.Module):
    """Early-stage multiplexing (ESM) of a thickened 2D input.

    From Yu et al., "Thickened 2D Networks for Efficient 3D Medical Image Segmentation", 2019
    (https://arxiv.org/abs/1904.01150). The ``in_channels`` input channels are split into ``num_groups`` equal
    mini-groups (in the paper: 3 CT slices each, so an ImageNet RGB stem fits them); the same ``early`` module
    (the stem and first stage of the backbone) runs on every mini-group, as one batch; the ``num_groups`` outputs
    are concatenated on channels and compressed by two ``1^n`` convolutions with norm and activation, to half the
    channels, then to ``out_channels`` (our reading of "two convolutions"; the kernel size is not given).

    In another network, e.g. MONAI's ``DynUNet``, ESM can be the input stage with that network's own input block
    as ``early`` (docs/thick2d.md, "Drop-in", shows the two-line wrapper that keeps the fused map).

    Args:
        early: module mapping ``(N, in_channels // num_groups, H, W)`` to ``(N, early_channels, h, w)``;
            its weights are shared by the mini-groups.
        in_channels: channels of the thickened input, a multiple of ``num_groups``.
        num_groups: mini-groups ``G``.
        early_channels: channels ``E`` that ``early`` returns.
        out_channels: channels of the fused map (256 in the paper).
        spatial_dims: 2 (the paper) or 3.
        norm_name: norm of the compression convolutions, MONAI factory name.
        act_name: activation of the compression convolutions, MONAI factory name.

    Shapes:
        input ``(N, in_channels, *spatial)``; returns ``(fused, groups)``: ``fused`` ``(N, out_channels, *s)``,
        ``groups`` ``(N, G, E, *s)`` (the pre-fusion features of each mini-group), where ``s`` is the output size
        of ``early``.

    Raises:
        ValueError: for non-positive counts or ``in_channels`` not a multiple of ``num_groups``; in ``forward``
            for an input of the wrong rank or channel count, or an ``early`` output with other than ``E`` channels.
    """

    def __init__(
        self,
        early: nn.Module,
        in_channels: int,
        num_groups: int,
        early_channels: int,
        out_channels: int = 256,
        spatial_dims: int = 2,
        norm_name: tuple | str = "batch",
        act_name: tuple | str = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if min(in_channels, num_groups, early_channels, out_channels) < 1:
            raise ValueError(
                "in_channels, num_groups, early_channels and out_channels must be positive, got "
                f"{in_channels}, {num_groups}, {early_channels}, {out_channels}."
            )
        if in_channels % num_groups:
            raise ValueError(
                f"in_channels ({in_channels}) must be a multiple of num_groups ({num_groups}): each mini-group gets "
                "the same number of channels (e.g. 3 slices of 1 channel)."
            )
        self.early = early
        self.in_channels = in_channels
        self.num_groups = num_groups
        self.early_channels = early_channels
        self.spatial_dims = spatial_dims
        half = max(num_groups * early_channels // 2, 1)

        def conv(i: int, o: int) -> Convolution:
            return Convolution(spatial_dims, i, o, kernel_size=1, norm=norm_name, act=act_name, bias=False)

        self.compress = nn.Sequential(conv(num_groups * early_channels, half), conv(half, out_channels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"EarlyStageMultiplexing expects (N, {self.in_channels}, *spatial) with {self.spatial_dims} spatial "
                f"axes, got {list(x.shape)}."
            )
        n, g = x.shape[0], self.num_groups
        groups = x.reshape([n * g, self.in_channels // g] + list(x.shape[2:]))  # (N*G, C/G, *spatial)
        features = self.early(groups)  # (N*G, E, *s), shared weights
        if features.shape[1] != self.early_channels:
            raise ValueError(
                f"early returned {features.shape[1]} channels, expected early_channels={self.early_channels}."
            )
        features = features.reshape([n, g, self.early_channels] + list(features.shape[2:]))  # (N, G, E, *s)
        return self.fuse(features), features

    def fuse(self, features: torch.Tensor) -> torch.Tensor:
        """The compression of the mini-groups' pre-fusion features ``(N, G, E, *s)`` (from ``early``, mini-group
        ``g`` on slices ``g * C/G ...``) to the fused map ``(N, out_channels, *s)``.

        An inferer that meets each mini-group in several overlapping groups can run ``early`` once per mini-group
        and call this for every group: the result is ``forward``'s ``fused``.
        """
        n = features.shape[0]
        return self.compress(features.reshape([n, self.num_groups * self.early_channels] + list(features.shape[3:])))


ESM = EarlyStageMultiplexing
