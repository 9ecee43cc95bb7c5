"""DynUNet residual and up-sampling blocks with a :class:`SliceShift` inside, and a converter for existing nets."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock, get_conv_layer
from torch import nn

from monai_ext.networks.blocks.folded import (
    ELEMENTWISE_ACTIVATIONS,
    add_projection,
    can_overwrite,
    conv_folded,
    conv_transpose_folded,
    foldable_conv,
    foldable_norm,
    instance_norm_folded,
    one_channel_projection,
    release_buffer,
    take_buffer,
)
from monai_ext.networks.blocks.slice_shift import SliceShift
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM

__all__ = ["SHIFT_POSITIONS", "SliceShiftResBlock", "SliceShiftUpBlock", "add_slice_shift"]

SHIFT_POSITIONS = ("after_conv", "before_conv")


class SliceShiftResBlock(nn.Module):
    """MONAI's DynUNet residual block (two convs + norm + activation) with a slice shift at each conv.

    Part of SSH-UNet (Ugwu et al. 2023, https://arxiv.org/abs/2307.12853). With ``shift_position="after_conv"``
    (SSH-UNet release; the paper's Fig. 1 caption: convolve, then shift) the shift follows conv1 and conv2; with
    ``"before_conv"`` (the paper's Sec. 3.2, and TSM: shift, then convolve) it precedes them.
    ``shift=None`` gives a plain residual block.

    Two orders of the residual sum exist and both are kept:
    ``residual_before_norm=True`` (SSH-UNet release): ``act(norm2(conv2(.) + residual))``;
    ``False`` (MONAI ``UnetResBlock``): ``act(norm2(conv2(.)) + residual)``.

    The layers are those of a MONAI :class:`~monai.networks.blocks.dynunet_block.UnetResBlock`, built from the
    arguments or taken over from ``layers``; the parameter names are MONAI's (``conv1``, ``conv2``, ``norm1``,
    ``norm2`` and, when the channels or the stride change, ``conv3``, ``norm3``), so its state dicts load as
    they are.

    Args:
        spatial_dims: number of spatial dimensions.
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: convolution kernel size, e.g. ``(3, 3, 1)`` for 2D convs on ``(B, C, H, W, D)`` with the
            slices on the last axis.
        stride: stride of conv1 and of the residual projection.
        norm_name: MONAI norm factory name and arguments; default the release's ``("INSTANCE", {"affine": True})``.
        act_name: MONAI activation factory name and arguments.
        dropout: dropout of the convs.
        shift: the shift module (e.g. :class:`SliceShift`), or None for no shift.
        shift_position: ``"after_conv"`` or ``"before_conv"``.
        residual_before_norm: see above.
        layers: an existing ``UnetResBlock`` whose layers this block takes over (shared, not copied) instead of
            building new ones; its channels, kernel size and stride must be the ones given. Default: build them.
            :meth:`from_res_block` fills the arguments in from the block.

    Shapes:
        input ``(B, in_channels, *spatial)``, output ``(B, out_channels, *spatial / stride)``.

    Raises:
        ValueError: for an unknown ``shift_position``, or ``layers`` whose channels, kernel size or stride differ
            from the arguments.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        stride: Sequence[int] | int,
        norm_name: tuple | str = ("INSTANCE", {"affine": True}),
        act_name: tuple | str = ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        dropout: tuple | str | float | None = None,
        shift: nn.Module | None = None,
        shift_position: str = "after_conv",
        residual_before_norm: bool = True,
        layers: UnetResBlock | None = None,
    ) -> None:
        super().__init__()
        if shift_position not in SHIFT_POSITIONS:
            raise ValueError(f"shift_position must be one of {SHIFT_POSITIONS}, got {shift_position!r}.")
        if layers is None:
            layers = UnetResBlock(
                spatial_dims, in_channels, out_channels, kernel_size, stride, norm_name, act_name, dropout
            )
        else:
            given = (in_channels, out_channels, _as_tuple(kernel_size, spatial_dims), _as_tuple(stride, spatial_dims))
            if _geometry(layers) != given:
                raise ValueError(
                    f"layers has (in_channels, out_channels, kernel_size, stride) = {_geometry(layers)}, but "
                    f"{given} were given; build the block with SliceShiftResBlock.from_res_block(layers, shift)."
                )
        self.conv1, self.conv2, self.lrelu, self.norm1, self.norm2 = (
            layers.conv1, layers.conv2, layers.lrelu, layers.norm1, layers.norm2,
        )  # fmt: skip
        self.conv3 = getattr(layers, "conv3", None)
        self.norm3 = getattr(layers, "norm3", None)
        self.shift = shift if shift is not None else _NoShift()
        self.shift_before = shift_position == "before_conv"
        self.residual_before_norm = residual_before_norm

    @classmethod
    def from_res_block(
        cls, block: UnetResBlock, shift: nn.Module | None, shift_position: str = "after_conv"
    ) -> SliceShiftResBlock:
        """A block that runs the layers of an existing MONAI ``UnetResBlock`` (shared, not copied) with ``shift``,
        in MONAI's residual order (``residual_before_norm=False``): without a shift it computes what ``block``
        computes."""
        conv = block.conv1.conv
        return cls(
            conv.weight.dim() - 2, conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
            shift=shift, shift_position=shift_position, residual_before_norm=False, layers=block,
        )  # fmt: skip

    def foldable(self) -> bool:
        """Whether :meth:`forward_folded` computes what ``forward`` computes: one-slice convolutions, instance norm
        over the volume, an elementwise activation, no dropout, and no shift or a :class:`SliceShift` along the
        last axis."""
        convs = [self.conv1, self.conv2] + ([self.conv3] if self.conv3 is not None else [])
        norms = [self.norm1, self.norm2] + ([self.norm3] if self.norm3 is not None else [])
        shift_ok = isinstance(self.shift, _NoShift) or (
            isinstance(self.shift, SliceShift) and self.shift.spatial_dim == 2
        )
        return (
            all(foldable_conv(conv) for conv in convs)
            and all(foldable_norm(norm) for norm in norms)
            and isinstance(self.lrelu, ELEMENTWISE_ACTIVATIONS)
            and shift_ok
        )

    def forward_folded(
        self, inp: torch.Tensor, batch: int, pool: list[torch.Tensor] | None = None, consume: bool = False
    ) -> torch.Tensor:
        """``forward`` on a folded view (:mod:`monai_ext.networks.blocks.folded`): ``(N * S, C_in, A, B)``
        channels-last, ``N = batch`` -> ``(N * S', C_out, A', B')``. Valid when :meth:`foldable`.

        ``pool`` (inference only, see :func:`~monai_ext.networks.blocks.folded.take_buffer`): the output and the
        residual branch come from it, the second convolution and the shifts run in place, and the residual branch's
        buffer goes back to it. ``inp`` is left intact unless ``consume``: then a same-size residual convolution
        writes over its first channels once the first convolution has read it."""
        inplace = can_overwrite()
        conv1 = self.conv1.conv
        conv2 = self.conv2.conv
        norm1 = self.norm1
        norm2 = self.norm2
        pooled = pool is not None and inplace and not self.shift_before
        # pooled, the convolutions write their outputs shifted (no pass of their own for the shifts)
        moving = self.shift.groups(conv1.out_channels)
        written: list[tuple[int, int, int]] | None = moving if pooled and len(moving) > 0 else None
        out = self.shift.forward_folded(inp, batch) if self.shift_before else inp
        out = conv_folded(
            out, batch, conv1.weight, conv1.bias, conv1.stride, conv1.padding, pool if pooled else None, shift=written
        )
        if not self.shift_before and written is None:
            out = self.shift.forward_folded(out, batch, pooled)
        out = self.lrelu(instance_norm_folded(out, batch, norm1.weight, norm1.bias, norm1.eps, inplace))
        if self.shift_before:
            out = self.shift.forward_folded(out, batch)
        out = conv_folded(
            out, batch, conv2.weight, conv2.bias, conv2.stride, conv2.padding, pool if pooled else None, pooled,
            shift=written,
        )  # fmt: skip
        if not self.shift_before and written is None:
            out = self.shift.forward_folded(out, batch, pooled)
        residual = inp
        projection: tuple[torch.Tensor, torch.Tensor] | None = None
        norm3 = self.norm3
        if self.conv3 is not None:
            conv3 = self.conv3.conv
            pointwise = conv3.stride == (1, 1, 1) and conv3.kernel_size == (1, 1, 1)
            if inplace and pointwise and conv3.in_channels == 1 and norm3 is not None:  # an affine map of the input
                projection = one_channel_projection(inp, batch, conv3.weight, norm3.weight, norm3.bias, norm3.eps)
            else:
                over: torch.Tensor | None = None
                if pooled and consume and pointwise:
                    over = inp[:, : conv3.out_channels]
                residual = conv_folded(
                    residual, batch, conv3.weight, conv3.bias, conv3.stride, conv3.padding, pool if pooled else None,
                    False, over,
                )  # fmt: skip
                if norm3 is not None:
                    residual = instance_norm_folded(residual, batch, norm3.weight, norm3.bias, norm3.eps, inplace)
        if self.residual_before_norm:
            if projection is not None:  # without its constant per channel, which norm2 removes
                out = add_projection(out, inp, batch, projection[0], None)
            else:
                out = out.add_(residual) if inplace else out + residual
            out = self.lrelu(instance_norm_folded(out, batch, norm2.weight, norm2.bias, norm2.eps, inplace))
        else:
            out = instance_norm_folded(out, batch, norm2.weight, norm2.bias, norm2.eps, inplace)
            if projection is not None:
                out = self.lrelu(add_projection(out, inp, batch, projection[0], projection[1]))
            else:
                out = self.lrelu(out + residual)
        if pooled and self.conv3 is not None and projection is None and not consume:
            release_buffer(pool, residual)
        return out

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


class _NoShift(nn.Identity):
    """No shift (``forward`` and ``forward_folded`` return their input, no channel group moves)."""

    def groups(self, channels: int) -> list[tuple[int, int, int]]:
        return []

    def forward_folded(self, x: torch.Tensor, batch: int, inplace: bool = False) -> torch.Tensor:
        return x


def _as_tuple(value: Sequence[int] | int, spatial_dims: int) -> tuple[int, ...]:
    return tuple(int(v) for v in value) if isinstance(value, Sequence) else (int(value),) * spatial_dims


def _geometry(block: UnetResBlock) -> tuple[int, int, tuple[int, ...], tuple[int, ...]]:
    conv = block.conv1.conv
    return conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride)


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

    Raises:
        ValueError: for an unknown ``shift_position``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel_size: Sequence[int] | int,
        upsample_kernel_size: Sequence[int] | int,
        norm_name: tuple | str = ("INSTANCE", {"affine": True}),
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

    def foldable(self) -> bool:
        """Whether :meth:`forward_folded` computes what ``forward`` computes (see
        :meth:`SliceShiftResBlock.foldable`; the transposed conv's kernel must equal its stride along the slices)."""
        return foldable_conv(self.transp_conv, transposed=True) and self.conv_block.foldable()

    def forward_folded(
        self, inp: torch.Tensor, skip: torch.Tensor, batch: int, pool: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """``forward`` on folded views (:mod:`monai_ext.networks.blocks.folded`), channels-last, ``N = batch``:
        ``(N * S, in_channels, A, B)`` and ``(N * S * u, out_channels, A', B')`` -> the shape of ``skip``. Valid when
        :meth:`foldable`. With ``pool`` (inference only) the transposed convolution and ``skip`` are written into one
        pooled concatenation buffer; ``skip`` goes back to the pool once copied (the caller must not use it
        again), the concatenation buffer after the residual block."""
        up = self.transp_conv.conv
        if pool is None or not can_overwrite():
            up_out = conv_transpose_folded(inp, batch, up.weight, up.bias, up.stride, up.padding, up.output_padding)
            return self.conv_block.forward_folded(torch.cat((up_out, skip), dim=1), batch)
        ns, c, a, b = skip.shape
        both = take_buffer(pool, [ns, 2 * c, a, b], skip)
        conv_transpose_folded(inp, batch, up.weight, up.bias, up.stride, up.padding, up.output_padding, both[:, :c])
        both[:, c:].copy_(skip)
        release_buffer(pool, skip)
        out = self.conv_block.forward_folded(both, batch, pool, True)
        release_buffer(pool, both)
        return out

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(inp), skip), dim=1))


