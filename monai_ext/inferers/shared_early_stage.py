"""A sliding-window predictor that computes each mini-group's early stage once across overlapping slice groups."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["SharedEarlyStage"]


class SharedEarlyStage:
    """Predictor for MONAI's sliding window with ``with_coord=True`` that runs a thickened-2D network's early stage
    once per mini-group of slices and reuses it in every group (window) that holds that mini-group.

    With stride 1 and ``k = G * group_size`` slices per group, a mini-group at slice ``p`` lies in up to ``G``
    groups; the network's plain ``forward`` recomputes its early stage in each. Here the network's
    ``early_features`` run once per distinct mini-group (key: batch index, window rows and columns, first slice),
    and ``forward_from_early`` runs the rest per group, so the result is the network's ``forward`` on each window,
    up to float round-off of the different batch sizes. (SSA's key and value of a mini-group also depend on it
    alone, but cost about 1/6 of the early stage, a few percent of a group: caching them would more than double the
    cache and the peak memory, so they are recomputed; docs/thick2d.md has the measurements.)

    The cache is filled from the windows of each call (only the mini-groups not seen yet: at most
    ``sw_batch_size * G`` at once, as many as ``forward`` runs today) and keeps only the mini-groups after the last
    window's first one: MONAI scans the windows in order, so the next call needs nothing older (at stride 1 the
    cache holds at most ``k - group_size + sw_batch_size`` maps). A call out of order recomputes what it misses;
    the values are the same. One instance serves one volume (one inferer call).

    The network must have ``shares_early_stage`` True and the methods ``early_features(slices)`` (mini-groups
    ``(N, C, H, W, group_size)`` to maps ``(N, ...)``) and ``forward_from_early(early, size)`` (for each of ``B``
    groups the ``G`` maps of its mini-groups, and the slice size ``(H, W)``, to the groups' output), as
    :class:`~monai_ext.networks.nets.Thickened2DNet`; and be in eval mode (a batch norm in training mode would
    see other batches). :meth:`supports` tells.

    Args:
        network: the thickened-2D network.
        low_resolution: return the windows' logits at the network's decoder resolution (``forward_from_early``
            without a size), for an inferer that averages them over the groups and then upsamples each slice once
            with the network's ``upsample`` (:class:`~monai_ext.inferers.SliceGroupInferer` does); default False.

    Shapes:
        call: ``windows`` ``(n, C, H, W, k)``, ``locations`` the ``n`` window slices MONAI passes (batch, channel
        and spatial slices); returns the network's output for the windows, ``(n, O, H, W, k)``, or with
        ``low_resolution`` ``(n, O, h, w, k)`` (``h``, ``w`` the decoder's resolution, about a quarter of ``H``, ``W``).

    Raises:
        ValueError: when the network does not support it, or on a call for windows of other than its
            ``num_slices`` slices.
    """

    def __init__(self, network: nn.Module, low_resolution: bool = False) -> None:
        if not self.supports(network):
            raise ValueError(
                f"SharedEarlyStage needs a network in eval mode with shares_early_stage True, early_features and "
                f"forward_from_early (e.g. Thickened2DNet with an 'esm*' config), got {type(network).__name__}."
            )
        self.network = network
        self.low_resolution = low_resolution
        self.group_size = int(network.group_size)
        self.num_slices = int(network.num_slices)
        self.cache: dict[tuple[int, ...], torch.Tensor] = {}
        self.stacked: torch.Tensor | None = None  # each call's maps, stacked into the same storage

    @staticmethod
    def supports(network: Any) -> bool:
        """Whether ``network`` can share its early stage: an eval-mode module with the methods above."""
        return (
            isinstance(network, nn.Module)
            and not network.training
            and getattr(network, "shares_early_stage", False) is True
            and callable(getattr(network, "early_features", None))
            and callable(getattr(network, "forward_from_early", None))
        )

    def _keys(self, location: Sequence[slice]) -> list[tuple[int, ...]]:
        """The cache keys of one window's mini-groups: (batch, row start, row stop, column start, column stop,
        first slice)."""
        b, _, rows, cols, depth = location
        start = [b.start, rows.start or 0, rows.stop, cols.start or 0, cols.stop]
        return [tuple(start + [depth.start + g]) for g in range(0, self.num_slices, self.group_size)]

    def __call__(self, windows: torch.Tensor, locations: Sequence[Sequence[slice]]) -> torch.Tensor:
        if windows.dim() != 5 or windows.shape[-1] != self.num_slices or len(locations) != windows.shape[0]:
            raise ValueError(
                f"SharedEarlyStage expects windows (n, C, H, W, {self.num_slices}) with one location each, got shape "
                f"{list(windows.shape)} and {len(locations)} locations; use it through SliceGroupInferer(num_slices="
                f"{self.num_slices}, share_early_stage=True)."
            )
        keys = [self._keys(location) for location in locations]
        missing: dict[tuple[int, ...], tuple[int, int]] = {}  # key -> (window, mini-group) that holds it
        for i, row in enumerate(keys):
            for g, key in enumerate(row):
                if key not in self.cache and key not in missing:
                    missing[key] = (i, g)
        if missing:
            s = self.group_size
            slices = torch.stack([windows[i, ..., g * s : (g + 1) * s] for i, g in missing.values()])
            features = self.network.early_features(slices)  # (m, ...)
            for m, key in enumerate(missing):
                self.cache[key] = features[m].clone()  # its own storage, freed when evicted
            del slices, features
        early = self._stack([[self.cache[key] for key in row] for row in keys])
        last = keys[-1][0]
        self.cache = {key: value for key, value in self.cache.items() if key > last}
        size = None if self.low_resolution else windows.shape[2:4]
        return self.network.forward_from_early(early, size)  # (n, O, H, W, k), or (n, O, h, w, k)

    def _stack(self, maps: list[list[torch.Tensor]]) -> torch.Tensor:
        """The maps ``(E, *s)`` of each window's ``G`` mini-groups stacked ``(n, G, E, *s)`` into storage kept from call
        to call: a fresh stack of a call's maps (37.7 MB for 4 groups of 4 maps 256 x 48 x 48) would be mapped and
        faulted in anew every time. Each window's ``G`` maps lie side by side around their channels, in the maps'
        own layout otherwise (channels-last from the early stage's convolutions: memory ``(n, *s, G, E)``), so
        that the network's ``(n, G * E, *s)`` view of them needs no copy and the maps' copies into the stack no
        transposing. A contiguous stack took both: thickened 2D's whole 192x192x96 volume spent 0.36 s in them
        against 0.17 s now (2 threads)."""
        first, n, g = maps[0][0], len(maps), len(maps[0])
        buffer = self.stacked
        if (
            buffer is None
            or buffer.shape[0] < n
            or buffer.shape[1:] != (g, *first.shape)
            or list(buffer.stride()) != _stack_strides(first, list(buffer.shape))
            or buffer.dtype != first.dtype
            or buffer.device != first.device
        ):
            shape = [n, g, *first.shape]
            buffer = torch.empty_strided(shape, _stack_strides(first, shape), dtype=first.dtype, device=first.device)
            self.stacked = buffer
        for i, row in enumerate(maps):
            for j, m in enumerate(row):
                buffer[i, j].copy_(m)
        return buffer[:n]


def _stack_strides(first: torch.Tensor, shape: list[int]) -> list[int]:
    """Dense strides of a stack ``shape = (n, G, *first.shape)`` laid out as ``first`` is, with the mini-group axis
    ``G`` just outside ``first``'s channel axis (axis 2 of the stack)."""
    order = [d + 2 for d in sorted(range(first.dim()), key=lambda d: -first.stride(d))]  # outermost first
    order.insert(order.index(2), 1)
    strides, step = [0] * len(shape), 1
    for d in reversed([0, *order]):
        strides[d] = step
        step *= shape[d]
    return strides
