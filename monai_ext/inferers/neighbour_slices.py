"""2.5D inference: every slice reaches a 2D network with its neighbouring slices as extra channels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import SliceInferer

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, tensor_dim

__all__ = ["NeighbourSliceInferer", "neighbour_channels"]


def neighbour_channels(x: torch.Tensor, spatial_dim: int = DEFAULT_SPATIAL_DIM, neighbours: int = 1) -> torch.Tensor:
    """Stack each slice's ``neighbours`` nearest slices on either side onto the channels: ``(B, C, H, W, D)`` ->
    ``(B, (2 * neighbours + 1) * C, H, W, D)``, the channels ordered from the farthest slice before to the farthest
    slice after; the end slices repeat at the volume's borders.

    Raises:
        ValueError: for a tensor that is not 5D, a bad ``spatial_dim`` or ``neighbours < 0``.
    """
    check_spatial_dim(spatial_dim)
    if x.dim() != 5 or neighbours < 0:
        raise ValueError(f"need a (B, C, H, W, D) tensor and neighbours >= 0, got {list(x.shape)} and {neighbours}.")
    if neighbours == 0:
        return x
    dim, depth = tensor_dim(spatial_dim), x.shape[tensor_dim(spatial_dim)]
    index = torch.arange(depth, device=x.device)
    shifted = [x.index_select(dim, (index + k).clamp(0, depth - 1)) for k in range(-neighbours, neighbours + 1)]
    return torch.cat(shifted, dim=1)


class NeighbourSliceInferer(SliceInferer):
    """MONAI's :class:`~monai.inferers.SliceInferer` for a 2.5D network: each slice reaches the 2D network with its
    ``neighbours`` nearest slices on either side as extra channels (:func:`neighbour_channels`).

    Args:
        spatial_dim: the slice axis, 0-2 over the spatial axes (default 2, the last), as SliceInferer.
        neighbours: slices on either side (default 1: three slices per prediction).
        args, kwargs: :class:`~monai.inferers.SliceInferer`'s (``roi_size`` 2D, ``sw_batch_size``, ...).

    Shapes:
        ``inputs`` ``(B, C, H, W, D)``; the network takes ``(n, (2 * neighbours + 1) * C, *roi)``; returns
        ``(B, K, H, W, D)``.

    Raises:
        ValueError: for a bad ``spatial_dim`` or ``neighbours < 0``.
    """

    def __init__(self, spatial_dim: int = DEFAULT_SPATIAL_DIM, neighbours: int = 1, *args: Any, **kwargs: Any) -> None:
        check_spatial_dim(spatial_dim)
        if neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {neighbours}.")
        super().__init__(spatial_dim, *args, **kwargs)
        self.neighbours = neighbours

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return super().__call__(neighbour_channels(inputs, self.spatial_dim, self.neighbours), network, *args, **kwargs)
