"""SSA, its Concat / Dot alternatives and switchable normalisation: formulas by hand, shapes, script, errors; SSA
inside a stock MONAI DynUNet."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn
from torch.nn.functional import adaptive_avg_pool2d

from monai_ext.networks.blocks import (
    SSA,
    ConcatLink,
    DotLink,
    SliceSensitiveAttention,
    SwitchableNorm,
    channel_attention,
)


def _randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return module


def test_channel_attention_matches_the_formula_channel_by_channel():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 7), torch.randn(2, 5, 7), torch.randn(2, 5, 9)
    out = channel_attention(q, k, v)
    for n in range(2):
        for p in range(5):
            f = torch.stack([torch.exp((q[n, p] * k[n, j]).sum()) for j in range(5)])  # f(x_p, x_q)
            expected = sum(f[j] * v[n, j] for j in range(5)) / f.sum()  # (1/Z) sum_q f g
            torch.testing.assert_close(out[n, p], expected, rtol=1e-5, atol=1e-5)
    scaled = channel_attention(q, k, v, scaled=True)
    torch.testing.assert_close(scaled, channel_attention(q / 7**0.5, k, v))


def test_ssa_starts_as_the_identity_on_the_fused_map():
    fused, group = torch.randn(2, 8, 40, 36), torch.randn(2, 8, 40, 36)
    block = SliceSensitiveAttention(2, 8).train()
    torch.testing.assert_close(block(fused, group), fused)
    assert SSA is SliceSensitiveAttention


def _query(block: SliceSensitiveAttention, fused: torch.Tensor) -> torch.Tensor:
    return block.theta(adaptive_avg_pool2d(fused, block.pool_size)).flatten(2)


def _key(block: SliceSensitiveAttention, group: torch.Tensor) -> torch.Tensor:
    return block.phi(adaptive_avg_pool2d(group, block.pool_size)).flatten(2)


def test_ssa_by_hand_queries_fused_keys_and_values_group():
    """pooled 1x1 convs theta (fused) and phi (group), full-resolution g (group), norm at the output, residual."""
    torch.manual_seed(0)
    block = _randomise(SliceSensitiveAttention(2, 6, pool_size=4, norm_name="batch", zero_init=False)).eval()
    with torch.no_grad():
        block.norm.running_var.uniform_(0.5, 2)
    fused, group = torch.randn(2, 6, 12, 8), torch.randn(2, 6, 12, 8)
    q, k = _query(block, fused), _key(block, group)  # (2, 6, 16)
    v = block.g(group).flatten(2)  # (2, 6, 96): values at full resolution
    y = (torch.softmax(q @ k.transpose(1, 2), -1) @ v).reshape(fused.shape)
    with torch.no_grad():
        torch.testing.assert_close(block(fused, group), fused + block.norm(y), rtol=1e-5, atol=1e-5)
        # a map smaller than pool_size is used unpooled
        small_f, small_g = fused[:, :, :3, :3], group[:, :, :3, :3]
        q = block.theta(small_f).flatten(2)
        k = block.phi(small_g).flatten(2)
        y = (torch.softmax(q @ k.transpose(1, 2), -1) @ block.g(small_g).flatten(2)).reshape(small_f.shape)
        torch.testing.assert_close(block(small_f, small_g), small_f + block.norm(y), rtol=1e-5, atol=1e-5)
        # the block folds g into the affinity (affinity @ W_g, then one product with the group map): a g without
        # bias, and a group map that is a strided view (a mini-group of a (N, G, C, H, W) stack), give the same
        block.g.bias = None
        stack = torch.stack([torch.randn_like(group), group], dim=1)
        y = torch.softmax(_query(block, fused) @ _key(block, group).transpose(1, 2), -1) @ block.g(group).flatten(2)
        torch.testing.assert_close(block(fused, stack[:, 1]), fused + block.norm(y.reshape(fused.shape)))


def test_the_shared_query_serves_every_mini_group():
    block = _randomise(SliceSensitiveAttention(2, 6, pool_size=4, zero_init=False)).eval()
    fused = torch.randn(2, 6, 12, 8)
    with torch.no_grad():
        query = block.shared(fused)
        assert query.shape == (2, 6, 16)
        for seed in range(3):  # three mini-groups, one query
            group = torch.randn(2, 6, 12, 8, generator=torch.Generator().manual_seed(seed))
            torch.testing.assert_close(block(fused, group, query), block(fused, group), atol=0, rtol=0)
    dot = DotLink(2, 6)
    assert dot.shared(fused) is None
    torch.testing.assert_close(dot(fused, fused, None), dot(fused, fused))


def test_ssa_3d_and_gradients():
    block = _randomise(SliceSensitiveAttention(3, 4, pool_size=2, norm_name="instance", zero_init=False))
    fused = torch.randn(2, 4, 4, 6, 5, requires_grad=True)
    group = torch.randn(2, 4, 4, 6, 5, requires_grad=True)
    out = block(fused, group)
    assert out.shape == fused.shape
    out.square().sum().backward()
    assert fused.grad.abs().sum() > 0 and group.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in (block.theta.weight, block.phi.weight))


@pytest.mark.parametrize("cls", [SliceSensitiveAttention, ConcatLink, DotLink])
def test_link_blocks_script_and_refuse_bad_inputs(cls):
    block = _randomise(cls(2, 4, norm_name="batch", zero_init=False)).eval()
    fused, group = torch.randn(1, 4, 6, 6), torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(torch.jit.script(block)(fused, group), block(fused, group))
    with pytest.raises(ValueError, match=r"of one shape \(N, 4, \*spatial\)"):
        block(fused, group[:, :, :5])
    with pytest.raises(ValueError, match="expects fused and group"):
        block(fused[:, :3], group[:, :3])
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        cls(4, 4)
    with pytest.raises(ValueError, match="in_channels must be a positive"):
        cls(2, 0)


def test_ssa_refuses_a_bad_pool_size():
    with pytest.raises(ValueError, match="pool_size must be a positive"):
        SliceSensitiveAttention(2, 4, pool_size=0)


def test_concat_and_dot_by_hand():
    fused, group = torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    concat = _randomise(ConcatLink(2, 4, norm_name="instance", zero_init=False))
    torch.testing.assert_close(concat(fused, group), fused + concat.norm(concat.conv(torch.cat([fused, group], 1))))
    dot = _randomise(DotLink(2, 4, norm_name="instance", zero_init=False))
    torch.testing.assert_close(dot(fused, group), fused + dot.norm(dot.conv(fused * group)))
    for cls in (ConcatLink, DotLink):  # identity at initialisation (switchable norm, zero weight)
        torch.testing.assert_close(cls(2, 4)(fused, group), fused)


@pytest.mark.parametrize(
    "logits, reference",
    [
        ([0.0, -1e4, -1e4], lambda c: nn.InstanceNorm2d(c)),
        ([-1e4, 0.0, -1e4], lambda c: nn.GroupNorm(1, c, affine=False)),
        ([-1e4, -1e4, 0.0], lambda c: nn.BatchNorm2d(c, affine=False)),
    ],
)
def test_switchable_norm_reduces_to_instance_layer_and_batch_norm(logits, reference):
    torch.manual_seed(0)
    x = 3 * torch.randn(4, 5, 6, 7) + 1
    norm = SwitchableNorm(5).train()
    with torch.no_grad():
        norm.mean_weight.copy_(torch.tensor(logits))
        norm.var_weight.copy_(torch.tensor(logits))
    torch.testing.assert_close(norm(x), reference(5).train()(x), rtol=1e-4, atol=1e-4)


def test_switchable_norm_mixes_and_keeps_running_batch_statistics():
    torch.manual_seed(0)
    x = 2 * torch.randn(3, 4, 5, 5) + 0.5
    norm = SwitchableNorm(4, momentum=1.0).train()
    out = norm(x)  # equal weights: mean of the three statistics
    mean_in, var_in = x.mean((2, 3), keepdim=True), x.var((2, 3), unbiased=False, keepdim=True)
    mean_ln, var_ln = x.mean((1, 2, 3), keepdim=True), x.var((1, 2, 3), unbiased=False, keepdim=True)
    mean_bn, var_bn = x.mean((0, 2, 3), keepdim=True), x.var((0, 2, 3), unbiased=False, keepdim=True)
    mean, var = (mean_in + mean_ln + mean_bn) / 3, (var_in + var_ln + var_bn) / 3
    torch.testing.assert_close(out, (x - mean) / torch.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(norm.running_mean, mean_bn.flatten())
    torch.testing.assert_close(norm.running_var, var_bn.flatten(), rtol=1e-4, atol=1e-5)
    norm.eval()  # the batch part now uses the running statistics: one sample alone gives the same batch term
    torch.testing.assert_close(norm(x)[:1], norm(x[:1]))
    torch.testing.assert_close(torch.jit.script(norm)(x), norm(x))
    with pytest.raises(ValueError, match=r"expects \(N, 4, \*spatial\)"):
        norm(torch.randn(2, 3, 4, 4))
    with pytest.raises(ValueError, match="num_features must be positive"):
        SwitchableNorm(0)


def test_switchable_norm_of_a_bf16_map_is_float32_rounded_once():
    # under autocast the link's values are bf16: statistics and affine in float32, the output bf16 again; a map far
    # from zero is the hard case (statistics taken in bf16 put its output off by several units)
    torch.manual_seed(0)
    x = (torch.randn(2, 8, 32, 32) + 100).bfloat16()
    norm = SwitchableNorm(8).eval()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = norm(x)
        reference = norm(x.float()).bfloat16()  # float32 all through, on the same values
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, reference, atol=0, rtol=2**-7)  # at most a bf16 rounding step apart


def test_ssa_skips_pooling_a_map_of_the_pooled_size():
    block = SliceSensitiveAttention(2, 4, pool_size=8)
    x = torch.randn(1, 4, 8, 8)
    assert block._pooled(x) is x  # no copy
    torch.testing.assert_close(adaptive_avg_pool2d(x, 8), x)  # what pooling would have returned
    assert block._pooled(torch.randn(1, 4, 8, 12)).shape[2:] == (8, 8)  # one longer axis is still pooled


class LinkedUp(nn.Module):
    """A DynUNet up block whose output is linked to its skip by SSA: ``ssa(up(x, skip), skip)`` (docs/thick2d.md,
    "Drop-in")."""

    def __init__(self, up: nn.Module, ssa: nn.Module) -> None:
        super().__init__()
        self.up, self.ssa = up, ssa

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.ssa(self.up(x, skip), skip)


def test_ssa_links_a_monai_dynunet_decoder_output_to_its_earliest_skip():
    torch.manual_seed(0)
    dyn = DynUNet(2, 12, 12 * 2, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                  filters=[8, 16, 32, 64]).eval()  # fmt: skip
    x = torch.randn(2, 12, 32, 48)  # 12 slices as channels
    before = dyn(x)
    ssa = SSA(2, 8, pool_size=16)
    # the top decoder stage takes the earliest skip (the input block's output); DynUNet.forward runs skip_layers
    dyn.upsamples[-1] = dyn.skip_layers.upsample = LinkedUp(dyn.upsamples[-1], ssa)
    torch.testing.assert_close(dyn(x), before)  # the zero-initialised output norm: SSA starts as the identity
    _randomise(ssa, seed=1)
    after = dyn(x)
    assert after.shape == before.shape and not torch.allclose(after, before)
    torch.testing.assert_close(torch.jit.script(dyn)(x), after)
    dyn.train()
    dyn(x).sum().backward()
    assert ssa.theta.weight.grad.abs().sum() > 0 and ssa.g.weight.grad.abs().sum() > 0
