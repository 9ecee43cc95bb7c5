"""Loaders for the authors' released checkpoints: key maps and axis switches.

The authors' code orders axes its own way; monai_ext networks follow the slice-axis rule of
:mod:`monai_ext.networks.layout` (``(B, C, H, W, D)``, slices on spatial axis ``spatial_dim``). Every translation
between the two, state-dict keys and tensor axes, lives in this module and nowhere else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from monai_ext.networks.blocks.deformable_attention import MSDeformableAttention
from monai_ext.networks.blocks.detrans import SinePositionEncoding
from monai_ext.networks.blocks.slice_attention import plane_axes
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim

__all__ = [
    "RSANET_RELEASE_PLANES",
    "RSA_RELEASE_ORDER",
    "convert_cotr_release_state_dict",
    "convert_detrans_release_state_dict",
    "convert_sshunet_release_state_dict",
    "cotr_release_axes",
    "load_cotr_release",
    "load_sshunet_release",
    "monai_to_rsanet_release",
    "rsanet_release_to_monai",
    "use_cotr_release_axes",
]

# --- SSH-UNet (github.com/cugwu/ssh-unet) ---
# The release's GateDynUNet is written for (B, C, D, H, W) with (1, 3, 3) kernels, but its training and inference
# read the volumes through MONAI (LoadImaged, EnsureChannelFirstd, Orientationd("RAS"), patches (roi_x, roi_y,
# roi_z)) and give them to the network as they are: its tensors are MONAI's (B, C, H, W, D), and its 2D kernels
# slice along spatial axis 0. Its three views are x, x.transpose(2, 3) and x.transpose(2, 4), slices first.
# SSHUNet's views (monai_ext.networks.blocks.to_view) are the same views with the first and last spatial axes
# swapped (slices last), so the kernels swap the same axes ((1, 3, 3) -> (3, 3, 1)) and the volumes need no
# permutation: converted weights compute the release's output on the same tensor. Key names are DynUNet's in both,
# except the release's skip_layers.*, DynUNet's recursive aliases of the same blocks, which SSHUNet does not keep.


def convert_sshunet_release_state_dict(state_dict: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Map a state dict saved by the released SSH-UNet onto :class:`~monai_ext.networks.nets.SSHUNet`.

    Every convolution and transposed-convolution kernel (the 5-D tensors) has its first and last spatial axes
    swapped, from the release's slices first to SSHUNet's slices last (``(1, 3, 3)`` kernels become ``(3, 3, 1)``);
    the keys stay, except the ``skip_layers.*`` aliases, which are dropped. The weights may sit under
    ``state_dict`` (the release's training checkpoints), ``network_weights`` or ``model``.
    """
    return {
        key: value.transpose(2, 4).contiguous() if value.dim() == 5 else value
        for key, value in _unwrap(state_dict).items()
        if not key.startswith("skip_layers.")
    }


