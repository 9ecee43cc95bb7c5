"""Multi-scale deformable multi-head self-attention (MS-DMSA), the attention of CoTr's DeTrans encoder.

Two interchangeable cores compute the sampling step: :func:`deformable_attention_core` (default, a gather of the
``2^n`` interpolation corners through :func:`torch.nn.functional.embedding_bag`) and
:func:`deformable_attention_grid_sample` (the release's approach, one :func:`torch.nn.functional.grid_sample` call
per level and head group, kept as the in-project reference the tests compare against).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.networks.layout import check_spatial_axes

__all__ = [
    "CORES",
    "MSDeformableAttention",
    "deformable_attention_core",
    "deformable_attention_grid_sample",
    "deformable_reference_points",
]


def _shapes(spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """Level sizes as a list of int tuples (accepts the release's ``(L, n)`` long tensor)."""
    if isinstance(spatial_shapes, torch.Tensor):
        return [tuple(int(s) for s in row) for row in spatial_shapes.tolist()]
    return [tuple(int(s) for s in shape) for shape in spatial_shapes]


def _check_core_inputs(
    value: torch.Tensor,
    shapes: list[tuple[int, ...]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> None:
    if value.dim() != 4 or sampling_locations.dim() != 6 or attention_weights.dim() != 5:
        raise ValueError(
            "expected value (N, S, heads, C_head), sampling_locations (N, Lq, heads, levels, points, n) and "
            f"attention_weights (N, Lq, heads, levels, points), got {list(value.shape)}, "
            f"{list(sampling_locations.shape)}, {list(attention_weights.shape)}."
        )
    n, s, heads, _ = value.shape
    if sum(math.prod(shape) for shape in shapes) != s:
        raise ValueError(f"value has {s} tokens but the level sizes {shapes} hold {sum(map(math.prod, shapes))}.")
    if sampling_locations.shape[-1] not in (2, 3) or any(
        len(shape) != sampling_locations.shape[-1] for shape in shapes
    ):
        raise ValueError(
            f"sampling_locations end in {sampling_locations.shape[-1]} coordinates; every level size must have as "
            f"many axes (2 or 3), got {shapes}."
        )
    expected = (n, sampling_locations.shape[1], heads, len(shapes), sampling_locations.shape[4])
    if tuple(sampling_locations.shape[:5]) != expected or tuple(attention_weights.shape) != expected:
        raise ValueError(
            f"sampling_locations (without the last axis) and attention_weights must be (N, Lq, heads, levels, "
            f"points) = {list(expected)}, got {list(sampling_locations.shape)} and {list(attention_weights.shape)}."
        )


def deformable_attention_grid_sample(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention sampling with :func:`~torch.nn.functional.grid_sample` (the reference core).

    Every (query, head, level, point) reads ``value`` by bi/trilinear interpolation (zeros outside the map,
    ``align_corners=False``) at ``sampling_locations`` and the samples are summed with ``attention_weights``.

    Args:
        value: ``(N, S, heads, C_head)``, the flattened levels one after another (``S = sum prod(shape_l)``),
            each level in row-major order of its spatial axes.
        spatial_shapes: ``(L, n)`` sizes of the levels (``n`` = 2 or 3 spatial axes), a long tensor or nested ints.
        sampling_locations: ``(N, Lq, heads, L, points, n)`` in ``[0, 1]`` (0 and 1 are the outer edges of the map),
            coordinates in the levels' *array axis order* (``(h, w, d)`` for a ``(H, W, D)`` level, ``(h, w)`` for
            ``(H, W)``).
        attention_weights: ``(N, Lq, heads, L, points)``.

    Returns:
        ``(N, Lq, heads * C_head)``.
    """
    shapes = _shapes(spatial_shapes)
    _check_core_inputs(value, shapes, sampling_locations, attention_weights)
    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    values = value.split([math.prod(shape) for shape in shapes], dim=1)
    grids = (2 * sampling_locations - 1).flip(-1)  # grid_sample reads (x, y[, z]) = reversed array axes
    samples = []
    for level, shape in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape(n * heads, channels, *shape)
        grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (N * heads, Lq, points, n)
        if len(shape) == 3:
            grid = grid[:, None]  # (N * heads, 1, Lq, points, 3)
        sampled = F.grid_sample(v, grid.to(v.dtype), mode="bilinear", padding_mode="zeros", align_corners=False)
        samples.append(sampled.reshape(n * heads, channels, queries, points))
    weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    out = (torch.stack(samples, dim=-2).flatten(-2) * weights).sum(-1)  # (N * heads, C_head, Lq)
    return out.view(n, heads * channels, queries).transpose(1, 2).contiguous()


def deformable_attention_core(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Deformable attention sampling as one weighted gather (the fast core); same contract and results as
    :func:`deformable_attention_grid_sample`.

    Each level of ``value`` is zero-padded by one voxel on every side, so that the ``2^n`` interpolation
    corners of a sample are the rows ``base + offset_c`` of the padded, flattened map (``offset_c`` a
    constant per level and corner) and corners outside the map read zeros without a mask. The corner
    weights (products of the fractional parts) are multiplied by the attention weights before the
    reduction, and :func:`~torch.nn.functional.embedding_bag` sums ``(L * points * 2^n)`` rows per
    (query, head) without materialising the gathered rows. Samples entirely outside a level (beyond the
    one-voxel border) get weight zero. Autograd flows through the weights into ``sampling_locations`` and
    ``attention_weights`` and through ``embedding_bag`` into ``value``.

    Args and returns: as :func:`deformable_attention_grid_sample`.
    """
    shapes = _shapes(spatial_shapes)
    _check_core_inputs(value, shapes, sampling_locations, attention_weights)
    n, _, heads, channels = value.shape
    _, queries, _, levels, points, ndim = sampling_locations.shape
    device, batches = value.device, n * heads

    # zero-padded levels, one after another, laid out (N, heads, padded tokens, C_head)
    padded_shapes = [tuple(s + 2 for s in shape) for shape in shapes]
    padded_sizes = [math.prod(shape) for shape in padded_shapes]
    total = sum(padded_sizes)
    parts = []
    for v, shape in zip(value.split([math.prod(s) for s in shapes], 1), shapes):
        v = v.reshape(n, *shape, heads, channels).permute(0, ndim + 1, ndim + 2, *range(1, ndim + 1))
        # (N, heads, C_head, *shape) -> zero-padded, (N, heads, padded tokens, C_head)
        parts.append(F.pad(v, (1, 1) * ndim).flatten(3).transpose(2, 3))
    table = torch.cat(parts, dim=2).reshape(batches * total, channels)

    # level-major layout: every per-axis quantity below is one contiguous vector over (N, heads, Lq, points)
    loc = sampling_locations.permute(3, 5, 0, 2, 1, 4)  # (L, n, N, heads, Lq, points)
    attn = attention_weights.permute(3, 0, 2, 1, 4)  # (L, N, heads, Lq, points)
    batch_starts = (torch.arange(batches, device=device) * total).view(n, heads, 1, 1)
    corners = list(itertools.product((0, 1), repeat=ndim))  # lexicographic, axis 0 slowest
    index_parts, weight_parts, start = [], [], 0
    for level, (shape, pshape) in enumerate(zip(shapes, padded_shapes)):
        strides = [math.prod(pshape[a + 1 :]) for a in range(ndim)]  # row-major strides of the padded level
        base = batch_starts + start  # flat row of the lower corner, in the padded table
        inside = None  # False where a sample lies entirely outside the padded level: all corners read zero
        pairs = []
        for axis in range(ndim):
            pixel = loc[level, axis] * shape[axis] - 0.5  # align_corners=False
            floor = pixel.detach().floor()
            frac = pixel - floor  # carries the gradient to the locations
            floor = floor.long()
            ok = (floor >= -1) & (floor < shape[axis])
            inside = ok if inside is None else inside & ok
            base = base + (floor.clamp(-1, shape[axis] - 1) + 1) * strides[axis]
            pairs.append((1 - frac, frac))
        partial = [attn[level] * inside]
        for axis in range(ndim):  # corner weights as products shared between corners, in corner order
            partial = [w * pairs[axis][c] for w in partial for c in (0, 1)]
        for corner, w in zip(corners, partial):
            index_parts.append(base + sum(c * st for c, st in zip(corner, strides)))
            weight_parts.append(w)
        start += padded_sizes[level]
    # one bag of L * 2^n * points rows per (batch, head, query)
    indices = torch.stack(index_parts, dim=-2).reshape(batches * queries, -1)
    weights = torch.stack(weight_parts, dim=-2).reshape(batches * queries, -1)
    weights = weights.to(table.dtype)
    if torch.onnx.is_in_onnx_export():  # the ONNX export of embedding_bag with per-sample weights is wrong
        gathered = table.index_select(0, indices.reshape(-1)).view(batches * queries, -1, channels)
        out = torch.bmm(weights.unsqueeze(1), gathered).squeeze(1)
    else:
        out = F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")
    return out.view(n, heads, queries, channels).transpose(1, 2).reshape(n, queries, heads * channels)


CORES = {"fast": deformable_attention_core, "grid_sample": deformable_attention_grid_sample}


def deformable_reference_points(
    spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Normalised voxel centres of every level, in the flattened (row-major) token order: ``(S, n)`` in ``(0, 1)``,
    coordinates in array axis order (``(h, w, d)`` for a ``(H, W, D)`` level)."""
    points = []
    for shape in _shapes(spatial_shapes):
        axes = [(torch.arange(s, device=device, dtype=dtype) + 0.5) / s for s in shape]
        grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(shape))
        points.append(grid)
    return torch.cat(points, dim=0)


class MSDeformableAttention(nn.Module):
    """Multi-scale deformable multi-head self-attention (MS-DMSA) for 3D or 2D feature maps.

    From Xie et al., "CoTr: Efficiently Bridging CNN and Transformer for 3D Medical Image Segmentation",
    MICCAI 2021 (https://arxiv.org/abs/2103.03024; code: github.com/YtongXie/CoTr), which extends Deformable
    DETR's attention (Zhu et al., ICLR 2021) to 3D. Each query predicts, per head, level and point, an offset
    from its reference point and an attention weight (softmax over levels x points); the values are sampled
    at ``reference + offset / level size`` and summed with those weights, then projected.

    Parameter names equal the release's (``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``). Initialisation as the release: offset weights 0 and biases along ``num_heads`` directions
    scaled by the point index (1..K), attention weights 0, value and output projections Xavier-uniform with zero
    bias.

    Sampling axes: along spatial axis ``a`` of a level, a sample lies at ``reference[reference_axes[a]] +
    offset[offset_axes[a]] / size[reference_axes[a]]``. The default (both ``None``, the identity) is
    geometrically correct: reference points, offsets and level sizes share the levels' array axis order, and a
    query with zero offsets samples its own voxel. Other permutations only serve to run weights trained with
    transposed sampling: CoTr's released code samples that way, and
    :func:`monai_ext.networks.compat.use_cotr_release_axes` sets its permutations (see :meth:`set_sampling_axes`).

    Args:
        hidden_size: model width ``d`` (the release's ``d_model``), divisible by ``num_heads``.
        num_levels: feature levels ``L``.
        num_heads: attention heads.
        num_points: sampling points ``K`` per head and level.
        spatial_dims: 3 or 2.
        core: ``"fast"`` (:func:`deformable_attention_core`, default) or ``"grid_sample"``
            (:func:`deformable_attention_grid_sample`); same results.
        reference_axes: for each spatial axis, the axis whose reference coordinate and level size its sampling
            location starts from; default ``None`` (the identity).
        offset_axes: for each spatial axis, the offset component added along it; default ``None`` (the identity).

    Shapes:
        query ``(N, Lq, d)``; reference_points ``(N or 1, Lq, n)`` or ``(N or 1, Lq, L, n)`` in ``[0, 1]``, in the
        levels' array axis order (:func:`deformable_reference_points`); input_flatten ``(N, S, d)`` with
        ``S = sum prod(spatial_shapes[l])``, each level flattened row-major; spatial_shapes ``(L, n)``;
        padding_mask ``(N, S)`` bool, True where a token is padding; output ``(N, Lq, d)``.

    Raises:
        ValueError: for bad settings (``hidden_size`` not divisible by ``num_heads``, ``spatial_dims`` not
            2 or 3, an unknown core, sampling axes that are not a permutation of the spatial axes), and in
            ``forward`` for inconsistent shapes.
    """

    def __init__(
        self,
        hidden_size: int = 384,
        num_levels: int = 2,
        num_heads: int = 6,
        num_points: int = 4,
        spatial_dims: int = 3,
        core: str = "fast",
        reference_axes: Sequence[int] | None = None,
        offset_axes: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}.")
        if min(hidden_size, num_levels, num_heads, num_points) < 1 or hidden_size % num_heads:
            raise ValueError(
                f"need positive sizes and hidden_size divisible by num_heads, got hidden_size={hidden_size}, "
                f"num_heads={num_heads}, num_levels={num_levels}, num_points={num_points}."
            )
        if core not in CORES:
            raise ValueError(f"core must be one of {sorted(CORES)}, got {core!r}.")
        self.hidden_size = hidden_size
        self.num_levels = num_levels
        self.num_heads = num_heads
        self.num_points = num_points
        self.spatial_dims = spatial_dims
        self.core = core
        self.reference_axes: list[int] | None = None
        self.offset_axes: list[int] | None = None
        self.set_sampling_axes(reference_axes, offset_axes)
        self.sampling_offsets = nn.Linear(hidden_size, num_heads * num_levels * num_points * spatial_dims)
        self.attention_weights = nn.Linear(hidden_size, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(hidden_size, hidden_size)
        self.output_proj = nn.Linear(hidden_size, hidden_size)
        self.reset_parameters()

    def set_sampling_axes(
        self, reference_axes: Sequence[int] | None = None, offset_axes: Sequence[int] | None = None
    ) -> None:
        """Set the sampling axes (see the class docstring); ``None`` or the identity is the geometric order.

        Raises:
            ValueError: for an argument that is not a permutation of ``range(spatial_dims)``.
        """
        identity = list(range(self.spatial_dims))
        orders = []
        for name, axes in (("reference_axes", reference_axes), ("offset_axes", offset_axes)):
            axes = identity if axes is None else list(check_spatial_axes(axes, self.spatial_dims, name))
            if sorted(axes) != identity:
                raise ValueError(f"{name} must list every spatial axis of {identity} once, got {axes}.")
            orders.append(None if axes == identity else axes)
        self.reference_axes, self.offset_axes = orders

    def reset_parameters(self) -> None:
        """The release's initialisation (see the class docstring)."""
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        if self.spatial_dims == 3:
            directions = torch.stack([thetas.cos(), thetas.sin() * thetas.cos(), thetas.sin() * thetas.sin()], -1)
        else:
            directions = torch.stack([thetas.cos(), thetas.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        scale = torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        grid = directions.view(self.num_heads, 1, 1, -1).repeat(1, self.num_levels, self.num_points, 1) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        query: torch.Tensor,
        reference_points: torch.Tensor,
        input_flatten: torch.Tensor,
        spatial_shapes: torch.Tensor | Sequence[Sequence[int]],
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        shapes = _shapes(spatial_shapes)
        n, queries, width = query.shape if query.dim() == 3 else (0, 0, -1)
        if width != self.hidden_size or input_flatten.dim() != 3 or input_flatten.shape[::2] != (n, width):
            raise ValueError(
                f"MSDeformableAttention expects query (N, Lq, {self.hidden_size}) and input_flatten "
                f"(N, S, {self.hidden_size}), got {list(query.shape)} and {list(input_flatten.shape)}."
            )
        if len(shapes) != self.num_levels or any(len(s) != self.spatial_dims for s in shapes):
            raise ValueError(
                f"spatial_shapes must list {self.num_levels} level sizes with {self.spatial_dims} axes each, "
                f"got {shapes}."
            )
        tokens = sum(math.prod(s) for s in shapes)
        if input_flatten.shape[1] != tokens:
            raise ValueError(
                f"input_flatten has {input_flatten.shape[1]} tokens, spatial_shapes {shapes} hold {tokens}."
            )
        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None]  # the same point on every level
        if (
            reference_points.dim() != 4
            or reference_points.shape[1] != queries
            or reference_points.shape[-1] != (self.spatial_dims)
        ):
            raise ValueError(
                f"reference_points must be (N, Lq, {self.spatial_dims}) or (N, Lq, levels, {self.spatial_dims}) with "
                f"Lq = {queries}, got {list(reference_points.shape)}."
            )
        heads, levels, points, ndim = self.num_heads, self.num_levels, self.num_points, self.spatial_dims

        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, tokens, heads, width // heads)
        offsets = self.sampling_offsets(query).view(n, queries, heads, levels, points, ndim)
        weights = self.attention_weights(query).view(n, queries, heads, levels * points)
        weights = weights.softmax(-1).view(n, queries, heads, levels, points)

        sizes = torch.tensor(shapes, dtype=query.dtype, device=query.device)  # (L, n), array axis order
        if self.reference_axes is not None:
            reference_points, sizes = reference_points[..., self.reference_axes], sizes[:, self.reference_axes]
        if self.offset_axes is not None:
            offsets = offsets[..., self.offset_axes]
        locations = reference_points[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
        out = CORES[self.core](value, shapes, locations, weights)
        return self.output_proj(out)
