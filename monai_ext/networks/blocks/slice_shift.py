"""Channel shift along a slice axis (SSH-UNet, after the Temporal Shift Module)."""

from __future__ import annotations

import torch
from torch import nn

from monai_ext.networks.blocks.folded import place_shifted, slices_per_chunk
from monai_ext.networks.capture import capturing
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim

__all__ = ["SliceShift", "shift_along", "slice_shift", "slice_shift_folded"]

_PLACEMENTS = ("ends", "leading")


def shift_along(x: torch.Tensor, spatial_dim: int, step: int) -> torch.Tensor:
    """Move the content of ``x`` ``(B, C, *spatial)`` by one position along spatial axis ``spatial_dim``, filling
    the vacated end with zeros.

    ``step=+1`` gives ``out[s] = x[s - 1]``; ``step=-1`` gives ``out[s] = x[s + 1]``; ``step=0`` returns ``x``.
    """
    return _shift_dim(x, spatial_dim + 2, step)


def _shift_dim(x: torch.Tensor, dim: int, step: int) -> torch.Tensor:
    """:func:`shift_along` on tensor axis ``dim``."""
    if step == 0:
        return x
    n = x.shape[dim]
    if n <= 1:
        return torch.zeros_like(x)
    zeros = torch.zeros_like(x.narrow(dim, 0, 1))
    if step > 0:
        return torch.cat([zeros, x.narrow(dim, 0, n - 1)], dim=dim)
    return torch.cat([x.narrow(dim, 1, n - 1), zeros], dim=dim)


def slice_shift(
    x: torch.Tensor,
    spatial_dim: int = DEFAULT_SPATIAL_DIM,
    fold_div: int = 4,
    placement: str = "ends",
    directions: tuple[int, int] = (1, -1),
) -> torch.Tensor:
    """Functional form of :class:`SliceShift` on ``(B, C, *spatial)`` (see there for the arguments). Returns a new
    tensor."""
    return _shift_channels(x, 1, spatial_dim + 2, fold_div, placement, directions)


