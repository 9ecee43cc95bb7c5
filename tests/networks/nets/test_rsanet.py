import pytest
import torch
from torch import nn
from torch.nn.functional import pad

from monai_ext.networks.blocks import RecurrentSliceAttention
from monai_ext.networks.nets import RSANet

SMALL = {"filters": (8, 16, 32)}  # 3 levels: sizes padded to multiples of 4


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
    assert isinstance(net.rsa_bottleneck, RecurrentSliceAttention) and net.rsa_bottleneck.dims == [3, 4, 2]
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
        ({"rsa_scaled": True, "rsa_dims": (2, 3, 4), "dropout": None}, (1, 3, 4, 4, 4)),
    ],
)
def test_output_shapes(kwargs, shape):
    net = RSANet(**{**SMALL, **kwargs})
    out = net(torch.randn(shape))
    assert out.shape == (shape[0], net.out_channels, *shape[2:])


@pytest.mark.parametrize("shape", [(1, 3, 5, 6, 7), (1, 3, 9, 4, 3), (1, 3, 1, 1, 1)])
def test_sizes_not_divisible_are_padded_and_cropped(shape):
    net = _activate_rsa(RSANet(**SMALL, rsa_placement="111")).eval()
    x = torch.randn(shape)
    out = net(x)
    assert out.shape == (1, 2, *shape[2:])
    # the same as zero-padding to multiples of 4 by hand and cropping the output
    padded = pad(x, [p for s in reversed(shape[2:]) for p in (0, -s % 4)])
    d, h, w = shape[2:]
    torch.testing.assert_close(out, net(padded)[..., :d, :h, :w])


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
    "kwargs, message",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3, got 1"),
        ({"in_channels": 0}, "in_channels and out_channels must be positive, got 0, 2"),
        ({"filters": (8,)}, r"filters needs at least 2 positive channel counts .* got \[8\]"),
        ({"rsa_placement": "01"}, "rsa_placement must be three characters .* got '01'"),
        ({"rsa_placement": "020"}, "rsa_placement must be three characters .* got '020'"),
        ({"rsa_placement": 10}, "rsa_placement must be three characters .* got 10"),
        ({"rsa_dims": (1,)}, r"dims must be distinct .* got \[1\]"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RSANet(**{**SMALL, **kwargs})


@pytest.mark.parametrize("shape", [(1, 2, 8, 8, 8), (1, 3, 8, 8), (3, 8, 8, 8)])
def test_bad_input_shapes(shape):
    with pytest.raises(ValueError, match=r"RSANet expects an input \(B, 3, \*spatial\) with 3 spatial axes, got shape"):
        RSANet(**SMALL)(torch.randn(shape))
