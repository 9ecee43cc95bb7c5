"""MONAI's own networks as registry entries: the baselines every method of monai_ext is measured against.

One definition of each baseline, used by the benchmark (:mod:`monai_ext.bench`) and anyone who calls
:func:`~monai_ext.networks.create_network`:

- ``dynunet_3d``: nnU-Net-like 3D :class:`~monai.networks.nets.DynUNet` (kernels 3, filters 32..320, stride 1 then
  2 at every further level), on patches with MONAI's sliding window;
- ``dynunet_2d``: the same network in 2D, run slice by slice with MONAI's :class:`~monai.inferers.SliceInferer`;
- ``dynunet_2_5d``: the 2D network with each slice's neighbours as extra channels
  (:class:`~monai_ext.inferers.NeighbourSliceInferer`);
- ``swinunetr``: :class:`~monai.networks.nets.SwinUNETR`, feature size 48, sliding window;
- ``unetr``: :class:`~monai.networks.nets.UNETR` (ViT-B/16 encoder) built for one input size, its window.

Tensors are MONAI's ``(B, C, H, W, D)``; the slice-wise inferers take ``spatial_dim`` (default 2, the last axis) as
:class:`~monai.inferers.SliceInferer` does (:mod:`monai_ext.networks.layout`).

    >>> import torch
    >>> from monai_ext.networks import create_network, get_network_entry
    >>> net = create_network("dynunet_2d", in_channels=1, out_channels=3)
    >>> logits = get_network_entry("dynunet_2d").make_inferer()(torch.randn(1, 1, 64, 48, 40), net.eval())
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from monai.networks.nets import UNETR, DynUNet, SwinUNETR

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim
from monai_ext.networks.registry import NetworkEntry, register_network

__all__ = [
    "DYNUNET_FILTERS",
    "dynunet",
    "dynunet_2_5d",
    "dynunet_strides",
    "slice_inferer",
    "swinunetr",
    "unetr",
    "window_inferer",
]

DYNUNET_FILTERS = (32, 64, 128, 256, 320, 320)
"""nnU-Net's feature widths: 32 doubling per level, capped at 320 (six levels)."""


def dynunet(
    spatial_dims: int = 3,
    in_channels: int = 1,
    out_channels: int = 2,
    filters: Sequence[int] = DYNUNET_FILTERS,
    strides: Sequence[int | Sequence[int]] | None = None,
    **kwargs: Any,
) -> DynUNet:
    """nnU-Net-like :class:`~monai.networks.nets.DynUNet`: one level per entry of ``filters``, kernels 3, stride 1 at
    the first level and 2 at every further one, transposed-convolution kernels equal to the strides.

    Isensee et al., "nnU-Net", Nature Methods 2021 (https://www.nature.com/articles/s41592-020-01008-z).

    Args:
        spatial_dims: 3 (patches ``(B, C, H, W, D)``) or 2 (slices ``(B, C, H, W)``).
        in_channels, out_channels: input channels and classes.
        filters: feature widths per level, default :data:`DYNUNET_FILTERS` (31.19 M parameters in 3D at 14
            classes, 10.71 M in 2D).
        strides: per level, an int or one per spatial axis; default ``[1, 2, 2, ...]``. Anisotropic patches take
            :func:`dynunet_strides`.
        kwargs: further :class:`~monai.networks.nets.DynUNet` arguments (``norm_name``, ``deep_supervision``, ...).

    Inputs must be divisible by the product of the strides (32 with the defaults): infer with a sliding window
    whose ROI is, or with :class:`~monai_ext.inferers.PadInferer`.

    Raises:
        ValueError: when ``strides`` and ``filters`` differ in length.
    """
    strides = [1] + [2] * (len(filters) - 1) if strides is None else list(strides)
    if len(strides) != len(filters):
        raise ValueError(f"need one stride per level: {len(filters)} filters, got {len(strides)} strides {strides}.")
    kernels = [3] * len(filters)
    return DynUNet(spatial_dims, in_channels, out_channels, kernels, strides, strides[1:], filters=filters, **kwargs)


