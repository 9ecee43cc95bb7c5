"""Half precision: bf16 and fp16, nothing else."""

import torch

from monai_ext.networks.precision import half_precision


def test_half_precision_is_bf16_or_fp16():
    assert half_precision(torch.bfloat16) and half_precision(torch.float16)
    assert not any(half_precision(t) for t in (torch.float32, torch.float64, torch.int8, torch.uint8))
    assert torch.jit.script(half_precision)(torch.bfloat16)
