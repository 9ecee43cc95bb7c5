"""Multi-scale deformable multi-head self-attention (MS-DMSA), the attention of CoTr's DeTrans encoder.

Two interchangeable cores compute the sampling step: :func:`deformable_attention_core` (default, a gather of the
``2^n`` interpolation corners through :func:`torch.nn.functional.embedding_bag`) and
:func:`deformable_attention_grid_sample` (the release's approach, one :func:`torch.nn.functional.grid_sample` call
per level and head group, kept as the in-project reference the tests compare against).
"""

from __future__ import annotations

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


def _shapes(spatial_shapes: torch.Tensor | Sequence[Sequence[int]]) -> list[list[int]]:
    """Level sizes as a list of int lists (accepts the release's ``(L, n)`` long tensor)."""
    if isinstance(spatial_shapes, torch.Tensor):
        return [[int(s) for s in row] for row in spatial_shapes.tolist()]
    return [[int(s) for s in shape] for shape in spatial_shapes]


def _prod(sizes: list[int]) -> int:
    """``math.prod`` in a form TorchScript compiles."""
    out = 1
    for s in sizes:
        out *= s
    return out


def _numels(shapes: list[list[int]]) -> list[int]:
    return [_prod(shape) for shape in shapes]


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
    return _grid_sample_core(value, shapes, sampling_locations, attention_weights)


