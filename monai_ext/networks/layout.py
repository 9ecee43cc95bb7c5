"""The slice-axis rule that every block, network, inferer, transform, engine and metric of monai_ext follows.

Tensors are MONAI's ``(B, C, H, W, D)`` (``(C, H, W, D)`` unbatched, in transforms). Whatever needs "the slice
axis" takes ``spatial_dim``: an index over the *spatial* axes, 0, 1 or 2, counted as in MONAI's
:class:`monai.inferers.SliceInferer`. The default, 2, is the last axis: axial slices after
``Orientationd(axcodes="RAS")``. Blocks that work along several axes (RSA, SSH-UNet's three views) name them
the same way, e.g. ``spatial_dims_order=(0, 1, 2)``. The authors' own axis orders appear only in
:mod:`monai_ext.networks.compat`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "DEFAULT_SPATIAL_DIM",
    "check_spatial_axes",
    "check_spatial_dim",
    "slices_last",
    "slices_restored",
    "take_slices",
    "tensor_dim",
]

DEFAULT_SPATIAL_DIM = 2
"""The last spatial axis: axial slices of a RAS-oriented volume."""


def check_spatial_dim(spatial_dim: int, num_spatial: int = 3, name: str = "spatial_dim") -> int:
    """Return ``spatial_dim`` if it indexes one of ``num_spatial`` spatial axes (0 .. num_spatial - 1).

    Raises:
        ValueError: for anything else, naming the valid values (tensor dims such as 4 are refused: they are
            ``2 + spatial_dim`` in a batched tensor).
    """
    if isinstance(spatial_dim, bool) or not isinstance(spatial_dim, int) or not 0 <= spatial_dim < num_spatial:
        raise ValueError(
            f"{name} counts spatial axes as MONAI's SliceInferer does: one of {list(range(num_spatial))} "
            f"(2 = the last axis of (B, C, H, W, D)), got {spatial_dim!r}."
        )
    return spatial_dim


def check_spatial_axes(axes: Sequence[int], num_spatial: int = 3, name: str = "spatial_dims_order") -> tuple[int, ...]:
    """Return ``axes`` as a tuple if it lists distinct spatial axes (see :func:`check_spatial_dim`).

    Raises:
        ValueError: for an empty sequence, a repeated axis or an axis out of range.
    """
    given = list(axes)
    if not given or len(set(given)) != len(given):
        raise ValueError(f"{name} must list distinct spatial axes from {list(range(num_spatial))}, got {given}.")
    return tuple(check_spatial_dim(a, num_spatial, name) for a in given)


def tensor_dim(spatial_dim: int, batched: bool = True) -> int:
    """Tensor dimension of spatial axis ``spatial_dim``: ``2 + spatial_dim`` in ``(B, C, *spatial)``, ``1 +
    spatial_dim`` in ``(C, *spatial)``."""
    return spatial_dim + (2 if batched else 1)


def slices_last(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """Move spatial axis ``spatial_dim`` of ``(B, C, *spatial)`` to the end (the other axes keep their order)."""
    return x.movedim(tensor_dim(spatial_dim), -1)


def slices_restored(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """Undo :func:`slices_last`: move the last axis back to spatial axis ``spatial_dim``."""
    return x.movedim(-1, tensor_dim(spatial_dim))


def take_slices(x: torch.Tensor, indices: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """Given slices of each volume along spatial axis ``spatial_dim``.

    Args:
        x: ``(B, C, *spatial)``.
        indices: ``(B, S)`` integer slice indices per volume (on any device).
        spatial_dim: the slice axis, 0-2 (see :func:`check_spatial_dim`).

    Returns:
        ``(B, C, *spatial)`` with ``S`` in place of the slice axis: slice ``j`` of volume ``b`` is its slice
        ``indices[b, j]``.

    Raises:
        ValueError: for a bad ``spatial_dim``, or ``indices`` that are not ``(B, S)``.
    """
    dim = tensor_dim(check_spatial_dim(spatial_dim, x.dim() - 2))
    if indices.dim() != 2 or indices.shape[0] != x.shape[0]:
        raise ValueError(f"indices must be (B, S) = ({x.shape[0]}, S), got {list(indices.shape)}.")
    batch = torch.arange(x.shape[0], device=x.device).unsqueeze(1)  # (B, 1)
    picked = x.movedim(dim, 2)[batch, :, indices.to(x.device)]  # (B, S, C, *other spatial)
    return picked.movedim(1, 2).movedim(2, dim)