def load_sshunet_release(network: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Load the weights of the released SSH-UNet into ``network`` (strictly: every key must match).

    Build the network with the checkpoint's configuration first: the release's defaults are ours
    (``create_network("ssh_unet", out_channels=14)``); a release kernel or stride ``(a, b, c)`` is our
    ``(c, b, a)``. With the default views ``(0, 1, 2)`` the network then computes the release's output on the same
    ``(B, C, H, W, D)`` volumes (the release reads them through MONAI, RAS-oriented, as they are).

    Args:
        network: an :class:`~monai_ext.networks.nets.SSHUNet`.
        path_or_state_dict: a checkpoint file (loaded on the CPU with ``weights_only=True``) or its loaded dict.

    Returns:
        ``network`` with the release's weights.

    Raises:
        TypeError: when ``network`` is not an SSHUNet.
        RuntimeError: from ``load_state_dict``, when the checkpoint's configuration differs from the network's.
    """
    from monai_ext.networks.nets.sshunet import SSHUNet  # the network module imports this one

    if not isinstance(network, SSHUNet):
        raise TypeError(f"load_sshunet_release loads into an SSHUNet, got {type(network).__name__}.")
    state = path_or_state_dict
    if not isinstance(state, Mapping):
        state = torch.load(state, map_location="cpu", weights_only=True)
    network.load_state_dict(convert_sshunet_release_state_dict(state))
    return network


# --- CoTr (github.com/YtongXie/CoTr) ---
# The release's ResTranUnet takes volumes (N, C, D, H, W), slices first; its stem strides (1, 2, 2) and its kernels
# are stored (kD, kH, kW). Its deformable attention lists reference points and level sizes as (d, w, h), while
# grid_sample reads the last axis as (x, y, z) = (W, H, D): along D a query samples from its normalised h / H plus
# offset component 2 divided by H, along H from w / W plus component 1 over W, along W from d / D plus component 0
# over D (zero offsets do not sample the query's own voxel). Its position encoding concatenates the channel groups
# of D, H, W in that order. monai_ext's CoTr takes (N, C, H, W, D) with the slices on spatial axis spatial_dim and
# samples geometrically; the functions below translate.

_COTR_REFERENCE = (1, 2, 0)  # release axis (D, H, W) -> the release axis whose reference coordinate it starts from
_COTR_OFFSET = (2, 1, 0)  # release axis (D, H, W) -> the offset component the release adds along it

# the release's ResTranUnet keys (after an optional "module." / "U_ResTran3D." prefix) -> ours; of the number in
# the first group, {stage} is our encoder stage (layer1 -> 0) and {level} our decoder block (stage2_de -> 0)
_COTR_RULES = [
    (r"^backbone\.conv1\.", "stem.0."),
    (r"^backbone\.norm1\.", "stem.1."),
    (r"^backbone\.layer(\d+)\.(\d+)\.conv1\.", "encoder_stages.{stage}.{1}.conv."),
    (r"^backbone\.layer(\d+)\.(\d+)\.norm1\.", "encoder_stages.{stage}.{1}.norm."),
    (r"^backbone\.layer(\d+)\.(\d+)\.downsample\.", "encoder_stages.{stage}.{1}.downsample."),
    (r"^transposeconv_stage(\d+)\.", "upsamples.{level}."),
    (r"^stage(\d+)_de\.resconv(\d)\.conv\.", "decoder_blocks.{level}.conv{1}."),
    (r"^stage(\d+)_de\.resconv(\d)\.norm\.", "decoder_blocks.{level}.norm{1}."),
    (r"^ds(\d+)_cls_conv\.", "deep_heads.{level}."),
    (r"^cls_conv\.", "out_conv."),
]


def cotr_release_axes(spatial_dim: int = DEFAULT_SPATIAL_DIM) -> tuple[int, int, int]:
    """The spatial axes of a monai_ext volume that hold the CoTr release's ``(D, H, W)``: the slice axis
    ``spatial_dim`` first, then the other two in order (``(2, 0, 1)`` for the default slices-last layout)."""
    check_spatial_dim(spatial_dim)
    return (spatial_dim, *(a for a in range(3) if a != spatial_dim))


def _cotr_sampling_axes(spatial_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(reference_axes, offset_axes)`` of :class:`MSDeformableAttention` that reproduce the release's sampling."""
    axes = cotr_release_axes(spatial_dim)
    release_axis = {ours: r for r, ours in enumerate(axes)}
    reference = tuple(axes[_COTR_REFERENCE[release_axis[a]]] for a in range(3))
    offset = tuple(_COTR_OFFSET[release_axis[a]] for a in range(3))
    return reference, offset


def use_cotr_release_axes(module: nn.Module, spatial_dim: int | None = None) -> nn.Module:
    """Switch every MS-DMSA and sine position encoding inside ``module`` to the axis orders of CoTr's released code.

    What the release's weights need (see the comment above): :class:`MSDeformableAttention` samples as the release
    does (:meth:`~MSDeformableAttention.set_sampling_axes`) and :class:`SinePositionEncoding` orders its channel
    groups slices first. Neither is part of a state dict: call this again after loading weights fine-tuned from
    the release into a fresh network. :func:`load_cotr_release` calls it.

    Args:
        module: a :class:`~monai_ext.networks.nets.CoTr`, a :class:`DeTransEncoder`, an attention block, or any
            network holding them.
        spatial_dim: the slice axis of the inputs (0-2 over the spatial axes); default: ``module.spatial_dim``
            where the module has one (CoTr), else 2.

    Returns:
        ``module``, switched in place.

    Raises:
        ValueError: for a ``spatial_dim`` that contradicts ``module.spatial_dim``, or 2D attention blocks (the
            release is 3D).
    """
    own = getattr(module, "spatial_dim", None)
    if spatial_dim is not None and own is not None and spatial_dim != own:
        raise ValueError(f"the module takes its slices on spatial axis {own}, got spatial_dim={spatial_dim}.")
    spatial_dim = check_spatial_dim(spatial_dim if spatial_dim is not None else own if own is not None else 2)
    reference_axes, offset_axes = _cotr_sampling_axes(spatial_dim)
    for m in module.modules():
        if isinstance(m, MSDeformableAttention):
            if m.spatial_dims != 3:
                raise ValueError("CoTr's released sampling order is 3D; this module holds 2D deformable attention.")
            m.set_sampling_axes(reference_axes, offset_axes)
        elif isinstance(m, SinePositionEncoding):
            m.spatial_dims_order = cotr_release_axes(spatial_dim)
    return module


def _detrans_key(key: str) -> str:
    if key == "level_embed":
        return key
    if key.startswith("encoder.layers."):
        return key[len("encoder.") :]
    raise KeyError(f"no DeTransEncoder parameter for the release key {key!r}.")


def _unwrap(state_dict: Mapping[str, Any]) -> Mapping[str, torch.Tensor]:
    """The weights of a checkpoint dict that holds them under ``state_dict``, ``network_weights`` or ``model``."""
    for holder in ("state_dict", "network_weights", "model"):
        if holder in state_dict and isinstance(state_dict[holder], Mapping):
            state_dict = state_dict[holder]
    return state_dict


def convert_detrans_release_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a state dict of the CoTr release's ``DeformableTransformer`` (keys ``level_embed``,
    ``encoder.layers.{i}.*``) onto :class:`DeTransEncoder`'s names (``level_embed``, ``layers.{i}.*``).

    The tensors are unchanged; the release's axis orders are set by :func:`use_cotr_release_axes`.

    Raises:
        KeyError: for a key no rule maps (the message names it).
    """
    return {_detrans_key(k): v for k, v in _unwrap(state_dict).items()}


def convert_cotr_release_state_dict(
    state_dict: Mapping[str, Any], spatial_dim: int = DEFAULT_SPATIAL_DIM, num_stages: int = 3
) -> dict[str, torch.Tensor]:
    """Map a state dict saved by the released CoTr (``ResTranUnet``) onto :class:`~monai_ext.networks.nets.CoTr`.

    Keys may carry the ``module.`` (DataParallel) and ``U_ResTran3D.`` prefixes, and the weights may sit under
    ``state_dict`` (nnU-Net's ``.model`` files), ``network_weights`` or ``model``. Convolution and transposed
    convolution kernels are permuted from the release's ``(kD, kH, kW)`` to the spatial axes of a network whose
    slices lie on ``spatial_dim``. The release's decoder stage ``k`` is our decoder block ``num_stages - 1 - k``.

    Args:
        state_dict: the release's state dict or checkpoint dict.
        spatial_dim: the slice axis of the target network (its ``spatial_dim``).
        num_stages: encoder stages of the target network (3 in the release).

    Raises:
        KeyError: for a key no rule maps (the message names it).
    """
    release_axis = {ours: r for r, ours in enumerate(cotr_release_axes(spatial_dim))}
    kernel_dims = [0, 1, *(2 + release_axis[a] for a in range(3))]
    converted = {}
    for key, value in _unwrap(state_dict).items():
        name = re.sub(r"^(module\.)?(U_ResTran3D\.)?", "", key)
        if name.startswith("encoder_Detrans."):
            converted["detrans." + _detrans_key(name[len("encoder_Detrans.") :])] = value
            continue
        for pattern, target in _COTR_RULES:
            match = re.match(pattern, name)
            if match is not None:
                number = int(match[1]) if match.groups() else 0
                prefix = target.format(*match.groups(), stage=number - 1, level=num_stages - 1 - number)
                break
        else:
            raise KeyError(f"no CoTr parameter for the release key {key!r}.")
        if value.dim() == 5 and kernel_dims != [0, 1, 2, 3, 4]:
            value = value.permute(kernel_dims).contiguous()  # (out, in, kD, kH, kW) -> our spatial axes
        converted[prefix + name[match.end() :]] = value
    return converted


def load_cotr_release(network: nn.Module, path_or_state_dict: str | os.PathLike | Mapping[str, Any]) -> nn.Module:
    """Load the weights of the released CoTr (``ResTranUnet``) into ``network`` and switch it to the release's
    sampling and position-encoding axis orders (:func:`use_cotr_release_axes`).

    Build the network for the checkpoint first, e.g. ``create_network("cotr", out_channels=14)``; its
    ``spatial_dim`` says where its inputs hold the slices (the kernels are permuted to match,
    :func:`convert_cotr_release_state_dict`).

    Args:
        network: a :class:`~monai_ext.networks.nets.CoTr` with the release's configuration.
        path_or_state_dict: a checkpoint file (loaded on the CPU with ``weights_only=True``) or its loaded dict.

    Returns:
        ``network`` with the release's weights.

    Raises:
        TypeError: when ``network`` is not a CoTr.
        ValueError: when the checkpoint's input channels or classes differ from the network's.
        KeyError: for a checkpoint key no rule maps; ``load_state_dict``'s RuntimeError for other mismatches.
    """
    from monai_ext.networks.nets.cotr import CoTr  # the network module imports this one

    if not isinstance(network, CoTr):
        raise TypeError(f"load_cotr_release loads into a CoTr network, got {type(network).__name__}.")
    state = path_or_state_dict
    if not isinstance(state, Mapping):
        state = torch.load(state, map_location="cpu", weights_only=True)
    converted = convert_cotr_release_state_dict(state, network.spatial_dim, len(network.encoder_stages))
    given = (converted["stem.0.weight"].shape[1], converted["out_conv.weight"].shape[0])
    if given != (network.in_channels, network.out_channels):
        raise ValueError(
            f"the checkpoint has {given[0]} input channel(s) and {given[1]} classes, the network "
            f"{network.in_channels} and {network.out_channels}; build it with in_channels={given[0]}, "
            f"out_channels={given[1]}."
        )
    network.load_state_dict(converted)
    return use_cotr_release_axes(network)


# --- RSANet (github.com/tinymilky/RSANet) ---
# The release has no data loader; its tensors are (N, C, D, H, W) and its rsaBlock names the slices along each axis:
# axial along D, coronal along H, sagittal along W, i.e. D runs inferior-superior, H anterior-posterior and W
# left-right (an axial image stack: slices first, rows, columns). rsaBlock attends coronal (H), sagittal (W), then
# axial (D). Swapping D and W gives RAS's axis order (left-right, anterior-posterior, inferior-superior, slices
# last), where that order is spatial axes (1, 0, 2); the directions of the axes do not matter to slice attention.
# Its parameter names are ours (theta_conv, phi_conv, g_conv, betas.{i}, one beta per direction in that order) and
# its 1x1x1 kernels have no axis to permute, so its state dict loads with load_state_dict unchanged: only the
# tensors move. No released RSANet weights exist, hence no network loader.

RSANET_RELEASE_PLANES = ("axial", "coronal", "sagittal")
"""The planes whose slices the RSANet release stacks along its tensor axes D, H and W (its block names)."""

RSA_RELEASE_ORDER = plane_axes(("coronal", "sagittal", "axial"), "RAS")
"""The release's RSA order, coronal, sagittal, then axial, as spatial axes of a RAS-oriented ``(N, C, H, W, D)``
volume: ``(1, 0, 2)``. Pass it as ``spatial_dims_order`` (``rsa_spatial_dims_order`` of RSANet) to reproduce the
release on volumes in the monai_ext layout (:func:`rsanet_release_to_monai`); the paper's order, the default, is
:data:`monai_ext.networks.blocks.RSA_PAPER_ORDER`."""


def rsanet_release_to_monai(x: torch.Tensor) -> torch.Tensor:
    """A tensor in the RSANet release's layout ``(N, C, D, H, W)`` (axial, coronal, sagittal slice axes) in the axis
    order of a RAS-oriented monai_ext volume ``(N, C, H, W, D)`` (left-right, anterior-posterior,
    inferior-superior): D and W swap. Works on 5-D convolution kernels ``(out, in, kD, kH, kW)`` alike."""
    return x.transpose(2, 4)


def monai_to_rsanet_release(x: torch.Tensor) -> torch.Tensor:
    """A RAS-ordered monai_ext tensor ``(N, C, H, W, D)`` in the RSANet release's layout ``(N, C, D, H, W)``
    (inverse of :func:`rsanet_release_to_monai`, the same swap)."""
    return x.transpose(2, 4)
