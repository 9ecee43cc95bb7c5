"""Adaptive average pooling written as products with pooling matrices: what SCAA's blocks use while exporting to
ONNX, whose exporter takes ``adaptive_avg_pool`` only where the output size divides the input size."""

from __future__ import annotations

import torch

__all__ = ["adaptive_avg_pool_matrix", "adaptive_avg_pool_by_matrices"]


def adaptive_avg_pool_matrix(
    size_in: int, size_out: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The ``(size_out, size_in)`` matrix of adaptive average pooling along one axis: row ``i`` averages the inputs
    ``floor(i * size_in / size_out) .. ceil((i + 1) * size_in / size_out) - 1``, PyTorch's windows (also where
    ``size_out > size_in``, which repeats inputs)."""
    i = torch.arange(size_out, device=device)
    j = torch.arange(size_in, device=device)
    start = torch.div(i * size_in, size_out, rounding_mode="floor")
    end = torch.div((i + 1) * size_in + size_out - 1, size_out, rounding_mode="floor")
    inside = ((j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])).to(dtype)
    return inside / inside.sum(1, keepdim=True)


def adaptive_avg_pool_by_matrices(x: torch.Tensor, output_size: list[int]) -> torch.Tensor:
    """``torch.nn.functional.adaptive_avg_pool{n}d(x, output_size)`` over the last ``n = len(output_size)`` axes of
    ``x``, one matrix product per axis (equal up to float rounding; exportable to ONNX for any sizes).

    Shapes:
        ``x`` ``(*, s_1 .. s_n)``; returns ``(*, output_size)``.
    """
    n = len(output_size)
    for k in range(n):
        axis = x.dim() - n + k
        pool = adaptive_avg_pool_matrix(x.shape[axis], output_size[k], x.device, x.dtype)  # (out, in)
        last = x.dim() - 1  # positive axes: ONNX's Transpose takes no negative ones
        x = torch.matmul(x.transpose(axis, last), pool.t()).transpose(axis, last)
    return x
