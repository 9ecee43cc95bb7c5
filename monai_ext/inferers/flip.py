"""Mirroring test-time augmentation (nnU-Net's and CoTr's "mirror" TTA) around any MONAI inferer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import combinations

import torch
from monai.inferers import Inferer

from monai_ext.networks.layout import tensor_dim

__all__ = ["FlipInferer", "flip_combinations"]


def flip_combinations(spatial_axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every non-empty subset of ``spatial_axes``: the mirrorings nnU-Net averages (7 for three axes)."""
    axes = sorted(set(spatial_axes))
    return [c for n in range(1, len(axes) + 1) for c in combinations(axes, n)]


class FlipInferer(Inferer):
    """Average an inferer's outputs over the input and its mirror images along every subset of ``spatial_axes``.

    Each mirrored input goes through ``inferer`` (e.g. a ``SlidingWindowInferer``) and its output is flipped
    back before averaging, so the result is on the input's grid. With ``spatial_axes=()`` it is ``inferer`` alone.

    Args:
        inferer: the inferer to wrap.
        spatial_axes: the spatial axes to mirror, counted as ``spatial_dim`` is (0 = the first spatial axis, H), e.g.
            ``(0, 1, 2)`` (default) for 8 passes in 3D. These are mirror axes, not a slice axis.
        activation: applied to each output before averaging (e.g. ``partial(torch.softmax, dim=1)`` to average
            probabilities, as nnU-Net does); default: the raw outputs (logits) are averaged.

    Shapes:
        inputs ``(B, C, *spatial)``; output: what ``inferer`` returns, ``(B, K, *spatial)``.

    Raises:
        ValueError: for an axis outside the input's spatial axes, or a network returning a list (deep supervision
            outputs are not averaged: run the network in eval mode).
    """

    def __init__(
        self,
        inferer: Inferer,
        spatial_axes: Sequence[int] = (0, 1, 2),
        activation: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if any(a < 0 for a in spatial_axes):
            raise ValueError(f"spatial_axes count from 0 (the first spatial axis), got {list(spatial_axes)}.")
        self.inferer = inferer
        self.flips = flip_combinations(spatial_axes)
        self.activation = activation or (lambda t: t)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs) -> torch.Tensor:
        spatial = inputs.dim() - 2
        if any(a >= spatial for flip in self.flips for a in flip):
            raise ValueError(f"spatial_axes must be below {spatial} for input shape {list(inputs.shape)}.")

        def run(x: torch.Tensor) -> torch.Tensor:
            out = self.inferer(x, network, *args, **kwargs)
            if not isinstance(out, torch.Tensor):
                raise ValueError("FlipInferer averages one output tensor; the network returned several.")
            return self.activation(out)

        total = run(inputs)
        for flip in self.flips:
            dims = [tensor_dim(a) for a in flip]
            total = total + run(torch.flip(inputs, dims)).flip(dims)
        return total / (len(self.flips) + 1)
