"""Volumes as stacks of 2D slices: the folded, channels-last layout on which SSH-UNet runs its 2D convolutions.

A view ``(N, C, A, B, S)`` (slices last, see :func:`~monai_ext.networks.blocks.to_view`) is folded into
``(N * S, C, A, B)``, slice ``s`` of sample ``n`` at batch index ``n * S + s``, stored channels-last (memory order
``(N, S, A, B, C)``). A 3D convolution whose kernel spans one slice (``(ka, kb, 1)``) is then a 2D convolution with
the same weight, ``weight[..., 0]``; a stride along the slices keeps every ``stride``-th slice, and a transposed
convolution whose kernel equals its stride along the slices writes ``stride`` interleaved slices per input slice.
Instance norm keeps its statistics over the whole volume of each sample and channel, not per slice. The functions
take the weights of existing ``Conv3d`` / ``ConvTranspose3d`` / ``InstanceNorm3d`` modules, so the 3D modules stay
the parameter holders (their state-dict keys and shapes do not change), and are TorchScript- and trace-friendly.

In inference the functions can also reuse memory (a *pool*, a plain list of free buffers, owned by one forward
pass): :func:`take_buffer` hands out a pooled buffer of the right size, :func:`release_buffer` gives one back, and
``conv_folded`` / ``conv_transpose_folded`` / ``slice_shift_folded`` then work in slice chunks of at most
:data:`CHUNK_BYTES`, writing into a pooled buffer or in place. With glibc's default allocator every tensor above its
mmap threshold (at most 32 MiB) is a fresh mapping whose pages fault on first touch (about 25 ms per 100 MiB
here); chunk temporaries stay below it and are served from reused heap memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.networks.blocks.cpu_conv import conv2d_channels_last
from monai_ext.networks.capture import capturing
from monai_ext.networks.precision import half_precision

__all__ = [
    "CHUNK_BYTES",
    "ELEMENTWISE_ACTIVATIONS",
    "POOL_MIN_BYTES",
    "add_projection",
    "can_overwrite",
    "conv_folded",
    "conv_transpose_folded",
    "foldable_conv",
    "foldable_norm",
    "instance_norm_folded",
    "one_channel_projection",
    "place_shifted",
    "release_buffer",
    "slices_per_chunk",
    "take_buffer",
    "to_folded",
    "unfold",
    "unfold_contiguous",
]

CHUNK_BYTES = 12 * 2**20
"""The largest output (bytes) one call of a chunked convolution or shift makes at a time: below glibc's mmap
threshold, so its temporaries come from reused heap memory."""

POOL_MIN_BYTES = 4 * 2**20
"""Buffers from this size up go back to a pool (smaller ones are cheap to allocate)."""

ELEMENTWISE_ACTIVATIONS = (
    nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Identity,
)  # fmt: skip
"""Activations that act on each value (PReLU per channel, axis 1 in both layouts), so they apply to folded tensors."""


def can_overwrite() -> bool:
    """Whether intermediates may be overwritten in place: autograd records nothing and no trace is being taken (a
    trace must not depend on the grad mode: ``torch.jit.trace`` checks it again under ``no_grad``)."""
    return not torch.is_grad_enabled() and not capturing()


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """``(N, S, C, A, B)`` -> ``(N * S, C, A, B)`` channels-last: a view when the memory already is in that order,
    one copy otherwise."""
    n, s, c, a, b = x.shape
    return x.permute(0, 1, 3, 4, 2).contiguous().view(n * s, a, b, c).permute(0, 3, 1, 2)


def take_buffer(pool: list[torch.Tensor] | None, shape: list[int], like: torch.Tensor) -> torch.Tensor:
    """An uninitialised channels-last tensor ``shape = (N * S, C, A, B)`` with ``like``'s dtype and device.

    From ``pool``: a free buffer with as many elements (it leaves the pool). When there is none, the free buffers
    smaller than it are dropped before a new tensor is made (a forward pass asks for the same sizes in every view,
    so these would mostly sit idle beside it; larger ones stay for the larger requests to come)."""
    ns, c, a, b = shape[0], shape[1], shape[2], shape[3]
    numel = ns * c * a * b
    if pool is not None:
        for i in range(len(pool)):
            buf = pool[i]
            if buf.dtype == like.dtype and buf.device == like.device and buf.numel() == numel:
                return pool.pop(i).view(ns, a, b, c).permute(0, 3, 1, 2)
        for i in range(len(pool) - 1, -1, -1):
            if pool[i].numel() < numel:
                pool.pop(i)
    return torch.empty(ns, a, b, c, dtype=like.dtype, device=like.device).permute(0, 3, 1, 2)


def release_buffer(pool: list[torch.Tensor] | None, x: torch.Tensor) -> None:
    """Give the memory of ``x`` (channels-last ``(N * S, C, A, B)``, no longer used by anyone) back to ``pool``;
    small or non-contiguous tensors are left to the allocator."""
    smallest = 4 * 1024 * 1024  # POOL_MIN_BYTES, a global TorchScript cannot read
    if not torch.jit.is_scripting():
        smallest = POOL_MIN_BYTES
    if pool is not None and x.numel() * x.element_size() >= smallest:
        if x.is_contiguous(memory_format=torch.channels_last):
            pool.append(x.permute(0, 2, 3, 1).reshape(-1))


def slices_per_chunk(bytes_per_slice: int) -> int:
    """Batch entries (slices) per chunk whose output is at most :data:`CHUNK_BYTES`; at least one."""
    limit = 12 * 1024 * 1024  # CHUNK_BYTES, a global TorchScript cannot read
    if not torch.jit.is_scripting():
        limit = CHUNK_BYTES
    return max(1, limit // max(1, bytes_per_slice))


def to_folded(x: torch.Tensor) -> torch.Tensor:
    """Fold the slices of a view ``(N, C, A, B, S)`` into the batch: ``(N * S, C, A, B)``, channels-last.

    A view (no copy) when ``x`` already lies in memory as ``(N, S, A, B, C)``, e.g. :func:`unfold`'s output.
    """
    return _channels_last(x.permute(0, 4, 1, 2, 3))


def unfold(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Undo :func:`to_folded` without a copy: ``(N * S, C, A, B)`` with ``N = batch`` -> ``(N, C, A, B, S)``."""
    ns, c, a, b = x.shape
    return x.view(batch, ns // batch, c, a, b).permute(0, 2, 3, 4, 1)


def conv_folded(
    x: torch.Tensor,
    batch: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    pool: list[torch.Tensor] | None = None,
    inplace: bool = False,
    out: torch.Tensor | None = None,
    shift: list[tuple[int, int, int]] | None = None,
) -> torch.Tensor:
    """A ``Conv3d`` with a one-slice kernel ``(ka, kb, 1)`` (no padding along the slices) on the folded layout.

    Args:
        x: folded input ``(N * S, C_in, A, B)``, channels-last.
        batch: ``N``.
        weight: the Conv3d weight ``(C_out, C_in, ka, kb, 1)``; bias: its bias or None.
        stride, padding: the Conv3d's, per axis of the view ``(A, B, S)``.
        pool: when given (inference only), the output is a buffer of ``pool`` (or new), filled in slice chunks, in
            the dtype the convolution gives (bf16 / fp16 under autocast: the maps after it stay in that dtype).
        inplace: with ``pool``, write the output over ``x`` when the shapes and dtypes agree (each chunk is computed
            before it is written, and reads only its own slices).
        out: write the output into this tensor of the output's shape, in slice chunks (inference only); it may
            share memory with ``x`` slice for slice, e.g. be its first channels.
        shift: with ``pool`` or ``out``, shift the output along the slices as it is written, at no extra pass: the
            channel groups ``(start, size, step)`` of a slice shift (``SliceShift.groups``), group ``g`` of output
            slice ``s`` taking slice ``s - step`` (zeros past the ends of each sample).

    Returns:
        ``(N * S', C_out, A', B')``, ``S' = ceil(S / stride[2])``: what the Conv3d gives on ``unfold(x, batch)``,
        folded.
    """
    if stride[2] != 1:  # a one-slice kernel with a stride along the slices keeps every stride-th slice
        ns, c, a, b = x.shape
        if (pool is not None or out is not None) and (ns // batch) % stride[2] == 0:
            x = x.unflatten(0, (-1, stride[2])).select(1, 0)  # every sample's same slices: a view, read chunkwise
        else:
            x = _channels_last(x.view(batch, ns // batch, c, a, b)[:, :: stride[2]])
    weight2d = weight.squeeze(-1)
    in_plane, pad = [stride[0], stride[1]], [padding[0], padding[1]]
    if pool is None and out is None:
        return conv2d_channels_last(x, weight2d, bias, in_plane, pad, [1, 1])
    weight2d = _chunk_weight(weight2d, x)
    ns, _, a, b = x.shape
    shape = [ns, weight.shape[0], (a + 2 * pad[0] - weight.shape[2]) // in_plane[0] + 1]
    shape.append((b + 2 * pad[1] - weight.shape[3]) // in_plane[1] + 1)
    if out is not None and list(out.shape) != shape:
        raise ValueError(f"conv_folded: out has shape {list(out.shape)}, the convolution gives {shape}.")
    per_slice = shape[1] * shape[2] * shape[3]
    if not x.is_contiguous(memory_format=torch.channels_last):  # every stride-th slice: each chunk is copied first
        per_slice = max(per_slice, x.shape[1] * a * b)
    step = slices_per_chunk(per_slice * x.element_size())
    groups = shift if shift is not None else [(0, shape[1], 0)]  # no shift: every channel stays in its slice
    slices = ns // batch
    for first in range(0, ns, slices):  # chunks within one sample, so that no shift crosses samples
        held: torch.Tensor | None = None  # the previous chunk's output: its last slice moves into this chunk's first
        for lo in range(0, slices, step):
            hi = min(lo + step, slices)
            part = conv2d_channels_last(x.narrow(0, first + lo, hi - lo), weight2d, bias, in_plane, pad, [1, 1])
            if out is None:  # the output takes the first chunk's dtype (bf16 / fp16 under autocast)
                reuse = inplace and shape == list(x.shape) and x.dtype == part.dtype
                out = x if reuse else take_buffer(pool, shape, part)
            if held is not None:  # written only now: with out = x, this chunk had to read that slice first
                for start, size, moves in groups:
                    if moves > 0:
                        last = held.select(0, held.shape[0] - 1).narrow(0, start, size)
                        out.select(0, first + lo).narrow(0, start, size).copy_(last)
            place_shifted(out, part, first + lo, lo == 0, hi == slices, groups)
            held = part
    assert out is not None  # there is at least one slice
    return out


def _chunk_weight(weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A 2D convolution's weight as each chunk of ``x`` takes it, made once for all chunks: channels-last like the
    chunks, and under autocast in the dtype of a bf16 / fp16 ``x`` (the squeezed weight is a view, whose cast
    autocast does not cache but repeats for every chunk)."""
    if not torch.jit.is_scripting():
        if half_precision(x.dtype) and weight.dtype != x.dtype and torch.is_autocast_enabled(x.device.type):
            weight = weight.to(x.dtype)
    return weight.contiguous(memory_format=torch.channels_last)


def place_shifted(
    out: torch.Tensor, part: torch.Tensor, at: int, first: bool, last: bool, shift: list[tuple[int, int, int]]
) -> None:
    """Write ``part`` ``(n, C, A, B)``, the slices ``at, ..., at + n - 1`` of one sample, into ``out`` (the whole
    folded tensor) with each channel group ``(start, size, step)`` moved ``step`` slices along (the shift of
    :class:`~monai_ext.networks.blocks.SliceShift`). A group moving forward leaves ``part``'s last slice to the
    caller (the next chunk's first, or out of the sample); the ends a move vacates are zeroed in the sample's
    ``first`` and ``last`` chunk."""
    n = part.shape[0]
    for start, size, moves in shift:
        if size == 0:
            continue
        target, source = out.narrow(1, start, size), part.narrow(1, start, size)
        if moves == 0:
            target.narrow(0, at, n).copy_(source)
        elif moves > 0:  # out[s] = y[s - 1]
            target.narrow(0, at + 1, n - 1).copy_(source.narrow(0, 0, n - 1))
            if first:
                target.select(0, at).zero_()
        else:  # out[s] = y[s + 1]
            skip = 1 if first else 0  # the sample's first slice moves out of it
            target.narrow(0, at - 1 + skip, n - skip).copy_(source.narrow(0, skip, n - skip))
            if last:
                target.select(0, at + n - 1).zero_()


def conv_transpose_folded(
    x: torch.Tensor,
    batch: int,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int, int],
    padding: tuple[int, int, int],
    output_padding: tuple[int, int, int],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """A ``ConvTranspose3d`` whose kernel equals its stride along the slices (no padding there) on the folded layout.

    Input slice ``s`` gives output slices ``s * stride[2] + t``, each from the 2D kernel ``weight[..., t]``.

    Args:
        x: folded input ``(N * S, C_in, A, B)``, channels-last.
        batch: ``N``.
        weight: the ConvTranspose3d weight ``(C_in, C_out, ka, kb, stride[2])``; bias: its bias or None.
        stride, padding, output_padding: the ConvTranspose3d's, per axis of the view ``(A, B, S)``.
        out: when given (inference only), the result is written into it in slice chunks: a ``(N * S * stride[2],
            C_out, A', B')`` tensor whose batch entries each are channels-last, e.g. the first channels of a
            concatenation's buffer.

    Returns:
        ``(N * S * stride[2], C_out, A', B')``, channels-last (``out`` when given).
    """
    in_plane = [stride[0], stride[1]]
    pad, out_pad = [padding[0], padding[1]], [output_padding[0], output_padding[1]]
    depth = weight.shape[-1]
    if out is not None:
        kernels = [_chunk_weight(weight[..., t], x) for t in range(depth)]
        per_input = out.unflatten(0, (x.shape[0], depth))  # (N * S, depth, C_out, A', B')
        step = slices_per_chunk(per_input[0].numel() * out.element_size())
        for start in range(0, x.shape[0], step):
            for t in range(depth):
                n = min(step, x.shape[0] - start)
                part = F.conv_transpose2d(x.narrow(0, start, n), kernels[t], bias, in_plane, pad, out_pad)
                per_input.narrow(0, start, n).select(1, t).copy_(part)
        return out
    if depth == 1:
        return F.conv_transpose2d(x, weight.squeeze(-1), bias, in_plane, pad, out_pad)
    parts: list[torch.Tensor] = []
    for t in range(depth):
        part = F.conv_transpose2d(x, weight[..., t], bias, in_plane, pad, out_pad)
        ns, c, a, b = part.shape
        parts.append(part.view(batch, ns // batch, c, a, b).permute(0, 1, 3, 4, 2))  # (N, S, A', B', C) in memory
    out = torch.stack(parts, dim=2)  # (N, S, depth, A', B', C), contiguous
    n, s, _, a, b, c = out.shape
    return out.view(n * s * depth, a, b, c).permute(0, 3, 1, 2)


def _moments(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance over axis 1 of ``rows`` ``(N, M, C)``, each ``(N, 1, C)``, as accurate as
    ``InstanceNorm3d`` (PyTorch's channels-last batch and group norm kernels take one pass and lose about 1e-3 at
    96^3 voxels): the sums of ``x - c`` and ``(x - c)^2`` over blocks (:func:`_blocks`, in one part of ``M`` per
    thread: :func:`_parted`) about a shift ``c`` near the mean (the shifted-data algorithm). For float32 and float64
    rows ``c`` is the mean (two passes, the first sum zero and not taken); bf16 or fp16 rows give float32
    statistics. PyTorch takes a bf16 mean by converting the rows whole, so for bf16 ``c`` is the mean of every
    ``k``-th row (at most 16 Ki rows, a bf16 sum accumulated in float32: within a small fraction of a standard
    deviation of the mean, no cancellation) and each block is converted once, in a single pass."""
    m = rows.shape[1]
    low = half_precision(rows.dtype)
    exact = rows.dtype != torch.bfloat16  # an fp16 sum would overflow: its mean, in float32, is c
    parted = _parted(rows)
    if exact:
        shift = parted.sum(2, keepdim=True, dtype=torch.float32 if low else None).sum(1) / m
    else:
        sample = rows[:, :: max(1, m // 16384)]
        shift = sample.sum(1, keepdim=True).float() / sample.shape[1]
    centre = shift.unsqueeze(1)  # (N, 1, 1, C) against the blocks' (N, P, k, C)
    first = shift.new_zeros(parted.shape[0], parted.shape[1], 1, parted.shape[3])  # per part: (N, P, 1, C)
    squares = torch.zeros_like(first)
    for block in _blocks(parted):
        deviation = block.float().sub_(centre) if low else block - centre
        if not exact:
            first += deviation.sum(2, keepdim=True)
        squares += deviation.square_().sum(2, keepdim=True)
    if exact:
        return shift, squares.sum(1) / m
    offset = first.sum(1) / m  # the mean less c
    return shift + offset, squares.sum(1) / m - offset.square()


def _parted(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` ``(N, M, C)`` viewed as ``(N, P, M / P, C)``: ``P`` equal, contiguous parts of ``M``, one per thread
    (:func:`_parts`). Reduced over axis 2, each thread sums the part that it also wrote in the elementwise step
    before; reduced over axis 1 of ``(N, M, C)``, the two steps split the values differently between the threads.
    Measured here, a 96^3 x 32 map, 2 threads: the statistics' block loop 11.9 -> 4.0 ms (6.1 ms on one thread), the
    mean 2.1 -> 1.1 ms."""
    n, m, c = rows.shape
    parts = 1 if torch.jit.is_scripting() else _parts(m)
    return rows.reshape(n, parts, m // parts, c)


def _blocks(parted: torch.Tensor) -> list[torch.Tensor]:
    """A :func:`_parted` ``(N, P, M / P, C)`` cut along axis 2 into blocks of about 256 Ki values (1 MB of float32)
    for a computation that stays in cache, or 1 Mi values of bf16 / fp16 (whose blocks take an extra step, their
    conversion, and are faster in fewer, larger blocks)."""
    n, parts, _, c = parted.shape
    values = 1048576 if parted.element_size() == 2 else 262144
    return list(parted.split(max(1, values // (c * n * parts)), dim=2))


@torch.jit.unused
def _parts(m: int) -> int:
    """The largest divisor of ``m`` not above the number of threads."""
    parts = max(1, torch.get_num_threads())
    while m % parts != 0:
        parts -= 1
    return parts


def _affine(
    mean: torch.Tensor, rstd: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, shift)`` with ``norm(x) = x * scale + shift``."""
    scale = rstd if weight is None else rstd * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def _scale_shift(
    rows: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``rows * scale + shift`` for ``rows`` ``(N, M, C)`` and ``scale``, ``shift`` ``(N, 1, C)``: a new contiguous
    tensor, or written into ``out`` (``rows`` itself for in place) and returned.

    Broadcast along ``M``, PyTorch's kernel loops over ``C`` values at a time (its bf16 one is then slower than
    float32). Contiguous rows are viewed ``t`` at a time, ``(N, M / t, t * C)``, against ``scale`` and ``shift``
    repeated ``t`` times (``t`` up to 64, a divisor of ``M``): the same values, in a loop ``t`` times longer (a bf16
    map of 96^3 x 32 about 1.6x faster; float32 unchanged)."""
    n, m, c = rows.shape
    t = 64 if rows.is_contiguous() and (out is None or out.is_contiguous()) else 1  # 1: e.g. a buffer's first channels
    while m % t != 0:
        t = t // 2
    shift, scale, tiled = shift.repeat(1, 1, t), scale.repeat(1, 1, t), rows.view(n, m // t, t * c)
    if out is None:
        return torch.addcmul(shift, tiled, scale).view(n, m, c)
    torch.addcmul(shift, tiled, scale, out=out.view(n, m // t, t * c))
    return out


class _InstanceNormFolded(torch.autograd.Function):
    """:func:`instance_norm_folded` with a hand-written backward: a few passes over the volume instead of autograd's
    graph through every block of :func:`_moments`. The output is not a view, so an in-place activation after it is
    recorded as on any tensor."""

    @staticmethod
    def forward(ctx, x, batch, weight, bias, eps):  # noqa: D102
        ns, c, a, b = x.shape
        rows = _rows(x, batch)
        mean, var = _moments(rows)
        rstd = torch.rsqrt(var + eps)
        scale, shift = _affine(mean, rstd, weight, bias)
        ctx.save_for_backward(x, mean, rstd, weight)
        ctx.batch = batch
        out = torch.empty(ns, c, a, b, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
        _scale_shift(rows, scale, shift, _rows(out, batch))
        return out

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, mean, rstd, weight = ctx.saved_tensors
        ns, c, a, b = x.shape
        rows, grad = _rows(x, ctx.batch), _rows(grad, ctx.batch)
        m = rows.shape[1]
        centered = rows - mean
        grad_parts = _parted(grad)
        grad_sum = grad_parts.sum(2, keepdim=True).sum(1)  # (N, 1, C)
        dot = grad_sum.new_zeros(grad_parts.shape[0], grad_parts.shape[1], 1, c)  # per part: (N, P, 1, C)
        for g, d in zip(_blocks(grad_parts), _blocks(_parted(centered))):  # the sum of grad * (x - mean)
            dot += (g * d).sum(2, keepdim=True)
        dot = dot.sum(1)
        gain = rstd if weight is None else rstd * weight
        # d x = gain * (grad - mean(grad) - xhat * mean(grad * xhat)), xhat = (x - mean) * rstd
        slope = -gain * rstd.square() * dot / m
        grad_rows = torch.addcmul(-gain * grad_sum / m, centered, slope, out=centered).addcmul_(grad, gain)
        grad_weight = grad_bias = None
        if weight is not None and ctx.needs_input_grad[2]:
            grad_weight = (dot * rstd).sum((0, 1))
        if ctx.needs_input_grad[3]:
            grad_bias = grad_sum.sum((0, 1))
        return grad_rows.view(ns, a, b, c).permute(0, 3, 1, 2), None, grad_weight, grad_bias, None


@torch.jit.unused
def _instance_norm_with_grad(
    x: torch.Tensor, batch: int, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> torch.Tensor:
    return _InstanceNormFolded.apply(x, batch, weight, bias, eps)


def _rows(x: torch.Tensor, batch: int) -> torch.Tensor:
    """``(N * S, C, A, B)`` -> ``(N, S * A * B, C)``: a view of a channels-last ``x``, a copy otherwise."""
    return x.permute(0, 2, 3, 1).reshape(batch, -1, x.shape[1])


def instance_norm_folded(
    x: torch.Tensor,
    batch: int,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    inplace: bool = False,
) -> torch.Tensor:
    """Instance norm of each sample and channel over its whole volume (all slices; biased variance, ``eps`` added
    to it), on the folded layout: ``InstanceNorm3d`` (without running statistics) of ``unfold(x, batch)``, folded.

    The statistics take two passes (:func:`_moments`), as accurate as ``InstanceNorm3d``. Where autograd records, a
    hand-written backward takes a few passes over the volume (TorchScript builds let autograd differentiate the
    forward instead).

    Args:
        x: ``(N * S, C, A, B)``, channels-last. batch: ``N``.
        weight, bias: the affine parameters ``(C,)`` or None. eps: added to the variance.
        inplace: write the result into ``x``; only where autograd records nothing (e.g. under ``torch.no_grad``).

    Returns:
        the normalised ``x``, same shape, channels-last. For a bf16 or fp16 ``x`` (autocast) the statistics are
        taken in float32, and the output is float32, or ``x``'s dtype in place (what the next convolution takes:
        two casts of the map fewer; SCAA's whole volume in bf16 about a fifth faster).
    """
    if capturing():  # a trace or compiled graph: the plain instance norm (ONNX InstanceNormalization)
        return to_folded(F.instance_norm(unfold(x, batch), None, None, weight, bias, True, 0.0, eps))
    low = half_precision(x.dtype)
    if low and not inplace:  # under autocast: statistics in float32
        x = x.float()
    if not torch.jit.is_scripting() and torch.is_grad_enabled() and not inplace:
        return _instance_norm_with_grad(x, batch, weight, bias, eps)
    ns, c, a, b = x.shape
    rows = _rows(x, batch)  # (N, S * A * B, C), a view of channels-last x
    mean, var = _moments(rows)
    scale, shift = _affine(mean, torch.rsqrt(var + eps), weight, bias)
    scale, shift = scale.to(x.dtype), shift.to(x.dtype)  # in place, a bf16 / fp16 map is normalised in its dtype
    out = _scale_shift(rows, scale, shift, rows if inplace else None)
    return out.view(ns, a, b, c).permute(0, 3, 1, 2)


def one_channel_projection(
    x: torch.Tensor,
    batch: int,
    weight: torch.Tensor,
    norm_weight: torch.Tensor | None,
    norm_bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``1x1x1`` ``Conv3d`` of a one-channel map, and the ``InstanceNorm3d`` after it, as one affine map per channel:
    ``x * scale + shift``, each ``(N, 1, C_out)``.

    The convolution gives ``w_c x + b_c``, and instance norm of that is ``g_c w_c (x - mean) / sqrt(w_c^2 var + eps) +
    beta_c`` with the input's own mean and variance over the volume (the convolution's bias cancels): a rank-one map
    that needs the statistics of one channel instead of a convolution and a norm over ``C_out`` (a residual projection
    of a single-channel image, e.g. a U-Net's input block). Apply it with :func:`add_projection`.

    Args:
        x: folded one-channel input ``(N * S, 1, A, B)``. batch: ``N``.
        weight: the Conv3d's, ``(C_out, 1, 1, 1, 1)``.
        norm_weight, norm_bias, eps: the InstanceNorm3d's (affine parameters ``(C_out,)`` or None).
    """
    mean, var = _moments(_rows(x, batch))  # (N, 1, 1), float32 for a bf16 / fp16 x
    scale = weight.reshape(1, 1, -1)
    scale = scale * torch.rsqrt(scale.square() * var + eps)
    if norm_weight is not None:
        scale = scale * norm_weight
    shift = -mean * scale
    if norm_bias is not None:
        shift = shift + norm_bias
    return scale, shift


def add_projection(
    out: torch.Tensor, x: torch.Tensor, batch: int, scale: torch.Tensor, shift: torch.Tensor | None
) -> torch.Tensor:
    """``out += x * scale + shift`` in place (inference only): ``out`` folded ``(N * S, C, A, B)`` channels-last, ``x``
    its one-channel folded input, ``scale`` and ``shift`` from :func:`one_channel_projection`; ``shift=None`` leaves
    it out (before an instance norm, which removes a constant per channel). Returns ``out``."""
    rows = _rows(out, batch)
    x_rows, scale = _rows(x, batch).to(rows.dtype), scale.to(rows.dtype)  # one dtype: a mixed addcmul_ is 10x slower
    if half_precision(rows.dtype):  # a rank-one product: 1.0 ms on a bf16 96^3 x 32 map, the broadcast addcmul_ 4.0
        rows.baddbmm_(x_rows, scale)
    else:  # float32: 1.6 ms, against 3.2 for the product
        rows.addcmul_(x_rows, scale)
    if shift is not None:
        rows.add_(shift.to(rows.dtype))
    return out


def unfold_contiguous(x: torch.Tensor, batch: int) -> torch.Tensor:
    """:func:`unfold`, copied into a new contiguous ``(N, C, A, B, S)`` tensor a few slices at a time (source blocks
    of at most 4 MB, that stay in cache while the copy gathers their values along ``S``): about three times faster
    than one ``clone`` here (a 96^3 x 14 map: 8.6 against 19.6 ms into the same memory)."""
    view = unfold(x, batch)
    if capturing():  # a trace or compiled graph records the copy as one op (ONNX drops copies into views)
        return view.clone(memory_format=torch.contiguous_format)
    out = torch.empty(view.shape, dtype=x.dtype, device=x.device)
    per_slice = x.shape[1] * x.shape[2] * x.shape[3] * x.element_size()
    step = max(1, 4 * 1024 * 1024 // max(1, per_slice))
    slices = view.shape[4]
    for lo in range(0, slices, step):
        n = min(step, slices - lo)
        out.narrow(4, lo, n).copy_(view.narrow(4, lo, n))
    return out


def foldable_conv(conv: nn.Module, transposed: bool = False) -> bool:
    """Whether a MONAI ``Convolution`` (its ``conv`` only: no norm, activation or dropout after it) runs on the
    folded layout: a one-slice kernel without padding along the slices (:func:`conv_folded`), or for a transposed
    one a kernel equal to its stride along the slices (:func:`conv_transpose_folded`); no dilation or groups."""
    layer = getattr(conv, "conv", None)
    kind = nn.ConvTranspose3d if transposed else nn.Conv3d
    if len(list(conv.children())) != 1 or type(layer) is not kind:
        return False
    plain = layer.dilation == (1, 1, 1) and layer.groups == 1 and layer.padding_mode == "zeros"
    if transposed:
        slices = layer.kernel_size[2] == layer.stride[2] and layer.output_padding[2] == 0
    else:
        slices = layer.kernel_size[2] == 1
    return plain and slices and layer.padding[2] == 0


def foldable_norm(norm: nn.Module) -> bool:
    """Whether a norm layer runs on the folded layout: an ``InstanceNorm3d`` without running statistics
    (:func:`instance_norm_folded`)."""
    return type(norm) is nn.InstanceNorm3d and not norm.track_running_stats
