"""Slice-wise attention (SA) and recurrent slice-wise attention (RSA), the attention blocks of RSANet.

Axes follow :mod:`monai_ext.networks.layout`: inputs are ``(N, C, *spatial)`` (``(N, C, H, W, D)`` for volumes) and
the slice axis is named by ``spatial_dim``, an index over the spatial axes (0 = H, 1 = W, 2 = D). Which anatomical
planes those axes hold depends on the volume's orientation: after MONAI's ``Orientationd(axcodes="RAS")`` spatial
axis 0 runs left-right (its slices are sagittal), 1 posterior-anterior (coronal slices) and 2 inferior-superior
(axial slices). :func:`plane_axes` translates plane names into axes for any orientation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_axes, check_spatial_dim

__all__ = ["RSA", "RSA_PAPER_ORDER", "RecurrentSliceAttention", "SliceAttention", "plane_axes", "slice_attention"]

# the anatomical axis across which each plane's slices are stacked, as its two orientation letters
_PLANE_LETTERS = {"sagittal": "LR", "coronal": "AP", "axial": "IS"}


def plane_axes(planes: Sequence[str], axcodes: str | Sequence[str] = "RAS") -> tuple[int, ...]:
    """The spatial axes along which the given anatomical planes are stacked, in a volume oriented ``axcodes``.

    Sagittal slices are stacked along the left-right axis, coronal slices along the anterior-posterior axis and
    axial slices along the inferior-superior axis; ``axcodes`` names the direction of each spatial axis as MONAI's
    :class:`~monai.transforms.Orientationd` and nibabel's ``aff2axcodes`` do (the direction of an axis does not
    matter here, only which anatomical axis it is). The result is an order for
    :class:`RecurrentSliceAttention`'s ``spatial_dims_order``: ``plane_axes(("sagittal", "coronal", "axial"))`` is
    ``(0, 1, 2)`` (:data:`RSA_PAPER_ORDER`), ``plane_axes(("coronal", "sagittal", "axial"))`` is ``(1, 0, 2)``.

    Args:
        planes: plane names, each ``"sagittal"``, ``"coronal"`` or ``"axial"`` (any case), distinct.
        axcodes: one letter per spatial axis from ``L``/``R``, ``A``/``P``, ``I``/``S``, each anatomical axis at
            most once (e.g. ``"RAS"``, ``"LPS"``, ``"SAR"``; two letters for a 2D slice), as a string or a sequence
            of letters (nibabel's ``aff2axcodes(affine)``). Default ``"RAS"``, the orientation of every monai_ext
            bundle.

    Returns:
        one spatial axis index (0 = the first spatial axis) per plane, in the order of ``planes``.

    Raises:
        ValueError: for an unknown or repeated plane name, malformed ``axcodes``, or a plane whose anatomical axis
            ``axcodes`` does not contain.
    """
    try:
        codes = "".join(axcodes).upper()
    except TypeError:  # not letters (nibabel gives None for an axis it cannot name)
        codes = ""
    owners = [next((p for p, letters in _PLANE_LETTERS.items() if c in letters), None) for c in codes]
    if not 1 <= len(codes) <= 3 or None in owners or len(set(owners)) != len(owners):
        raise ValueError(
            f"axcodes must name each spatial axis with one letter of L/R, A/P, I/S, each anatomical axis at most "
            f"once (e.g. 'RAS'), got {axcodes!r}."
        )
    names = [str(p).lower() for p in planes]
    unknown = [p for p in names if p not in _PLANE_LETTERS]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"planes must be distinct names from {list(_PLANE_LETTERS)}, got {list(planes)}.")
    missing = [p for p in names if p not in owners]
    if missing:
        raise ValueError(
            f"axcodes {axcodes!r} has no axis across which {missing} slices are stacked "
            f"({', '.join(f'{p}: {_PLANE_LETTERS[p][0]}/{_PLANE_LETTERS[p][1]}' for p in missing)})."
        )
    return tuple(owners.index(p) for p in names)


RSA_PAPER_ORDER = plane_axes(("sagittal", "coronal", "axial"))
"""The paper's RSA order, "sagittal, coronal and axial" (Zhang et al. 2019), as spatial axes of a RAS-oriented
``(N, C, H, W, D)`` volume: ``(0, 1, 2)``. :class:`RecurrentSliceAttention`'s default. The release attends in
another order: :data:`monai_ext.networks.compat.RSA_RELEASE_ORDER`."""


def slice_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, spatial_dim: int, scaled: bool = False
) -> torch.Tensor:
    """Attention between the slices of a feature map along one spatial axis (pure function).

    Every slice (all channels and the other spatial positions, flattened into one vector of length ``L``)
    is a token: the ``S x S`` map ``softmax(q k^T)`` over the ``S`` slices mixes the value slices.

    Args:
        query, key, value: ``(N, C, *spatial)`` tensors of the same shape (theta, phi and g in the paper).
        spatial_dim: spatial axis holding the slices (0 = the first spatial axis; 2 = D of ``(N, C, H, W, D)``).
        scaled: divide the logits by ``sqrt(L)``, ``L = C * prod(other spatial sizes)``; the release does not.

    Returns:
        ``(N, C, *spatial)``, the attended values (without the residual).
    """
    dim = spatial_dim + 2  # tensor dimension of the slice axis in (N, C, *spatial)
    n, s = query.shape[0], query.shape[dim]
    q = query.movedim(dim, 1)  # (N, S, C, *other spatial): slices first
    slice_shape = q.shape
    q = q.reshape(n, s, -1)  # (N, S, L), L = C * prod(other spatial)
    k = key.movedim(dim, 1).reshape(n, s, -1)  # (N, S, L)
    v = value.movedim(dim, 1).reshape(n, s, -1)  # (N, S, L)
    logits = torch.bmm(q, k.transpose(1, 2))  # (N, S, S): slice-to-slice similarity
    if scaled:
        logits = logits / math.sqrt(q.shape[2])
    attention = torch.softmax(logits, dim=-1)  # (N, S, S), rows sum to 1
    out = torch.bmm(attention, v)  # (N, S, L)
    return out.reshape(slice_shape).movedim(1, dim)  # (N, S, C, *other) -> (N, C, *spatial)


class RecurrentSliceAttention(nn.Module):
    """Recurrent slice-wise attention (RSA): slice attention along each spatial axis in turn, with shared weights.

    From Zhang et al., "RSANet: Recurrent Slice-wise Attention Network for Multiple Sclerosis Lesion
    Segmentation", MICCAI 2019 (https://arxiv.org/abs/2002.12470; code: github.com/tinymilky/RSANet).

    For each spatial axis ``a`` in ``spatial_dims_order``, in order, the same three ``1 x 1 (x 1)`` convolutions
    (``theta_conv``, ``phi_conv``, ``g_conv``, with bias, ``C -> C``) are applied to the *current* ``x`` and

        ``x = x + betas[i] * slice_attention(theta(x), phi(x), g(x), spatial_dim=a)``

    (see :func:`slice_attention`). Each direction has one scalar ``beta``, initialised to 0, so the block
    starts as the identity. Parameter names equal the release's (``theta_conv``, ``phi_conv``, ``g_conv``,
    ``betas.{i}``, one beta per direction of ``spatial_dims_order``): with the release's order (below) the
    authors' ``rsaBlock`` state dict loads with ``load_state_dict`` unchanged.

    The order matters, because each direction attends over the ``x`` the previous ones updated; the axes are named
    by their index, so the anatomy they hold depends on the volume's orientation (see :func:`plane_axes`). The
    default is the paper's order, "sagittal, coronal and axial" (:data:`RSA_PAPER_ORDER`): ``(0, 1, 2)`` on a
    RAS-oriented volume, as every monai_ext bundle reads them (``Orientationd(axcodes="RAS")``). The release attends
    coronal, sagittal, then axial: ``(1, 0, 2)`` on a RAS volume
    (:data:`monai_ext.networks.compat.RSA_RELEASE_ORDER`; the release's own tensors move to this layout with
    :func:`monai_ext.networks.compat.rsanet_release_to_monai`, and the block then reproduces the authors'
    ``rsaBlock``). Within one direction, the order in which the other axes are flattened into a slice vector and
    the direction (sign) of every axis do not change the result: a flip permutes the slices, or the entries of
    every slice vector, the same way in ``theta``, ``phi`` and ``g``.

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels ``C`` of input and output.
        spatial_dims_order: spatial axes to attend along, in order (0 = H, 1 = W, 2 = D), distinct; e.g.
            ``plane_axes(("coronal", "sagittal", "axial"), "RAS")``. Default :data:`RSA_PAPER_ORDER`, ``(0, 1, 2)``
            (sagittal, coronal, axial on RAS volumes), and ``(0, 1)`` for 2D.
        scaled: divide the attention logits by ``sqrt(L)`` (``L`` = length of a flattened slice). Off in the
            release; with many channels its softmax saturates, which the scaling avoids.

    Shapes:
        input and output ``(N, in_channels, *spatial)`` with ``spatial_dims`` spatial axes.

    Raises:
        ValueError: for ``spatial_dims`` not 2 or 3, ``in_channels < 1``, an empty, repeated or out-of-range
            ``spatial_dims_order``; in ``forward`` for an input of the wrong rank or channel count.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        spatial_dims_order: Sequence[int] | None = None,
        scaled: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels}.")
        if spatial_dims_order is None:
            spatial_dims_order = RSA_PAPER_ORDER if spatial_dims == 3 else (0, 1)
        self.name = type(self).__name__  # for messages (TorchScript cannot evaluate type(self))
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.spatial_dims_order = list(check_spatial_axes(spatial_dims_order, spatial_dims))
        self.scaled = scaled
        conv_type = Conv[Conv.CONV, spatial_dims]
        self.theta_conv = conv_type(in_channels, in_channels, kernel_size=1)
        self.phi_conv = conv_type(in_channels, in_channels, kernel_size=1)
        self.g_conv = conv_type(in_channels, in_channels, kernel_size=1)
        self.betas = nn.ParameterList([nn.Parameter(torch.zeros(())) for _ in self.spatial_dims_order])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"{self.name} expects an input (N, {self.in_channels}, *spatial) with "
                f"{self.spatial_dims} spatial axes, got shape {list(x.shape)}."
            )
        for i, beta in enumerate(self.betas):
            # theta, phi and g are recomputed on the x updated by the previous direction
            attended = slice_attention(
                self.theta_conv(x), self.phi_conv(x), self.g_conv(x), self.spatial_dims_order[i], self.scaled
            )
            x = x + beta * attended
        return x


