"""The input check every monai_ext network runs first: rank, channels, finite sizes it can take."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["check_input"]


def _per_axis(value: int | Sequence[int] | None, num_spatial: int) -> list[int] | None:
    if value is None:
        return None
    return [int(value)] * num_spatial if isinstance(value, int) else [int(v) for v in value]


def check_input(
    x: torch.Tensor,
    name: str,
    in_channels: int | None = None,
    spatial_dims: int = 3,
    divisor: int | Sequence[int] | None = None,
    min_size: int | Sequence[int] | None = None,
) -> None:
    """Raise a ValueError that names the problem and the fix unless ``x`` is a valid input of network ``name``.

    Args:
        x: the input, expected ``(B, in_channels, *spatial)`` with ``spatial_dims`` spatial axes
            (``(B, C, H, W, D)`` for volumes).
        name: the network's name, used in the messages.
        in_channels: expected channels (None: any).
        spatial_dims: expected number of spatial axes.
        divisor: every spatial size must be a multiple of this (per axis, or one int for all).
        min_size: every spatial size must be at least this (per axis, or one int for all).

    Raises:
        ValueError: wrong rank, wrong channel count, a size below ``min_size`` or not divisible by ``divisor``.
            Size errors point to MONAI's ``DivisiblePad`` and to the inferers that pad for the network.
    """
    layout = "(B, C, H, W, D)" if spatial_dims == 3 else f"(B, C, *{spatial_dims} spatial)"
    if x.dim() != spatial_dims + 2:
        raise ValueError(f"{name} expects a {spatial_dims + 2}D input {layout}, got shape {list(x.shape)}.")
    if in_channels is not None and x.shape[1] != in_channels:
        raise ValueError(
            f"{name} was built for {in_channels} input channel(s), got {x.shape[1]} (shape {list(x.shape)}); "
            f"build it with in_channels={x.shape[1]} or give {in_channels} channel(s)."
        )
    sizes = list(x.shape[2:])
    minimum = _per_axis(min_size, spatial_dims)
    if minimum is not None and any(s < m for s, m in zip(sizes, minimum)):
        raise ValueError(
            f"{name} needs spatial sizes of at least {minimum}, got {sizes}; pad the input (e.g. "
            f"monai.transforms.SpatialPad) or run it through monai_ext.inferers.PadInferer."
        )
    div = _per_axis(divisor, spatial_dims)
    if div is not None and any(s % d for s, d in zip(sizes, div)):
        raise ValueError(
            f"{name} needs spatial sizes divisible by {div}, got {sizes}; pad the input (e.g. "
            f"monai.transforms.DivisiblePad(k={div})), or infer with a sliding window whose roi_size is divisible, "
            f"or with monai_ext.inferers.PadInferer."
        )
