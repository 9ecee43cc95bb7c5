"""DynUNet residual and up-sampling blocks with a :class:`SliceShift` inside, and a converter for existing nets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from torch import nn

from monai_ext.networks.blocks.slice_shift import SliceShift

__all__ = ["SHIFT_POSITIONS", "SliceShiftResBlock", "SliceShiftUpBlock", "add_slice_shift"]

SHIFT_POSITIONS = ("after_conv", "before_conv")


class SliceShiftResBlock(nn.Module):
    """MONAI's DynUNet residual block (two convs + norm + activation) with a slice shift at each conv.

    With ``shift_position="after_conv"`` (SSH-UNet release) the shift follows conv1 and conv2; with
    ``"before_conv"`` (paper text, TSM) it precedes them. ``shift=None`` gives a plain residual block.

    Two orders of the residual sum exist and both are kept:
    ``residual_before_norm=True`` (SSH-UNet release): ``act(norm2(conv2(.) + residual))``;
    ``False`` (MONAI ``UnetResBlock``): ``act(norm2(conv2(.)) + residual)``.

    Parameter names equal MONAI ``UnetResBlock``'s (``conv1``, ``conv2``, ``norm1``, ``norm2`` and, when the
    channels or the stride change, ``conv3``, ``norm3``), so its state dicts load as they are.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel size, e.g. ``(1, 3, 3)`` for 2D convs on ``(B, C, S, H, W)``.
        stride: stride of conv1 and of the residual projection.
        norm_name: MONAI norm factory name and arguments.
        act_name: MONAI activation factory name and arguments.
        dropout: dropout of the convs.
        shift: the shift module, or None for no shift.
        shift_position: ``"after_conv"`` or ``"before_conv"``.
        residual_before_norm: see above.

    Shapes:
        input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial / stride)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        stride: Sequence[int] | int,
        norm_name: tuple | str,
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        dropout: tuple | str | float | None = None,
        shift: nn.Module | None = None,
        shift_position: str = "after_conv",
        residual_before_norm: bool = True,
    ) -> None:
        super().__init__()
        if shift_position not in SHIFT_POSITIONS:
            raise ValueError(f"shift_position must be one of {SHIFT_POSITIONS}, got {shift_position!r}.")
        conv = {"act": None, "norm": None, "conv_only": False, "dropout": dropout}
        self.conv1 = get_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=kernel_size, stride=stride, **conv
        )
        self.conv2 = get_conv_layer(spatial_dims, out_channels, out_channels, kernel_size=kernel_size, stride=1, **conv)
        self.lrelu = get_act_layer(name=act_name)
        self.norm1 = get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=out_channels)
        self.norm2 = get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=out_channels)
        self.conv3 = None
        self.norm3 = None
        if in_channels != out_channels or not np.all(np.atleast_1d(stride) == 1):
            self.conv3 = get_conv_layer(spatial_dims, in_channels, out_channels, kernel_size=1, stride=stride, **conv)
            self.norm3 = get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=out_channels)
        self.shift = shift if shift is not None else nn.Identity()
        self.shift_before = shift_position == "before_conv"
        self.residual_before_norm = residual_before_norm

    @classmethod
    def from_res_block(
        cls, block: UnetResBlock, shift: nn.Module, shift_position: str = "after_conv"
    ) -> SliceShiftResBlock:
        """Wrap the layers of an existing MONAI ``UnetResBlock`` (shared, not copied), keeping MONAI's order."""
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        if shift_position not in SHIFT_POSITIONS:
            raise ValueError(f"shift_position must be one of {SHIFT_POSITIONS}, got {shift_position!r}.")
        new.conv1, new.conv2, new.lrelu, new.norm1, new.norm2 = (
            block.conv1, block.conv2, block.lrelu, block.norm1, block.norm2,
        )  # fmt: skip
        new.conv3 = getattr(block, "conv3", None)
        new.norm3 = getattr(block, "norm3", None)
        new.shift = shift
        new.shift_before = shift_position == "before_conv"
        new.residual_before_norm = False
        return new

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.shift(inp) if self.shift_before else inp)
        out = self.lrelu(self.norm1(out if self.shift_before else self.shift(out)))
        out = self.conv2(self.shift(out) if self.shift_before else out)
        if not self.shift_before:
            out = self.shift(out)
        residual = inp
        if self.conv3 is not None:
            residual = self.conv3(residual)
        if self.norm3 is not None:
            residual = self.norm3(residual)
        if self.residual_before_norm:
            return self.lrelu(self.norm2(out + residual))
        return self.lrelu(self.norm2(out) + residual)


