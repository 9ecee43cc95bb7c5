"""Whole-volume inference with a network that segments groups of k consecutive slices (thickened 2D)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer, SlidingWindowInferer
from monai.utils import convert_to_dst_type
from torch.nn import functional as F

from monai_ext.inferers.pad import PadInferer
from monai_ext.inferers.shared_early_stage import SharedEarlyStage
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, slices_last, slices_restored

__all__ = ["SliceGroupInferer"]

_PADDING_MODES = ("replicate", "constant")
_ACTIVATIONS = (None, "softmax", "sigmoid")


class _Activated:
    """``network`` followed by a softmax (over channels) or sigmoid: the callable the sliding window averages."""

    def __init__(self, network: Callable[..., torch.Tensor], activation: str) -> None:
        self.network, self.activation = network, activation

    def __call__(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.network(x, *args, **kwargs)
        return torch.softmax(out, dim=1) if self.activation == "softmax" else torch.sigmoid(out)


def _zoomed_size(size: int, out: int) -> int:
    """The smallest ``m >= out`` that MONAI's sliding window maps back to itself when a window of ``size`` (the
    whole axis) returns ``m`` on that axis: it sizes and places outputs at ``int(size * (m / size))``, which float
    round-off puts one below ``m`` for some sizes (``size`` 47, ``m`` 12 gives 11); ``m = size`` always holds."""
    m = out
    while int(size * (m / float(size))) != m:
        m += 1
    return m


class _AveragedThenUpsampled(Inferer):
    """A sliding window over a thickened-2D network's logits at its decoder resolution
    (:class:`~monai_ext.inferers.SharedEarlyStage` with ``low_resolution``), then the network's ``upsample`` of the
    averaged volume: bilinear upsampling is linear, so this is the average of the upsampled logits, with one
    upsampling per slice instead of one per group that holds it. Where MONAI's arithmetic for outputs of another
    size than the window would miss the logits' size, they are zero-padded at the far end to a size it maps exactly
    (:func:`_zoomed_size`) and cropped back before upsampling."""

    def __init__(self, sliding: Inferer) -> None:
        super().__init__()
        self.sliding = sliding

    def __call__(self, inputs: torch.Tensor, network: SharedEarlyStage) -> torch.Tensor:  # type: ignore[override]
        size = tuple(inputs.shape[2:4])
        logits_size: list[int] = []

        def predictor(windows: torch.Tensor, locations: Any) -> torch.Tensor:
            low = network(windows, locations)  # (n, O, h, w, k)
            logits_size[:] = low.shape[2:4]
            pad = [_zoomed_size(n, m) - m for n, m in zip(size, logits_size)]
            return F.pad(low, (0, 0, 0, pad[1], 0, pad[0])) if any(pad) else low

        mean = self.sliding(inputs, predictor)
        return network.network.upsample(mean[:, :, : logits_size[0], : logits_size[1]], size)


def _group_overlap(num_slices: int, stride: int) -> float:
    """``(k - stride) / k``, lowered by float round-off where needed so that MONAI's scan interval
    ``int(k * (1 - overlap))`` is exactly ``stride`` (e.g. ``k = 12``, stride 2 would otherwise give 1)."""
    overlap = (num_slices - stride) / num_slices
    while int(num_slices * (1 - overlap)) < stride:
        overlap = math.nextafter(overlap, 0.0)
    return overlap


class SliceGroupInferer(Inferer):
    """Slide groups of ``num_slices`` consecutive slices along spatial axis ``spatial_dim`` of a volume and average
    every slice's predictions over the groups that contain it (Yu et al., "Thickened 2D Networks for Efficient 3D
    Medical Image Segmentation", 2019, https://arxiv.org/abs/1904.01150: stride 1, so ``k - 1`` slices of overlap).

    The sliding and averaging are MONAI's :class:`~monai.inferers.SlidingWindowInferer` on the volume with its slice
    axis moved last: ``roi_size=(-1, -1, k)``, ``overlap=(0, 0, (k - stride) / k)``, ``mode="constant"``. Groups start
    at ``0, stride, 2 stride, ...``, with one more group ending at the last slice when the stride steps over it.
    This class adds only what MONAI lacks: the slice axis ``spatial_dim`` (moved last for the network and back),
    and volumes thinner than ``k``, padded at the far end (``padding_mode``) and cropped back
    (:class:`~monai_ext.inferers.PadInferer`; MONAI would pad both ends).

    The network receives slabs ``(n, C, H', W', num_slices)`` (``H'``, ``W'`` the other two spatial axes in order)
    and must return ``(n, O, H', W', num_slices)``: :class:`~monai_ext.networks.nets.Thickened2DNet`'s layout. The
    returned values are the mean over groups of the network outputs (``activation=None``, the default: logits for our
    network), or of their softmax over channels or sigmoid (``activation="softmax"`` / ``"sigmoid"``: averaged
    probabilities in ``[0, 1]``, what the paper thresholds).

    With ``share_early_stage``, a network that computes each mini-group of slices apart in its early stage (ESM:
    :class:`~monai_ext.networks.nets.Thickened2DNet` with an ``"esm*"`` config, in eval mode) runs that stage once
    per mini-group instead of once per group holding it (up to ``k / group_size`` times at stride 1), through
    :class:`~monai_ext.inferers.SharedEarlyStage`; the sliding, blending and padding are the same MONAI calls, so the
    output equals the plain path up to float round-off. Other networks, a network in training mode, or a call with
    extra network arguments take the plain path. On that shared path, when the groups' logits are averaged as they
    are (``activation=None``), the sliding window averages the logits at the network's decoder resolution and the
    network upsamples each slice of the average once (the same values up to float round-off: the upsampling is
    linear), instead of upsampling every group's slab and adding it at full resolution.

    Args:
        num_slices: slices per group ``k``.
        spatial_dim: spatial axis to slide along, 0, 1 or 2 (default 2: the last axis, axial after RAS).
        stride: slices between the starts of consecutive groups, ``1 <= stride <= num_slices`` (default 1).
        sw_batch_size: groups per network call (default 1).
        padding_mode: ``"replicate"`` (repeat the last slice, default) or ``"constant"`` (zeros) for volumes
            thinner than ``num_slices``.
        activation: ``None`` (average the network outputs as they are, default), ``"softmax"`` (over the channel
            axis) or ``"sigmoid"``, applied to every group's output before averaging.
        share_early_stage: compute each mini-group's early stage once where the network supports it (above;
            default False: every group runs the whole network).
        sw_device: device of the network calls (default: the input's); ``device``: device of the output
            (default: the input's).

    Shapes:
        ``inputs`` ``(B, C, H, W, D)``; returns ``(B, O, H, W, D)``, a MetaTensor with the input's meta data when
        the input is one.

    Raises:
        ValueError: for non-positive sizes, ``stride > num_slices`` (slices would be skipped), a bad
            ``spatial_dim``, ``padding_mode`` or ``activation``; on a call for an input that is not 5D.
    """

    def __init__(
        self,
        num_slices: int,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        stride: int = 1,
        sw_batch_size: int = 1,
        padding_mode: str = "replicate",
        activation: str | None = None,
        share_early_stage: bool = False,
        sw_device: torch.device | str | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        if num_slices < 1 or stride < 1 or sw_batch_size < 1:
            raise ValueError(
                f"num_slices, stride and sw_batch_size must be positive, got {num_slices}, {stride}, {sw_batch_size}."
            )
        if stride > num_slices:
            raise ValueError(
                f"stride ({stride}) must be at most num_slices ({num_slices}): larger strides skip slices."
            )
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {_ACTIVATIONS}, got {activation!r}.")
        self.num_slices = num_slices
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self.stride = stride
        self.sw_batch_size = sw_batch_size
        self.padding_mode = padding_mode
        self.activation = activation
        self.share_early_stage = share_early_stage

        def sliding(with_coord: bool) -> SlidingWindowInferer:
            overlap = (0.0, 0.0, _group_overlap(num_slices, stride))
            return SlidingWindowInferer(
                roi_size=(-1, -1, num_slices),
                sw_batch_size=sw_batch_size,
                overlap=overlap,
                mode="constant",
                padding_mode=padding_mode,
                sw_device=sw_device,
                device=device,
                with_coord=with_coord,
            )

        self.sliding = sliding(with_coord=False)
        self.inferer = PadInferer(min_size=(1, 1, num_slices), inferer=self.sliding, mode=padding_mode)
        # the same sliding window that also passes each window's location, for SharedEarlyStage
        self.shared_inferer = PadInferer(min_size=(1, 1, num_slices), inferer=sliding(True), mode=padding_mode)
        # that sliding window over the logits at the network's decoder resolution, then one upsampling
        self.low_resolution_inferer = PadInferer(
            min_size=(1, 1, num_slices), inferer=_AveragedThenUpsampled(self.shared_inferer.inferer), mode=padding_mode
        )

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        if inputs.dim() != 5:
            raise ValueError(
                f"SliceGroupInferer expects a (B, C, H, W, D) volume, got shape {list(inputs.shape)}; add the batch "
                "and channel axes (e.g. EnsureChannelFirstd and a DataLoader)."
            )
        x = slices_last(inputs.as_subclass(torch.Tensor), self.spatial_dim)  # (B, C, H', W', D')
        inferer = self.inferer
        if self.share_early_stage and not args and not kwargs and SharedEarlyStage.supports(network):
            if self.activation is None:
                inferer, network = self.low_resolution_inferer, SharedEarlyStage(network, low_resolution=True)  # type: ignore[arg-type]
            else:
                inferer, network = self.shared_inferer, SharedEarlyStage(network)  # type: ignore[arg-type]
        if self.activation is not None:
            network = _Activated(network, self.activation)
        result = slices_restored(inferer(x, network, *args, **kwargs), self.spatial_dim)
        if isinstance(inputs, MetaTensor):
            return convert_to_dst_type(result, inputs, device=result.device)[0]
        return result