class SliceAttention(RecurrentSliceAttention):
    """Slice-wise attention (SA) along one axis: :class:`RecurrentSliceAttention` with a single direction.

    From Zhang et al., "RSANet: Recurrent Slice-wise Attention Network for Multiple Sclerosis Lesion
    Segmentation", MICCAI 2019 (https://arxiv.org/abs/2002.12470). ``x + betas[0] * SA(x)`` with its own
    ``theta_conv``, ``phi_conv``, ``g_conv`` and ``betas.0`` (initialised to 0).

    Args:
        spatial_dims: 2 or 3.
        in_channels: channels ``C`` of input and output.
        spatial_dim: spatial axis holding the slices (0 = H, 1 = W, 2 = D); default 2, the last axis of
            ``(N, C, H, W, D)`` (axial slices after ``Orientationd("RAS")``). 2D inputs take 0 or 1.
        scaled: divide the attention logits by ``sqrt(L)``, as in :class:`RecurrentSliceAttention`.

    Shapes:
        input and output ``(N, in_channels, *spatial)``.

    Raises:
        ValueError: as :class:`RecurrentSliceAttention`, and for a ``spatial_dim`` that is not a spatial axis.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, spatial_dim: int = DEFAULT_SPATIAL_DIM, scaled: bool = False
    ) -> None:
        if spatial_dims in (2, 3):
            check_spatial_dim(spatial_dim, spatial_dims)
        super().__init__(spatial_dims, in_channels, spatial_dims_order=[spatial_dim], scaled=scaled)


RSA = RecurrentSliceAttention
