import pytest
import torch

from monai_ext.networks.blocks import ContextEncoder3D, GlobalDescriptor


def test_scales_and_channels_of_the_paper():
    enc = ContextEncoder3D(1)
    feats = enc(torch.rand(1, 1, 32, 64, 32))
    assert [tuple(f.shape) for f in feats] == [
        (1, 24, 8, 16, 8),
        (1, 32, 4, 8, 4),
        (1, 64, 2, 4, 2),
        (1, 64, 1, 2, 1),
    ]
    torch.testing.assert_close(feats[-1], torch.nn.functional.max_pool3d(feats[-2], 2))  # F3D_5 = pooled F3D_4


def test_each_stage_has_two_residual_blocks():
    enc = ContextEncoder3D(2, channels=(4, 8, 8), blocks_per_stage=2)
    assert [len(s) for s in enc.stages] == [2, 2]
    assert enc.divisor == 16
    assert [f.shape[1] for f in enc(torch.rand(2, 2, 16, 16, 32))] == [4, 8, 8]


def test_gradients_flow():
    enc = ContextEncoder3D(1, channels=(4, 8, 8))
    x = torch.rand(1, 1, 16, 16, 16, requires_grad=True)
    sum(f.sum() for f in enc(x)).backward()
    assert x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.parameters())


def test_bad_sizes_and_arguments():
    enc = ContextEncoder3D(1)
    with pytest.raises(ValueError, match=r"divisible by \[32, 32, 32\]"):
        enc(torch.rand(1, 1, 32, 48, 32))
    with pytest.raises(ValueError, match="ContextEncoder3D was built for 1 input channel"):
        enc(torch.rand(1, 2, 32, 32, 32))
    with pytest.raises(ValueError, match="must equal channels"):
        ContextEncoder3D(1, channels=(24, 32, 64, 32))


def test_global_descriptor_has_a_fixed_length_for_any_volume_size():
    g = GlobalDescriptor(8, 16, pool_size=2)
    for size in [(1, 1, 1), (2, 4, 3), (5, 5, 5)]:
        out = g(torch.rand(3, 8, *size))
        assert out.shape == (3, 16) and (out >= 0).all()
    with pytest.raises(ValueError, match="GlobalDescriptor expects"):
        g(torch.rand(3, 4, 2, 2, 2))