def add_slice_shift(
    network: nn.Module,
    spatial_dim: int = DEFAULT_SPATIAL_DIM,
    fold_div: int = 4,
    shift_position: str = "after_conv",
) -> nn.Module:
    """Turn every MONAI ``UnetResBlock`` inside ``network`` into a :class:`SliceShiftResBlock`, in place.

    Weights are kept (the layers are reused), state-dict keys do not change, and MONAI's residual order is
    preserved, so a plain ``DynUNet(res_block=True)`` becomes a slice-shifting one: with ``(3, 3, 1)`` kernels
    (slices on the last axis, ``spatial_dim=2``) it is a 2D network that sees neighbouring slices. A block held
    by several parents (DynUNet's ``skip_layers`` alias its blocks) becomes one shifting block under all of them.
    Up-sampling blocks of ``DynUNet`` use ``UnetBasicBlock`` and are left alone.

    Args:
        network: any module; it is changed in place and returned.
        spatial_dim: the slice axis of the feature maps ``(B, C, H, W, D)``, 0-2 over the spatial axes; default 2.
        fold_div: ``C // fold_div`` channels move each way.
        shift_position: ``"after_conv"`` (SSH-UNet release) or ``"before_conv"``.

    Returns:
        ``network`` itself (or a new block if ``network`` is itself a ``UnetResBlock``).

    Raises:
        ValueError: if ``network`` contains no ``UnetResBlock`` (e.g. a DynUNet built with ``res_block=False``),
            or for a bad ``spatial_dim``, ``fold_div`` or ``shift_position``.
    """

    def shifting(block: UnetResBlock) -> SliceShiftResBlock:
        return SliceShiftResBlock.from_res_block(block, SliceShift(spatial_dim, fold_div), shift_position)

    if isinstance(network, UnetResBlock):
        return shifting(network)
    converted: dict[int, SliceShiftResBlock] = {}
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, UnetResBlock):
                if id(child) not in converted:
                    converted[id(child)] = shifting(child)
                setattr(parent, name, converted[id(child)])
    if not converted:
        raise ValueError(
            f"add_slice_shift found no MONAI UnetResBlock in {type(network).__name__}; "
            "build the DynUNet with res_block=True."
        )
    return network