def slice_shift_folded(
    x: torch.Tensor,
    batch: int,
    fold_div: int = 4,
    placement: str = "ends",
    directions: tuple[int, int] = (1, -1),
    inplace: bool = False,
) -> torch.Tensor:
    """:func:`slice_shift` along the slices of a folded view (:mod:`monai_ext.networks.blocks.folded`):
    ``(N * S, C, A, B)``, channels-last, slice ``s`` of sample ``n`` at batch index ``n * S + s``, ``N = batch``.
    Equals ``to_folded(slice_shift(unfold(x, batch), 2, ...))``; returns a new channels-last tensor (each channel
    group written from its source slices, :func:`~monai_ext.networks.blocks.folded.place_shifted`; where autograd
    records, the backward is the opposite shift), or with ``inplace`` (only where autograd records nothing) ``x``
    itself, its moving channels moved in slice chunks of at most
    :data:`~monai_ext.networks.blocks.folded.CHUNK_BYTES` through a small temporary."""
    ns, c, a, b = x.shape
    if capturing() or inplace:
        memory = x.permute(0, 2, 3, 1).reshape(batch, ns // batch, a, b, c)  # a view of channels-last x
        if inplace:
            _shift_in_place(memory, fold_div, placement, directions)
            return x
        # exported graphs take concatenations rather than writes into slices
        out = _shift_channels(memory, 4, 1, fold_div, placement, directions)
        return out.reshape(ns, a, b, c).permute(0, 3, 1, 2)
    groups = _groups(c, fold_div, placement, directions)
    if torch.jit.is_scripting() or not torch.is_grad_enabled():
        return _shifted(x, batch, groups)
    return _shift_with_grad(x, batch, groups)


def _shifted(x: torch.Tensor, batch: int, groups: list[tuple[int, int, int]]) -> torch.Tensor:
    """``x`` ``(N * S, C, A, B)`` with its channel ``groups`` moved along the slices of each sample, into a new
    channels-last tensor."""
    out = torch.empty_like(x, memory_format=torch.channels_last)
    slices = x.shape[0] // batch
    for first in range(0, x.shape[0], slices):
        place_shifted(out, x.narrow(0, first, slices), first, True, True, groups)
    return out


class _ShiftFolded(torch.autograd.Function):
    """:func:`_shifted` whose backward is the opposite shift of the gradient (a shift moves values and zeroes the
    vacated end, so its adjoint moves them back): one copy each way, where autograd would record a clone of the whole
    gradient for each write into a slice."""

    @staticmethod
    def forward(ctx, x, batch, groups):  # noqa: D102
        ctx.batch = batch
        ctx.opposite = [(start, size, -step) for start, size, step in groups]
        return _shifted(x, batch, groups)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        return _shifted(grad, ctx.batch, ctx.opposite), None, None


@torch.jit.unused
def _shift_with_grad(x: torch.Tensor, batch: int, groups: list[tuple[int, int, int]]) -> torch.Tensor:
    return _ShiftFolded.apply(x, batch, groups)


def _shift_in_place(memory: torch.Tensor, fold_div: int, placement: str, directions: tuple[int, int]) -> None:
    """The shift of :func:`slice_shift_folded` written over ``memory`` ``(N, S, A, B, C)``: each moving group is
    copied chunk by chunk, starting at the end it moves towards, so no chunk reads slices already overwritten."""
    slices, c = memory.shape[1], memory.shape[4]
    for start, size, step in _groups(c, fold_div, placement, directions):
        if step == 0 or size == 0:
            continue
        group = memory.narrow(4, start, size)
        if slices <= 1:
            group.zero_()
            continue
        chunk = slices_per_chunk(group[:, 0].numel() * group.element_size())
        # out[s] = x[s - step] for the slices that receive a neighbour, in chunks taken from the end the content
        # moves towards, so that no chunk reads a slice already overwritten; then the vacated end is zeroed
        first, last = (1, slices) if step > 0 else (0, slices - 1)
        starts = list(range(first, last, chunk))
        if step > 0:
            starts.reverse()
        for lo in starts:
            n = min(chunk, last - lo)
            group.narrow(1, lo, n).copy_(group.narrow(1, lo - step, n).clone())
        group.narrow(1, 0 if step > 0 else slices - 1, 1).zero_()


def _groups(channels: int, fold_div: int, placement: str, directions: tuple[int, int]) -> list[tuple[int, int, int]]:
    """The channel axis cut into three groups: ``(start, size, step along the slice axis)`` for each."""
    fold = channels // fold_div
    if placement == "ends":
        sizes_steps = [(fold, directions[0]), (channels - 2 * fold, 0), (fold, directions[1])]
    else:
        sizes_steps = [(fold, directions[0]), (fold, directions[1]), (channels - 2 * fold, 0)]
    groups: list[tuple[int, int, int]] = []
    start = 0
    for size, step in sizes_steps:
        groups.append((start, size, step))
        start = start + size  # not +=: under tracing the sizes can be tensors
    return groups


def _shift_channels(
    x: torch.Tensor, channel_dim: int, slices_at: int, fold_div: int, placement: str, directions: tuple[int, int]
) -> torch.Tensor:
    """The shift of :class:`SliceShift` with the channels on tensor axis ``channel_dim`` and the slices on tensor
    axis ``slices_at``."""
    if x.shape[channel_dim] // fold_div == 0:
        return x
    parts = []
    for start, size, step in _groups(x.shape[channel_dim], fold_div, placement, directions):
        if size > 0:
            parts.append(_shift_dim(x.narrow(channel_dim, start, size), slices_at, step))
    return torch.cat(parts, dim=channel_dim)


class SliceShift(nn.Module):
    """Shift a fraction of the channels by one position up or down the slice axis, with zeros at the ends.

    The shift gives 2D convolutions (kernel ``(3, 3, 1)`` for slices on the last axis) information from the
    neighbouring slices at no cost in parameters or FLOPs. It is the core of SSH-UNet (Ugwu et al., "Slice Shift
    UNet", https://arxiv.org/abs/2307.12853) and comes from the Temporal Shift Module for video (Lin et al.,
    ICCV 2019, https://arxiv.org/abs/1811.08383).

    ``fold = C // fold_div`` channels move each way:

    - ``placement="ends"`` (SSH-UNet release, the default): the first fold takes ``out[s] = x[s-1]``
      (``directions[0] = +1``), the last fold ``out[s] = x[s+1]`` (``directions[1] = -1``),
      the middle channels stay.
    - ``placement="leading"`` with ``fold_div=8, directions=(-1, 1)`` (TSM): the first fold takes
      ``out[t] = x[t+1]``, the second ``out[t] = x[t-1]``, the rest stay. See :meth:`tsm`.

    Inputs with fewer than ``fold_div`` channels give ``fold = 0`` and pass through unchanged (the
    SSH-UNet release shifts every channel backwards in that case; we do not copy that bug).
    The input is never modified in place.

    Args:
        spatial_dim: the slice axis, counted over the spatial axes of ``(B, C, *spatial)`` as in MONAI's
            ``SliceInferer``: 0, 1 or 2; default 2, the last axis of ``(B, C, H, W, D)``.
        fold_div: ``C // fold_div`` channels move in each direction; at least 2.
        placement: ``"ends"`` (first and last fold move) or ``"leading"`` (first and second fold move).
        directions: the step along the slice axis of the first and of the second moving fold; each +1 or -1.

    Shapes:
        input ``(B, C, *spatial)``, output the same shape.

    Raises:
        ValueError: for a ``spatial_dim`` outside 0-2, ``fold_div < 2``, an unknown ``placement`` or a
            direction other than +1 / -1; in ``forward``, an input without spatial axis ``spatial_dim``.
    """

    def __init__(
        self,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        fold_div: int = 4,
        placement: str = "ends",
        directions: tuple[int, int] = (1, -1),
    ) -> None:
        super().__init__()
        check_spatial_dim(spatial_dim)
        if int(fold_div) < 2:
            raise ValueError(
                f"fold_div must be an integer >= 2 (C // fold_div channels move each way), got {fold_div}."
            )
        if placement not in _PLACEMENTS:
            raise ValueError(f"placement must be one of {_PLACEMENTS}, got {placement!r}.")
        if len(directions) != 2 or any(d not in (1, -1) for d in directions):
            raise ValueError(f"directions must be two steps, each +1 or -1, got {directions!r}.")
        self.spatial_dim = int(spatial_dim)
        self.fold_div = int(fold_div)
        self.placement = placement
        self.directions = (int(directions[0]), int(directions[1]))

    @classmethod
    def tsm(cls, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> SliceShift:
        """The Temporal Shift Module's semantics: fold = C // 8, first fold from t+1, second fold from t-1."""
        return cls(spatial_dim=spatial_dim, fold_div=8, placement="leading", directions=(-1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < self.spatial_dim + 3:
            raise ValueError(
                f"SliceShift(spatial_dim={self.spatial_dim}) needs an input (B, C, *spatial) with at least "
                f"{self.spatial_dim + 1} spatial axes, got shape {list(x.shape)}."
            )
        return slice_shift(x, self.spatial_dim, self.fold_div, self.placement, self.directions)

    def groups(self, channels: int) -> list[tuple[int, int, int]]:
        """The channel groups of ``channels`` as ``(start, size, step along the slices)``, as
        :func:`~monai_ext.networks.blocks.folded.conv_folded` takes them to shift its output; empty when no channel
        moves (fewer than ``fold_div`` channels)."""
        if channels // self.fold_div == 0:
            return []
        return _groups(channels, self.fold_div, self.placement, self.directions)

    def forward_folded(self, x: torch.Tensor, batch: int, inplace: bool = False) -> torch.Tensor:
        """The shift on a folded view ``(N * S, C, A, B)`` (channels-last, ``N = batch``) along its slices, see
        :func:`slice_shift_folded` (``inplace`` too); for the views of :class:`~monai_ext.networks.nets.SSHUNet`,
        whose slices are their last axis, this is ``forward`` when ``spatial_dim`` is 2."""
        return slice_shift_folded(x, batch, self.fold_div, self.placement, self.directions, inplace)

    def extra_repr(self) -> str:
        return (
            f"spatial_dim={self.spatial_dim}, fold_div={self.fold_div}, placement={self.placement!r}, "
            f"directions={self.directions}"
        )