class SliceShiftUpBlock(nn.Module):
    """DynUNet up-sampling block (transposed conv, concatenation with the skip) followed by a
    :class:`SliceShiftResBlock` (the SSH-UNet release uses residual blocks in the decoder too).

    Args:
        spatial_dims, in_channels, out_channels, kernel_size, norm_name, act_name, dropout: as for
            :class:`SliceShiftResBlock`.
        upsample_kernel_size: kernel and stride of the transposed conv.
        trans_bias: bias in the transposed conv (True in the SSH-UNet release).
        shift, shift_position, residual_before_norm: passed to the residual block.

    Shapes:
        ``forward(inp, skip)``: ``(B, in_channels, *s)`` and ``(B, out_channels, *s * upsample)`` ->
        ``(B, out_channels, *s * upsample)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        upsample_kernel_size: Sequence[int] | int,
        norm_name: tuple | str,
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        dropout: tuple | str | float | None = None,
        trans_bias: bool = False,
        shift: nn.Module | None = None,
        shift_position: str = "after_conv",
        residual_before_norm: bool = True,
    ) -> None:
        super().__init__()
        self.transp_conv = get_conv_layer(
            spatial_dims, in_channels, out_channels, kernel_size=upsample_kernel_size, stride=upsample_kernel_size,
            dropout=dropout, bias=trans_bias, act=None, norm=None, conv_only=False, is_transposed=True,
        )  # fmt: skip
        self.conv_block = SliceShiftResBlock(
            spatial_dims, 2 * out_channels, out_channels, kernel_size, 1, norm_name, act_name, dropout,
            shift=shift, shift_position=shift_position, residual_before_norm=residual_before_norm,
        )  # fmt: skip

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(inp), skip), dim=1))


def add_slice_shift(
    network: nn.Module, slice_dim: int = 2, fold_div: int = 4, shift_position: str = "after_conv"
) -> nn.Module:
    """Turn every MONAI ``UnetResBlock`` inside ``network`` into a :class:`SliceShiftResBlock`, in place.

    Weights are kept (the layers are reused), state-dict keys do not change, and MONAI's residual order is
    preserved, so a plain ``DynUNet(res_block=True)`` becomes a slice-shifting one: with ``(1, 3, 3)``
    kernels it is a 2D network that sees neighbouring slices. Up-sampling blocks of ``DynUNet`` use
    ``UnetBasicBlock`` and are left alone.

    Args:
        network: any module; it is changed in place and returned.
        slice_dim: slice axis of the feature maps (2 for ``(B, C, S, H, W)``).
        fold_div: ``C // fold_div`` channels move each way.
        shift_position: ``"after_conv"`` (SSH-UNet release) or ``"before_conv"``.

    Returns:
        ``network`` itself (or a new block if ``network`` is itself a ``UnetResBlock``).

    Raises:
        ValueError: if ``network`` contains no ``UnetResBlock`` (e.g. a DynUNet built with ``res_block=False``).
    """
    if isinstance(network, UnetResBlock):
        return SliceShiftResBlock.from_res_block(network, SliceShift(slice_dim, fold_div), shift_position)
    replaced = 0
    for name, child in list(network.named_children()):
        if isinstance(child, UnetResBlock):
            setattr(
                network, name, SliceShiftResBlock.from_res_block(child, SliceShift(slice_dim, fold_div), shift_position)
            )
            replaced += 1
        elif any(isinstance(m, UnetResBlock) for m in child.modules()):
            add_slice_shift(child, slice_dim, fold_div, shift_position)
            replaced += 1
    if replaced == 0:
        raise ValueError(
            f"add_slice_shift found no MONAI UnetResBlock in {type(network).__name__}; "
            "build the DynUNet with res_block=True."
        )
    return network
