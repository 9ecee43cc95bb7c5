"""SSH-UNet: a 2D U-Net of MONAI DynUNet blocks with slice shifts, run on orthogonal views with shared weights."""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.networks.nets import DynUNet
from torch import nn

from monai_ext.networks.blocks.folded import (
    can_overwrite,
    release_buffer,
    take_buffer,
    to_folded,
    unfold,
    unfold_contiguous,
)
from monai_ext.networks.blocks.multi_view import (
    MULTI_VIEW_ORDER,
    MultiViewFuse,
    from_view,
    to_view,
    view_axes,
    views_stackable,
)
from monai_ext.networks.blocks.slice_shift import SliceShift
from monai_ext.networks.blocks.slice_shift_block import SHIFT_POSITIONS, SliceShiftResBlock, SliceShiftUpBlock
from monai_ext.networks.checks import check_input
from monai_ext.networks.compat import load_sshunet_release
from monai_ext.networks.layout import check_spatial_axes
from monai_ext.networks.registry import NetworkEntry, register_network

__all__ = ["SSH_UNET_PATCH", "SSHUNet", "SliceShiftUNet", "sshunet_inferer"]

SSH_UNET_PATCH = (96, 96, 96)
"""The paper's training patch ``(H, W, D)`` (AMOS and BTCV), also the bundle's sliding-window ROI."""


def _per_axis(value: Sequence[int] | int, name: str, level: int) -> list[int]:
    if isinstance(value, int):
        return [value] * 3
    if len(value) != 3:
        raise ValueError(f"{name}[{level}] must be an int or 3 values (one per axis of a view), got {value!r}.")
    return [int(v) for v in value]


