"""Which maps are in half precision: what autocast hands over (bf16 on a CPU, fp16 on CUDA), and what the norms
take their statistics of in float32."""

from __future__ import annotations

import torch

__all__ = ["half_precision", "one_dtype"]


def half_precision(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is bf16 or fp16 (TorchScript-friendly)."""
    return dtype == torch.bfloat16 or dtype == torch.float16


def one_dtype(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` in one dtype for a product: both in the half precision one of them holds (bf16 / fp16, what
    autocast casts a product's operands to), or unchanged when neither does.

    Under autocast a float32 map (e.g. from a pooling that autocast keeps in float32) and a bf16 one meet in an
    ``einsum``, which autocast handles by casting its ``bmm``. A dispatch mode that decomposes ``einsum`` below
    autocast (``torch.utils.flop_counter.FlopCounterMode`` in inference mode) hands ``bmm`` the two dtypes instead;
    cast first, the product is the same in both cases."""
    if half_precision(a.dtype) and b.dtype != a.dtype:
        return a, b.to(a.dtype)
    if half_precision(b.dtype) and a.dtype != b.dtype:
        return a.to(b.dtype), b
    return a, b
