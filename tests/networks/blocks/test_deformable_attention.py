import math

import pytest
import torch

from monai_ext.networks.blocks import (
    MSDeformableAttention,
    deformable_attention_core,
    deformable_attention_grid_sample,
    deformable_reference_points,
)
from monai_ext.networks.compat import cotr_release_axes, use_cotr_release_axes


def _release_tokens_to_ours(tokens, shapes, spatial_dim):
    """Tokens ``(N, S, C)`` of levels flattened over the release's ``(D, H, W)`` -> flattened over our spatial axes
    (slices on ``spatial_dim``); returns the tokens and our level shapes."""
    axes = cotr_release_axes(spatial_dim)  # our spatial axis of the release's D, H, W
    release_axis = [axes.index(a) for a in range(3)]  # the release's axis of our axis a
    parts, ours = [], []
    for t, shape in zip(tokens.split([math.prod(s) for s in shapes], 1), shapes):
        t = t.reshape(t.shape[0], *shape, -1).permute(0, *(1 + r for r in release_axis), 4)
        parts.append(t.flatten(1, 3))
        ours.append(tuple(shape[r] for r in release_axis))
    return torch.cat(parts, 1), ours


def _our_tokens_to_release(tokens, our_shapes, spatial_dim):
    """Inverse of :func:`_release_tokens_to_ours`."""
    axes = cotr_release_axes(spatial_dim)
    parts = []
    for t, shape in zip(tokens.split([math.prod(s) for s in our_shapes], 1), our_shapes):
        parts.append(t.reshape(t.shape[0], *shape, -1).permute(0, *(1 + a for a in axes), 4).flatten(1, 3))
    return torch.cat(parts, 1)


def _golden_in_our_layout(g, spatial_dim):
    """The golden attention inputs with the slices on ``spatial_dim``: query/values/reference points as our tokens,
    reference points in our array axis order (the golden ones are the release's (d, w, h))."""
    shapes = [tuple(s) for s in g["spatial_shapes"].tolist()]
    query, ours = _release_tokens_to_ours(g["query"], shapes, spatial_dim)
    values, _ = _release_tokens_to_ours(g["input_flatten"], shapes, spatial_dim)
    n, lq, levels, _ = g["reference_points"].shape
    release_axis = [cotr_release_axes(spatial_dim).index(a) for a in range(3)]
    dhw = g["reference_points"][..., [0, 2, 1]]  # the release's (d, w, h) -> its array order (d, h, w)
    reference, _ = _release_tokens_to_ours(dhw[..., release_axis].reshape(n, lq, -1), shapes, spatial_dim)
    reference = reference.view(n, lq, levels, 3)
    torch.testing.assert_close(reference, deformable_reference_points(ours)[None, :, None].expand_as(reference))
    return query, reference, values, ours


def _identity_projections(block: MSDeformableAttention) -> MSDeformableAttention:
    """Zero offsets, identity value/output projections: the block outputs the (weighted) samples themselves."""
    with torch.no_grad():
        block.sampling_offsets.weight.zero_()
        block.sampling_offsets.bias.zero_()
        for proj in (block.value_proj, block.output_proj):
            proj.weight.copy_(torch.eye(block.hidden_size))
            proj.bias.zero_()
    return block


