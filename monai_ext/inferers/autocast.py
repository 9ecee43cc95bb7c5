"""Mixed-precision inference around any MONAI inferer: bf16 autocast on the CPU, fp16 on CUDA, float32 results.

MONAI's ``SupervisedEvaluator(amp=True)`` enters ``torch.autocast("cuda")`` only, which does nothing on a CPU; this
wrapper picks the autocast of the input's device, so one bundle option (``amp``) works on both.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.inferers import Inferer

__all__ = ["AMP_DTYPES", "AutocastInferer", "autocast"]

AMP_DTYPES = {"cpu": torch.bfloat16, "cuda": torch.float16}
"""The autocast dtype per device type: bf16 on CPUs (AVX-512 BF16 / AMX run it natively), fp16 on CUDA GPUs."""


def autocast(device: str | torch.device, enabled: bool = True) -> torch.autocast:
    """``torch.autocast`` for ``device`` in its :data:`AMP_DTYPES` dtype; a no-op context when not ``enabled``.

    Raises:
        ValueError: for a device type with no autocast dtype here (anything but ``cpu`` and ``cuda``).
    """
    kind = torch.device(device).type
    if kind not in AMP_DTYPES:
        raise ValueError(f"autocast runs on {sorted(AMP_DTYPES)}, not on {kind!r}; run without amp there.")
    return torch.autocast(kind, dtype=AMP_DTYPES[kind], enabled=enabled)


def _float32(out):
    """Floating tensors below fp32 (in nested lists, tuples, dicts) cast to float32; the rest as is."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() and out.dtype != torch.float64 else out
    if isinstance(out, (list, tuple)):
        return type(out)(_float32(o) for o in out)
    if isinstance(out, dict):
        return {k: _float32(v) for k, v in out.items()}
    return out


class AutocastInferer(Inferer):
    """Run ``inferer`` under :func:`autocast` on the inputs' device and return float32 outputs.

    The network's convolutions and matmuls run in bf16 (CPU) or fp16 (CUDA); what follows (softmax, resampling,
    saved probabilities) sees float32 logits, as without autocast.

    Args:
        inferer: the inferer to wrap (sliding window, slice-wise, ...).
        enabled: False runs ``inferer`` unchanged, in fp32.

    Shapes:
        as ``inferer``: inputs ``(B, C, *spatial)``, outputs ``(B, K, *spatial)`` in float32.

    Raises:
        ValueError: when enabled, for inputs on a device other than the CPU or CUDA.
    """

    def __init__(self, inferer: Inferer, enabled: bool = True) -> None:
        super().__init__()
        self.inferer = inferer
        self.enabled = bool(enabled)

    def __call__(self, inputs: torch.Tensor, network: Callable, *args, **kwargs):
        if not self.enabled:
            return self.inferer(inputs, network, *args, **kwargs)
        with autocast(inputs.device):
            out = self.inferer(inputs, network, *args, **kwargs)
        return _float32(out)
