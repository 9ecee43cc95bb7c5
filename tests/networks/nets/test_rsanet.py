import pytest
import torch
from torch import nn

from monai_ext.inferers import PadInferer
from monai_ext.networks import create_network, get_network_entry, list_networks
from monai_ext.networks.blocks import RecurrentSliceAttention, plane_axes
from monai_ext.networks.compat import RSA_RELEASE_ORDER, monai_to_rsanet_release, rsanet_release_to_monai
from monai_ext.networks.nets import RSANet
from monai_ext.networks.nets.rsanet import RSANET_PATCH, rsanet_inferer

SMALL = {"filters": (8, 16, 32)}  # 3 levels: sizes must be multiples of 4


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _rsa_count(channels: int) -> int:
    return 3 * (channels * channels + channels) + 3  # theta, phi, g 1x1x1 convs with bias + 3 betas


def _activate_rsa(net: RSANet) -> RSANet:
    """Non-zero betas: the RSA blocks start as identities, which would hide a wrong placement."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "betas" in name:
                p.fill_(0.5)
    return net


def test_default_matches_release_parameter_count():
    # release: 3 modalities, 2 classes, filters 32..512, RSA at the bottleneck; paper/reference: 24.554 M
    assert _count(RSANet()) == 24_554_339


@pytest.mark.parametrize(
    "placement, extra", [("000", 0), ("010", _rsa_count(512)), ("101", 2 * _rsa_count(256)), ("111", None)]
)
def test_placements_parameter_counts(placement, extra):
    extra = _rsa_count(512) + 2 * _rsa_count(256) if extra is None else extra
    assert _count(RSANet(rsa_placement=placement)) == 24_554_339 - _rsa_count(512) + extra


@pytest.mark.parametrize("placement", ["000", "010", "101", "111"])
def test_placement_blocks_run_where_the_paper_puts_them(placement):
    net = _activate_rsa(RSANet(in_channels=2, **SMALL, rsa_placement=placement))
    seen = {}
    for name, enabled in zip(("rsa_encoder", "rsa_bottleneck", "rsa_decoder"), placement):
        module = getattr(net, name)
        assert isinstance(module, RecurrentSliceAttention if enabled == "1" else nn.Identity)
        module.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, tuple(o.shape)))
    net(torch.randn(1, 2, 8, 8, 8))
    # encoder and decoder of the second-lowest level (32 -> 16 channels at 1/2 size), bottleneck 32 at 1/4
    assert seen == {
        "rsa_encoder": (1, 16, 4, 4, 4),
        "rsa_bottleneck": (1, 32, 2, 2, 2),
        "rsa_decoder": (1, 16, 4, 4, 4),
    }


def test_release_layout():
    net = RSANet()
    assert isinstance(net.dropout, nn.Dropout3d) and net.dropout.p == 0.2
    assert isinstance(net.rsa_bottleneck, RecurrentSliceAttention)
    assert net.rsa_bottleneck.spatial_dims_order == [0, 1, 2]  # the paper's order (its anatomy: test_slice_attention)
    assert isinstance(net.encoders[0].norm1, nn.GroupNorm) and net.encoders[0].norm1.num_groups == 8
    assert isinstance(net.encoders[0].lrelu, nn.ReLU)
    assert net.downsamples[0].conv.stride == (2, 2, 2) and net.downsamples[0].conv.bias is None
    assert net.upsamples[0][1].mode == "nearest" and net.upsamples[0][0].conv.kernel_size == (1, 1, 1)
    assert [d.conv1.conv.in_channels for d in net.decoders] == [512, 256, 128, 64]
    assert all(m.bias is None for m in net.modules() if isinstance(m, nn.Conv3d) and m.kernel_size != (1, 1, 1))


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({}, (2, 3, 8, 8, 8)),
        ({"in_channels": 1, "out_channels": 4}, (1, 1, 4, 8, 12)),
        ({"spatial_dims": 2, "rsa_placement": "111"}, (2, 3, 8, 12)),
        ({"rsa_scaled": True, "rsa_spatial_dims_order": (2, 0, 1), "dropout": None}, (1, 3, 4, 4, 8)),
    ],
)
def test_output_shapes(kwargs, shape):
    net = RSANet(**{**SMALL, **kwargs})
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], net.out_channels, *shape[2:])


@pytest.mark.parametrize("shape", [(1, 3, 5, 8, 8), (1, 3, 8, 4, 3), (1, 3, 1, 1, 1)])
def test_sizes_not_divisible_are_refused_with_the_fix(shape):
    net = RSANet(**SMALL)
    with pytest.raises(ValueError, match=r"RSANet needs spatial sizes divisible by \[4, 4, 4\], got .*PadInferer"):
        net(torch.randn(shape))


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (1, 3, 9, 4, 3), (1, 3, 1, 1, 1)])
def test_pad_inferer_takes_any_size(shape):
    # far-end zero padding to multiples of 4 and cropping back: what RSANet did inside itself before
    net = _activate_rsa(RSANet(**SMALL, rsa_placement="111")).eval()
    x = torch.randn(shape)
    with torch.no_grad():
        out = PadInferer(divisor=net.divisor)(x, net)
        padded = torch.zeros(1, 3, *(s + -s % 4 for s in shape[2:]))
        padded[..., : shape[2], : shape[3], : shape[4]] = x
        expected = net(padded)[..., : shape[2], : shape[3], : shape[4]]
    assert out.shape == (1, 2, *shape[2:])
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("placement", ["010", "101", "111"])
def test_release_layout_gives_the_same_output_after_the_layout_permutation(placement):
    # a volume in the release's (N, C, D, H, W) (axial, coronal, sagittal slice axes), attended coronal, sagittal,
    # then axial as the release does, equals the network with RSA_RELEASE_ORDER on the volume moved to RAS's axis
    # order, its 3D kernels moved the same way
    in_release_layout = plane_axes(("coronal", "sagittal", "axial"), "SAR")  # (1, 2, 0)
    release = RSANet(**SMALL, rsa_placement=placement, rsa_spatial_dims_order=in_release_layout)
    release = _activate_rsa(release).eval()
    ours = RSANet(**SMALL, rsa_placement=placement, rsa_spatial_dims_order=RSA_RELEASE_ORDER).eval()
    ours.load_state_dict(
        {k: rsanet_release_to_monai(v) if v.dim() == 5 else v for k, v in release.state_dict().items()}
    )
    x = torch.randn(1, 3, 4, 8, 12)  # (N, C, D, H, W)
    with torch.no_grad():
        expected = release(x)
        out = monai_to_rsanet_release(ours(rsanet_release_to_monai(x)))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_default_network_forward_at_release_divisor():
    net = RSANet().eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 16, 16, 16))
    assert out.shape == (1, 2, 16, 16, 16) and torch.isfinite(out).all()


def test_gradients_reach_every_parameter():
    net = _activate_rsa(RSANet(**SMALL, rsa_placement="111", dropout=None))
    x = torch.randn(1, 3, 8, 8, 8)
    net(x).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_trace():
    net = _activate_rsa(RSANet(**SMALL, rsa_placement="101")).eval()
    x = torch.randn(1, 3, 8, 8, 8)
    torch.testing.assert_close(torch.jit.trace(net, x)(x), net(x))


@pytest.mark.parametrize(
    "kwargs, shape",
    [
        ({"rsa_placement": "111", "rsa_spatial_dims_order": RSA_RELEASE_ORDER}, (1, 3, 8, 12, 4)),
        ({"rsa_placement": "000"}, (2, 3, 4, 8, 8)),
        ({"spatial_dims": 2, "rsa_placement": "101", "rsa_scaled": True}, (1, 3, 8, 12)),
    ],
)
def test_script(kwargs, shape):
    # the Model Zoo's `ckpt_export` scripts (no --use_trace); same output as eager, same state-dict keys
    net = _activate_rsa(RSANet(**SMALL, **kwargs)).eval()
    scripted = torch.jit.script(net)
    assert list(scripted.state_dict()) == list(net.state_dict())
    x = torch.randn(shape)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x))
        other = torch.randn(1, 3, *(s + 4 for s in shape[2:]))  # another size: a script, unlike a trace, adapts
        torch.testing.assert_close(scripted(other), net(other))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3, got 1"),
        ({"in_channels": 0}, "in_channels and out_channels must be positive, got 0, 2"),
        ({"filters": (8,)}, r"filters needs at least 2 positive channel counts .* got \[8\]"),
        ({"rsa_placement": "01"}, "rsa_placement must be three characters .* got '01'"),
        ({"rsa_placement": "020"}, "rsa_placement must be three characters .* got '020'"),
        ({"rsa_placement": 10}, "rsa_placement must be three characters .* got 10"),
        ({"rsa_spatial_dims_order": (3, 4, 2)}, r"spatial_dims_order .* one of \[0, 1, 2\] .* got 3"),
        ({"rsa_spatial_dims_order": (0, 0)}, r"spatial_dims_order must list distinct .* got \[0, 0\]"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RSANet(**{**SMALL, **kwargs})


@pytest.mark.parametrize(
    "shape, message",
    [
        ((1, 2, 8, 8, 8), r"RSANet was built for 3 input channel\(s\), got 2"),
        ((1, 3, 8, 8), r"RSANet expects a 5D input \(B, C, H, W, D\), got shape \[1, 3, 8, 8\]"),
        ((3, 8, 8, 8), r"RSANet expects a 5D input"),
    ],
)
def test_bad_input_shapes(shape, message):
    with pytest.raises(ValueError, match=message):
        RSANet(**SMALL)(torch.randn(shape))


MAIN_AND_VARIANTS = {"rsanet": "010", "rsanet_101": "101", "rsanet_111": "111", "rsanet_000": "000"}


@pytest.mark.parametrize("name, placement", list(MAIN_AND_VARIANTS.items()))
def test_registry_builds_every_paper_placement(name, placement):
    entry = get_network_entry(name)
    assert entry.kind == "3d" and entry.family == "ours" and entry.loader is None
    assert entry.variant_of == (None if name == "rsanet" else "rsanet")
    assert entry.bundle == "rsanet" and entry.method == 5
    assert entry.paper.startswith("Zhang et al. 2019, Table 1: ") and entry.patch == RSANET_PATCH
    net = create_network(name, **SMALL)
    assert isinstance(net, RSANet) and net.rsa_placement == placement and net.filters == [8, 16, 32]


def test_registry_main_entry_is_the_release():
    net = create_network("rsanet")
    assert sum(p.numel() for p in net.parameters()) == 24_554_339
    assert get_network_entry("rsanet").paper == "Zhang et al. 2019, Table 1: RSA-010"
    assert get_network_entry("rsanet_000").paper == "Zhang et al. 2019, Table 1: 3D U-Net"
    assert {e.name for e in list_networks() if e.name == "rsanet" or e.variant_of == "rsanet"} == set(MAIN_AND_VARIANTS)


def test_inferer_factory_takes_overrides():
    # that it equals the bundle's inferer, and the patch its window: tests/networks/test_registry.py, every method
    assert get_network_entry("rsanet").patch == RSANET_PATCH
    assert rsanet_inferer(roi_size=(32, 32, 16), overlap=0.25).roi_size == (32, 32, 16)


def test_registry_entry_runs_a_non_cubic_volume_through_its_inferer():
    entry = get_network_entry("rsanet_111")
    net = _activate_rsa(entry.build(filters=(8, 8, 16))).eval()
    inferer = entry.make_inferer(roi_size=(32, 32, 16))  # a smaller window keeps the test fast
    x = torch.randn(1, 3, 40, 24, 20)  # slices on the last axis; no size divisible by the window
    with torch.no_grad():
        out = inferer(x, net)
    assert out.shape == (1, 2, 40, 24, 20) and torch.isfinite(out).all()
