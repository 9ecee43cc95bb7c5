"""Half precision: bf16 and fp16, nothing else."""

import torch

from monai_ext.networks.precision import half_precision, one_dtype


def test_half_precision_is_bf16_or_fp16():
    assert half_precision(torch.bfloat16) and half_precision(torch.float16)
    assert not any(half_precision(t) for t in (torch.float32, torch.float64, torch.int8, torch.uint8))
    assert torch.jit.script(half_precision)(torch.bfloat16)


def test_one_dtype_takes_the_half_precision_one():
    half, full = torch.ones(2, dtype=torch.bfloat16), torch.ones(2)
    for a, b in [(half, full), (full, half)]:
        assert [t.dtype for t in one_dtype(a, b)] == [torch.bfloat16] * 2
        assert [t.dtype for t in torch.jit.script(one_dtype)(a, b)] == [torch.bfloat16] * 2
    double = torch.ones(2, dtype=torch.float64)
    kept = one_dtype(full, double)
    assert kept[0] is full and kept[1] is double  # neither is half: unchanged
