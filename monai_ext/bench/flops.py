"""FLOP counts (2 x multiply-adds) of the networks as their layers are written.

``torch.utils.flop_counter.FlopCounterMode`` counts aten's convolutions. Our fast CPU layers
(:mod:`monai_ext.networks.blocks.cpu_conv`) call oneDNN's convolution directly on small 3D maps, which it does not
count, and give a one-channel 2D convolution a zero channel, which it would count; within :func:`counting_flops`
they run as the convolutions they compute. Every suite counts through it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch.utils.flop_counter import FlopCounterMode

from monai_ext.networks.blocks.cpu_conv import plain_convolutions

__all__ = ["counting_flops"]


@contextlib.contextmanager
def counting_flops(custom_mapping: dict[object, Callable] | None = None) -> Iterator[FlopCounterMode]:
    """A ``FlopCounterMode`` (no display; ``custom_mapping`` as it takes it) around :func:`plain_convolutions`; yields
    the counter (``get_total_flops()``, ``get_flop_counts()``)."""
    with plain_convolutions(), FlopCounterMode(display=False, custom_mapping=custom_mapping) as counter:
        yield counter
