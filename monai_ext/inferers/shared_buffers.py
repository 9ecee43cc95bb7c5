"""Reuse a network's intermediate buffers across the calls of one inference (the windows of a sliding window)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from monai.inferers import Inferer

__all__ = ["SharedBuffersInferer"]


class SharedBuffersInferer(Inferer):
    """Run ``inferer`` inside the network's ``shared_buffers()`` context, when it has one.

    A sliding-window inferer calls the network once per window; a network with ``shared_buffers()`` (e.g.
    :class:`~monai_ext.networks.nets.SSHUNet`) then keeps the memory of its intermediate maps from one window to the
    next instead of allocating (and, with glibc's default allocator, page-faulting) it again in every window. The
    pool is freed when the call returns. The outputs are those of ``inferer`` alone; for any other network this is
    ``inferer`` unchanged.

    Args:
        inferer: the inferer to wrap (sliding window, slice-wise, ...).

    Shapes:
        as ``inferer``: inputs ``(B, C, *spatial)``, outputs ``(B, K, *spatial)``.
    """

    def __init__(self, inferer: Inferer) -> None:
        super().__init__()
        self.inferer = inferer

    def __call__(self, inputs, network: Callable, *args, **kwargs):
        shared = getattr(network, "shared_buffers", None)
        with shared() if callable(shared) else contextlib.nullcontext():
            return self.inferer(inputs, network, *args, **kwargs)