def _random_inputs(shapes, heads=2, channels=3, queries=7, levels=None, points=3, batch=2, seed=0, spread=0.3):
    """value, locations and weights for the cores; ``spread`` pushes locations outside [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    ndim, levels = len(shapes[0]), len(shapes)
    tokens = sum(torch.Size(s).numel() for s in shapes)
    value = torch.randn(batch, tokens, heads, channels, generator=gen, dtype=torch.float64)
    loc = torch.rand(batch, queries, heads, levels, points, ndim, generator=gen, dtype=torch.float64)
    loc = loc * (1 + 2 * spread) - spread
    weights = torch.rand(batch, queries, heads, levels, points, generator=gen, dtype=torch.float64)
    return value, loc, weights


@pytest.mark.parametrize("spatial_dim", [2, 0, 1])
@pytest.mark.parametrize("core", ["fast", "grid_sample"])
def test_matches_cotr_release_with_its_axes(golden, core, spatial_dim):
    g = golden("cotr_ms_deform_attn")
    block = MSDeformableAttention(48, num_levels=2, num_heads=6, num_points=4, core=core)
    block.load_state_dict(g["state_dict"])  # same parameter names as the release
    use_cotr_release_axes(block, spatial_dim)
    query, reference, values, shapes = _golden_in_our_layout(g, spatial_dim)
    y = _our_tokens_to_release(block(query, reference, values, shapes), shapes, spatial_dim)
    torch.testing.assert_close(y, g["y"], atol=1e-5, rtol=1e-4)


def test_default_order_differs_from_release_quirk(golden):
    g = golden("cotr_ms_deform_attn")
    block = MSDeformableAttention(48, num_levels=2, num_heads=6, num_points=4)
    block.load_state_dict(g["state_dict"])
    query, reference, values, shapes = _golden_in_our_layout(g, 2)
    y = _our_tokens_to_release(block(query, reference, values, shapes), shapes, 2)
    assert (y - g["y"]).abs().max() > 1e-2


@pytest.mark.parametrize("core", ["fast", "grid_sample"])
@pytest.mark.parametrize("shape", [(3, 5, 7), (6, 4, 2), (5, 7)])
def test_zero_offsets_sample_own_voxel_on_non_cubic_levels(core, shape):
    torch.manual_seed(0)
    block = _identity_projections(MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=3,
                                                        spatial_dims=len(shape), core=core))  # fmt: skip
    x = torch.randn(2, torch.Size(shape).numel(), 8)
    ref = deformable_reference_points([shape])[None]
    torch.testing.assert_close(block(x, ref, x, [shape]), x)  # every point of every head reads the own voxel


@pytest.mark.parametrize("core", ["fast", "grid_sample"])
def test_sampling_axes_permute_where_a_query_reads(core):
    torch.manual_seed(0)
    # reference_axes (1, 0): along axis 0 a query starts from its coordinate on axis 1 and vice versa, a transpose
    block = _identity_projections(MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=1, spatial_dims=2,
                                                        core=core, reference_axes=(1, 0)))  # fmt: skip
    x = torch.randn(1, 16, 8)
    y = block(x, deformable_reference_points([(4, 4)])[None], x, [(4, 4)])
    torch.testing.assert_close(y, x.view(1, 4, 4, 8).transpose(1, 2).reshape(1, 16, 8))
    # offset_axes swaps which offset component moves the sample along which axis
    shifted = _identity_projections(MSDeformableAttention(8, num_levels=1, num_heads=1, num_points=1, spatial_dims=2,
                                                          core=core, offset_axes=(1, 0)))  # fmt: skip
    with torch.no_grad():
        shifted.sampling_offsets.bias.copy_(torch.tensor([0.0, 1.0]))  # one voxel along axis 1 ... now axis 0
    y = shifted(x, deformable_reference_points([(4, 4)])[None], x, [(4, 4)])
    grid = x.view(1, 4, 4, 8)
    torch.testing.assert_close(y.view(1, 4, 4, 8)[:, :3], grid[:, 1:])  # the next row: moved along axis 0
    assert y.view(1, 4, 4, 8)[:, 3].abs().max() == 0  # past the last row: zeros
    shifted.set_sampling_axes()  # back to the geometric order
    y = shifted(x, deformable_reference_points([(4, 4)])[None], x, [(4, 4)])
    torch.testing.assert_close(y.view(1, 4, 4, 8)[:, :, :3], grid[:, :, 1:])


@pytest.mark.parametrize(
    "shapes", [[(3, 5, 7), (2, 3, 4)], [(4, 6), (2, 3), (1, 2)], [(1, 1, 1)], [(2, 9, 1), (5, 1, 3)]]
)
def test_fast_core_equals_grid_sample_forward_and_gradients(shapes):
    value, loc, weights = _random_inputs(shapes, spread=0.4)  # many samples outside the maps (zero padding)
    inputs = [t.clone().requires_grad_() for t in (value, loc, weights)]
    reference = [t.clone().requires_grad_() for t in (value, loc, weights)]
    y = deformable_attention_core(inputs[0], shapes, inputs[1], inputs[2])
    y_ref = deformable_attention_grid_sample(reference[0], shapes, reference[1], reference[2])
    torch.testing.assert_close(y, y_ref)
    grad = torch.randn_like(y)
    (y * grad).sum().backward()
    (y_ref * grad).sum().backward()
    for a, b in zip(inputs, reference):
        torch.testing.assert_close(a.grad, b.grad)
    assert loc.lt(0).any() and loc.gt(1).any()


def test_fast_core_gradcheck():
    shapes = [(2, 3, 2), (1, 2, 2)]
    value, loc, weights = _random_inputs(shapes, heads=1, channels=2, queries=3, points=2, batch=1)
    loc = loc.clamp(0.05, 0.95)  # keep away from the integer kinks, where the derivative jumps
    inputs = tuple(t.requires_grad_() for t in (value, loc, weights))
    assert torch.autograd.gradcheck(lambda v, p, w: deformable_attention_core(v, shapes, p, w), inputs)


def test_samples_far_outside_read_zero():
    shapes = [(2, 3, 4)]
    value, loc, weights = _random_inputs(shapes)
    loc = loc.sign() * 5 + 3  # far outside the map on every axis
    assert deformable_attention_core(value, shapes, loc, weights).abs().max() == 0


def test_two_dimensional_block_backward():
    block = MSDeformableAttention(16, num_levels=2, num_heads=4, num_points=2, spatial_dims=2)
    shapes = [(6, 5), (3, 3)]
    x = torch.randn(2, 39, 16, requires_grad=True)
    y = block(x, deformable_reference_points(shapes)[None], x, shapes)
    assert y.shape == (2, 39, 16)
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0 and block.sampling_offsets.weight.grad.abs().sum() > 0


def test_initialisation_as_release():
    block = MSDeformableAttention(48, num_levels=2, num_heads=6, num_points=4)
    bias = block.sampling_offsets.bias.view(6, 2, 4, 3)
    assert block.sampling_offsets.weight.abs().max() == 0 and block.attention_weights.weight.abs().max() == 0
    torch.testing.assert_close(bias[:, :, 3], 4 * bias[:, :, 0])  # point k scaled by k + 1
    torch.testing.assert_close(bias[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))  # head 0 along the first axis
    assert torch.allclose(bias[:, 0, 0].abs().max(-1).values, torch.ones(6))  # unit max-norm directions


def test_padding_mask_zeroes_values():
    block = _identity_projections(MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=2))
    shape = (2, 3, 4)
    x = torch.randn(1, 24, 8)
    mask = torch.ones(1, 24, dtype=torch.bool)
    y = block(x, deformable_reference_points([shape])[None], x, [shape], padding_mask=mask)
    assert y.abs().max() == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="divisible"):
        MSDeformableAttention(10, num_heads=3)
    with pytest.raises(ValueError, match="reference_axes must list every spatial axis"):
        MSDeformableAttention(8, num_heads=2, reference_axes=(0, 1))
    with pytest.raises(ValueError, match="offset_axes"):
        MSDeformableAttention(8, num_heads=2, spatial_dims=2, offset_axes=(0, 2))
    with pytest.raises(ValueError, match="core must be"):
        MSDeformableAttention(8, num_heads=2, core="cuda")
    block = MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=2)
    x = torch.randn(1, 24, 8)
    ref = deformable_reference_points([(2, 3, 4)])[None]
    with pytest.raises(ValueError, match="tokens"):
        block(x, ref, x, [(2, 3, 5)])
    with pytest.raises(ValueError, match="level sizes"):
        block(x, ref, x, [(4, 6)])
    with pytest.raises(ValueError, match="expects query"):
        block(torch.randn(1, 24, 6), ref, x, [(2, 3, 4)])
    with pytest.raises(ValueError, match="reference_points"):
        block(x, ref[..., :2], x, [(2, 3, 4)])
