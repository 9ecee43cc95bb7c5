"""SCAA: a 2D U-Net over axial slices guided by a 3D context encoder on the whole volume through multi-slice
feature aggregation (MSFA)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock, UnetUpBlock
from torch import nn
from torch.nn import functional as F

from monai_ext.networks.blocks.context_encoder import ContextEncoder3D, GlobalDescriptor
from monai_ext.networks.blocks.msfa import MultiSliceFeatureAggregation

__all__ = ["CONFIGURATIONS", "SCAA", "SpatialContextAwareNet", "take_slices"]


def take_slices(x: torch.Tensor, indices: torch.Tensor, slice_dim: int) -> torch.Tensor:
    """Slices ``indices`` ``(B, S)`` of each volume of ``x`` ``(B, C, *spatial)`` along tensor dim ``slice_dim``:
    ``(B, C, *spatial)`` with ``S`` in place of that axis."""
    batch = torch.arange(x.shape[0], device=x.device).unsqueeze(1)
    picked = x.movedim(slice_dim, 2)[batch, :, indices.to(x.device)]  # (B, S, C, *other spatial)
    return picked.movedim(1, 2).movedim(2, slice_dim)


class _UpLevel(UnetUpBlock):
    """:class:`monai.networks.blocks.UnetUpBlock` whose skip may be wider than its output: transposed conv ``2 x 2``
    ``in_channels -> out_channels``, concat with the skip (``skip_channels``), two convs to ``out_channels``."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, norm_name, act_name) -> None:
        super().__init__(2, in_channels, out_channels, 3, 1, 2, norm_name, act_name)
        if skip_channels != out_channels:
            self.conv_block = UnetBasicBlock(
                2, out_channels + skip_channels, out_channels, kernel_size=3, stride=1, norm_name=norm_name,
                act_name=act_name,
            )  # fmt: skip


# the paper's ablation: name -> (MSFA mode or None, global descriptor at the head)
CONFIGURATIONS: dict[str, tuple[str | None, bool]] = {
    "CA": (None, True),
    "C-CA": ("center", True),
    "SCAA": ("attention", True),
    "SCAA*": ("attention", False),
}


