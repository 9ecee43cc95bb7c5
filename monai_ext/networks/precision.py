"""Which maps are in half precision: what autocast hands over (bf16 on a CPU, fp16 on CUDA), and what the norms
take their statistics of in float32."""

from __future__ import annotations

import torch

__all__ = ["half_precision"]


def half_precision(dtype: torch.dtype) -> bool:
    """Whether ``dtype`` is bf16 or fp16 (TorchScript-friendly)."""
    return dtype == torch.bfloat16 or dtype == torch.float16
