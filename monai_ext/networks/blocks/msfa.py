"""Multi-slice feature aggregation (MSFA): a 2D slice's features attend over the depth slices of a 3D feature map."""

from __future__ import annotations

import math

import torch
from monai.networks.blocks.dynunet_block import UnetBasicBlock
from torch import nn
from torch.nn import functional as F

from monai_ext.networks.blocks.adaptive_pool import adaptive_avg_pool_by_matrices
from monai_ext.networks.checks import check_input
from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, tensor_dim
from monai_ext.networks.precision import one_dtype

__all__ = ["MSFA", "MultiSliceFeatureAggregation", "aggregate_slices"]

_MODES = ("attention", "center")


def aggregate_slices(
    attention: torch.Tensor, volume: torch.Tensor, spatial_dim: int = DEFAULT_SPATIAL_DIM
) -> torch.Tensor:
    """Weighted sums of a 3D feature map's depth slices (pure function).

    Args:
        attention: ``(B, S, M, d)`` weights: for each of ``S`` 2D slices of volume ``b`` and head ``m``, one weight per
            depth slice of ``volume[b]``.
        volume: ``(B, C, *3 spatial)`` with its ``d`` depth slices on spatial axis ``spatial_dim``: ``(B, C, h, w, d)``
            for the default 2.
        spatial_dim: the depth axis of ``volume``, 0-2.

    Returns:
        ``(B * S, M * C, h, w)``: the ``M`` aggregated maps of each 2D slice, heads stacked on the channels
        (head-major), the 2D slices of volume ``b`` at rows ``b * S .. b * S + S - 1``; ``(h, w)`` are the other two
        spatial axes of ``volume`` in their order.
    """
    return _aggregate(attention, volume.movedim(tensor_dim(check_spatial_dim(spatial_dim)), 2))


def _aggregate(attention: torch.Tensor, volume: torch.Tensor) -> torch.Tensor:
    """:func:`aggregate_slices` of a depth-first ``volume`` ``(B, C, d, h, w)``."""
    b, s, m = attention.shape[0], attention.shape[1], attention.shape[2]
    attention, volume = one_dtype(attention, volume)  # under autocast, e.g. float32 weights and a bf16 volume
    agg = torch.einsum("bsmd,bcdhw->bsmchw", attention, volume)  # (B, S, M, C, h, w)
    return agg.reshape(b * s, m * volume.shape[1], volume.shape[3], volume.shape[4])


