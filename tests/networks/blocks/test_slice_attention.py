import itertools
import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.networks.nets import DynUNet
from monai.networks.nets.dynunet import DynUNetSkipLayer
from monai.transforms import Orientation
from torch import nn

from monai_ext.networks.blocks import (
    RSA,
    RSA_PAPER_ORDER,
    RecurrentSliceAttention,
    SliceAttention,
    plane_axes,
    slice_attention,
)
from monai_ext.networks.compat import (
    RSA_RELEASE_ORDER,
    RSANET_RELEASE_PLANES,
    monai_to_rsanet_release,
    rsanet_release_to_monai,
)

PAPER_PLANES = ("sagittal", "coronal", "axial")  # Zhang et al. 2019: "sagittal, coronal and axial"
RELEASE_PLANES = ("coronal", "sagittal", "axial")  # the release's rsaBlock: saBlocks [coronal, sagittal, axial]


def _randomise(block: nn.Module, seed: int = 0) -> nn.Module:
    """Non-zero betas (and fresh conv weights) so that the attention actually changes the input."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen))
    return block


def _naive_slice_attention(q, k, v, spatial_dim, scale=1.0):
    """Loop over slice pairs: logits[i, j] = <q slice i, k slice j> over all channels and other positions."""
    dim = spatial_dim + 2  # tensor dimension of (N, C, *spatial); dim - 1 in one sample (C, *spatial)
    s = q.shape[dim]
    out = torch.zeros_like(v)
    for n in range(q.shape[0]):
        logits = torch.stack(
            [
                torch.stack([(q[n].select(dim - 1, i) * k[n].select(dim - 1, j)).sum() for j in range(s)])
                for i in range(s)
            ]
        )
        weights = torch.softmax(logits * scale, dim=-1)
        for i in range(s):
            mixed = sum(weights[i, j] * v[n].select(dim - 1, j) for j in range(s))
            out[n].select(dim - 1, i).copy_(mixed)
    return out


def _anatomical_volume(varying: str, channels: int = 2) -> torch.Tensor:
    """A batch of one volume that varies only along the anatomical axis of orientation letter ``varying``, read as
    the bundles read volumes: stored in the RSANet release's layout (axes S, A, R: axial, coronal, sagittal slice
    axes), then ``Orientation(axcodes="RAS")``. Returns ``(1, channels, *spatial)``."""
    affine = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)  # axes S, A, R
    assert nib.orientations.aff2axcodes(affine) == ("S", "A", "R")
    shape = (5, 6, 7)
    axis = "SAR".index(varying)
    profile = torch.linspace(0.1, 0.4, shape[axis]).reshape([-1 if a == axis else 1 for a in range(3)])
    stored = torch.stack([profile.expand(shape) + 0.05 * c for c in range(channels)])  # (C, S, A, R)
    return Orientation(axcodes="RAS", labels=None)(MetaTensor(stored, affine=torch.as_tensor(affine))).as_tensor()[None]


def _directions_that_see(block: RecurrentSliceAttention, x: torch.Tensor) -> list[int]:
    """Indices of the block's directions whose attention alone changes ``x``, with identity projections: across
    slices that are all equal, attention gives ``x`` back (``x + beta * x`` with beta 1), across slices that
    differ it mixes them. A volume varying along one axis is seen only by the direction that attends along it."""
    channels = block.in_channels
    eye = torch.eye(channels).reshape(channels, channels, *([1] * block.spatial_dims))
    seen = []
    with torch.no_grad():
        for conv in (block.theta_conv, block.phi_conv, block.g_conv):
            conv.weight.copy_(eye)
            conv.bias.zero_()
        for k in range(len(block.betas)):
            for i, beta in enumerate(block.betas):
                beta.fill_(float(i == k))
            if not torch.allclose(block(x), 2 * x, atol=1e-6):
                seen.append(k)
    return seen


@pytest.mark.parametrize("varying, paper_step, release_step", [("R", 0, 1), ("A", 1, 0), ("S", 2, 2)])
def test_default_attends_sagittal_coronal_axial_on_ras_volumes(varying, paper_step, release_step):
    # sagittal slices differ where the volume varies left-right (R), coronal ones anterior-posterior (A), axial
    # ones inferior-superior (S); the paper attends sagittal, coronal, then axial, the release coronal first
    x = _anatomical_volume(varying)
    assert _directions_that_see(RecurrentSliceAttention(3, 2), x) == [paper_step]
    assert _directions_that_see(RecurrentSliceAttention(3, 2, spatial_dims_order=RSA_RELEASE_ORDER), x) == [
        release_step
    ]


def test_matches_rsanet_release_block(golden):
    g = golden("rsanet_rsa_block")  # made with the release's (N, C, D, H, W): axial, coronal, sagittal slice axes
    block = RecurrentSliceAttention(3, 16, spatial_dims_order=RSA_RELEASE_ORDER)
    block.load_state_dict(g["state_dict"])  # identical parameter names: no key mapping needed
    x = rsanet_release_to_monai(g["x"])  # (2, 16, 5, 6, 7) -> (2, 16, 7, 6, 5): RAS's axis order
    assert x.shape == (2, 16, 7, 6, 5)
    torch.testing.assert_close(monai_to_rsanet_release(block(x)), g["y"], atol=1e-5, rtol=1e-4)


def test_release_planes_in_release_layout_match_release_block(golden):
    # the release's planes, placed by name in its own (D, H, W) layout, reproduce it without moving any tensor
    g = golden("rsanet_rsa_block")
    axcodes = "".join({"axial": "S", "coronal": "A", "sagittal": "R"}[p] for p in RSANET_RELEASE_PLANES)
    block = RecurrentSliceAttention(3, 16, spatial_dims_order=plane_axes(RELEASE_PLANES, axcodes))
    block.load_state_dict(g["state_dict"])
    torch.testing.assert_close(block(g["x"]), g["y"], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("order", [p for p in itertools.permutations((0, 1, 2)) if p != RSA_RELEASE_ORDER])
def test_other_direction_orders_do_not_match_release(golden, order):
    g = golden("rsanet_rsa_block")
    block = RecurrentSliceAttention(3, 16, spatial_dims_order=order)
    block.load_state_dict(g["state_dict"])
    assert (monai_to_rsanet_release(block(rsanet_release_to_monai(g["x"]))) - g["y"]).abs().max() > 1e-2


def test_release_layout_conversion_round_trips():
    x = torch.randn(1, 2, 3, 4, 5)  # release (N, C, D, H, W)
    assert rsanet_release_to_monai(x).shape == (1, 2, 5, 4, 3)  # RAS-ordered (N, C, H, W, D)
    assert torch.equal(monai_to_rsanet_release(rsanet_release_to_monai(x)), x)


@pytest.mark.parametrize("flip", [(2,), (3,), (4,), (2, 4)])
def test_axis_directions_do_not_matter(flip):
    # why plane_axes needs only the anatomical axis of each letter: RSA commutes with flips
    block = _randomise(RSA(3, 4))
    x = torch.randn(1, 4, 3, 4, 5)
    torch.testing.assert_close(block(x.flip(flip)), block(x).flip(flip))


@pytest.mark.parametrize(
    "planes, axcodes, expected",
    [
        (PAPER_PLANES, "RAS", (0, 1, 2)),
        (RELEASE_PLANES, "RAS", (1, 0, 2)),
        (PAPER_PLANES, "LPS", (0, 1, 2)),
        (PAPER_PLANES, "sar", (2, 1, 0)),
        (PAPER_PLANES, ("S", "A", "R"), (2, 1, 0)),  # as nibabel's aff2axcodes gives them
        (("Axial",), "PIL", (1,)),
        (("coronal", "sagittal"), "RA", (1, 0)),  # a 2D axial slice
    ],
)
def test_plane_axes(planes, axcodes, expected):
    assert plane_axes(planes, axcodes) == expected


def test_paper_and_release_orders():
    assert RSA_PAPER_ORDER == plane_axes(PAPER_PLANES) == (0, 1, 2)
    assert RSA_RELEASE_ORDER == plane_axes(RELEASE_PLANES) == (1, 0, 2)


@pytest.mark.parametrize(
    "planes, axcodes, message",
    [
        (["sagital"], "RAS", r"planes must be distinct names from \['sagittal', 'coronal', 'axial'\]"),
        (["axial", "axial"], "RAS", "planes must be distinct"),
        ([], "RAS", "planes must be distinct"),
        (["axial"], "RAR", "each anatomical axis at most once"),
        (["axial"], "RAX", "one letter of L/R, A/P, I/S"),
        (["axial"], "RASL", "got 'RASL'"),
        (["axial"], ("R", None, "S"), r"got \('R', None, 'S'\)"),
        (["axial"], "RA", r"no axis across which \['axial'\] slices are stacked \(axial: I/S\)"),
    ],
)
def test_plane_axes_bad_arguments(planes, axcodes, message):
    with pytest.raises(ValueError, match=message):
        plane_axes(planes, axcodes)


@pytest.mark.parametrize("spatial_dim", [0, 1, 2])
def test_slice_attention_matches_naive_loop(spatial_dim):
    q, k, v = (torch.randn(2, 3, 4, 3, 5) * 0.3 for _ in range(3))
    torch.testing.assert_close(slice_attention(q, k, v, spatial_dim), _naive_slice_attention(q, k, v, spatial_dim))


def test_scaled_divides_logits_by_sqrt_of_slice_length():
    q, k, v = (torch.randn(1, 4, 5, 6, 3) for _ in range(3))
    length = 4 * 5 * 6  # C * H * W for slices along D (spatial axis 2)
    expected = _naive_slice_attention(q, k, v, 2, scale=1 / math.sqrt(length))
    torch.testing.assert_close(slice_attention(q, k, v, 2, scaled=True), expected)
    assert not torch.allclose(slice_attention(q, k, v, 2), expected)


def test_scaled_option_in_block():
    x = torch.randn(1, 8, 4, 5, 6)
    plain = _randomise(RecurrentSliceAttention(3, 8))
    scaled = RecurrentSliceAttention(3, 8, scaled=True)
    scaled.load_state_dict(plain.state_dict())
    assert scaled.scaled and not plain.scaled
    assert not torch.allclose(plain(x), scaled(x))


@pytest.mark.parametrize("block", [RecurrentSliceAttention(3, 6), SliceAttention(3, 6), RSA(2, 6)])
def test_identity_at_initialisation(block):
    x = torch.randn(2, 6, 4, 5, 3)[..., 0] if block.spatial_dims == 2 else torch.randn(2, 6, 4, 5, 3)
    assert not torch.stack(list(block.betas)).detach().any()
    assert torch.equal(block(x), x)


def test_defaults_and_parameter_names():
    block = RSA(3, 8)
    assert RSA is RecurrentSliceAttention
    assert RSA(2, 8).spatial_dims_order == [0, 1]
    assert SliceAttention(3, 8).spatial_dims_order == [2]  # the slice axis: the last, D, by default
    assert sorted(block.state_dict()) == sorted(
        [f"{n}_conv.{p}" for n in ("theta", "phi", "g") for p in ("weight", "bias")] + ["betas.0", "betas.1", "betas.2"]
    )
    assert block.theta_conv.weight.shape == (8, 8, 1, 1, 1)
    assert sum(p.numel() for p in block.parameters()) == 3 * (8 * 8 + 8) + 3


def test_recurrence_recomputes_projections_on_updated_input():
    block = _randomise(RSA(3, 4, spatial_dims_order=(2, 0)))
    x = torch.randn(1, 4, 3, 4, 5)

    def step(t, beta, spatial_dim):
        return t + beta * slice_attention(block.theta_conv(t), block.phi_conv(t), block.g_conv(t), spatial_dim)

    expected = step(step(x, block.betas[0], 2), block.betas[1], 0)
    torch.testing.assert_close(block(x), expected)


def test_single_direction_is_rsa_with_one_axis():
    sa = _randomise(SliceAttention(3, 4, spatial_dim=1))
    rsa = RSA(3, 4, spatial_dims_order=[1])
    rsa.load_state_dict(sa.state_dict())
    x = torch.randn(2, 4, 3, 4, 5)
    torch.testing.assert_close(sa(x), rsa(x))


@pytest.mark.parametrize("order", [None, (1, 0), (1,)])
def test_2d_inputs(order):
    block = _randomise(RSA(2, 5, spatial_dims_order=order))
    assert isinstance(block.g_conv, nn.Conv2d)
    x = torch.randn(2, 5, 6, 7)
    y = block(x)
    assert y.shape == x.shape
    t = x
    for beta, axis in zip(block.betas, block.spatial_dims_order):
        t = t + beta * slice_attention(block.theta_conv(t), block.phi_conv(t), block.g_conv(t), axis)
    torch.testing.assert_close(y, t)


def test_gradients_reach_every_parameter_and_the_input():
    block = _randomise(RSA(3, 4))
    x = torch.randn(1, 4, 3, 4, 5, requires_grad=True)
    block(x).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_betas_learn_from_identity_start():
    block = RSA(3, 4)
    block(torch.randn(1, 4, 3, 4, 5)).square().mean().backward()
    assert all(beta.grad is not None and beta.grad.abs() > 0 for beta in block.betas)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript(spatial_dims):
    block = _randomise(RSA(spatial_dims, 4, scaled=True))
    x = torch.randn((1, 4) + (3, 4, 5)[:spatial_dims])
    scripted = torch.jit.script(block)
    traced = torch.jit.trace(block, x)
    torch.testing.assert_close(scripted(x), block(x))
    torch.testing.assert_close(traced(x), block(x))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1, "in_channels": 4}, "spatial_dims must be 2 or 3, got 1"),
        ({"spatial_dims": 3, "in_channels": 0}, "in_channels must be a positive integer, got 0"),
        ({"spatial_dims": 3, "in_channels": 4, "spatial_dims_order": []}, r"distinct spatial axes .* got \[\]"),
        ({"spatial_dims": 3, "in_channels": 4, "spatial_dims_order": [1, 1]}, r"distinct .* got \[1, 1\]"),
        ({"spatial_dims": 3, "in_channels": 4, "spatial_dims_order": [3, 4, 2]}, r"\[0, 1, 2\] .* got 3"),
        ({"spatial_dims": 2, "in_channels": 4, "spatial_dims_order": [2]}, r"one of \[0, 1\] .* got 2"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecurrentSliceAttention(**kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 2, "in_channels": 4}, r"spatial_dim counts spatial axes .* one of \[0, 1\] .* got 2"),
        ({"spatial_dims": 3, "in_channels": 4, "spatial_dim": 4}, r"spatial_dim .* got 4"),
        ({"spatial_dims": 1, "in_channels": 4, "spatial_dim": 0}, "spatial_dims must be 2 or 3, got 1"),
    ],
)
def test_slice_attention_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SliceAttention(**kwargs)


@pytest.mark.parametrize("shape", [(1, 3, 4, 4, 4), (1, 4, 4, 4), (4, 4, 4, 4, 4, 4)])
def test_bad_input_shapes(shape):
    with pytest.raises(ValueError, match=r"expects an input \(N, 4, \*spatial\) with 3 spatial axes, got shape"):
        RSA(3, 4)(torch.randn(shape))


def test_dropped_into_dynunet_bottleneck():
    net = DynUNet(3, 1, 2, kernel_size=[3, 3, 3], strides=[1, 2, 2], upsample_kernel_size=[2, 2], filters=[4, 8, 16])
    net.eval()
    x = torch.randn(1, 1, 8, 8, 8)
    before = net(x)
    # DynUNet reaches its bottleneck through nested skip layers: wrap it where the innermost one calls it
    layer = net.skip_layers
    while isinstance(layer.next_layer, DynUNetSkipLayer):
        layer = layer.next_layer
    rsa = RSA(3, 16)
    layer.next_layer = net.bottleneck = nn.Sequential(net.bottleneck, rsa)
    torch.testing.assert_close(net(x), before)  # betas start at 0: the network is unchanged
    with torch.no_grad():
        for beta in rsa.betas:
            beta.fill_(0.5)
    after = net(x)
    assert not torch.allclose(after, before)
    after.sum().backward()
    assert rsa.g_conv.weight.grad is not None and rsa.g_conv.weight.grad.abs().sum() > 0
    torch.testing.assert_close(torch.jit.script(net)(x), net(x))
