"""CoTr's deformable Transformer (DeTrans) encoder: sine position encoding, level embedding and post-norm layers
of multi-scale deformable self-attention over a list of feature maps."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.utils import get_act_layer
from torch import nn

from monai_ext.networks.blocks.deformable_attention import MSDeformableAttention, _numels, _reference_points

__all__ = ["DeTransEncoder", "DeTransLayer", "SinePositionEncoding", "sine_position_encoding"]


def sine_position_encoding(
    spatial_shape: Sequence[int],
    hidden_size: int,
    temperature: float = 10000.0,
    normalize: bool = True,
    scale: float = 2 * math.pi,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    spatial_dims_order: Sequence[int] | None = None,
) -> torch.Tensor:
    """Sine/cosine position encoding of a 2D or 3D grid with CoTr's frequency rule: ``(hidden_size, *spatial_shape)``.

    The channels are split over the ``n`` axes (``hidden_size // n`` each, the remainder to the first axis of
    ``spatial_dims_order``), one group per axis, groups concatenated in the order ``spatial_dims_order`` (default:
    array order, e.g. ``(h, w, d)`` for a ``(H, W, D)`` grid). For an axis with ``c`` channels, position ``p``
    (1-based, or with ``normalize`` ``(p - 0.5) / size * scale``) gives channel ``i`` the value
    ``p / temperature ** (n * (i // n) / c)``, then ``sin`` on even and ``cos`` on odd channels. For ``n = 3``
    that is CoTr's rule ``10000 ** (3 * (i // 3) / c)``; for ``n = 2`` it is DETR's ``2 * (i // 2) / c``.

    Args:
        spatial_shape: the grid, 2 or 3 sizes.
        hidden_size: channels of the encoding.
        temperature, normalize, scale: the frequency rule above.
        device, dtype: of the result.
        spatial_dims_order: the spatial axes in the order their channel groups are concatenated; default
            ``None``, array order (:func:`monai_ext.networks.compat.use_cotr_release_axes` sets the order of
            CoTr's released code).

    Raises:
        ValueError: for a grid that is not 2D or 3D, channel counts per axis that are not even, or a
            ``spatial_dims_order`` that does not list every axis once.
    """
    ndim = len(spatial_shape)
    if ndim not in (2, 3):
        raise ValueError(f"spatial_shape must have 2 or 3 axes, got {list(spatial_shape)}.")
    order = list(range(ndim)) if spatial_dims_order is None else list(spatial_dims_order)
    if sorted(order) != list(range(ndim)):
        raise ValueError(f"spatial_dims_order must list every axis of {list(range(ndim))} once, got {order}.")
    feats = _channels_per_axis(ndim, hidden_size)
    if any(f % 2 or f < 2 for f in feats):
        raise ValueError(
            f"hidden_size={hidden_size} splits into {feats} channels per axis; each must be even (sin/cos pairs)."
        )
    sizes = [int(s) for s in spatial_shape]
    device = torch.empty(0).device if device is None else torch.device(device)
    return _sine_encoding(sizes, hidden_size, float(temperature), normalize, float(scale), order, device).to(dtype)


def _channels_per_axis(ndim: int, hidden_size: int) -> list[int]:
    """``hidden_size // ndim`` channels per axis, the remainder to the first group."""
    base = hidden_size // ndim
    return [base + hidden_size % ndim] + [base] * (ndim - 1)


def _sine_encoding(
    sizes: list[int],
    hidden_size: int,
    temperature: float,
    normalize: bool,
    scale: float,
    order: list[int],
    device: torch.device,
) -> torch.Tensor:
    """:func:`sine_position_encoding` on checked arguments, in float32 (TorchScript-compilable)."""
    ndim = len(sizes)
    parts: list[torch.Tensor] = []
    for axis, channels in zip(order, _channels_per_axis(ndim, hidden_size)):
        size = sizes[axis]
        pos = torch.arange(1, size + 1, device=device, dtype=torch.float32)
        if normalize:
            pos = (pos - 0.5) / (size + 1e-6) * scale
        i = torch.arange(channels, device=device, dtype=torch.float32)
        freq = temperature ** (ndim * torch.div(i, ndim, rounding_mode="floor") / channels)
        angle = pos[:, None] / freq  # (size, channels)
        enc = torch.stack([angle[:, 0::2].sin(), angle[:, 1::2].cos()], dim=-1).flatten(1)  # sin, cos interleaved
        view = [1] * ndim
        view[axis] = size
        parts.append(enc.t().reshape([channels] + view).expand([channels] + sizes))
    return torch.cat(parts, dim=0)


class SinePositionEncoding(nn.Module):
    """:func:`sine_position_encoding` of a feature map's grid, repeated over the batch (no parameters).

    Args:
        hidden_size, temperature, normalize, scale, spatial_dims_order: see :func:`sine_position_encoding`.

    Shapes:
        input ``(N, C, *spatial)`` (only its shape, device and dtype are used); output ``(N, hidden_size, *spatial)``.
    """

    __jit_unused_properties__ = ["spatial_dims_order"]

    def __init__(
        self,
        hidden_size: int,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float = 2 * math.pi,
        spatial_dims_order: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self._order = [-1]  # spatial_dims_order as a list, [-1] for array order (typed for TorchScript)
        self.spatial_dims_order = spatial_dims_order

    @property
    def spatial_dims_order(self) -> tuple[int, ...] | None:
        """The axes in the order their channel groups are concatenated; None: array order."""
        return None if self._order[0] < 0 else tuple(self._order)

    @spatial_dims_order.setter
    def spatial_dims_order(self, order: Sequence[int] | None) -> None:
        self._order = [-1] if order is None else [int(a) for a in order]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = x.shape[2:]
        if torch.jit.is_scripting():
            order = list(range(len(sizes))) if self._order[0] < 0 else self._order
            pos = _sine_encoding(sizes, self.hidden_size, self.temperature, self.normalize, self.scale, order, x.device)
            pos = pos.to(x.dtype)
        else:  # checks the arguments
            pos = sine_position_encoding(
                sizes, self.hidden_size, self.temperature, self.normalize, self.scale, x.device, x.dtype,
                self.spatial_dims_order,
            )  # fmt: skip
        return pos.unsqueeze(0).expand([x.shape[0]] + list(pos.shape))


class DeTransLayer(nn.Module):
    """One post-norm DeTrans layer (CoTr): ``x = norm1(x + drop(attn(x + pos, x)))``,
    ``x = norm2(x + drop(linear2(drop(act(linear1(x))))))``.

    Parameter names equal the release's ``DeformableTransformerEncoderLayer`` (``self_attn``, ``norm1``,
    ``linear1``, ``linear2``, ``norm2``).

    Args:
        hidden_size: token width ``d``.
        mlp_dim: FFN width (1536 in CoTr).
        num_heads, num_levels, num_points, spatial_dims, core: see
            :class:`~monai_ext.networks.blocks.MSDeformableAttention`.
        dropout_rate: dropout after the attention, inside and after the FFN (0.1 in CoTr).
        act: FFN activation, a MONAI factory name (CoTr: ``"gelu"``).

    Shapes:
        src and pos ``(N, S, d)``; reference_points ``(N or 1, S, n)`` or ``(N or 1, S, L, n)``;
        output ``(N, S, d)``.
    """

    def __init__(
        self,
        hidden_size: int = 384,
        mlp_dim: int = 1536,
        num_heads: int = 6,
        num_levels: int = 2,
        num_points: int = 4,
        dropout_rate: float = 0.1,
        act: str | tuple = "gelu",
        spatial_dims: int = 3,
        core: str = "fast",
    ) -> None:
        super().__init__()
        if not 0 <= dropout_rate <= 1:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}.")
        self.self_attn = MSDeformableAttention(hidden_size, num_levels, num_heads, num_points, spatial_dims, core)
        self.dropout1 = nn.Dropout(dropout_rate)
        self.norm1 = nn.LayerNorm(hidden_size)
        self.linear1 = nn.Linear(hidden_size, mlp_dim)
        self.activation = get_act_layer(act)
        self.dropout2 = nn.Dropout(dropout_rate)
        self.linear2 = nn.Linear(mlp_dim, hidden_size)
        self.dropout3 = nn.Dropout(dropout_rate)
        self.norm2 = nn.LayerNorm(hidden_size)

    def forward(
        self,
        src: torch.Tensor,
        pos: torch.Tensor | None,
        reference_points: torch.Tensor,
        spatial_shapes: list[list[int]],
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        query = src if pos is None else src + pos
        src = self.norm1(
            src + self.dropout1(self.self_attn(query, reference_points, src, spatial_shapes, padding_mask))
        )
        ffn = self.linear2(self.dropout2(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout3(ffn))


class DeTransEncoder(nn.Module):
    """CoTr's DeTrans encoder on a list of multi-scale feature maps; returns maps of the same shapes.

    From Xie et al., "CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image Segmentation",
    MICCAI 2021 (https://arxiv.org/abs/2103.03024). Every level is flattened to tokens, gets its own
    :func:`sine_position_encoding` plus a learned level embedding (``level_embed``, ``(L, d)``, normal init),
    and all levels' tokens pass ``num_layers`` :class:`DeTransLayer` s, each query attending to
    ``num_points`` deformable samples per head on every level around its own position. Outputs are reshaped
    back to the input maps. Works on any list of ``(N, d, *spatial)`` maps with the same ``N`` and ``d`` and
    ``num_levels`` entries, e.g. the skip features of a MONAI U-Net (project them to ``d`` channels first).

    Weights of the release's ``DeformableTransformer`` load through
    :func:`monai_ext.networks.compat.convert_detrans_release_state_dict` (key names), then
    :func:`~monai_ext.networks.compat.use_cotr_release_axes` (its sampling and position-encoding axis orders).
    Its padding masks are always empty in CoTr (valid ratios 1) and are not modelled.

    Args:
        hidden_size: channels ``d`` of every input map.
        num_levels: number of maps.
        num_layers: DeTrans layers (6 in CoTr).
        mlp_dim, num_heads, num_points, dropout_rate, act: see :class:`DeTransLayer`.
        spatial_dims: 3 or 2.
        core: sampling core, ``"fast"`` or ``"grid_sample"``.

    Shapes:
        input: a list of ``num_levels`` tensors ``(N, hidden_size, *spatial_l)``; output: a list of the same shapes.
        With ``num_levels=1`` the input may also be one tensor ``(N, hidden_size, *spatial)``, and the output is
        then one tensor: that makes the encoder a drop-in block for one level of any network (e.g. after
        ``DynUNet``'s bottleneck with :func:`monai_ext.networks.attach_block`).

    Raises:
        ValueError: in ``forward`` for a wrong number of maps, a wrong channel count, mixed batch sizes or ranks.
    """

    def __init__(
        self,
        hidden_size: int = 384,
        num_levels: int = 2,
        num_layers: int = 6,
        mlp_dim: int = 1536,
        num_heads: int = 6,
        num_points: int = 4,
        dropout_rate: float = 0.1,
        act: str | tuple = "gelu",
        spatial_dims: int = 3,
        core: str = "fast",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be positive, got {num_layers}.")
        self.hidden_size = hidden_size
        self.num_levels = num_levels
        self.spatial_dims = spatial_dims
        self.position_encoding = SinePositionEncoding(hidden_size)
        sine_position_encoding((2,) * spatial_dims, hidden_size)  # fail early on an unusable hidden_size
        self.level_embed = nn.Parameter(torch.empty(num_levels, hidden_size))
        self.layers = nn.ModuleList(
            DeTransLayer(hidden_size, mlp_dim, num_heads, num_levels, num_points, dropout_rate, act, spatial_dims, core)
            for _ in range(num_layers)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's initialisation: Xavier-uniform for matrices, then MS-DMSA's own, normal level embedding."""
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformableAttention):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, features: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[torch.Tensor]:
        if isinstance(features, torch.Tensor):
            if not torch.jit.is_scripting() and self.num_levels != 1:
                raise ValueError(
                    f"DeTransEncoder was built for {self.num_levels} levels and takes a list of as many maps; "
                    f"one tensor is one level (num_levels=1)."
                )
            return self.forward_levels([features])[0]
        return self.forward_levels(list(features))

    def forward_levels(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """:meth:`forward` on a list of maps (one type in, one out: what a scripted caller uses)."""
        if not torch.jit.is_scripting():
            self._check_levels(features)
        n = features[0].shape[0]
        shapes = [list(f.shape[2:]) for f in features]
        tokens = torch.cat([f.flatten(2).transpose(1, 2) for f in features], dim=1)  # (N, S, d)
        pos = torch.cat(
            [
                (self.position_encoding(f).flatten(2).transpose(1, 2) + self.level_embed[lvl].view(1, 1, -1))
                for lvl, f in enumerate(features)
            ],
            dim=1,
        )
        reference = _reference_points(shapes, tokens.device, tokens.dtype)[None]
        for layer in self.layers:
            tokens = layer(tokens, pos, reference, shapes)
        outs = tokens.split(_numels(shapes), dim=1)
        return [o.transpose(1, 2).reshape([n, self.hidden_size] + s) for o, s in zip(outs, shapes)]

    @torch.jit.unused
    def _check_levels(self, features: list[torch.Tensor]) -> None:
        """Raise a ValueError for a wrong number of maps, channels, batch sizes or ranks."""
        if len(features) != self.num_levels:
            raise ValueError(f"DeTransEncoder expects {self.num_levels} feature maps, got {len(features)}.")
        n = features[0].shape[0]
        for f in features:
            if f.dim() != self.spatial_dims + 2 or f.shape[0] != n or f.shape[1] != self.hidden_size:
                raise ValueError(
                    f"DeTransEncoder expects maps (N, {self.hidden_size}, *spatial) with {self.spatial_dims} spatial "
                    f"axes and one batch size, got shapes {[list(x.shape) for x in features]}; project the channels "
                    f"to hidden_size first (e.g. a 1x1 convolution)."
                )
