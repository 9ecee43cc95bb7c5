"""Inferers for networks that run a 3D context encoder once per volume and a 2D path over its slices (SCAA)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.inferers import Inferer
from torch import nn

from monai_ext.inferers.pad import PadInferer
from monai_ext.networks.layout import tensor_dim

__all__ = ["CPU_CHUNK_BYTES", "ContextSliceInferer", "SliceTrainingPadInferer", "context_slice_chunk"]

_STAGES = ("encode_context", "forward_slices", "spatial_dim")

CPU_CHUNK_BYTES = 24 * 2**20
"""On a CPU, the automatic slice chunk keeps the widest full-resolution map of the 2D path within this many bytes:
below glibc's largest mmap threshold (32 MiB), so such maps come from reused heap memory instead of fresh pages that
fault on first touch."""

DEVICE_SLICE_CHUNK = 16
"""The automatic slice chunk on other devices (and for networks that do not give ``slice_channels``)."""


def context_slice_chunk(network: Any, inputs: torch.Tensor, spatial_dim: int) -> int:
    """The automatic ``slice_chunk`` of :class:`ContextSliceInferer` for ``inputs`` ``(B, C, *spatial)`` with slices
    along ``spatial_dim``: on a CPU, as many slices as keep ``B * network.slice_channels`` float32 maps of one slice's
    size within :data:`CPU_CHUNK_BYTES` (at least 1); :data:`DEVICE_SLICE_CHUNK` elsewhere or without
    ``slice_channels``."""
    channels = getattr(network, "slice_channels", None)
    if inputs.device.type != "cpu" or not isinstance(channels, int):
        return DEVICE_SLICE_CHUNK
    plane = inputs.shape[2:].numel() // inputs.shape[tensor_dim(spatial_dim)]
    return max(1, CPU_CHUNK_BYTES // (inputs.shape[0] * channels * plane * 4))


class ContextSliceInferer(Inferer):
    """Whole-volume inference of a context network: the 3D context once per volume, then the slices in chunks.

    For networks that expose SCAA's two stages (:class:`~monai_ext.networks.nets.SCAA`, Tang et al., WACV 2021,
    https://arxiv.org/abs/2012.09279): ``network.encode_context(x)`` runs the 3D encoder on the whole volume, and
    ``network.forward_slices(x, context, slice_indices)`` runs the 2D path on the given slices along
    ``network.spatial_dim``. The result equals ``network(x)`` (every slice at once), while the 2D activations never
    exceed ``slice_chunk`` slices. A network wrapped in ``DataParallel`` / ``DistributedDataParallel`` is unwrapped.

    The network takes only the sizes it can compute on; for volumes of any size, wrap this inferer in a
    :class:`~monai_ext.inferers.PadInferer` (``monai_ext.networks.nets.scaa_inferer()`` builds the SCAA bundle's)::

        inferer = PadInferer(net.divisor, net.min_size, inferer=ContextSliceInferer())
        logits = inferer(volume, net)  # volume (B, C, H, W, D), any size

    Inside a :class:`~monai_ext.inferers.PadInferer` it receives the unpadded sizes (``valid_size``, see
    ``takes_valid_size``) and hands them to ``forward_slices``, so that SCAA's MSFA gives the padded depth slices no
    attention.

    Args:
        slice_chunk: slices per pass through the 2D path; None (default): chosen per volume by
            :func:`context_slice_chunk`. On a CPU that is as many slices as keep the network's widest full-resolution
            2D map (``network.slice_channels`` channels per slice) within :data:`CPU_CHUNK_BYTES`: 2 slices of
            192 x 192 for SCAA*, 1 of 512 x 512. Larger chunks there make maps above glibc's mmap threshold, whose
            fresh pages fault on first touch in every chunk (SCAA*, 192 x 192 x 96: 16 slices 8.6-9.0 s, 2 slices
            6.4-7.2 s on 2 threads). On other devices, 16.

    Shapes:
        ``inputs`` ``(B, C, *spatial)``; returns ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: for a ``slice_chunk`` other than None or a positive integer.
        TypeError: when called with a network that lacks ``encode_context``, ``forward_slices`` or ``spatial_dim``.
    """

    takes_valid_size = True  # PadInferer passes the unpadded sizes

    def __init__(self, slice_chunk: int | None = None) -> None:
        super().__init__()
        if slice_chunk is not None and (
            isinstance(slice_chunk, bool) or not isinstance(slice_chunk, int) or slice_chunk < 1
        ):
            raise ValueError(f"slice_chunk must be a positive integer or None (automatic), got {slice_chunk!r}.")
        self.slice_chunk = slice_chunk

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        """Logits of every slice of ``inputs``; ``args`` and ``kwargs`` (``valid_size`` included, where given) go to
        ``network.forward_slices``."""
        net = network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
        missing = [name for name in _STAGES if not hasattr(net, name)]
        if missing:
            raise TypeError(
                f"ContextSliceInferer needs a network with {list(_STAGES)} (e.g. monai_ext.networks.nets.SCAA); "
                f"{type(net).__name__} lacks {missing}."
            )
        dim = tensor_dim(net.spatial_dim)
        context = net.encode_context(inputs)
        slices = torch.arange(inputs.shape[dim], device=inputs.device)
        step = self.slice_chunk or context_slice_chunk(net, inputs, net.spatial_dim)
        chunks = [net.forward_slices(inputs, context, idx, *args, **kwargs) for idx in slices.split(step)]
        return torch.cat(chunks, dim=dim)


class SliceTrainingPadInferer(PadInferer):
    """:class:`~monai_ext.inferers.PadInferer` for the training pass of a context network (SCAA) on whole volumes.

    Called with ``slice_indices`` (as :class:`~monai_ext.engines.RandomSlicesPrepareBatch` hands them to MONAI's
    ``SupervisedTrainer``), it pads the volume at the far end of every axis as PadInferer does, runs the inner
    inferer (default :class:`monai.inferers.SimpleInferer`: ``network(x, slice_indices=...)``) and crops the list the
    network returns, ``[slice_logits, *lower-resolution outputs]`` (SCAA: ``[slice_logits, aux_logits]``):

    - the first, the logits of the ``S`` given slices ``(B, K, *padded spatial)`` with ``S`` in place of the slice
      axis, on every axis of the padded size (the slice axis holds the ``S`` slices and is kept);
    - each further one at its own resolution: an axis of ``P / f`` values, ``P`` the padded size, is cropped to
      ``ceil(size / f)`` values (SCAA's auxiliary head: ``f = 2``).

    The indices count slices of the unpadded volume, which keep their place since the padding is at the far end.
    As in PadInferer, a network whose ``forward`` takes ``valid_size`` (SCAA) gets the unpadded sizes.
    Without ``slice_indices`` it is a PadInferer. Where the volumes already have sizes the network takes, MONAI's
    ``SimpleInferer`` gives the same result.

    Args:
        divisor, min_size, inferer, mode: as :class:`~monai_ext.inferers.PadInferer`.

    Shapes:
        ``inputs`` ``(B, C, *spatial)``; returns the network's list, cropped: ``(B, K, *spatial)`` with ``S`` on the
        slice axis, then ``(B, K, *ceil(spatial / f))``.

    Raises:
        ValueError: as PadInferer; for an output that is not a non-empty list of tensors, or an output axis whose
            size does not divide the padded size.
    """

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> torch.Tensor | list[torch.Tensor]:
        if kwargs.get("slice_indices") is None:
            return super().__call__(inputs, network, *args, **kwargs)
        x, sizes, target = self.pad(inputs)
        if self.wants_valid_size(network):
            kwargs["valid_size"] = sizes
        outputs = self.inferer(x, network, *args, **kwargs)
        if not isinstance(outputs, (list, tuple)) or not outputs or not all(torch.is_tensor(o) for o in outputs):
            raise ValueError(
                f"with slice_indices the network must return a list [slice_logits, *lower-resolution outputs], got "
                f"{type(outputs).__name__}."
            )
        return [self._crop(out, sizes, target, keep_other=i == 0) for i, out in enumerate(outputs)]

    @staticmethod
    def _crop(out: torch.Tensor, sizes: list[int], target: list[int], keep_other: bool) -> torch.Tensor:
        """Crop each spatial axis of ``out`` computed on the padded size ``target`` back to ``sizes`` at its
        resolution; with ``keep_other``, axes not of the padded size are kept (the slice axis of the slice logits)."""
        for axis, (size, padded) in enumerate(zip(sizes, target)):
            n = out.shape[axis + 2]
            if n == padded:
                out = out.narrow(axis + 2, 0, size)
            elif keep_other:
                continue
            elif n == 0 or padded % n:
                raise ValueError(
                    f"output axis {axis} has {n} values, not a fraction 1/f of the padded size {padded}: cannot "
                    f"crop it back to the input's {size}."
                )
            else:
                out = out.narrow(axis + 2, 0, -(-size // (padded // n)))  # ceil(size / f)
        return out