class SSHUNet(nn.Module):
    """Slice SHift UNet (Ugwu et al., 2023, https://arxiv.org/abs/2307.12853; code: github.com/cugwu/ssh-unet).

    A U-Net of MONAI DynUNet blocks whose convolutions are 2D (``(3, 3, 1)`` kernels: in-slice, slices on the last
    axis) and whose residual blocks shift a quarter of the channels to each neighbouring slice
    (:class:`~monai_ext.networks.blocks.SliceShiftResBlock`). The volume is seen along several axes by the same
    weights: each view (:func:`~monai_ext.networks.blocks.to_view`) puts its slice axis last, the views run through
    the shared encoder-decoder (stacked in the batch when their shapes agree, one after the other otherwise),
    and :class:`~monai_ext.networks.blocks.MultiViewFuse` permutes them back, sums them and maps them to logits.

    Defaults reproduce the released configuration: filters ``[32, 64, 128, 256, 320]``, strides
    ``[1, 2, 2, 2, 2]``, transposed-conv bias, residual blocks in the decoder with the residual added before
    ``norm2``, shifts after conv1 and conv2 in the input block, the encoder levels ``shift_levels``, the
    bottleneck and the matching decoder levels (the release's rule: the top decoder block does not shift), and the
    three views ``(0, 1, 2)``. With 14 classes this is 6,487,822 parameters. The authors' checkpoints (their views
    hold the slices first, with ``(1, 3, 3)`` kernels) load through
    :func:`monai_ext.networks.compat.load_sshunet_release`; the network then computes the release's output on the
    same ``(B, C, H, W, D)`` volumes.

    The computation runs as 2D: each view's slices are folded into the batch, channels-last
    (:mod:`monai_ext.networks.blocks.folded`), the ``Conv3d`` / ``ConvTranspose3d`` modules hold the weights that
    ``F.conv2d`` / ``F.conv_transpose2d`` apply, instance norm keeps its statistics over the whole volume, the shift
    moves channels between neighbouring batch entries, and the views run one after the other, each added into one
    fused tensor. This equals the 3D modules' computation within fp32 round-off and is used whenever every kernel
    spans one slice, every norm is an instance norm and there is no dropout (:attr:`folded`); other configurations
    run the 3D modules (views stacked in the batch when their shapes agree).

    The state-dict keys are the release's and DynUNet's (``input_block``, ``downsamples``, ``bottleneck``,
    ``upsamples``, ``output_block``, ``deep_supervision_heads``), without DynUNet's ``skip_layers`` aliases.

    Beyond the release: inputs whose views differ in shape are accepted (the shared trunk then runs once per view;
    the result equals the stacked path), ``shift_position="before_conv"`` gives the placement of the paper's Sec. 3.2
    (shift, then the 2D convolution), and the ablations are arguments (registry names in brackets): one view,
    ``spatial_dims_order=(2,)``, is Table 5's 2D+shift (``ssh_unet_2d_shift``); no shift anywhere
    (``shift_input=False, shift_levels=(), shift_bottleneck=False``) is Table 5's 2D with one view
    (``ssh_unet_2d``) and Table 6's shifted fraction 0 with three views (``ssh_unet_multi_view``). The variants keep
    the release's output head.

    Args:
        in_channels: input channels; default 1.
        out_channels: output channels (classes, background included); default 14.
        kernel_size: per level, each an int or 3 values along the axes of a view (slices last, see
            :func:`~monai_ext.networks.blocks.view_axes`); default ``(3, 3, 1)`` everywhere: 2D convolutions.
        strides: per level, each an int or 3 values along the axes of a view (slices last, as the kernels); default
            ``[1, 2, 2, 2, 2]``. Every spatial size must be divisible by the product of the strides along each view
            axis it takes (:attr:`divisor`; 16 on every axis by default).
        filters: per level; default ``[32, 64, 128, 256, 320]`` (truncated to the number of levels).
        spatial_dims_order: the slice axis of each view (distinct spatial axes, 0-2 over ``(H, W, D)``), see
            :func:`~monai_ext.networks.blocks.to_view`; default ``(0, 1, 2)``. ``(2,)`` is one axial view.
        shift_input: shift in the input block.
        shift_levels: encoder levels below the input block that shift (0 = first down-sampling block).
            Default: all of them.
        shift_bottleneck: shift in the bottleneck.
        shift_decoder: shift in the decoder blocks matching ``shift_levels``.
        fold_div: ``C // fold_div`` channels move each way.
        shift_position: ``"after_conv"`` (the release, and the paper's Fig. 1 caption) or ``"before_conv"`` (the
            paper's Sec. 3.2).
        norm_name, act_name, dropout: as for DynUNet.
        deep_supervision: in training mode, also return the outputs of ``deep_supr_num`` coarser decoder levels.
        deep_supr_num: number of extra outputs, 1 to ``len(strides) - 2``.

    Shapes:
        input ``(B, in_channels, H, W, D)``; output ``(B, out_channels, H / s0, W / s0, D / s0)`` with ``s0 =
        strides[0]`` (the input size by default). In training mode with ``deep_supervision`` the output is a list:
        that tensor first, then ``deep_supr_num`` coarser ones, each at its own resolution (as
        ``monai.losses.DeepSupervisionLoss`` takes them).

    Attributes:
        folded: True when the forward pass runs on the folded 2D layout (see above); set at construction.

    Raises:
        ValueError: for inconsistent arguments (kernel and stride lists, filters, shift levels, views,
            ``deep_supr_num``); in ``forward``, a wrong number of channels, a non-5D input, or sizes not
            divisible by the strides (TorchScript builds skip this check).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        kernel_size: Sequence[Sequence[int] | int] | None = None,
        strides: Sequence[Sequence[int] | int] | None = None,
        filters: Sequence[int] | None = None,
        spatial_dims_order: Sequence[int] = MULTI_VIEW_ORDER,
        shift_input: bool = True,
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
        super().__init__()
        strides = list(strides) if strides is not None else [1, 2, 2, 2, 2]
        kernel_size = list(kernel_size) if kernel_size is not None else [(3, 3, 1)] * len(strides)
        filters = list(filters) if filters is not None else [32, 64, 128, 256, 320]
        if len(strides) < 3 or len(kernel_size) != len(strides):
            raise ValueError(
                f"kernel_size and strides need one entry per level and at least 3 levels, got {len(kernel_size)} "
                f"and {len(strides)}."
            )
        if len(filters) < len(strides):
            raise ValueError(f"filters needs one entry per level ({len(strides)} levels), got {len(filters)}.")
        if shift_position not in SHIFT_POSITIONS:
            raise ValueError(f"shift_position must be one of {SHIFT_POSITIONS}, got {shift_position!r}.")
        num_down = len(strides) - 2
        levels = sorted(set(range(num_down) if shift_levels is None else shift_levels))
        if any(not 0 <= level < num_down for level in levels):
            raise ValueError(
                f"shift_levels must lie in [0, {num_down - 1}] for {len(strides)} levels, got {shift_levels}."
            )
        if deep_supervision and not 1 <= deep_supr_num <= num_down:
            raise ValueError(
                f"deep_supr_num must lie in [1, {num_down}] for {len(strides)} levels, got {deep_supr_num}."
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.strides = strides
        self.filters = filters[: len(strides)]
        self.spatial_dims_order = list(check_spatial_axes(spatial_dims_order))
        # the folded path runs the axial view first: its outputs already are the fused layout (no copy to start sums)
        self._fold_order = sorted(self.spatial_dims_order, key=lambda s: s != 2)
        self._shared_pools = {}  # shared_buffers: per thread, the pool and the (shape, dtype, device) that filled it
        self.shift_levels = levels
        self.deep_supervision = deep_supervision
        self.deep_supr_num = deep_supr_num
        for level, kernel in enumerate(kernel_size):
            _per_axis(kernel, "kernel_size", level)  # raises for a kernel without one value per axis
        per_level = [_per_axis(stride, "strides", level) for level, stride in enumerate(strides)]
        view_divisor = [math.prod(axis) for axis in zip(*per_level)]  # per axis of a view, slices last
        # every volume axis takes, in each view, the place view_axes gives it
        self.divisor = [
            math.lcm(*(view_divisor[view_axes(s).index(axis)] for s in self.spatial_dims_order)) for axis in range(3)
        ]

        def shift(enabled: bool) -> SliceShift | None:
            return SliceShift(fold_div=fold_div) if enabled else None

        def res_block(level: int, in_c: int, out_c: int, shifts: bool) -> SliceShiftResBlock:
            return SliceShiftResBlock(
                3, in_c, out_c, kernel_size[level], strides[level], norm_name, act_name, dropout,
                shift=shift(shifts), shift_position=shift_position,
            )  # fmt: skip

        def up_block(j: int) -> SliceShiftUpBlock:
            # decoder block j (from the bottom) pairs with encoder level num_down - 1 - j; the top one (j = num_down)
            # pairs with the input block and never shifts (the release's rule)
            return SliceShiftUpBlock(
                3, f[-1 - j], f[-2 - j], kernel_size[-1 - j], strides[-1 - j], norm_name, act_name, dropout,
                trans_bias=True, shift=shift(shift_decoder and num_down - 1 - j in levels),
                shift_position=shift_position,
            )  # fmt: skip

        def head(channels: int) -> MultiViewFuse:
            return MultiViewFuse(3, channels, out_channels, self.spatial_dims_order, dropout=dropout)

        f = self.filters
        self.input_block = res_block(0, in_channels, f[0], shift_input)
        self.downsamples = nn.ModuleList(res_block(i + 1, f[i], f[i + 1], i in levels) for i in range(num_down))
        self.bottleneck = res_block(-1, f[-2], f[-1], shift_bottleneck)
        self.upsamples = nn.ModuleList(up_block(j) for j in range(num_down + 1))
        self.output_block = head(f[0])
        self.deep_supervision_heads = nn.ModuleList(
            head(f[i + 1]) for i in range(deep_supr_num if deep_supervision else 0)
        )
        self.apply(DynUNet.initialize_weights)
        blocks = [self.input_block, *self.downsamples, self.bottleneck, *self.upsamples]
        heads = [self.output_block, *self.deep_supervision_heads]
        self.folded = all(block.foldable() for block in blocks) and all(head.foldable() for head in heads)

    def _trunk(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Shared encoder-decoder on views ``(N, C, *view)`` with the 3D modules (the reference path); returns the
        decoder outputs, the finest last."""
        skips = [self.input_block(x)]
        for down in self.downsamples:
            skips.append(down(skips[-1]))
        out = self.bottleneck(skips[-1])
        decoded: list[torch.Tensor] = []
        for j, up in enumerate(self.upsamples):
            out = up(out, skips[len(skips) - 1 - j])
            decoded.append(out)
        return decoded

    def _trunk_folded(
        self, x: torch.Tensor, batch: int, keep: int, pool: list[torch.Tensor] | None
    ) -> list[torch.Tensor]:
        """:meth:`_trunk` on a folded view ``(N * S, C, A, B)`` (channels-last, ``N = batch``, see
        :mod:`monai_ext.networks.blocks.folded`); returns the last ``keep`` decoder outputs, folded, the finest
        last. Each skip is released once its decoder block has used it (given back to ``pool`` when there is one,
        by that block; the decoder outputs not kept go back too)."""
        skips = [self.input_block.forward_folded(x, batch, pool)]
        for down in self.downsamples:
            skips.append(down.forward_folded(skips[-1], batch, pool))
        out = self.bottleneck.forward_folded(skips[-1], batch, pool)
        num_levels = len(self.upsamples)
        kept: list[torch.Tensor] = []
        for j, up in enumerate(self.upsamples):
            decoded = up.forward_folded(out, skips.pop(), batch, pool)  # with a pool, the block releases the skip
            if j == 0 or j - 1 < num_levels - keep:  # the bottleneck's output, or a decoder output not kept
                release_buffer(pool, out)
            out = decoded
            if j >= num_levels - keep:
                kept.append(out)
        return kept

    def _forward_folded(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The forward pass with 2D convolutions on each view's slices folded into the batch, one view after the
        other, each added into one fused tensor per output level (no view is stacked or kept). In inference the
        views share one pool of buffers (:func:`~monai_ext.networks.blocks.folded.take_buffer`)."""
        batch = x.shape[0]
        num_heads = len(self.deep_supervision_heads) if self.training and self.deep_supervision else 0
        keep = 1 + num_heads
        pool: list[torch.Tensor] | None = None
        if can_overwrite():
            pool = []
            if not torch.jit.is_scripting():
                pool = self._pool_for(x)
        fused: list[torch.Tensor] = []  # per kept level, folded as the view of slice axis 2: (N * D, C, H, W)
        for s in self._fold_order:
            decoded = self._trunk_folded(to_folded(to_view(x, s)), batch, keep, pool)
            self._add_view(fused, decoded, s, batch, pool)
        logits = self.output_block.head_folded(fused[keep - 1], batch, pool)
        outputs = [unfold_contiguous(logits, batch)]
        for i, head in enumerate(self.deep_supervision_heads):
            if i < num_heads:
                outputs.append(unfold(head.head_folded(fused[keep - 2 - i], batch), batch).contiguous())
        release_buffer(pool, logits)  # with the fused sums, back to the pool (for the next call sharing it)
        for level in fused:
            release_buffer(pool, level)
        if num_heads > 0:
            return outputs
        return outputs[0]

    def _add_view(
        self,
        fused: list[torch.Tensor],
        decoded: list[torch.Tensor],
        spatial_dim: int,
        batch: int,
        pool: list[torch.Tensor] | None,
    ) -> None:
        """Add the decoder outputs of the view of slice axis ``spatial_dim`` into ``fused`` (the first view starts
        it), in place where :func:`~monai_ext.networks.blocks.folded.can_overwrite` allows; with ``pool`` the first
        view's copy comes from it and the decoder outputs go back to it."""
        first = len(fused) == 0
        for i, level in enumerate(decoded):
            volume = from_view(unfold(level, batch), spatial_dim)  # (N, C, H, W, D)
            if first and pool is not None:
                if spatial_dim == 2:  # the axial view already is the fused layout: keep its buffer
                    fused.append(level)
                    continue
                n, c, h, w, d = volume.shape
                start = take_buffer(pool, [n * d, c, h, w], level)
                unfold(start, batch).copy_(volume)
                fused.append(start)
            elif first:
                fused.append(to_folded(volume))
            elif can_overwrite():
                unfold(fused[i], batch).add_(volume)
            else:
                fused[i] = to_folded(unfold(fused[i], batch) + volume)
            release_buffer(pool, level)

    def _forward_3d(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """The forward pass with the 3D modules (``(3, 3, 1)`` Conv3d), views stacked in the batch when their
        shapes agree: the reference for :meth:`_forward_folded`, and the path for configurations it does not
        cover."""
        num_views = len(self.spatial_dims_order)
        num_levels = len(self.upsamples)
        if views_stackable(x, self.spatial_dims_order):
            stacked = self._trunk(torch.cat([to_view(x, s) for s in self.spatial_dims_order], dim=0))
            per_level = [list(level.chunk(num_views, dim=0)) for level in stacked]
        else:
            runs = [self._trunk(to_view(x, s)) for s in self.spatial_dims_order]
            per_level = [[run[j] for run in runs] for j in range(num_levels)]
        out = self.output_block.fuse_views(per_level[num_levels - 1])
        if self.training and self.deep_supervision:
            outputs = [out]
            for i, head in enumerate(self.deep_supervision_heads):
                outputs.append(head.fuse_views(per_level[num_levels - 2 - i]))
            return outputs
        return out

    @torch.jit.unused
    def _pool_for(self, x: torch.Tensor) -> list[torch.Tensor]:
        """This thread's pool of :meth:`shared_buffers` (emptied if it was filled for another shape, dtype or
        device), or a new one for this call alone."""
        if threading.get_ident() not in self._shared_pools:
            return []
        pool, filled_by = self._shared_pools[threading.get_ident()]
        if filled_by != [x.shape, x.dtype, x.device]:
            pool.clear()
            filled_by[:] = [x.shape, x.dtype, x.device]
        return pool

    @contextlib.contextmanager
    def shared_buffers(self) -> Iterator[None]:
        """Within this context, inference calls (where nothing is recorded for autograd) share one pool of buffers
        for their intermediate maps, kept from one call to the next and freed on exit.

        A sliding-window inferer calls the network once per window with the same window size, and each call asks
        for the same buffers: shared, the later calls reuse the memory of the first instead of mapping fresh pages
        (with glibc's default allocator, every map above 32 MiB is a new mapping whose pages fault on first touch,
        about 1 GiB per 96^3 window here). Between calls the pool stays allocated; a call with another input shape,
        dtype or device empties it first. Each thread has its own pool (calls running at the same time in other
        threads do not share it); nested contexts share the outer one; TorchScript builds ignore it.
        :class:`~monai_ext.inferers.SharedBuffersInferer` enters it around any inferer.

        Example::

            with net.shared_buffers(), torch.no_grad():
                out = SlidingWindowInferer((96, 96, 96))(volume, net)
        """
        thread = threading.get_ident()
        if thread in self._shared_pools:  # nested: the outer context's pool
            yield
            return
        self._shared_pools[thread] = ([], [])
        try:
            yield
        finally:
            del self._shared_pools[thread]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not torch.jit.is_scripting():
            check_input(x, "SSHUNet", self.in_channels, 3, divisor=self.divisor)
        if self.folded:
            return self._forward_folded(x)
        return self._forward_3d(x)


SliceShiftUNet = SSHUNet


def sshunet_inferer(**overrides: Any) -> Inferer:
    """The ssh_unet bundle's whole-volume inferer (``configs/inference.json``): MONAI's
    :class:`~monai.inferers.SlidingWindowInferer` with :data:`SSH_UNET_PATCH` windows ``(H, W, D)``,
    ``sw_batch_size=1``, ``overlap=0.5``, ``mode="gaussian"``, inside a
    :class:`~monai_ext.inferers.SharedBuffersInferer` (the windows reuse one pool of buffers, see
    :meth:`SSHUNet.shared_buffers`; the sliding window is its ``inferer`` attribute).

    The windows are multiples of 16 (smaller volumes are padded to a window by MONAI), so every window is a size
    :class:`SSHUNet` takes with its default strides. ``overrides`` replace any of these settings (any other
    SlidingWindowInferer argument too).
    """
    from monai_ext.inferers import SharedBuffersInferer  # here, not at the top: a network module needs no inferer

    settings: dict[str, Any] = {"roi_size": SSH_UNET_PATCH, "sw_batch_size": 1, "overlap": 0.5, "mode": "gaussian"}
    return SharedBuffersInferer(SlidingWindowInferer(**{**settings, **overrides}))


def _register(name: str, title: str, row: str, defaults: dict[str, Any]) -> None:
    """Register the SSHUNet built with ``defaults``, the paper's table row ``row``."""
    main = name == "ssh_unet"
    register_network(
        NetworkEntry(
            name=name,
            builder=SSHUNet,
            kind="2d",
            title=title,
            paper=f"Ugwu et al. 2023, {row}",
            defaults=defaults,
            inferer=sshunet_inferer,
            bundle="ssh_unet",
            loader=load_sshunet_release if main else None,
            variant_of=None if main else "ssh_unet",
            patch=SSH_UNET_PATCH,
            method=1,
        )
    )


_register("ssh_unet", "SSH-UNet", "Table 5: 2D+shift+multi-view", {})  # the release and the bundle
_register("ssh_unet_2d_shift", "SSH-UNet (2D+shift)", "Table 5: 2D+shift", {"spatial_dims_order": (2,)})
_NO_SHIFT = {"shift_input": False, "shift_levels": (), "shift_bottleneck": False}
_register("ssh_unet_2d", "SSH-UNet (2D)", "Table 5: 2D", {"spatial_dims_order": (2,), **_NO_SHIFT})
_register("ssh_unet_multi_view", "SSH-UNet (multi-view, no shift)", "Table 6: shifted fraction 0", _NO_SHIFT)
