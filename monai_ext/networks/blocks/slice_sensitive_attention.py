"""Slice-sensitive attention (SSA) of the thickened 2D network, its Concat / Dot alternatives, switchable norm."""

from __future__ import annotations

import math

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_norm_layer
from torch import nn

from monai_ext.networks.precision import half_precision

__all__ = [
    "SSA",
    "ConcatLink",
    "DotLink",
    "SliceSensitiveAttention",
    "SwitchableNorm",
    "channel_affinity",
    "channel_attention",
    "get_link_norm",
]


class SwitchableNorm(nn.Module):
    """Switchable normalisation (Luo et al., "Differentiable Learning-to-Normalize via Switchable Normalization",
    ICLR 2019, https://arxiv.org/abs/1806.10779): a learned softmax mix of instance, layer and batch statistics.

    Means and variances are mixed separately (``mean_weight``, ``var_weight``, 3 logits each, initialised equal),
    then a per-channel affine. The batch part keeps running statistics (momentum ``momentum``) used in eval mode.

    Args:
        num_features: channels ``C``.
        eps: added to the mixed variance.
        momentum: running-average momentum of the batch statistics.

    Shapes:
        input and output ``(N, C, *spatial)`` with at least one spatial axis. A bf16 or fp16 input (autocast) has its
        statistics and affine taken in float32 and gives an output of its own dtype.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        if num_features < 1:
            raise ValueError(f"num_features must be positive, got {num_features}.")
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(3))  # instance, layer, batch
        self.var_weight = nn.Parameter(torch.ones(3))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 3 or x.shape[1] != self.num_features:
            raise ValueError(f"SwitchableNorm expects (N, {self.num_features}, *spatial), got {list(x.shape)}.")
        n, c = x.shape[0], x.shape[1]
        flat = x.reshape(n, c, -1)  # (N, C, L)
        values = flat.float() if half_precision(x.dtype) else flat  # under autocast: float32 statistics
        mean_in = values.mean(-1, keepdim=True)  # (N, C, 1)
        var_in = (values - mean_in).square().mean(-1, keepdim=True)  # two passes: 25x faster than torch.var here
        second_in = var_in + mean_in**2  # E[x^2] per instance and channel
        mean_ln = mean_in.mean(1, keepdim=True)  # (N, 1, 1)
        var_ln = second_in.mean(1, keepdim=True) - mean_ln**2
        if self.training:
            mean_bn = mean_in.mean(0, keepdim=True)  # (1, C, 1)
            var_bn = second_in.mean(0, keepdim=True) - mean_bn**2
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean_bn.reshape(c))
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var_bn.reshape(c))
        else:
            mean_bn = self.running_mean.reshape(1, c, 1)
            var_bn = self.running_var.reshape(1, c, 1)
        mw = torch.softmax(self.mean_weight, 0)
        vw = torch.softmax(self.var_weight, 0)
        mean = mw[0] * mean_in + mw[1] * mean_ln + mw[2] * mean_bn
        var = vw[0] * var_in + vw[1] * var_ln + vw[2] * var_bn
        scale = self.weight.reshape(1, c, 1) / torch.sqrt(var + self.eps)  # not rsqrt: its ONNX graph is broken
        shift = self.bias.reshape(1, c, 1) - mean * scale
        # one pass over the map, in float32 arithmetic: a bf16 / fp16 map is rounded once, back to its own dtype
        # (what the sum and the convolution after it take; faster on CPU than bf16 arithmetic, and exact where the
        # map lies far from zero, for which a bf16 shift would be off by up to 2^-9 of the mean)
        out = torch.addcmul(shift, flat, scale)
        return out.to(x.dtype).reshape(x.shape)


def get_link_norm(norm_name: tuple | str, spatial_dims: int, channels: int) -> nn.Module:
    """``"switchable"`` for :class:`SwitchableNorm`, else any MONAI norm factory name (e.g. ``"batch"``,
    ``("group", {"num_groups": 8})``)."""
    if norm_name == "switchable":
        return SwitchableNorm(channels)
    return get_norm_layer(name=norm_name, spatial_dims=spatial_dims, channels=channels)


def channel_affinity(query: torch.Tensor, key: torch.Tensor, scaled: bool = False) -> torch.Tensor:
    """The ``C x C`` affinity of channel-wise non-local attention (pure function): ``softmax_q(<query_p, key_q>)``.

    Args:
        query: ``(N, C, L)``; key: ``(N, C, L)`` (same ``L``: both pooled to one size).
        scaled: divide the logits by ``sqrt(L)``.

    Returns:
        ``(N, C, C)``, each row summing to 1.
    """
    logits = torch.bmm(query, key.transpose(1, 2))  # (N, C, C): channel p of the query vs channel q of the key
    if scaled:
        logits = logits / math.sqrt(query.shape[-1])
    return torch.softmax(logits, dim=-1)


def channel_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaled: bool = False
) -> torch.Tensor:
    """Channel-wise non-local attention (pure function): ``y_p = sum_q softmax_q(<query_p, key_q>) value_q``.

    Every channel is a token described by its flattened spatial map; the ``C x C`` affinity
    (:func:`channel_affinity`) mixes value channels.

    Args:
        query: ``(N, C, L)``; key: ``(N, C, L)`` (same ``L``: both pooled to one size); value: ``(N, C, M)``.
        scaled: divide the logits by ``sqrt(L)``.

    Returns:
        ``(N, C, M)``.
    """
    return torch.bmm(channel_affinity(query, key, scaled), value)  # (N, C, M)


class _Link(nn.Module):
    """Shared part of the blocks that link a mini-group's pre-fusion features to the fused features:
    argument checks, the output norm (weight zero-initialised so the block starts as the identity)."""

    def __init__(self, spatial_dims: int, in_channels: int, norm_name: tuple | str, zero_init: bool) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels}.")
        self.name = type(self).__name__
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.norm = get_link_norm(norm_name, spatial_dims, in_channels)
        if zero_init and getattr(self.norm, "weight", None) is not None:
            nn.init.zeros_(self.norm.weight)

    def shared(self, fused: torch.Tensor) -> torch.Tensor | None:
        """What :meth:`forward` computes from ``fused`` alone, to compute once when several mini-groups are linked
        to the same fused map (``forward(fused, group, shared)``); None where there is nothing to share."""
        return None

    def check(self, fused: torch.Tensor, group: torch.Tensor) -> None:
        if fused.dim() != self.spatial_dims + 2 or fused.shape[1] != self.in_channels or fused.shape != group.shape:
            raise ValueError(
                f"{self.name} expects fused and group features of one shape (N, {self.in_channels}, *spatial) with "
                f"{self.spatial_dims} spatial axes, got {list(fused.shape)} and {list(group.shape)}."
            )


class SliceSensitiveAttention(_Link):
    """Slice-sensitive attention (SSA): channel-wise non-local attention from the fused features of a thickened
    input to the pre-fusion features of one mini-group of slices.

    From Yu et al., "Thickened 2D Networks for Efficient 3D Medical Image Segmentation", 2019
    (https://arxiv.org/abs/1904.01150). No code was published; this is our reading of the paper:

    - queries come from the **fused** map ``F`` (what the fused, slice-confused features ask for), keys and values
      from the mini-group's **pre-fusion** map ``P`` (the slice-specific cues): ``y = softmax(theta(F') phi(P')^T)
      g(P)``, where ``F'``, ``P'`` are ``F``, ``P`` average-pooled to ``pool_size`` per spatial axis (at most the
      map's own size) and ``theta``, ``phi``, ``g`` are ``1^n`` convolutions ``C -> C``; the ``C x C`` affinity is
      computed on the pooled maps and applied to the full-resolution values;
    - output ``F + norm(y)``, the norm switchable by default with its weight zero-initialised (the block starts as
      the identity, as a non-local block).

    In another network, e.g. MONAI's ``DynUNet``, SSA can link a decoder stage's output to that stage's skip
    (docs/thick2d.md, "Drop-in").

    Args:
        spatial_dims: 2 (the paper) or 3.
        in_channels: channels ``C`` of both inputs and of the output.
        pool_size: side of the pooled maps for the affinity (32 in the paper).
        norm_name: ``"switchable"`` (the paper) or a MONAI norm name, e.g. ``"batch"`` or ``"instance"``.
        scaled: divide the affinity logits by ``sqrt(pool_size ** spatial_dims)`` (off: the paper's formula).
        zero_init: zero the output norm's weight.

    Shapes:
        ``fused`` and ``group``: ``(N, in_channels, *spatial)``; output the same.

    Raises:
        ValueError: for ``spatial_dims`` not 2 or 3, ``in_channels < 1`` or ``pool_size < 1``; in ``forward`` for
            inputs of another shape, rank or channel count.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        pool_size: int = 32,
        norm_name: tuple | str = "switchable",
        scaled: bool = False,
        zero_init: bool = True,
    ) -> None:
        super().__init__(spatial_dims, in_channels, norm_name, zero_init)
        if pool_size < 1:
            raise ValueError(f"pool_size must be a positive integer, got {pool_size}.")
        self.pool_size = pool_size
        self.scaled = scaled
        conv = Conv[Conv.CONV, spatial_dims]
        self.theta = conv(in_channels, in_channels, kernel_size=1)
        self.phi = conv(in_channels, in_channels, kernel_size=1)
        self.g = conv(in_channels, in_channels, kernel_size=1)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims]([pool_size] * spatial_dims)

    def _pooled(self, x: torch.Tensor) -> torch.Tensor:
        # a small map is used as it is; one of exactly pool_size too (pooling it is the identity)
        if min(x.shape[2:]) < self.pool_size or max(x.shape[2:]) == self.pool_size:
            return x
        if x.dim() == 4:  # aten's CPU adaptive average pool is ~3x faster channels-last, copy included
            x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(x)

    def shared(self, fused: torch.Tensor) -> torch.Tensor:
        """The query ``theta(F')`` ``(N, C, L)``: the same for every mini-group linked to ``fused``."""
        return self.theta(self._pooled(fused)).reshape(fused.shape[0], fused.shape[1], -1)

    def forward(self, fused: torch.Tensor, group: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """``fused`` and one mini-group's ``group`` map; ``shared``: :meth:`shared` of ``fused`` when already
        computed (the thickened-2D head links each mini-group to the same fused map)."""
        self.check(fused, group)
        n, c = fused.shape[0], fused.shape[1]
        query = self.shared(fused) if shared is None else shared  # (N, C, L), L = pooled pixels
        key = self.phi(self._pooled(group)).reshape(n, c, -1)  # (N, C, L)
        affinity = channel_affinity(query, key, self.scaled)  # (N, C, C)
        # the values g(P) enter only through affinity @ g(P) = (affinity @ W_g) P + affinity @ b_g (g is a 1^n
        # convolution): a C x C x C product in place of g's pass over the full-resolution map
        mixed = torch.matmul(affinity, self.g.weight.reshape(c, c))  # (N, C, C)
        values = group.reshape(n, c, -1)  # (N, C, H*W)
        bias = self.g.bias
        if bias is None:
            y = torch.bmm(mixed, values)
        else:
            y = torch.baddbmm(torch.matmul(affinity, bias.reshape(c, 1)), mixed, values)
        return fused + self.norm(y.reshape(fused.shape))


class _ConvLink(_Link):
    """``F + norm(conv(combine(F, P)))`` with a ``1^n`` convolution ``width * C -> C``; subclasses set
    ``width`` and :meth:`combine`."""

    width = 1

    def __init__(
        self, spatial_dims: int, in_channels: int, norm_name: tuple | str = "switchable", zero_init: bool = True
    ) -> None:
        super().__init__(spatial_dims, in_channels, norm_name, zero_init)
        self.conv = Conv[Conv.CONV, spatial_dims](self.width * in_channels, in_channels, kernel_size=1)

    def combine(self, fused: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, fused: torch.Tensor, group: torch.Tensor, shared: torch.Tensor | None = None) -> torch.Tensor:
        """``shared`` is accepted for the common interface of the links and unused (nothing to share)."""
        self.check(fused, group)
        return fused + self.norm(self.conv(self.combine(fused, group)))


class ConcatLink(_ConvLink):
    """The "Concat" alternative to SSA (Yu et al. 2019, Table 3; our reading): ``F + norm(conv([F, P]))``, a
    ``1^n`` convolution ``2C -> C`` of the fused map ``F`` and the mini-group's pre-fusion map ``P`` concatenated.

    Args:
        spatial_dims, in_channels, norm_name, zero_init: as :class:`SliceSensitiveAttention`.

    Shapes:
        ``fused`` and ``group``: ``(N, in_channels, *spatial)``; output the same.
    """

    width = 2

    def combine(self, fused: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return torch.cat([fused, group], dim=1)


class DotLink(_ConvLink):
    """The "Dot" alternative to SSA (Yu et al. 2019, Table 3; our reading): ``F + norm(conv(F * P))``, the
    element-wise product of the fused map and the mini-group's pre-fusion map, then a ``1^n`` convolution ``C -> C``.

    Args:
        spatial_dims, in_channels, norm_name, zero_init: as :class:`SliceSensitiveAttention`.

    Shapes:
        ``fused`` and ``group``: ``(N, in_channels, *spatial)``; output the same.
    """

    def combine(self, fused: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        return fused * group


SSA = SliceSensitiveAttention
