import math

import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.networks import attach_block
from monai_ext.networks.blocks import MSFA, ContextEncoder3D, MultiSliceFeatureAggregation, aggregate_slices


def _inputs(b=2, s=3, c2=6, c3=5, d=4, h=8, w=6, seed=0):
    """2D slices ``(B * S, C2, h, w)`` and a 3D map ``(B, C3, h, w, d)`` (slices last, the default spatial_dim)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b * s, c2, h, w, generator=gen), torch.randn(b, c3, h, w, d, generator=gen)


@pytest.mark.parametrize("heads, embed, pool", [(1, 1, 1), (2, 2, 4), (4, 4, 3)])
def test_shapes_and_attention_rows_sum_to_one(heads, embed, pool):
    x2d, x3d = _inputs()
    block = MultiSliceFeatureAggregation(6, 5, out_channels=7, num_heads=heads, embed_channels=embed, pool_size=pool)
    out, att = block(x2d, x3d, return_attention=True)
    assert out.shape == (6, 7, 8, 6)
    assert att.shape == (6, heads, 4)
    assert (att >= 0).all()
    torch.testing.assert_close(att.sum(-1), torch.ones(6, heads))


def test_attention_matches_explicit_dot_products():
    """a = softmax_d(q . k_d / sqrt(L)) per head, with q and every key slice pooled to p x p and flattened."""
    x2d, x3d = _inputs(b=1, s=2)
    block = MultiSliceFeatureAggregation(6, 5, num_heads=2, embed_channels=3, pool_size=2).eval()
    att = block.attention(x2d, x3d)  # (1, 2, 2, 4)
    q = torch.nn.functional.adaptive_avg_pool2d(block.query(x2d), 2)  # (2, 6, 2, 2)
    k = block.key(x3d)[0]  # (6, 8, 6, 4)
    for n in range(2):
        for m in range(2):
            qv = q[n, 3 * m : 3 * m + 3].flatten()
            logits = torch.stack(
                [
                    (qv * torch.nn.functional.adaptive_avg_pool2d(k[3 * m : 3 * m + 3, ..., j], 2).flatten()).sum()
                    for j in range(4)
                ]
            )
            torch.testing.assert_close(att[0, n, m], torch.softmax(logits / math.sqrt(12), 0))


def test_multi_head_aggregate_is_weighted_sum_of_slices_merged_by_1x1_conv():
    x2d, x3d = _inputs(b=1, s=2)
    block = MultiSliceFeatureAggregation(6, 5, num_heads=3, embed_channels=2, pool_size=2).eval()
    att = block.attention(x2d, x3d)  # (1, 2, 3, 4)
    agg = aggregate_slices(att, x3d)  # (2, 15, 8, 6)
    for n in range(2):
        for m in range(3):
            expected = sum(att[0, n, m, j] * x3d[0, ..., j] for j in range(4))
            torch.testing.assert_close(agg[n, 5 * m : 5 * m + 5], expected)
    # the heads differ (independent query/key embeddings)
    assert (att[0, :, 0] - att[0, :, 1]).abs().max() > 1e-4
    fused = block.fusion(torch.cat([x2d, block.merge(agg)], 1))
    torch.testing.assert_close(block(x2d, x3d), fused)


def test_center_mode_equals_picking_the_centre_slice():
    x2d, x3d = _inputs(b=2, s=3)
    block = MultiSliceFeatureAggregation(6, 5, mode="center").eval()
    positions = torch.tensor([[0, 3, 1], [2, 2, 0]])
    out, att = block(x2d, x3d, positions, return_attention=True)
    picked = torch.stack([x3d[b, ..., positions[b, s]] for b in range(2) for s in range(3)])  # (6, 5, 8, 6)
    torch.testing.assert_close(out, block.fusion(torch.cat([x2d, picked], 1)))
    assert att.shape == (6, 1, 4)
    torch.testing.assert_close(att[:, 0].argmax(-1), positions.flatten())
    torch.testing.assert_close(att.sum(-1), torch.ones(6, 1))
    assert block.query is None and [n for n, _ in block.named_parameters() if not n.startswith("fusion.")] == []


def test_3d_map_of_another_in_plane_size_is_resized():
    x2d, _ = _inputs()
    x3d = torch.randn(2, 5, 4, 3, 4)  # in-plane 4 x 3, 4 depth slices
    out = MSFA(6, 5)(x2d, x3d)
    assert out.shape == (6, 6, 8, 6)


@pytest.mark.parametrize("mode", ["attention", "center"])
@pytest.mark.parametrize("spatial_dim", [0, 1])
def test_any_depth_axis_equals_slices_last(mode, spatial_dim):
    x2d, x3d = _inputs()
    positions = torch.tensor([[0, 3, 1], [2, 2, 0]])
    torch.manual_seed(0)
    last = MultiSliceFeatureAggregation(6, 5, mode=mode).eval()
    other = MultiSliceFeatureAggregation(6, 5, mode=mode, spatial_dim=spatial_dim).eval()
    other.load_state_dict(last.state_dict())
    moved = x3d.movedim(4, 2 + spatial_dim)  # the depth axis on spatial axis spatial_dim
    out, att = other(x2d, moved, positions, return_attention=True)
    expected, expected_att = last(x2d, x3d, positions, return_attention=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(att, expected_att)
    weights = torch.softmax(torch.randn(2, 3, 2, 4), -1)
    torch.testing.assert_close(aggregate_slices(weights, moved, spatial_dim), aggregate_slices(weights, x3d))


class _WithContext(nn.Module):
    """MSFA as a one-input block: the 3D context is set before each forward of the host network."""

    def __init__(self, msfa: MultiSliceFeatureAggregation) -> None:
        super().__init__()
        self.msfa = msfa
        self.context: torch.Tensor | None = None

    def forward(self, x2d: torch.Tensor) -> torch.Tensor:
        return self.msfa(x2d, self.context)


class _ContextDynUNet(nn.Module):
    """A stock 2D DynUNet over the slices of ``(B, C, H, W, D)`` volumes; ContextEncoder3D runs once per volume and
    MSFA fuses its ``F3D_2`` into the DynUNet skip at scale 2 (``downsamples.1``)."""

    def __init__(self) -> None:
        super().__init__()
        self.unet = DynUNet(2, 1, 3, [3] * 4, [1, 2, 2, 2], [2] * 3, filters=[8, 16, 32, 64])
        self.encoder = ContextEncoder3D(1, channels=(8, 8))  # F3D_2, F3D_3 with 8 channels (one stage)
        self.fuse = _WithContext(MSFA(32, 8, pool_size=4))  # scale 2: 32 DynUNet channels, F3D_2's 8
        attach_block(self.unet, "downsamples.1", self.fuse)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        b, c, h, w, d = volume.shape
        self.fuse.context = self.encoder(volume)[0]  # F3D_2 (B, 8, H / 4, W / 4, D / 4), slices last
        slices = volume.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)  # (B * D, C, H, W), volume b at rows b * D..
        logits = self.unet(slices)  # (B * D, K, H, W)
        return logits.reshape(b, d, -1, h, w).permute(0, 2, 3, 4, 1)  # (B, K, H, W, D)


def test_dropped_into_a_dynunet_skip_on_slices():
    torch.manual_seed(0)
    net = _ContextDynUNet()
    volume = torch.randn(2, 1, 32, 32, 16)
    calls = []
    net.fuse.msfa.register_forward_hook(lambda *_: calls.append(1))
    out = net(volume)
    assert out.shape == (2, 3, 32, 32, 16) and calls == [1]  # MSFA once per step, on all 2 x 16 slices
    out.square().mean().backward()
    for part in (net.encoder, net.fuse.msfa, net.unet.input_block):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), type(part).__name__


def test_gradients_reach_every_parameter():
    x2d, x3d = _inputs()
    x2d.requires_grad_(True)
    block = MultiSliceFeatureAggregation(6, 5, num_heads=2, embed_channels=2, pool_size=4)
    block(x2d, x3d).sum().backward()
    assert x2d.grad is not None and x2d.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_traces():
    x2d, x3d = _inputs()
    block = MultiSliceFeatureAggregation(6, 5).eval()
    traced = torch.jit.trace(block, (x2d, x3d))
    torch.testing.assert_close(traced(x2d, x3d), block(x2d, x3d))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_heads": 0}, "positive integers"),
        ({"pool_size": 0}, "positive integers"),
        ({"mode": "centre"}, "mode must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MultiSliceFeatureAggregation(6, 5, **kwargs)


def test_bad_inputs():
    x2d, x3d = _inputs()
    block = MultiSliceFeatureAggregation(6, 5)
    with pytest.raises(ValueError, match="x2d"):
        block(x2d[:, :4], x3d)
    with pytest.raises(ValueError, match="x3d"):
        block(x2d, x3d[:, :, 0])
    with pytest.raises(ValueError, match="not a multiple"):
        block(x2d[:5], x3d)
    center = MultiSliceFeatureAggregation(6, 5, mode="center")
    with pytest.raises(ValueError, match="needs positions"):
        center(x2d, x3d)
    with pytest.raises(ValueError, match="must index the 4 depth slices"):
        center(x2d, x3d, torch.full((2, 3), 4))


@pytest.mark.parametrize("spatial_dim", [0, 2])
def test_padded_depth_slices_are_masked_out(spatial_dim):
    """With valid_depth, the result equals the block on the 3D map cut to its valid slices, whatever the padding."""
    x2d, x3d = _inputs(b=2, s=3, d=4)
    padded = torch.cat([x3d, 5 * torch.randn(2, 5, 8, 6, 3)], dim=-1)  # 3 slices of other content after the 4
    block = MultiSliceFeatureAggregation(6, 5, num_heads=2, embed_channels=2, pool_size=2, spatial_dim=spatial_dim)
    block = block.eval()
    x3d, padded = x3d.movedim(-1, 2 + spatial_dim), padded.movedim(-1, 2 + spatial_dim)
    out, att = block(x2d, padded, return_attention=True, valid_depth=4)
    ref_out, ref_att = block(x2d, x3d, return_attention=True)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(att[..., :4], ref_att)
    assert att.shape == (6, 2, 7) and (att[..., 4:] == 0).all()
    unmasked = block(x2d, padded)
    assert (unmasked - ref_out).abs().max() > 1e-3  # the padded slices matter without the mask
    torch.testing.assert_close(block(x2d, padded, valid_depth=7), unmasked)  # all valid: nothing masked
    with pytest.raises(ValueError, match="valid_depth must lie in"):
        block(x2d, padded, valid_depth=0)


@pytest.mark.parametrize("mode", ["attention", "center"])
def test_flops_are_counted_under_autocast(mode):
    # under autocast the pooled keys are float32 (avg_pool3d) and the queries bf16; FlopCounterMode in inference mode
    # decomposes einsum below autocast, so the block hands the products one dtype itself (the benchmark counts FLOPs
    # under --amp)
    x2d, x3d = _inputs()
    block = MultiSliceFeatureAggregation(6, 5, num_heads=2, pool_size=2, mode=mode).eval()
    positions = torch.tensor([[0, 3, 1], [2, 2, 0]])
    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16):  # as the benchmark (no_grad does not fail)
        expected = block(x2d, x3d, positions)
        with FlopCounterMode(display=False) as counter:
            out = block(x2d, x3d, positions)
    assert counter.get_total_flops() > 0
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["attention", "center"])
def test_torchscript_equals_eager(mode):
    x2d, x3d = _inputs()
    block = MultiSliceFeatureAggregation(6, 5, num_heads=2, pool_size=2, mode=mode).eval()
    positions = torch.tensor([[0, 3, 1], [2, 2, 0]])
    scripted = torch.jit.script(block)
    for valid in (None, 2):
        out, att = scripted.forward_with_attention(x2d, x3d, positions, valid)
        ref_out, ref_att = block(x2d, x3d, positions, return_attention=True, valid_depth=valid)
        torch.testing.assert_close(out, ref_out, rtol=0, atol=0)
        torch.testing.assert_close(att, ref_att, rtol=0, atol=0)