def _pool_in_plane(x: torch.Tensor, size: int) -> torch.Tensor:
    """Average-pool the last two axes to ``size x size``: a plain average pool where they divide evenly, else adaptive
    pooling (while exporting to ONNX: products with pooling matrices, which the exporter takes for any sizes)."""
    exporting = False if torch.jit.is_scripting() else torch.onnx.is_in_onnx_export()
    if exporting:
        return adaptive_avg_pool_by_matrices(x, [size, size])
    h, w = int(x.shape[-2]), int(x.shape[-1])  # constants when traced: the pooled size is fixed per input size
    if h % size == 0 and w % size == 0:
        if x.dim() == 4:
            return F.avg_pool2d(x, [h // size, w // size])
        return F.avg_pool3d(x, [1, h // size, w // size])
    if x.dim() == 4:
        return F.adaptive_avg_pool2d(x, [size, size])
    return F.adaptive_avg_pool3d(x, [x.shape[2], size, size])


class MultiSliceFeatureAggregation(nn.Module):
    """Multi-slice feature aggregation (MSFA): fuse a 2D slice's features with an attention-weighted sum of a 3D
    feature map's depth slices (its slices along ``spatial_dim``).

    From Tang et al., "Spatial Context-Aware Self-Attention Model For Multi-Organ Segmentation", WACV 2021
    (https://arxiv.org/abs/2012.09279). No public code exists: the details below marked *our reading* are not fixed
    by the paper (see ``docs/scaa.md``).

    With ``mode="attention"`` (SCAA), for every 2D slice ``n`` of volume ``b`` and head ``m``:

    - query ``q = W_q(x2d)`` (``1 x 1`` conv2d, ``in_channels_2d -> num_heads * embed_channels``), keys
      ``k = W_k(x3d)`` (``1 x 1 x 1`` conv3d, ``in_channels_3d -> num_heads * embed_channels``);
    - ``q`` and every depth slice of ``k`` adaptively average-pooled to ``pool_size x pool_size`` and flattened per
      head to vectors of length ``L = embed_channels * pool_size ** 2``;
    - ``a = softmax_d(q . k_d / sqrt(L))`` over the ``d`` depth slices of ``x3d``;
    - ``F_agg_m = sum_d a_d * X_d``, ``X_d`` the depth slice ``d`` of ``x3d[b]`` (the 3D map itself is the value,
      *our reading*);
    - heads concatenated and merged by a ``1 x 1`` conv (``num_heads * in_channels_3d -> in_channels_3d``);
    - output ``fusion(concat(x2d, F_agg))``: two (conv ``3 x 3`` + norm + act) blocks,
      ``in_channels_2d + in_channels_3d -> out_channels``.

    Padding: the paper's volumes are never padded. Where a volume was padded along the depth axis (as
    :class:`~monai_ext.inferers.PadInferer` does, at the far end), ``valid_depth`` gives the number of depth slices of
    ``x3d`` that hold image content; the slices after it get attention 0 (their scores are set to ``-inf`` before the
    softmax), so the result equals the block on ``x3d`` cut to its ``valid_depth`` slices.

    With ``mode="center"`` (the paper's C-CA ablation) ``F_agg`` is the depth slice of ``x3d`` at ``positions``
    (the 3D slice that holds the 2D slice), with no query, key or head merge; the returned attention is one-hot.

    ``F_agg`` is resized (bilinear) to the 2D map's size when the 3D map's in-plane size differs. The in-plane axes
    of ``x3d`` are its two spatial axes other than ``spatial_dim``, in their order: for the default (slices last,
    ``(B, C, H, W, D)``) a 2D slice ``(h, w)`` of ``x3d`` is ``x3d[..., j]``.

    Args:
        in_channels_2d: channels of ``x2d``.
        in_channels_3d: channels of ``x3d``.
        out_channels: output channels; default ``in_channels_2d``.
        num_heads: heads ``m`` (paper: 2, 2, 4, 4 at scales 2..5).
        embed_channels: query/key channels per head (paper: 2, 2, 4, 4).
        pool_size: side of the pooled query/key maps (paper: 16, 8, 4, 4).
        mode: ``"attention"`` (MSFA) or ``"center"`` (C-CA).
        spatial_dim: the depth (slice) axis of ``x3d`` among its spatial axes, 0-2; default 2, the last.
        norm_name: normalisation of the fusion blocks, MONAI factory name and arguments.
        act_name: activation of the fusion blocks.

    Shapes:
        ``x2d``: ``(B * S, in_channels_2d, h, w)``, the ``S`` slices of volume ``b`` at rows ``b * S ..``;
        ``x3d``: ``(B, in_channels_3d, h3, w3, d)`` with the default ``spatial_dim=2`` (the ``d`` depth slices on
        spatial axis ``spatial_dim``); ``positions``: ``(B, S)`` integer depth indices into ``x3d``
        (required for ``mode="center"``, ignored otherwise); ``valid_depth``: an int in ``[1, d]`` or None (every
        slice is valid). Output ``(B * S, out_channels, h, w)``, and with
        ``return_attention=True`` also the weights ``(B * S, num_heads, d)`` (``(B * S, 1, d)`` for C-CA), each row
        summing to 1.

    Raises:
        ValueError: for non-positive sizes, an unknown ``mode`` or a bad ``spatial_dim``; in ``forward`` for inputs of
            the wrong rank or channels, a 2D batch that is not a multiple of the 3D batch, missing / out-of-range
            ``positions``, or a ``valid_depth`` outside ``[1, d]``.
    """

    def __init__(
        self,
        in_channels_2d: int,
        in_channels_3d: int,
        out_channels: int | None = None,
        num_heads: int = 2,
        embed_channels: int = 2,
        pool_size: int = 16,
        mode: str = "attention",
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        norm_name: tuple | str = "instance",
        act_name: tuple | str = ("relu", {"inplace": True}),
    ) -> None:
        super().__init__()
        out_channels = in_channels_2d if out_channels is None else out_channels
        sizes = {
            "in_channels_2d": in_channels_2d,
            "in_channels_3d": in_channels_3d,
            "out_channels": out_channels,
            "num_heads": num_heads,
            "embed_channels": embed_channels,
            "pool_size": pool_size,
        }
        bad = {k: v for k, v in sizes.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"MultiSliceFeatureAggregation needs positive integers, got {bad}.")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES} ('center' is the paper's C-CA), got {mode!r}.")
        self.in_channels_2d = in_channels_2d
        self.in_channels_3d = in_channels_3d
        self.num_heads = num_heads if mode == "attention" else 1
        self.embed_channels = embed_channels
        self.pool_size = pool_size
        self.mode = mode
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self._depth_axis = tensor_dim(self.spatial_dim)
        self.query: nn.Module | None = None  # attention mode only
        self.key: nn.Module | None = None
        self.merge: nn.Module | None = None
        if mode == "attention":
            self.query = nn.Conv2d(in_channels_2d, num_heads * embed_channels, kernel_size=1)
            self.key = nn.Conv3d(in_channels_3d, num_heads * embed_channels, kernel_size=1)
            self.merge = nn.Conv2d(num_heads * in_channels_3d, in_channels_3d, kernel_size=1)
        self.fusion = UnetBasicBlock(
            2, in_channels_2d + in_channels_3d, out_channels, kernel_size=3, stride=1, norm_name=norm_name,
            act_name=act_name,
        )  # fmt: skip

    def attention(self, x2d: torch.Tensor, x3d: torch.Tensor, valid_depth: int | None = None) -> torch.Tensor:
        """Softmax weights ``(B, S, num_heads, d)`` of the 2D slices over the depth slices of ``x3d``."""
        return self._attention(x2d, self._depth_first(x3d), valid_depth)

    def _depth_first(self, x3d: torch.Tensor) -> torch.Tensor:
        """``x3d`` with its depth axis first among the spatial ones: ``(B, C3, d, h3, w3)``."""
        return x3d.movedim(self._depth_axis, 2)

    def _attention(self, x2d: torch.Tensor, x3d: torch.Tensor, valid_depth: int | None = None) -> torch.Tensor:
        """:meth:`attention` for ``x3d`` laid out depth first ``(B, C3, d, h3, w3)``."""
        b, d = x3d.shape[0], x3d.shape[2]
        s, m, p = x2d.shape[0] // b, self.num_heads, self.pool_size
        q = _pool_in_plane(self.query(x2d), p)  # (B * S, M * E, p, p)
        q = q.reshape(b, s, m, -1)  # (B, S, M, L), L = E * p * p
        k = _pool_in_plane(self.key(x3d), p)  # (B, M * E, d, p, p): every depth slice pooled
        k = k.reshape(b, m, self.embed_channels, d, p * p).permute(0, 1, 3, 2, 4).reshape(b, m, d, -1)  # (B, M, d, L)
        q, k = one_dtype(q, k)  # under autocast the keys are float32 (avg_pool3d), the queries bf16 / fp16
        logits = torch.einsum("bsml,bmdl->bsmd", q, k) / math.sqrt(q.shape[-1])  # (B, S, M, d)
        if valid_depth is not None and valid_depth < d:  # padded depth slices take no attention
            logits = logits.masked_fill(torch.arange(d, device=logits.device) >= valid_depth, float("-inf"))
        return torch.softmax(logits, dim=-1)

    def forward(
        self,
        x2d: torch.Tensor,
        x3d: torch.Tensor,
        positions: torch.Tensor | None = None,
        return_attention: bool = False,
        valid_depth: int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out, weights = self.forward_with_attention(x2d, x3d, positions, valid_depth)
        if return_attention:
            return out, weights
        return out

    def forward_with_attention(
        self,
        x2d: torch.Tensor,
        x3d: torch.Tensor,
        positions: torch.Tensor | None = None,
        valid_depth: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with ``return_attention=True`` (one return type: what a scripted caller uses)."""
        if not torch.jit.is_scripting():  # plain-Python checks; a scripted block skips them
            self._check(x2d, x3d, positions, valid_depth)
        x3d = self._depth_first(x3d)  # (B, C3, d, h3, w3)
        b, d = x3d.shape[0], x3d.shape[2]
        s = x2d.shape[0] // b
        merge = self.merge
        if merge is not None:  # mode "attention" (a test TorchScript resolves when it compiles)
            weights = self._attention(x2d, x3d, valid_depth)  # (B, S, M, d)
            agg = merge(_aggregate(weights, x3d))  # (B * S, C3, h3, w3)
        else:
            assert positions is not None  # checked above; refines the type for TorchScript
            weights = F.one_hot(positions.long(), d).to(x3d.dtype).unsqueeze(2)  # (B, S, 1, d)
            agg = _aggregate(weights, x3d)  # (B * S, C3, h3, w3): the picked slices
        if agg.shape[2:] != x2d.shape[2:]:
            agg = F.interpolate(agg, size=x2d.shape[2:], mode="bilinear", align_corners=False)
        if x2d.is_contiguous(memory_format=torch.channels_last):  # keep a channels-last 2D path channels-last
            agg = agg.contiguous(memory_format=torch.channels_last)
        out = self.fusion(torch.cat([x2d, agg], dim=1))
        return out, weights.reshape(b * s, weights.shape[2], d)

    @torch.jit.unused
    def _check(
        self, x2d: torch.Tensor, x3d: torch.Tensor, positions: torch.Tensor | None, valid_depth: int | None
    ) -> None:
        """Raise a ValueError for inputs the block does not take."""
        check_input(x2d, "MultiSliceFeatureAggregation (x2d, 2D slices)", self.in_channels_2d, spatial_dims=2)
        check_input(x3d, "MultiSliceFeatureAggregation (x3d, 3D context)", self.in_channels_3d, spatial_dims=3)
        b, d = x3d.shape[0], x3d.shape[self._depth_axis]
        if x2d.shape[0] % b != 0:
            raise ValueError(
                f"x2d holds {x2d.shape[0]} slices, not a multiple of the {b} volumes of x3d: give S slices per volume."
            )
        s = x2d.shape[0] // b
        if self.mode == "center":
            if positions is None or tuple(positions.shape) != (b, s):
                got = None if positions is None else list(positions.shape)
                raise ValueError(f"mode='center' (C-CA) needs positions of shape {[b, s]} (depth indices), got {got}.")
            if positions.numel() > 0 and (int(positions.min()) < 0 or int(positions.max()) >= d):
                raise ValueError(f"positions must index the {d} depth slices of x3d, got {positions.tolist()}.")
        if valid_depth is not None and not 1 <= valid_depth <= d:
            raise ValueError(
                f"valid_depth must lie in [1, {d}] (the depth slices of x3d holding image content), got {valid_depth}."
            )


MSFA = MultiSliceFeatureAggregation