def _grid_sample_core(
    value: torch.Tensor, shapes: list[list[int]], sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> torch.Tensor:
    """:func:`deformable_attention_grid_sample` on checked inputs (TorchScript-compilable)."""
    n, heads, channels = value.shape[0], value.shape[2], value.shape[3]
    queries, levels, points = sampling_locations.shape[1], sampling_locations.shape[3], sampling_locations.shape[4]
    values = value.split(_numels(shapes), dim=1)
    grids = (2 * sampling_locations - 1).flip(-1)  # grid_sample reads (x, y[, z]) = reversed array axes
    samples: list[torch.Tensor] = []
    for level, shape in enumerate(shapes):
        v = values[level].flatten(2).transpose(1, 2).reshape([n * heads, channels] + shape)
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
    return _gather_core(value, shapes, sampling_locations, attention_weights, torch.onnx.is_in_onnx_export())


def _gather_core(
    value: torch.Tensor,
    shapes: list[list[int]],
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
    exporting: bool = False,
) -> torch.Tensor:
    """:func:`deformable_attention_core` on checked inputs (TorchScript-compilable); ``exporting`` replaces
    ``embedding_bag`` by ``index_select`` + ``bmm`` (the ONNX export of ``embedding_bag`` with per-sample weights
    is wrong)."""
    n, heads, channels = value.shape[0], value.shape[2], value.shape[3]
    queries, ndim = sampling_locations.shape[1], len(shapes[0])  # ndim a plain int, also while tracing
    device, batches = value.device, n * heads

    # zero-padded levels, one after another, laid out (N, heads, padded tokens, C_head)
    padded_shapes = [[s + 2 for s in shape] for shape in shapes]
    padded_sizes = _numels(padded_shapes)
    total = sum(padded_sizes)
    pad: list[int] = [1, 1] * ndim
    parts: list[torch.Tensor] = []
    perm = [0, ndim + 1, ndim + 2] + [a + 1 for a in range(ndim)]  # positive axes: ONNX's Transpose needs them
    for v, shape in zip(value.split(_numels(shapes), 1), shapes):
        v = v.reshape([n] + shape + [heads, channels]).permute(perm)
        # (N, heads, C_head, *shape) -> zero-padded, (N, heads, padded tokens, C_head)
        parts.append(F.pad(v, pad).flatten(3).transpose(2, 3))
    table = torch.cat(parts, dim=2).reshape(batches * total, channels)

    # level-major layout: every per-axis quantity below is one contiguous vector over (N, heads, Lq, points)
    loc = sampling_locations.permute(3, 5, 0, 2, 1, 4)  # (L, n, N, heads, Lq, points)
    attn = attention_weights.permute(3, 0, 2, 1, 4)  # (L, N, heads, Lq, points)
    batch_starts = (torch.arange(batches, device=device) * total).view(n, heads, 1, 1)
    index_parts: list[torch.Tensor] = []
    weight_parts: list[torch.Tensor] = []
    start = 0
    for level in range(len(shapes)):
        shape, pshape = shapes[level], padded_shapes[level]
        strides = [_prod(pshape[a + 1 :]) for a in range(ndim)]  # row-major strides of the padded level
        base = batch_starts + start  # flat row of the lower corner, in the padded table
        inside = torch.empty(0)  # False where a sample lies entirely outside the padded level: corners read zero
        lows: list[torch.Tensor] = []
        highs: list[torch.Tensor] = []
        for axis in range(ndim):
            pixel = loc[level, axis] * shape[axis] - 0.5  # align_corners=False
            floor = pixel.detach().floor()
            frac = pixel - floor  # carries the gradient to the locations
            floor = floor.long()
            ok = (floor >= -1) & (floor < shape[axis])
            inside = ok if axis == 0 else inside & ok
            base = base + (floor.clamp(-1, shape[axis] - 1) + 1) * strides[axis]
            lows.append(1 - frac)
            highs.append(frac)
        partial = [attn[level] * inside]
        for axis in range(ndim):  # corner weights as products shared between corners, in corner order
            grown: list[torch.Tensor] = []
            for w in partial:
                grown.append(w * lows[axis])
                grown.append(w * highs[axis])
            partial = grown
        for corner in range(len(partial)):  # lexicographic corners, axis 0 slowest
            offset = 0
            for axis in range(ndim):
                offset += ((corner >> (ndim - 1 - axis)) & 1) * strides[axis]
            index_parts.append(base + offset)
            weight_parts.append(partial[corner])
        start += padded_sizes[level]
    # one bag of L * 2^n * points rows per (batch, head, query)
    indices = torch.stack(index_parts, dim=-2).reshape(batches * queries, -1)
    weights = torch.stack(weight_parts, dim=-2).reshape(batches * queries, -1)
    weights = weights.to(table.dtype)
    if exporting:
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
    return _reference_points(_shapes(spatial_shapes), torch.empty(0, device=device).device, dtype)


def _reference_points(shapes: list[list[int]], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """:func:`deformable_reference_points` of int level sizes (TorchScript-compilable)."""
    points: list[torch.Tensor] = []
    for shape in shapes:
        axes = [(torch.arange(s, device=device, dtype=dtype) + 0.5) / s for s in shape]
        grid = torch.stack(torch.meshgrid(axes, indexing="ij"), dim=-1).reshape(-1, len(shape))
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

    __jit_ignored_attributes__ = ["reference_axes", "offset_axes"]  # forward reads the lists below

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
        self._reference_order = list(range(spatial_dims))  # the same as lists (typed for TorchScript)
        self._offset_order = list(range(spatial_dims))
        self._permuted = (False, False)  # (reference_axes, offset_axes) not the identity
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
        self._reference_order = identity if orders[0] is None else list(orders[0])
        self._offset_order = identity if orders[1] is None else list(orders[1])
        self._permuted = (orders[0] is not None, orders[1] is not None)

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
        spatial_shapes: list[list[int]],
        padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``spatial_shapes`` may also be the release's ``(L, n)`` long tensor (not in TorchScript)."""
        shapes = spatial_shapes
        if not torch.jit.is_scripting():  # plain-Python checks; a scripted block skips them
            shapes = _shapes(spatial_shapes)
            self._check_inputs(query, reference_points, input_flatten, shapes)
        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None]  # the same point on every level
        n, queries, width = query.shape[0], query.shape[1], query.shape[2]
        tokens = input_flatten.shape[1]
        heads, levels, points, ndim = self.num_heads, self.num_levels, self.num_points, self.spatial_dims

        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)
        value = value.view(n, tokens, heads, width // heads)
        offsets = self.sampling_offsets(query).view(n, queries, heads, levels, points, ndim)
        weights = self.attention_weights(query).view(n, queries, heads, levels * points)
        weights = weights.softmax(-1).view(n, queries, heads, levels, points)

        sizes = torch.tensor(shapes, dtype=query.dtype, device=query.device)  # (L, n), array axis order
        if self._permuted[0]:
            axes = torch.tensor(self._reference_order, device=query.device)
            reference_points, sizes = reference_points.index_select(-1, axes), sizes.index_select(-1, axes)
        if self._permuted[1]:
            offsets = offsets.index_select(-1, torch.tensor(self._offset_order, device=query.device))
        locations = reference_points[:, :, None, :, None, :] + offsets / sizes[None, None, None, :, None, :]
        if self.core == "grid_sample":
            out = _grid_sample_core(value, shapes, locations, weights)
        else:
            exporting = False if torch.jit.is_scripting() else torch.onnx.is_in_onnx_export()
            out = _gather_core(value, shapes, locations, weights, exporting)
        return self.output_proj(out)

    @torch.jit.unused
    def _check_inputs(
        self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor, shapes: list[list[int]]
    ) -> None:
        """Raise a ValueError for inputs of inconsistent shapes."""
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
        if (
            reference_points.dim() not in (3, 4)
            or reference_points.shape[1] != queries
            or reference_points.shape[-1] != (self.spatial_dims)
        ):
            raise ValueError(
                f"reference_points must be (N, Lq, {self.spatial_dims}) or (N, Lq, levels, {self.spatial_dims}) with "
                f"Lq = {queries}, got {list(reference_points.shape)}."
            )
