import pytest
import torch

from monai_ext.networks.blocks import (
    MSDeformableAttention,
    deformable_attention_core,
    deformable_attention_grid_sample,
    deformable_reference_points,
)


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


@pytest.mark.parametrize("core", ["fast", "grid_sample"])
def test_matches_cotr_release_with_compat_switch(golden, core):
    g = golden("cotr_ms_deform_attn")
    block = MSDeformableAttention(48, num_levels=2, num_heads=6, num_points=4, cotr_axis_order=True, core=core)
    block.load_state_dict(g["state_dict"])  # same parameter names as the release
    y = block(g["query"], g["reference_points"], g["input_flatten"], g["spatial_shapes"])
    torch.testing.assert_close(y, g["y"], atol=1e-5, rtol=1e-4)


def test_default_order_differs_from_release_quirk(golden):
    g = golden("cotr_ms_deform_attn")
    block = MSDeformableAttention(48, num_levels=2, num_heads=6, num_points=4)
    block.load_state_dict(g["state_dict"])
    y = block(g["query"], g["reference_points"], g["input_flatten"], g["spatial_shapes"])
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


def test_compat_order_samples_transposed_location_on_non_cubic_level():
    shape = (3, 5, 7)
    torch.manual_seed(0)
    block = _identity_projections(MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=1,
                                                        cotr_axis_order=True))  # fmt: skip
    x = torch.randn(1, 105, 8)
    y = block(x, deformable_reference_points([shape], cotr_axis_order=True)[None], x, [shape])
    assert (y - x).abs().max() > 0.1  # the release's quirk: not the own voxel
    cube = _identity_projections(MSDeformableAttention(8, num_levels=1, num_heads=2, num_points=1,
                                                       cotr_axis_order=True))  # fmt: skip
    x = torch.randn(1, 64, 8)  # on a cubic level the query (d, h, w) reads the voxel (h, w, d)
    y = cube(x, deformable_reference_points([(4, 4, 4)], cotr_axis_order=True)[None], x, [(4, 4, 4)])
    expected = x.view(1, 4, 4, 4, 8).permute(0, 3, 1, 2, 4).reshape(1, 64, 8)
    torch.testing.assert_close(y, expected)


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
    with pytest.raises(ValueError, match="3D sampling quirk"):
        MSDeformableAttention(8, num_heads=2, spatial_dims=2, cotr_axis_order=True)
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
