import math

import pytest
import torch

from monai_ext.networks.blocks import MSFA, MultiSliceFeatureAggregation, aggregate_slices


def _inputs(b=2, s=3, c2=6, c3=5, d=4, h=8, w=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b * s, c2, h, w, generator=gen), torch.randn(b, c3, d, h, w, generator=gen)


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
    k = block.key(x3d)[0]  # (6, 4, 8, 6)
    for n in range(2):
        for m in range(2):
            qv = q[n, 3 * m : 3 * m + 3].flatten()
            logits = torch.stack(
                [
                    (qv * torch.nn.functional.adaptive_avg_pool2d(k[3 * m : 3 * m + 3, j], 2).flatten()).sum()
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
            expected = sum(att[0, n, m, j] * x3d[0, :, j] for j in range(4))
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
    picked = torch.stack([x3d[b, :, positions[b, s]] for b in range(2) for s in range(3)])  # (6, 5, 8, 6)
    torch.testing.assert_close(out, block.fusion(torch.cat([x2d, picked], 1)))
    assert att.shape == (6, 1, 4)
    torch.testing.assert_close(att[:, 0].argmax(-1), positions.flatten())
    torch.testing.assert_close(att.sum(-1), torch.ones(6, 1))
    assert not hasattr(block, "query")  # C-CA has no attention parameters


def test_3d_map_of_another_in_plane_size_is_resized():
    x2d, _ = _inputs()
    x3d = torch.randn(2, 5, 4, 4, 3)
    out = MSFA(6, 5)(x2d, x3d)
    assert out.shape == (6, 6, 8, 6)


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
