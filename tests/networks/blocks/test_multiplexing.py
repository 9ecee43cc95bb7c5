"""Early-stage multiplexing: one shared early stage per mini-group, then the two compressions; as the input stage
of a stock MONAI DynUNet."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn

from monai_ext.networks.blocks import ESM, EarlyStageMultiplexing


def _early(in_channels: int = 3, out_channels: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1), nn.ReLU())


def test_each_mini_group_runs_through_the_same_early_stage():
    torch.manual_seed(0)
    early = _early()
    esm = EarlyStageMultiplexing(early, in_channels=12, num_groups=4, early_channels=8, out_channels=16).eval()
    x = torch.randn(2, 12, 10, 14)
    with torch.no_grad():
        fused, groups = esm(x)
        assert groups.shape == (2, 4, 8, 5, 7) and fused.shape == (2, 16, 5, 7)
        for g in range(4):
            torch.testing.assert_close(groups[:, g], early(x[:, 3 * g : 3 * g + 3]))
        torch.testing.assert_close(fused, esm.compress(groups.reshape(2, 32, 5, 7)))  # concatenated group-major
    # to half, then to out_channels, each 1x1 with norm and activation
    convs = [m for m in esm.compress.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(32, 16, (1, 1)), (16, 16, (1, 1))]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in esm.compress.modules()) == 2
    assert ESM is EarlyStageMultiplexing


def test_weights_are_shared_and_gradients_reach_them():
    early = _early()
    esm = EarlyStageMultiplexing(early, 6, 2, 8, 4)
    assert sum(p.numel() for p in esm.parameters()) == sum(p.numel() for p in early.parameters()) + sum(
        p.numel() for p in esm.compress.parameters()
    )
    fused, groups = esm(torch.randn(2, 6, 8, 8))
    (fused.sum() + groups.sum()).backward()
    assert early[0].weight.grad.abs().sum() > 0


def test_script():
    esm = EarlyStageMultiplexing(_early(), 6, 2, 8, 4).eval()
    x = torch.randn(1, 6, 8, 8)
    for a, b in zip(torch.jit.script(esm)(x), esm(x)):
        torch.testing.assert_close(a, b)


def test_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="must be a multiple of num_groups"):
        EarlyStageMultiplexing(_early(), 10, 4, 8)
    with pytest.raises(ValueError, match="must be positive"):
        EarlyStageMultiplexing(_early(), 12, 0, 8)
    esm = EarlyStageMultiplexing(_early(), 12, 4, 8)
    with pytest.raises(ValueError, match=r"expects \(N, 12, \*spatial\)"):
        esm(torch.randn(1, 9, 8, 8))
    with pytest.raises(ValueError, match="early returned 8 channels, expected early_channels=5"):
        EarlyStageMultiplexing(_early(), 12, 4, 5)(torch.randn(1, 12, 8, 8))


class FusedStage(nn.Module):
    """ESM as a network's input stage: the fused map only (docs/thick2d.md, "Drop-in")."""

    def __init__(self, esm: EarlyStageMultiplexing) -> None:
        super().__init__()
        self.esm = esm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.esm(x)[0]


def test_esm_as_the_input_stage_of_a_monai_dynunet():
    """A 2D DynUNet built for one mini-group of 3 slices: its own input block becomes ESM's shared early stage, and
    the network takes 12 slices as channels."""
    torch.manual_seed(0)
    dyn = DynUNet(2, 3, 12 * 2, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                  filters=[8, 16, 32, 64])  # fmt: skip
    params = sum(p.numel() for p in dyn.parameters())
    esm = EarlyStageMultiplexing(dyn.input_block, in_channels=12, num_groups=4, early_channels=8, out_channels=8)
    dyn.input_block = dyn.skip_layers.downsample = FusedStage(esm)  # DynUNet.forward runs skip_layers
    calls = []
    esm.early.register_forward_hook(lambda m, i, o: calls.append(i[0].shape))
    x = torch.randn(2, 12, 32, 48)  # a slab (2, 1, 32, 48, 12) with its slices folded into channels
    y = dyn(x)
    assert y.shape == (2, 24, 32, 48)  # 12 slices x 2 classes
    assert calls == [(8, 3, 32, 48)]  # 2 samples x 4 mini-groups of 3 slices, one batch through the shared block
    assert sum(p.numel() for p in dyn.parameters()) == params + sum(p.numel() for p in esm.compress.parameters())
    y.sum().backward()
    assert esm.early.conv1.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in esm.compress.parameters())


def test_fuse_is_forwards_compression_of_given_pre_fusion_features():
    """An inferer that runs ``early`` once per mini-group and fuses per group gets ``forward``'s fused map."""
    torch.manual_seed(0)
    early = _early()
    esm = EarlyStageMultiplexing(early, in_channels=9, num_groups=3, early_channels=8, out_channels=16).eval()
    x = torch.randn(2, 9, 10, 14)
    with torch.no_grad():
        fused, groups = esm(x)
        separate = torch.stack([early(x[:, 3 * g : 3 * g + 3]) for g in range(3)], dim=1)  # (2, 3, 8, 5, 7)
        torch.testing.assert_close(esm.fuse(separate), fused)
        assert not torch.equal(esm.fuse(separate.flip(1)), fused)  # the mini-group order matters