def dynunet_strides(patch_size: Sequence[int], num_levels: int, min_size: int = 4) -> list[tuple[int, ...]]:
    """nnU-Net's rule for an anisotropic patch: every level after the first halves each axis that stays at least
    ``min_size`` voxels, the others keep stride 1 (e.g. ``(192, 192, 48)``, 6 levels: ``(2, 2, 2)`` three times,
    then ``(2, 2, 1)`` twice).

    Raises:
        ValueError: for ``num_levels < 1`` or ``min_size < 1``.
    """
    if num_levels < 1 or min_size < 1:
        raise ValueError(f"num_levels and min_size must be positive, got {num_levels} and {min_size}.")
    sizes, strides = list(patch_size), [(1,) * len(patch_size)]
    for _ in range(num_levels - 1):
        step = tuple(2 if s // 2 >= min_size else 1 for s in sizes)
        sizes = [s // k for s, k in zip(sizes, step)]
        strides.append(step)
    return strides


def dynunet_2_5d(in_channels: int = 1, neighbours: int = 1, **kwargs: Any) -> DynUNet:
    """2D :func:`dynunet` for 2.5D input: a slice of ``in_channels`` channels and ``neighbours`` slices on either
    side, stacked on channels (``in_channels * (2 * neighbours + 1)`` network channels), as
    :class:`~monai_ext.inferers.NeighbourSliceInferer` feeds it.

    Raises:
        ValueError: for ``neighbours < 0``.
    """
    if neighbours < 0:
        raise ValueError(f"neighbours must be >= 0, got {neighbours}.")
    return dynunet(2, in_channels * (2 * neighbours + 1), **kwargs)


def swinunetr(in_channels: int = 1, out_channels: int = 2, feature_size: int = 48, **kwargs: Any) -> SwinUNETR:
    """:class:`~monai.networks.nets.SwinUNETR` (Hatamizadeh et al. 2022, https://arxiv.org/abs/2201.01266) with
    feature size 48 (62.19 M parameters at 14 classes); inputs divisible by 32."""
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, feature_size=feature_size, **kwargs)


def unetr(in_channels: int = 1, out_channels: int = 2, img_size: Sequence[int] = (96, 96, 96), **kwargs: Any) -> UNETR:
    """:class:`~monai.networks.nets.UNETR` (Hatamizadeh et al. 2022, https://arxiv.org/abs/2103.10504), ViT-B/16
    encoder (92.80 M parameters at 14 classes), built for inputs of exactly ``img_size`` ``(H, W, D)``: infer with
    windows of that size (:func:`window_inferer`'s ``roi_size``)."""
    return UNETR(in_channels, out_channels, img_size=tuple(img_size), **kwargs)


def window_inferer(
    roi_size: Sequence[int] = (96, 96, 96), sw_batch_size: int = 1, overlap: float = 0.25, **kwargs: Any
) -> SlidingWindowInferer:
    """The 3D baselines' whole-volume inferer: MONAI's sliding window over ``roi_size`` patches (96^3, overlap 0.25,
    one window per call); a volume smaller than the window is padded up to it."""
    return SlidingWindowInferer(roi_size, sw_batch_size, overlap, **kwargs)


def slice_inferer(
    spatial_dim: int = DEFAULT_SPATIAL_DIM, neighbours: int = 0, divisor: int = 32, sw_batch_size: int = 16
) -> Inferer:
    """The 2D baselines' whole-volume inferer: whole slices along ``spatial_dim``, ``sw_batch_size`` at a time,
    through MONAI's :class:`~monai.inferers.SliceInferer` (its 2.5D form with ``neighbours > 0``),
    inside a :class:`~monai_ext.inferers.PadInferer` that pads the in-plane axes to a multiple of ``divisor`` (32
    for the default six-level DynUNet)."""
    from monai_ext.inferers import NeighbourSliceInferer, PadInferer  # here: a network module needs no inferer

    check_spatial_dim(spatial_dim)
    roi = {"roi_size": (-1, -1), "sw_batch_size": sw_batch_size}  # -1: the whole slice
    inner = NeighbourSliceInferer(spatial_dim, neighbours, **roi) if neighbours else SliceInferer(spatial_dim, **roi)
    return PadInferer([1 if axis == spatial_dim else divisor for axis in range(3)], inferer=inner)


register_network(
    NetworkEntry("dynunet_3d", dynunet, "3d", "DynUNet 3D", defaults={"spatial_dims": 3}, inferer=window_inferer,
                 family="monai", patch=(128, 128, 128))
)  # fmt: skip
register_network(
    NetworkEntry("dynunet_2d", dynunet, "2d", "DynUNet 2D", defaults={"spatial_dims": 2}, inferer=slice_inferer,
                 family="monai", patch=(512, 512, 1))
)  # fmt: skip
register_network(
    NetworkEntry("dynunet_2_5d", dynunet_2_5d, "2.5d", "DynUNet 2.5D", defaults={"neighbours": 1},
                 inferer=lambda **kw: slice_inferer(**{"neighbours": 1, **kw}), family="monai", patch=(512, 512, 1))
)  # fmt: skip
register_network(
    NetworkEntry("swinunetr", swinunetr, "3d", "SwinUNETR", inferer=window_inferer, family="monai", patch=(96, 96, 96))
)
register_network(
    NetworkEntry("unetr", unetr, "3d", "UNETR", defaults={"img_size": (96, 96, 96)}, inferer=window_inferer,
                 family="monai", patch=(96, 96, 96))
)  # fmt: skip
