"""SCAA: a 2D U-Net over axial slices guided by a 3D context encoder on the whole volume through multi-slice
feature aggregation (MSFA)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from monai.inferers import Inferer
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetUpBlock
from torch import nn
from torch.nn import functional as F

from monai_ext.networks.blocks.context_encoder import ContextEncoder3D, GlobalDescriptor
from monai_ext.networks.blocks.cpu_conv import fast_cpu_convs
from monai_ext.networks.blocks.folded import can_overwrite, instance_norm_folded
from monai_ext.networks.blocks.msfa import MultiSliceFeatureAggregation
from monai_ext.networks.capture import capturing
from monai_ext.networks.checks import check_input
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, tensor_dim
from monai_ext.networks.precision import half_precision
from monai_ext.networks.registry import NetworkEntry, register_network

__all__ = ["CONFIGURATIONS", "SCAA", "SliceContext", "SpatialContextAwareNet", "scaa_inferer", "scaa_sizes"]


class _UpLevel(UnetUpBlock):
    """:class:`monai.networks.blocks.UnetUpBlock` whose skip may be wider than its output: transposed conv ``2 x 2``
    ``in_channels -> out_channels``, concat with the skip (``skip_channels``), two convs to ``out_channels``.

    Where autograd records nothing, the first conv of the concatenation runs as two convs, one on each part, summed
    in place: the same values (to float round-off) without the concatenated tensor, the largest of the 2D path. Not
    under autocast, where each part's result would be rounded to 16 bits before the sum."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm_name, act_name) -> None:
        super().__init__(2, in_channels, out_channels, 3, 1, 2, norm_name, act_name)
        if skip_channels != out_channels:
            self.conv_block = UnetBasicBlock(
                2, out_channels + skip_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name,
                act_name=act_name,
            )  # fmt: skip

    def forward(self, inp: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = self.transp_conv(inp)
        block = self.conv_block
        conv = block.conv1.conv
        half = half_precision(up.dtype)  # autocast: the sum would round twice
        if not can_overwrite() or len(block.conv1) != 1 or half:  # autograd, a trace, a conv with more than a conv
            return block(torch.cat((up, skip), dim=1))
        c = up.shape[1]
        out = F.conv2d(up, conv.weight[:, :c], conv.bias, conv.stride, conv.padding)
        out.add_(F.conv2d(skip, conv.weight[:, c:], None, conv.stride, conv.padding))
        return block.lrelu(block.norm2(block.conv2(block.lrelu(block.norm1(out)))))


class _SliceInstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d`` without running statistics, computed channels-last: the same function (up to float
    round-off), parameters and state-dict keys, with a channels-last output for an input in either layout (aten's
    instance norm works in NCHW and copies a channels-last input to it). It is
    :func:`~monai_ext.networks.blocks.folded.instance_norm_folded` with every slice a sample: two passes (mean, then
    the variance of the centred values) keep the round-off of aten's; PyTorch's channels-last group norm, though
    faster, loses ~1e-4. An NCHW input (the network's own convolutions give channels-last maps, a one-channel input
    included: :class:`~monai_ext.networks.blocks.cpu_conv.ChannelsLastConv2d`) is copied to channels-last once,
    here rather than by the next convolution.

    A bf16 or fp16 input (autocast) takes its statistics in float32; the output is float32, or the input's dtype
    where it is normalised in place (inference).

    Args:
        norm: the ``InstanceNorm2d`` replaced (its parameters are shared).
        overwrite: the input is nobody else's (as a convolution's output in MONAI's ``UnetBasicBlock``), so it may
            be normalised in place where autograd records nothing.

    Shapes:
        ``(N, C, H, W)`` in, the same out, channels-last.
    """

    def __init__(self, norm: nn.InstanceNorm2d, overwrite: bool = False) -> None:
        super().__init__(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats)
        self.overwrite = overwrite
        if norm.affine:
            self.weight, self.bias = norm.weight, norm.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if capturing():  # a trace or compiled graph: the plain instance norm (ONNX InstanceNormalization)
            return F.instance_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        copied = not x.is_contiguous(memory_format=torch.channels_last)
        if copied:
            x = x.contiguous(memory_format=torch.channels_last)
        inplace = (self.overwrite or copied) and can_overwrite()
        return instance_norm_folded(x, x.shape[0], self.weight, self.bias, self.eps, inplace)


# the paper's ablation: name -> (MSFA mode or None, global descriptor at the head)
CONFIGURATIONS: dict[str, tuple[str | None, bool]] = {
    "CA": (None, True),
    "C-CA": ("center", True),
    "SCAA": ("attention", True),
    "SCAA*": ("attention", False),
}


def scaa_sizes(levels: int = 5, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> tuple[int, tuple[int, int, int]]:
    """The sizes an SCAA of ``levels`` 2D levels takes: ``(divisor, min_size)``.

    Every spatial axis must be a multiple of ``divisor = 2^levels``; the two in-plane axes (those other than
    ``spatial_dim``) must also be at least ``2^(levels + 1)``, so that the deepest 2D maps keep ``2 x 2`` positions
    for instance norm. ``min_size`` lists the smallest size per spatial axis (``divisor`` on the slice axis), as
    :class:`~monai_ext.inferers.PadInferer` and :func:`~monai_ext.networks.checks.check_input` take it.
    """
    divisor = 2**levels
    return divisor, tuple(divisor if axis == spatial_dim else 2 * divisor for axis in range(3))


class SliceContext(NamedTuple):
    """What :meth:`SpatialContextAwareNet.encode_context` gives for a batch of volumes, for its slices.

    Attributes:
        features: ``F3D_2 .. F3D_L``, ``F3D_i`` of shape ``(B, context_channels[i - 2], *spatial / 2^i)``, in the
            input's layout (the slice axis on ``spatial_dim``).
        descriptor: the global descriptor ``F_globe`` ``(B, global_channels)``, or None for configurations without it.
    """

    features: list[torch.Tensor]
    descriptor: torch.Tensor | None


class SpatialContextAwareNet(nn.Module):
    """SCAA, the spatial context-aware self-attention network (Tang et al., WACV 2021,
    https://arxiv.org/abs/2012.09279): "Spatial Context-Aware Self-Attention Model For Multi-Organ Segmentation".

    No public code exists; details the paper leaves open are our reading (``docs/scaa.md``). Layout:

    - :class:`~monai_ext.networks.blocks.ContextEncoder3D` runs once on the whole volume and gives ``F3D_i`` at
      scales ``i = 2 .. L`` (``L = len(filters)``), ``F3D_i`` being ``2^i`` smaller on every axis;
    - a 2D U-Net runs on the slices along ``spatial_dim``: encoder level ``i`` (``i = 0 .. L-1``) is two (conv
      ``3 x 3`` + norm + act) to ``filters[i]`` (the skip at scale ``i``) then a ``2 x 2`` max-pool to scale ``i + 1``;
      at scales ``2 .. L`` the pooled features pass through
      :class:`~monai_ext.networks.blocks.MultiSliceFeatureAggregation` with ``F3D_i`` (the configuration decides:
      attention, centre slice, or none);
    - decoder from scale ``L`` back to 0, one level per skip (:class:`monai.networks.blocks.UnetUpBlock`: transposed
      conv ``2 x 2`` + two convs on the concatenated skip); the level at scale ``i`` has ``decoder_channels[i]``
      channels, by default the width of the 2D features arriving at scale ``i`` (``filters[i - 1]``, and
      ``filters[0]`` at scale 0), i.e. it mirrors encoder block ``i``;
    - head: ``1 x 1`` conv to ``out_channels``, on the decoder output concatenated with the broadcast global
      descriptor (:class:`~monai_ext.networks.blocks.GlobalDescriptor`) where the configuration uses it;
    - auxiliary 3D head: ``1 x 1 x 1`` conv on ``F3D_L`` upsampled (trilinear) ``x 2^(L-1)``, i.e. to half the input
      resolution (the 3D encoder's input).

    Inside, the 3D encoder and the global descriptor see the volume with its slice axis first (``(B, C, D, H, W)``
    for the default ``spatial_dim``); inputs and outputs are in the caller's layout.

    Configurations (the paper's ablation, ``configuration=``; each is also a registry entry, see
    :func:`monai_ext.networks.create_network`): ``"CA"`` global descriptor only (``scaa_ca``), ``"C-CA"`` the centre
    3D slice instead of attention (+ global descriptor, ``scaa_c_ca``), ``"SCAA"`` attention + global descriptor
    (``scaa``), ``"SCAA*"`` attention without it (the paper's best, 86.9 % DSC on ABD-110; the default,
    ``scaa_star``). With the defaults, one input channel and 14 classes, SCAA* has 7,750,948 parameters (the paper
    reports 7.82 M; with ``decoder_channels=filters``, 9,425,188; see ``docs/scaa.md``).

    The two stages are public, so that an inferer can run the 3D encoder once and the slices in chunks
    (:class:`~monai_ext.inferers.ContextSliceInferer`):

    - :meth:`encode_context` ``(x) -> SliceContext``: the 3D encoder (and global descriptor) on the whole volume;
    - :meth:`forward_slices` ``(x, context, slice_indices) -> (B, out_channels, *spatial)`` with ``S`` slices in place
      of the slice axis;
    - :meth:`forward_aux` ``(context) -> (B, out_channels, *spatial / 2)``: the auxiliary 3D head.

    Forward:

    - ``net(x)``: the whole volume, every slice at once (no chunking). Returns the logits ``(B, out_channels,
      *spatial)``.
    - ``net(x, slice_indices)``: training. Only the given slices go through the 2D path. Returns the list
      ``[slice_logits, aux_logits]``: ``slice_logits`` as :meth:`forward_slices`, ``aux_logits`` as :meth:`forward_aux`
      (half resolution).
    - ``valid_size=[h, w, d]`` (both calls, and :meth:`forward_slices`): the sizes of ``x`` before it was padded at
      the far end; MSFA then gives the padded depth slices no attention. The pad inferers pass it.

    ``torch.jit.script`` compiles :meth:`forward` (``slice_indices`` a tensor there); ``encode_context`` and
    ``forward_slices`` stay eager.

    Sizes: every spatial axis must be a multiple of ``divisor = 2^L`` (32), and the in-plane axes at least
    ``2^(L+1)`` (64); the network raises for other sizes (:attr:`divisor`, :attr:`min_size`, :func:`scaa_sizes`).
    :class:`~monai_ext.inferers.PadInferer` pads a volume of any size (its far end, with zeros) and crops the output
    back; :func:`scaa_inferer` is the bundle's whole-volume inferer.

    Args:
        in_channels: image channels.
        out_channels: classes (background included).
        configuration: one of :data:`CONFIGURATIONS`.
        filters: 2D U-Net channels per level (paper: 64, 96, 128, 192, 256).
        context_channels: channels of ``F3D_2 .. F3D_L`` (paper: 24, 32, 64, 64); ``len(filters) - 1`` entries.
        num_heads, embed_channels, pool_sizes: MSFA heads, query/key channels per head and pooled size per scale
            ``2 .. L`` (paper: 2, 2, 4, 4; 2, 2, 4, 4; 16, 8, 4, 4).
        global_channels: length of the global descriptor.
        decoder_channels: channels of the decoder level at scales ``0 .. L-1``; default
            ``(filters[0], *filters[:-1])`` (7.75 M parameters, near the paper's 7.82 M). ``filters`` gives
            decoder levels as wide as their skips (the classic U-Net layout; 9.43 M).
        spatial_dim: the slice (axial) axis among the spatial axes, 0-2; default 2, the last axis of MONAI's
            ``(B, C, H, W, D)`` (axial slices after ``Orientationd("RAS")``).
        norm_name: normalisation, MONAI factory name and arguments (paper: instance norm).
        act_name: activation (paper: ReLU).

    Raises:
        ValueError: for an unknown configuration, mismatched per-scale argument lengths or a bad ``spatial_dim``; when
            called, for a wrong rank, channel count or size (:func:`~monai_ext.networks.checks.check_input`), or slice
            indices of the wrong shape or out of range.
    """

    compile_methods = ("forward", "encode_context", "forward_slices")
    """What :func:`~monai_ext.networks.compile_network` compiles: ``forward`` and the two steps
    :class:`~monai_ext.inferers.ContextSliceInferer` calls."""

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 14,
        configuration: str = "SCAA*",
        filters: Sequence[int] = (64, 96, 128, 192, 256),
        context_channels: Sequence[int] = (24, 32, 64, 64),
        num_heads: Sequence[int] = (2, 2, 4, 4),
        embed_channels: Sequence[int] = (2, 2, 4, 4),
        pool_sizes: Sequence[int] = (16, 8, 4, 4),
        global_channels: int = 64,
        decoder_channels: Sequence[int] | None = None,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        if configuration not in CONFIGURATIONS:
            raise ValueError(f"configuration must be one of {list(CONFIGURATIONS)}, got {configuration!r}.")
        filters, context_channels = list(filters), list(context_channels)
        n_msfa = len(filters) - 1
        per_scale = {"context_channels": context_channels, "num_heads": num_heads}
        per_scale.update({"embed_channels": embed_channels, "pool_sizes": pool_sizes})
        wrong = {k: list(v) for k, v in per_scale.items() if len(v) != n_msfa}
        decoder_channels = [filters[0], *filters[:-1]] if decoder_channels is None else list(decoder_channels)
        if len(decoder_channels) != len(filters) or min(decoder_channels) < 1:
            raise ValueError(
                f"decoder_channels needs one positive width per level (scales 0..{len(filters) - 1}), "
                f"got {decoder_channels} for filters={filters}."
            )
        if len(filters) < 2 or min(filters) < 1 or wrong:
            raise ValueError(
                f"need at least 2 positive filters and one entry per MSFA scale 2..{len(filters)} "
                f"({n_msfa} entries) in {list(per_scale)}; got filters={filters}, mismatched {wrong}."
            )
        if min(in_channels, out_channels, global_channels) < 1:
            raise ValueError(f"channel counts must be positive, got {in_channels}, {out_channels}, {global_channels}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.configuration = configuration
        self.msfa_mode, self.use_global = CONFIGURATIONS[configuration]
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self._slices_axis = tensor_dim(self.spatial_dim)
        self.levels = len(filters)
        self.divisor, self.min_size = scaa_sizes(self.levels, self.spatial_dim)

        self.context_encoder = ContextEncoder3D(in_channels, context_channels, norm_name=norm_name, act_name=act_name)
        self.encoders = nn.ModuleList(
            UnetBasicBlock(2, prev, f, kernel_size=3, stride=1, norm_name=norm_name, act_name=act_name)
            for prev, f in zip([in_channels, *filters[:-1]], filters)
        )
        self.msfa = nn.ModuleList()
        if self.msfa_mode is not None:
            for f2, f3, m, e, p in zip(filters[1:], context_channels, num_heads, embed_channels, pool_sizes):
                self.msfa.append(
                    MultiSliceFeatureAggregation(
                        f2,
                        f3,
                        num_heads=m,
                        embed_channels=e,
                        pool_size=p,
                        mode=self.msfa_mode,
                        spatial_dim=self.spatial_dim,
                        norm_name=norm_name,
                        act_name=act_name,
                    )  # fmt: skip
                )
        self.decoder_channels = decoder_channels
        # the most channels of a full-resolution map the 2D path holds per slice in inference (ContextSliceInferer
        # sizes its slice chunks by it)
        self.slice_channels = max(filters[0], decoder_channels[0])
        below = [*decoder_channels[1:], filters[-1]]  # input of the level at scale i: the level below, or F2D_L
        self.decoders = nn.ModuleList(
            _UpLevel(below[i], filters[i], decoder_channels[i], norm_name, act_name)
            for i in reversed(range(self.levels))
        )
        self.global_descriptor = GlobalDescriptor(context_channels[-1], global_channels) if self.use_global else None
        head_in = decoder_channels[0] + (global_channels if self.use_global else 0)
        self.head = nn.Conv2d(head_in, out_channels, kernel_size=1)
        self.aux_head = nn.Conv3d(context_channels[-1], out_channels, kernel_size=1)
        self._channels_last_2d()
        fast_cpu_convs(self)  # the one-channel 2D convolution, and the 3D context encoder's small maps, on oneDNN

    def _channels_last_2d(self) -> None:
        """Lay the 2D path out channels-last, where CPU convolutions run fastest: 2D conv weights stored channels-last
        (the first convolution, of a one-channel input, gives channels-last maps as a
        :class:`~monai_ext.networks.blocks.cpu_conv.ChannelsLastConv2d`: :func:`fast_cpu_convs` at construction),
        and instance norms computed in that layout (:class:`_SliceInstanceNorm`). Values and state-dict keys
        unchanged; ``load_state_dict`` copies into the channels-last weights."""
        for part in (self.encoders, self.msfa, self.decoders, self.head):
            for module in part.modules():
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                    module.weight.data = module.weight.data.contiguous(memory_format=torch.channels_last)
                for name, child in module.named_children():
                    if type(child) is nn.InstanceNorm2d and not child.track_running_stats:
                        setattr(module, name, _SliceInstanceNorm(child, isinstance(module, UnetBasicBlock)))

    @torch.jit.unused
    def _check(self, x: torch.Tensor, valid_size: Sequence[int] | None = None) -> None:
        check_input(x, "SCAA", self.in_channels, spatial_dims=3, divisor=self.divisor, min_size=self.min_size)
        if valid_size is not None:
            sizes = list(x.shape[2:])
            if len(valid_size) != 3 or any(not 1 <= int(v) <= n for v, n in zip(valid_size, sizes)):
                raise ValueError(
                    f"valid_size must give the unpadded size of each spatial axis, between 1 and the input's {sizes}, "
                    f"got {list(valid_size)}."
                )

    def _slices_first(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial)`` with the slice axis moved first among the spatial axes (a view)."""
        return x.movedim(self._slices_axis, 2)

    def _slices_restored(self, x: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`_slices_first`."""
        return x.movedim(2, self._slices_axis)

    def encode_context(self, x: torch.Tensor) -> SliceContext:
        """Run the 3D context encoder (and the global descriptor, where the configuration has one) on whole volumes.

        Args:
            x: ``(B, in_channels, *spatial)``, slices on ``spatial_dim``, of a size the network takes.

        Returns:
            :class:`SliceContext`: ``F3D_2 .. F3D_L`` in the input's layout and the global descriptor (or None).
        """
        self._check(x)
        features, descriptor = self._context(x)
        return SliceContext(features, descriptor)

    def _context(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """:meth:`encode_context` as a tuple, unchecked."""
        features = self.context_encoder(self._slices_first(x))  # F3D_i (B, C_i, D_i, H_i, W_i)
        descriptor: torch.Tensor | None = None
        if self.global_descriptor is not None:
            descriptor = self.global_descriptor(features[-1])
        return [self._slices_restored(f) for f in features], descriptor

    def forward_slices(
        self,
        x: torch.Tensor,
        context: SliceContext,
        slice_indices: torch.Tensor | Sequence[int],
        return_attention: bool = False,
        valid_size: Sequence[int] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Run the 2D path on the given slices of ``x``, against ``context`` from :meth:`encode_context` of ``x``.

        Args:
            x: the volumes ``(B, in_channels, *spatial)`` the context was computed on.
            context: :meth:`encode_context` of ``x``.
            slice_indices: ``(S,)`` (the same slices of every volume) or ``(B, S)`` indices along ``spatial_dim``.
            return_attention: also return the MSFA weights (for pictures such as the paper's Fig. 2).
            valid_size: where ``x`` was padded at the far end of its axes (as
                :class:`~monai_ext.inferers.PadInferer` does), its unpadded spatial sizes: the depth slices of
                ``F3D_i`` that hold no image content (those after ``ceil(valid_size[spatial_dim] / 2^i)``) get MSFA
                attention 0. None: every slice is image content.

        Returns:
            the logits ``(B, out_channels, *spatial)`` with ``S`` in place of the slice axis (slice ``j`` = input slice
            ``slice_indices[:, j]``); with ``return_attention``, also a list of the MSFA weights per scale
            ``2 .. L``, ``(B, S, heads, d_i)`` over the ``d_i`` slices of ``F3D_i`` (empty for CA).

        Raises:
            ValueError: for an input the network does not take, slice indices of the wrong shape or out of range, or a
                ``valid_size`` that is not 3 sizes between 1 and the input's.
        """
        self._check(x, valid_size)
        indices = self._indices(x, slice_indices)
        attention: list[torch.Tensor] | None = [] if return_attention else None
        depth = None if valid_size is None else int(valid_size[self.spatial_dim])
        logits = self._slices(x, context.features, context.descriptor, indices, depth, attention)
        return (logits, attention) if attention is not None else logits

    @torch.jit.unused
    def _indices(self, x: torch.Tensor, slice_indices: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Checked slice indices ``(B, S)`` on ``x``'s device."""
        indices = torch.as_tensor(slice_indices, device=x.device).long()
        if indices.dim() == 1:
            indices = indices.expand(x.shape[0], -1)
        depth = x.shape[self._slices_axis]
        if indices.dim() != 2 or indices.shape[0] != x.shape[0] or indices.shape[1] < 1:
            raise ValueError(
                f"slice_indices must be (S,) or (B, S) = ({x.shape[0]}, S) with S >= 1, "
                f"got {list(torch.as_tensor(slice_indices).shape)}."
            )
        if capturing():  # the range check reads values, which a compiled graph cannot branch on (indexing still fails)
            return indices
        if int(indices.min()) < 0 or int(indices.max()) >= depth:
            raise ValueError(
                f"slice_indices must lie in [0, {depth}) (slices along spatial_dim={self.spatial_dim}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]."
            )
        return indices

    def _slices(
        self,
        x: torch.Tensor,
        features: list[torch.Tensor],
        descriptor: torch.Tensor | None,
        indices: torch.Tensor,
        valid_depth: int | None = None,
        attention: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The 2D path for valid slice indices ``(B, S)``, ``valid_depth`` unpadded slices along ``spatial_dim`` (None:
        all); appends the MSFA weights per scale to ``attention``."""
        b, s = indices.shape[0], indices.shape[1]
        volume = self._slices_first(x)  # (B, C, D, H, W)
        batch = torch.arange(b, device=x.device).unsqueeze(1)  # (B, 1)
        h = volume[batch, :, indices].reshape(b * s, x.shape[1], volume.shape[3], volume.shape[4])  # (B*S, C, H, W)
        h = h.contiguous(memory_format=torch.channels_last)  # the 2D path runs channels-last (faster convs on CPU)
        skips: list[torch.Tensor] = []
        for level, encoder in enumerate(self.encoders):
            h = encoder(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)  # scale level + 1
            scale = level + 1
            positions = torch.div(indices, 1 << scale, rounding_mode="floor")  # the 3D slice holding each slice
            depth: int | None = None
            if valid_depth is not None:
                depth = (valid_depth + (1 << scale) - 1) >> scale  # F3D slices holding image content
            for j, msfa in enumerate(self.msfa):  # the MSFA of this scale (a loop TorchScript unrolls)
                if j == scale - 2:
                    h, weights = msfa.forward_with_attention(h, features[j], positions, depth)
                    if attention is not None:
                        attention.append(weights.reshape(b, s, weights.shape[1], weights.shape[2]))
        for j, decoder in enumerate(self.decoders):
            h = decoder(h, skips[len(skips) - 1 - j])
        if descriptor is not None:
            g = descriptor.repeat_interleave(s, dim=0)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            h = torch.cat([h, g], dim=1)
        logits = self.head(h)  # (B * S, K, H, W)
        return self._slices_restored(
            logits.reshape(b, s, logits.shape[1], logits.shape[2], logits.shape[3]).transpose(1, 2)
        )  # S on spatial_dim

    def forward_aux(self, context: SliceContext) -> torch.Tensor:
        """The auxiliary 3D head on ``context``: logits ``(B, out_channels, *spatial / 2)`` (half resolution)."""
        return self._aux(context.features)

    def _aux(self, features: list[torch.Tensor]) -> torch.Tensor:
        aux = self.aux_head(self._slices_first(features[-1]))
        aux = F.interpolate(aux, scale_factor=float(2 ** (self.levels - 1)), mode="trilinear", align_corners=False)
        return self._slices_restored(aux)

    def forward(
        self, x: torch.Tensor, slice_indices: torch.Tensor | None = None, valid_size: list[int] | None = None
    ) -> torch.Tensor | list[torch.Tensor]:
        """See the class docstring; ``slice_indices`` may also be a sequence of ints (not in TorchScript), and
        ``valid_size`` gives the unpadded spatial sizes of a padded ``x`` (see :meth:`forward_slices`)."""
        if not torch.jit.is_scripting():  # plain-Python checks; a scripted network skips them
            self._check(x, valid_size)
        features, descriptor = self._context(x)
        depth: int | None = None
        if valid_size is not None:
            depth = int(valid_size[self.spatial_dim])
        if slice_indices is None:
            indices = torch.arange(x.shape[self._slices_axis], device=x.device).expand(x.shape[0], -1)
            return self._slices(x, features, descriptor, indices, depth)
        if torch.jit.is_scripting():
            indices = slice_indices.long() if slice_indices.dim() == 2 else slice_indices.long().expand(x.shape[0], -1)
        else:
            indices = self._indices(x, slice_indices)
        return [self._slices(x, features, descriptor, indices, depth), self._aux(features)]


SCAA = SpatialContextAwareNet


def scaa_inferer(**overrides: Any) -> Inferer:
    """The scaa bundle's whole-volume inferer (``configs/inference.json``): a
    :class:`~monai_ext.inferers.PadInferer` (zeros at the far end of each axis, to the sizes of :func:`scaa_sizes`)
    around a :class:`~monai_ext.inferers.ContextSliceInferer` (the 3D encoder once, then ``slice_chunk`` slices at a
    time).

    Args:
        overrides: ``slice_chunk`` (default None: sized per volume, see
            :func:`~monai_ext.inferers.context_slices.context_slice_chunk`), ``levels`` (``len(filters)`` of the
            network, default 5), ``spatial_dim`` (the network's, default 2) and ``mode`` (PadInferer's padding mode,
            default ``"constant"``).
    """
    from monai_ext.inferers import ContextSliceInferer, PadInferer  # here, not at the top: a network needs no inferer

    settings = {"slice_chunk": None, "levels": 5, "spatial_dim": DEFAULT_SPATIAL_DIM, "mode": "constant", **overrides}
    divisor, min_size = scaa_sizes(settings["levels"], settings["spatial_dim"])
    return PadInferer(divisor, min_size, inferer=ContextSliceInferer(settings["slice_chunk"]), mode=settings["mode"])


def _register(name: str, configuration: str, title: str) -> None:
    """Register the SCAA of ``configuration``, a row of the paper's ablation."""
    main = name == "scaa_star"
    register_network(
        NetworkEntry(
            name=name,
            builder=SCAA,
            kind="context",
            title=title,
            paper=f"Tang et al. 2021, ablation: {configuration}",
            defaults={"configuration": configuration},
            inferer=scaa_inferer,
            bundle="scaa",
            variant_of=None if main else "scaa_star",
            method=2,
        )
    )


_register("scaa_star", "SCAA*", "SCAA*")  # the paper's best and the bundle
_register("scaa", "SCAA", "SCAA")
_register("scaa_c_ca", "C-CA", "SCAA (C-CA)")
_register("scaa_ca", "CA", "SCAA (CA)")