class SpatialContextAwareNet(nn.Module):
    """SCAA, the spatial context-aware self-attention network (Tang et al., WACV 2021,
    https://arxiv.org/abs/2012.09279): "Spatial Context-Aware Self-Attention Model For Multi-Organ Segmentation".

    No public code exists; details the paper leaves open are our reading (``docs/scaa.md``). Layout:

    - :class:`~monai_ext.networks.blocks.ContextEncoder3D` runs once on the whole volume and gives ``F3D_i`` at
      scales ``i = 2 .. L`` (``L = len(filters)``), ``F3D_i`` being ``2^i`` smaller on every axis;
    - a 2D U-Net runs on axial slices: encoder level ``i`` (``i = 0 .. L-1``) is two (conv ``3 x 3`` + norm + act)
      to ``filters[i]`` (the skip at scale ``i``) then a ``2 x 2`` max-pool to scale ``i + 1``; at scales ``2 .. L``
      the pooled features pass through :class:`~monai_ext.networks.blocks.MultiSliceFeatureAggregation` with
      ``F3D_i`` (the configuration decides: attention, centre slice, or none);
    - decoder from scale ``L`` back to 0, one level per skip (:class:`monai.networks.blocks.UnetUpBlock`: transposed
      conv ``2 x 2`` + two convs on the concatenated skip); the level at scale ``i`` has ``decoder_channels[i]``
      channels, by default the width of the 2D features arriving at scale ``i`` (``filters[i - 1]``, and
      ``filters[0]`` at scale 0), i.e. it mirrors encoder block ``i``;
    - head: ``1 x 1`` conv to ``out_channels``, on the decoder output concatenated with the broadcast global
      descriptor (:class:`~monai_ext.networks.blocks.GlobalDescriptor`) where the configuration uses it;
    - auxiliary 3D head: ``1 x 1 x 1`` conv on ``F3D_L`` upsampled (trilinear) ``x 2^(L-1)``, i.e. to half the input
      resolution (the 3D encoder's input).

    Configurations (the paper's ablation, ``configuration=``): ``"CA"`` global descriptor only, ``"C-CA"`` the
    centre 3D slice instead of attention (+ global descriptor), ``"SCAA"`` attention + global descriptor,
    ``"SCAA*"`` attention without it (the paper's best, 86.9 % DSC on ABD-110; the default). With the defaults,
    one input channel and 14 classes, SCAA* has 7,750,948 parameters (the paper reports 7.82 M; with
    ``decoder_channels=filters``, 9,425,188; see ``docs/scaa.md``).

    Forward:

    - ``net(x)``: the whole volume. The 3D encoder runs once; the slices go through the 2D path ``slice_chunk``
      at a time, so the 2D activations never exceed one chunk (under ``torch.no_grad``). Returns the logits
      ``(B, out_channels, *spatial)``.
    - ``net(x, slice_indices)``: training. Only the given slices go through the 2D path. Returns
      ``(slice_logits, aux_logits)``: ``slice_logits`` is ``(B, out_channels, *spatial)`` with ``S`` in place of
      the slice axis (slice ``j`` = input slice ``slice_indices[:, j]``), ``aux_logits`` is the 3D head's output at
      half resolution, ``(B, out_channels, *ceil(spatial / 2))``.

    Any size works: each axis is zero-padded at its far end to a multiple of ``2^L`` (32), the in-plane axes to at
    least ``2^(L+1)`` (64, so the deepest 2D maps are at least 2 x 2), and the outputs are cropped back.

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
        slice_dim: tensor dimension of the axial (slice) axis in ``(B, C, *spatial)``: 4 (default) for MONAI's
            ``(B, C, X, Y, Z)`` layout of RAS-oriented volumes, 2 for ``(B, C, D, H, W)``.
        slice_chunk: slices per 2D pass in whole-volume mode.
        norm_name: normalisation, MONAI factory name and arguments (paper: instance norm).
        act_name: activation (paper: ReLU).

    Raises:
        ValueError: for an unknown configuration, mismatched per-scale argument lengths, a bad ``slice_dim`` or
            ``slice_chunk``; in ``forward`` for a wrong rank or channel count, or slice indices of the wrong shape
            or out of range.
    """

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
        slice_dim: int = 4,
        slice_chunk: int = 16,
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
        if slice_dim not in (2, 3, 4, -1, -2, -3):
            raise ValueError(
                f"slice_dim must be a spatial tensor dimension of (B, C, *3 spatial): 2, 3 or 4, got {slice_dim}."
            )
        if slice_chunk < 1:
            raise ValueError(f"slice_chunk must be a positive integer, got {slice_chunk}.")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.configuration = configuration
        self.msfa_mode, self.use_global = CONFIGURATIONS[configuration]
        self.slice_dim = slice_dim % 5
        self.slice_chunk = slice_chunk
        self.levels = len(filters)
        self.divisor = 2**self.levels

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
                        norm_name=norm_name,
                        act_name=act_name,
                    )  # fmt: skip
                )
        self.decoder_channels = decoder_channels
        below = [*decoder_channels[1:], filters[-1]]  # input of the level at scale i: the level below, or F2D_L
        self.decoders = nn.ModuleList(
            _UpLevel(below[i], filters[i], decoder_channels[i], norm_name, act_name)
            for i in reversed(range(self.levels))
        )
        self.global_descriptor = GlobalDescriptor(context_channels[-1], global_channels) if self.use_global else None
        head_in = decoder_channels[0] + (global_channels if self.use_global else 0)
        self.head = nn.Conv2d(head_in, out_channels, kernel_size=1)
        self.aux_head = nn.Conv3d(context_channels[-1], out_channels, kernel_size=1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"SCAA expects a whole volume (B, {self.in_channels}, *3 spatial) with the slice axis at tensor dim "
                f"{self.slice_dim}, got shape {list(x.shape)}."
            )

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad ``(B, C, D, H, W)`` at the far end: every axis to a multiple of ``2^L``, and H, W to at least
        ``2^(L+1)`` so that the deepest 2D maps keep 2 x 2 positions for instance norm."""
        padding: list[int] = []
        for axis in (4, 3, 2):  # F.pad lists (before, after) from the last axis backwards
            size = x.shape[axis]
            target = size + (-size % self.divisor)
            if axis > 2:
                target = max(target, 2 * self.divisor)
            padding += [0, target - size]
        return F.pad(x, padding)

    def _slices(
        self,
        x: torch.Tensor,
        context: list[torch.Tensor],
        descriptor: torch.Tensor | None,
        indices: torch.Tensor,
        attention: list[list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """2D path for slices ``indices`` ``(B, S)`` of the padded ``x`` ``(B, C, D, H, W)``; logits
        ``(B, K, S, H, W)``. Appends the MSFA weights ``(B, S, heads, d_i)`` per scale to ``attention`` if given."""
        b, s = indices.shape
        h = take_slices(x, indices, 2).transpose(1, 2).reshape(b * s, x.shape[1], x.shape[3], x.shape[4])  # (B*S,C,H,W)
        skips: list[torch.Tensor] = []
        for level, encoder in enumerate(self.encoders):
            h = encoder(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)  # scale level + 1
            scale = level + 1
            if scale >= 2 and len(self.msfa) > 0:
                positions = torch.div(indices, 2**scale, rounding_mode="floor")  # the 3D slice holding each slice
                if attention is None:
                    h = self.msfa[scale - 2](h, context[scale - 2], positions)
                else:
                    h, weights = self.msfa[scale - 2](h, context[scale - 2], positions, return_attention=True)
                    attention[scale - 2].append(weights.reshape(b, s, weights.shape[1], weights.shape[2]))
        for decoder, skip in zip(self.decoders, reversed(skips)):
            h = decoder(h, skip)
        if descriptor is not None:
            g = descriptor.repeat_interleave(s, dim=0)[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            h = torch.cat([h, g], dim=1)
        logits = self.head(h)  # (B * S, K, H, W)
        return logits.reshape(b, s, *logits.shape[1:]).transpose(1, 2)  # (B, K, S, H, W)

    def _whole_volume(self, x: torch.Tensor, attention: list[list[torch.Tensor]] | None = None) -> torch.Tensor:
        self._check_input(x)
        sizes = x.movedim(self.slice_dim, 2).shape[2:]
        x = self._pad(x.movedim(self.slice_dim, 2))  # (B, C, D, H, W), padded
        context = self.context_encoder(x)
        descriptor = self.global_descriptor(context[-1]) if self.global_descriptor is not None else None
        depth = sizes[0]
        chunks = []
        for start in range(0, depth, self.slice_chunk):
            idx = torch.arange(start, min(start + self.slice_chunk, depth), device=x.device)
            chunks.append(self._slices(x, context, descriptor, idx.expand(x.shape[0], -1), attention))
        out = torch.cat(chunks, dim=2)  # (B, K, D, H_pad, W_pad)
        out = out[:, :, :, : sizes[1], : sizes[2]]
        return out.movedim(2, self.slice_dim)

    def forward(self, x: torch.Tensor, slice_indices: torch.Tensor | None = None):
        if slice_indices is None:
            return self._whole_volume(x)
        self._check_input(x)
        sizes = x.movedim(self.slice_dim, 2).shape[2:]
        indices = torch.as_tensor(slice_indices, device=x.device).long()
        if indices.dim() == 1:
            indices = indices.expand(x.shape[0], -1)
        if indices.dim() != 2 or indices.shape[0] != x.shape[0] or indices.shape[1] < 1:
            raise ValueError(
                f"slice_indices must be (S,) or (B, S) = (S,) or ({x.shape[0]}, S) with S >= 1, "
                f"got {list(torch.as_tensor(slice_indices).shape)}."
            )
        if int(indices.min()) < 0 or int(indices.max()) >= sizes[0]:
            raise ValueError(f"slice_indices must lie in [0, {sizes[0]}) (slices along dim {self.slice_dim}), got "
                             f"values in [{int(indices.min())}, {int(indices.max())}].")  # fmt: skip
        x = self._pad(x.movedim(self.slice_dim, 2))
        context = self.context_encoder(x)
        descriptor = self.global_descriptor(context[-1]) if self.global_descriptor is not None else None
        slices = self._slices(x, context, descriptor, indices)[:, :, :, : sizes[1], : sizes[2]]
        aux = self.aux_head(context[-1])
        aux = F.interpolate(aux, scale_factor=2 ** (self.levels - 1), mode="trilinear", align_corners=False)
        aux = aux[:, :, : -(-sizes[0] // 2), : -(-sizes[1] // 2), : -(-sizes[2] // 2)]
        return slices.movedim(2, self.slice_dim), aux.movedim(2, self.slice_dim)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Whole-volume logits as :meth:`forward`, and the MSFA weights per scale ``2 .. L``: ``(B, D, heads, d_i)``
        for every axial slice of the volume over the ``d_i`` depth slices of ``F3D_i`` (empty for CA)."""
        attention: list[list[torch.Tensor]] = [[] for _ in self.msfa]
        logits = self._whole_volume(x, attention)
        return logits, [torch.cat(a, dim=1) for a in attention]


SCAA = SpatialContextAwareNet
