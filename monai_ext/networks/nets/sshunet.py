"""SSH-UNet: a 2D DynUNet with slice shifts, run on three orthogonal views with shared weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet
from torch import nn
from torch.nn.functional import interpolate

from monai_ext.networks.blocks.multi_view import NUM_VIEWS, MultiViewFuse, to_view, views_stackable
from monai_ext.networks.blocks.slice_shift import SliceShift
from monai_ext.networks.blocks.slice_shift_block import SHIFT_POSITIONS, SliceShiftResBlock, SliceShiftUpBlock

__all__ = ["SSHUNet", "SliceShiftUNet"]


class SSHUNet(DynUNet):
    """Slice SHift UNet (Ugwu et al., 2023, https://arxiv.org/abs/2307.09148; code: github.com/cugwu/ssh-unet).

    A DynUNet with ``(1, 3, 3)`` kernels (2D convolutions on every slice) whose residual blocks shift a
    quarter of the channels to each neighbouring slice (:class:`~monai_ext.networks.blocks.SliceShift`).
    The volume is seen along its three axes by the same weights: the three views are stacked in the batch,
    processed, permuted back, summed and mapped to logits by a small head
    (:class:`~monai_ext.networks.blocks.MultiViewFuse`).

    Defaults reproduce the released configuration: filters ``[32, 64, 128, 256, 320]``, strides
    ``[1, 2, 2, 2, 2]``, transposed-conv bias, residual blocks in the decoder with the residual added before
    ``norm2``, shifts after conv1 and conv2 in the input block, the encoder levels ``shift_levels``, the
    bottleneck and the matching decoder levels (the release's rule: the top decoder block does not shift).
    With 14 classes this is 6,487,822 parameters, and the authors' weights load with ``load_state_dict``.

    Beyond the release: inputs whose three sides differ are accepted (the shared trunk then runs once per
    view instead of on a stacked batch; the result is the same), and ``shift_position="before_conv"`` gives
    the paper's placement.

    Args:
        in_channels: input channels.
        out_channels: output channels (classes, background included).
        kernel_size: per level; default ``(1, 3, 3)`` everywhere.
        strides: per level; default ``[1, 2, 2, 2, 2]``. Every spatial size must be divisible by their product.
        filters: per level; default ``[32, 64, 128, 256, 320]`` (truncated to the number of levels).
        shift_levels: encoder levels below the input block that shift (0 = first down-sampling block).
            Default: all of them.
        shift_bottleneck: shift in the bottleneck.
        shift_decoder: shift in the decoder blocks matching ``shift_levels``.
        fold_div: ``C // fold_div`` channels move each way.
        shift_position: ``"after_conv"`` (release) or ``"before_conv"`` (paper text).
        norm_name, act_name, dropout: as for DynUNet.
        deep_supervision, deep_supr_num: as for DynUNet; in training the output is stacked
            ``(B, 1 + deep_supr_num, out_channels, D, H, W)``.

    Shapes:
        input ``(B, in_channels, D, H, W)``; output ``(B, out_channels, D, H, W)``.

    Raises:
        ValueError: for a wrong number of channels, a non-5D input, or sizes not divisible by the strides.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        kernel_size: Sequence[Sequence[int] | int] | None = None,
        strides: Sequence[Sequence[int] | int] | None = None,
        filters: Sequence[int] | None = None,
        shift_levels: Sequence[int] | None = None,
        shift_bottleneck: bool = True,
        shift_decoder: bool = True,
        fold_div: int = 4,
        shift_position: str = "after_conv",
        norm_name: tuple | str = ("INSTANCE", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        dropout: tuple | str | float | None = None,
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
    ) -> None:
        strides = list(strides) if strides is not None else [1, 2, 2, 2, 2]
        kernel_size = list(kernel_size) if kernel_size is not None else [(1, 3, 3)] * len(strides)
        filters = list(filters) if filters is not None else [32, 64, 128, 256, 320]
        if shift_position not in SHIFT_POSITIONS:
            raise ValueError(f"shift_position must be one of {SHIFT_POSITIONS}, got {shift_position!r}.")
        if len(filters) < len(strides):
            raise ValueError(f"filters needs one entry per level ({len(strides)} levels), got {len(filters)}.")
        num_down = len(strides) - 2
        self.shift_levels = sorted(set(range(num_down) if shift_levels is None else shift_levels))
        if any(not 0 <= level < num_down for level in self.shift_levels):
            raise ValueError(
                f"shift_levels must lie in [0, {num_down - 1}] for {len(strides)} levels, got {shift_levels}."
            )
        self.shift_bottleneck = shift_bottleneck
        self.shift_decoder = shift_decoder
        self.fold_div = fold_div
        self.shift_position = shift_position
        super().__init__(
            spatial_dims=3,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernel_size,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=filters,
            dropout=dropout,
            norm_name=norm_name,
            act_name=act_name,
            deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num,
            res_block=True,
            trans_bias=True,
        )
        if not deep_supervision:
            self.deep_supervision_heads = nn.ModuleList()  # so that TorchScript sees the attribute
        # DynUNet's recursive skip_layers alias the blocks above; forward walks the blocks directly, so the alias
        # goes, and checkpoints that carry it (the release's, DynUNet's) still load: see _drop_skip_layers.
        del self.skip_layers
        self._register_load_state_dict_pre_hook(self._drop_skip_layers)
        self.num_views = NUM_VIEWS
        self._divisor = [1, 1, 1]
        for stride in strides:
            s = [stride] * 3 if isinstance(stride, int) else list(stride)
            self._divisor = [a * b for a, b in zip(self._divisor, s)]

    @staticmethod
    def _drop_skip_layers(state_dict, prefix, *args) -> None:
        for key in [k for k in state_dict if k.startswith(prefix + "skip_layers.")]:
            del state_dict[key]

    def _shift(self, enabled: bool) -> nn.Module | None:
        return SliceShift(slice_dim=2, fold_div=self.fold_div) if enabled else None

    def _res_block(self, in_c: int, out_c: int, kernel, stride, shift: bool) -> SliceShiftResBlock:
        return SliceShiftResBlock(
            3, in_c, out_c, kernel, stride, self.norm_name, self.act_name, self.dropout,
            shift=self._shift(shift), shift_position=self.shift_position,
        )  # fmt: skip

    # DynUNet builds its topology from these hooks.
    def get_input_block(self):
        return self._res_block(self.in_channels, self.filters[0], self.kernel_size[0], self.strides[0], True)

    def get_bottleneck(self):
        return self._res_block(
            self.filters[-2], self.filters[-1], self.kernel_size[-1], self.strides[-1], self.shift_bottleneck
        )

    def get_downsamples(self):
        return nn.ModuleList(
            self._res_block(in_c, out_c, kernel, stride, level in self.shift_levels)
            for level, (in_c, out_c, kernel, stride) in enumerate(
                zip(self.filters[:-2], self.filters[1:-1], self.kernel_size[1:-1], self.strides[1:-1])
            )
        )

    def get_upsamples(self):
        num_down = len(self.strides) - 2
        blocks = []
        ins, outs = self.filters[1:][::-1], self.filters[:-1][::-1]
        kernels, ups = self.kernel_size[1:][::-1], self.upsample_kernel_size[::-1]
        for j, (in_c, out_c, kernel, up) in enumerate(zip(ins, outs, kernels, ups)):
            # the release pairs decoder block j (counted from the bottom) with encoder level num_down - 1 - j
            shift = self.shift_decoder and (num_down - 1 - j) in self.shift_levels
            blocks.append(
                SliceShiftUpBlock(
                    3,
                    in_c,
                    out_c,
                    kernel,
                    up,
                    self.norm_name,
                    self.act_name,
                    self.dropout,
                    trans_bias=True,
                    shift=self._shift(shift),
                    shift_position=self.shift_position,
                )  # fmt: skip
            )
        return nn.ModuleList(blocks)

    def get_output_block(self, idx: int):
        return MultiViewFuse(3, self.filters[idx], self.out_channels, dropout=self.dropout)

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder-decoder on one batch; returns the decoder outputs, the finest last."""
        skips = [self.input_block(x)]
        for down in self.downsamples:
            skips.append(down(skips[-1]))
        out = self.bottleneck(skips[-1])
        decoded: list[torch.Tensor] = []
        for j, up in enumerate(self.upsamples):
            out = up(out, skips[len(skips) - 1 - j])
            decoded.append(out)
        return decoded

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5:
            raise ValueError(f"SSHUNet expects a 5D input (B, C, D, H, W), got shape {list(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"SSHUNet was built for {self.in_channels} input channel(s), got {x.shape[1]}.")
        for axis in range(3):
            if x.shape[2 + axis] % self._divisor[axis] != 0:
                raise ValueError(
                    f"SSHUNet input size {list(x.shape[2:])} is not divisible by {self._divisor} "
                    "(the product of the strides); pad or crop it, e.g. with monai.transforms.DivisiblePad."
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        num_levels = len(self.upsamples)
        if views_stackable(x):
            stacked = self._trunk(torch.cat([to_view(x, k) for k in range(self.num_views)], dim=0))
            per_view = [list(level.chunk(self.num_views, dim=0)) for level in stacked]
        else:
            runs = [self._trunk(to_view(x, k)) for k in range(self.num_views)]
            per_view = [[runs[k][j] for k in range(self.num_views)] for j in range(num_levels)]
        out = self.output_block.fuse_views(per_view[num_levels - 1])
        if self.training and self.deep_supervision:
            out_all = [out]
            for i, head in enumerate(self.deep_supervision_heads):
                out_all.append(interpolate(head.fuse_views(per_view[num_levels - 2 - i]), out.shape[2:]))
            return torch.stack(out_all, dim=1)
        return out


SliceShiftUNet = SSHUNet
