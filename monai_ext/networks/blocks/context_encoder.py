"""The 3D context encoder of SCAA: multi-scale features of a whole volume at half resolution, and a global
descriptor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from torch import nn
from torch.nn import functional as F

from monai_ext.networks.blocks.adaptive_pool import adaptive_avg_pool_by_matrices
from monai_ext.networks.checks import check_input

__all__ = ["ContextEncoder3D", "GlobalDescriptor"]


class ContextEncoder3D(nn.Module):
    """3D context encoder of SCAA: the whole volume downsampled x2, three stages of residual blocks with max-pooling.

    From Tang et al., "Spatial Context-Aware Self-Attention Model For Multi-Organ Segmentation", WACV 2021
    (https://arxiv.org/abs/2012.09279). Layout (the order of pooling and stages is *our reading*, ``docs/scaa.md``):

    - ``x`` average-pooled ``2 x 2 x 2`` (scale 1);
    - stage ``j`` (``j = 1 .. len(channels) - 1``): ``blocks_per_stage`` residual blocks
      (:class:`monai.networks.blocks.UnetResBlock`, ``3^3`` kernels) at scale ``j`` to ``channels[j - 1]``, then a
      ``2 x 2 x 2`` max-pool, giving ``F3D_(j+1)``;
    - ``F3D_(len(channels)+1)``: one more max-pool of the last stage's output (hence its channels equal the last
      stage's: the paper's 24, 32, 64, 64).

    ``F3D_i`` is ``2 ** i`` smaller than ``x`` on every axis, so every axis must be divisible by ``divisor``
    ``= 2 ** (len(channels) + 1)`` (32 by default): pad the volume first (``monai.transforms.DivisiblePad``, or
    :class:`~monai_ext.inferers.PadInferer` around the network). Every operation treats the three spatial axes alike,
    so the maps keep the input's layout (slices last for MONAI's ``(B, C, H, W, D)``).

    Args:
        in_channels: image channels.
        channels: channels of ``F3D_2 .. F3D_5``; the last two must be equal (the last is a pooled copy).
        blocks_per_stage: residual blocks per stage (paper: 2).
        norm_name: normalisation, MONAI factory name and arguments.
        act_name: activation.

    Shapes:
        input ``(B, in_channels, H, W, D)``; output: a list of ``len(channels)`` maps, ``F3D_i`` of shape
        ``(B, channels[i - 2], H / 2^i, W / 2^i, D / 2^i)`` for ``i = 2 ..``.

    Raises:
        ValueError: for bad channel counts; in ``forward`` for a wrong rank, channel count or an axis not divisible
            by ``divisor``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: Sequence[int] = (24, 32, 64, 64),
        blocks_per_stage: int = 2,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        channels = list(channels)
        if in_channels < 1 or len(channels) < 2 or min(channels) < 1 or blocks_per_stage < 1:
            raise ValueError(
                f"need in_channels >= 1, at least two positive channels and blocks_per_stage >= 1, got "
                f"{in_channels}, {channels}, {blocks_per_stage}."
            )
        if channels[-1] != channels[-2]:
            raise ValueError(
                f"the last scale is a max-pooled copy of the one before, so channels[-1] must equal channels[-2], "
                f"got {channels}."
            )
        self.in_channels = in_channels
        self.channels = channels
        self.divisor = 2 ** (len(channels) + 1)
        self.stages = nn.ModuleList()
        prev = in_channels
        for c in channels[:-1]:
            blocks = [
                UnetResBlock(
                    3, prev if i == 0 else c, c, kernel_size=3, stride=1, norm_name=norm_name, act_name=act_name
                )
                for i in range(blocks_per_stage)
            ]
            self.stages.append(nn.Sequential(*blocks))
            prev = c

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not torch.jit.is_scripting():  # plain-Python checks; a scripted encoder skips them
            check_input(x, "ContextEncoder3D", self.in_channels, spatial_dims=3, divisor=self.divisor)
        x = F.avg_pool3d(x, 2)  # scale 1: the whole volume at half resolution
        features: list[torch.Tensor] = []
        for stage in self.stages:
            x = F.max_pool3d(stage(x), 2)
            features.append(x)
        features.append(F.max_pool3d(x, 2))
        return features


class GlobalDescriptor(nn.Module):
    """Global descriptor ``F_globe`` of SCAA: the deepest 3D context map pooled to a fixed grid, flattened and
    projected.

    The paper flattens ``F3D_5``, whose length then depends on the volume size; here it is first adaptively
    average-pooled to ``pool_size^3`` and projected by a linear layer + ReLU to ``out_channels`` (*our reading*,
    so that any volume size works).

    Args:
        in_channels: channels of the 3D map.
        out_channels: length of the descriptor.
        pool_size: side of the pooled grid.

    Shapes:
        input ``(B, in_channels, d, h, w)``; output ``(B, out_channels)``.
    """

    def __init__(self, in_channels: int = 64, out_channels: int = 64, pool_size: int = 2) -> None:
        super().__init__()
        if min(in_channels, out_channels, pool_size) < 1:
            raise ValueError(f"need positive sizes, got {in_channels}, {out_channels}, {pool_size}.")
        self.in_channels = in_channels
        self.pool_size = pool_size
        self.proj = nn.Linear(in_channels * pool_size**3, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_scripting() and (x.dim() != 5 or x.shape[1] != self.in_channels):
            raise ValueError(f"GlobalDescriptor expects (B, {self.in_channels}, d, h, w), got {list(x.shape)}.")
        p = self.pool_size
        exporting = False if torch.jit.is_scripting() else torch.onnx.is_in_onnx_export()
        if exporting:  # the ONNX exporter takes adaptive pooling only where p divides the sizes
            pooled = adaptive_avg_pool_by_matrices(x, [p, p, p]).flatten(1)
        else:
            pooled = F.adaptive_avg_pool3d(x, p).flatten(1)  # (B, C * p^3)
        return torch.relu(self.proj(pooled))
