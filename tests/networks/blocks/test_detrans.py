import pytest
import torch
from monai.networks.nets import DynUNet
from torch import nn

from monai_ext.networks import attach_block
from monai_ext.networks.blocks import DeTransEncoder, DeTransLayer, SinePositionEncoding, sine_position_encoding
from monai_ext.networks.compat import convert_detrans_release_state_dict, cotr_release_axes, use_cotr_release_axes


def _to_ours(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    """A golden map ``(N, C, D, H, W)`` (the release's layout) with its slices on our spatial axis ``spatial_dim``."""
    axes = cotr_release_axes(spatial_dim)
    return x.permute(0, 1, *(2 + axes.index(a) for a in range(3)))


def _to_release(x: torch.Tensor, spatial_dim: int) -> torch.Tensor:
    return x.permute(0, 1, *(2 + a for a in cotr_release_axes(spatial_dim)))


def _golden_encoder(g, **kwargs) -> DeTransEncoder:
    c = g["config"]
    encoder = DeTransEncoder(
        c["d_model"], c["n_levels"], c["n_layers"], c["d_ffn"], c["n_heads"], c["n_points"], c["dropout"],
        c["activation"], **kwargs,
    )  # fmt: skip
    encoder.load_state_dict(convert_detrans_release_state_dict(g["state_dict"]))
    return encoder.eval()


@pytest.mark.parametrize("spatial_dim", [2, 0, 1])
def test_position_encoding_matches_cotr(golden, spatial_dim):
    g = golden("cotr_position_encoding")
    encoding = use_cotr_release_axes(SinePositionEncoding(g["hidden_dim"]), spatial_dim)
    pos = _to_release(encoding(_to_ours(g["x"], spatial_dim)), spatial_dim)
    torch.testing.assert_close(pos, g["pos"], atol=1e-5, rtol=1e-4)


def test_position_encoding_axis_order():
    default = sine_position_encoding((3, 5), 8)  # 4 channels per axis, axis 0 first
    swapped = sine_position_encoding((3, 5), 8, spatial_dims_order=(1, 0))
    torch.testing.assert_close(swapped, torch.cat([default[4:], default[:4]]))
    # 8 channels over 3 axes: 4, 2, 2; the 4 go to the first axis listed, here axis 2
    pos = sine_position_encoding((2, 3, 4), 8, spatial_dims_order=(2, 0, 1))
    torch.testing.assert_close(pos[:4, 1, 2], sine_position_encoding((4, 2, 3), 8)[:4, :, 0, 0])
    torch.testing.assert_close(pos[4:6, :, 0, 0], sine_position_encoding((2, 3, 4), 6)[:2, :, 0, 0])
    with pytest.raises(ValueError, match="every axis"):
        sine_position_encoding((2, 2, 2), 12, spatial_dims_order=(0, 1))


def test_position_encoding_frequency_rule():
    pos = sine_position_encoding((1, 1, 5), 12, normalize=False)  # 4 channels per axis, x channels last
    x = torch.arange(1, 6, dtype=torch.float32)
    # channel i of an axis with c = 4 channels: p / 10000 ** (3 * (i // 3) / 4); sin on even, cos on odd channels
    expected = torch.stack([x.sin(), x.cos(), x.sin(), (x / 10000**0.75).cos()])
    torch.testing.assert_close(pos[8:, 0, 0], expected)
    assert pos.shape == (12, 1, 1, 5)
    assert sine_position_encoding((3, 4), 8).shape == (8, 3, 4)
    with pytest.raises(ValueError, match="even"):
        sine_position_encoding((2, 2, 2), 9)


@pytest.mark.parametrize("spatial_dim", [2, 0, 1])
@pytest.mark.parametrize("core", ["fast", "grid_sample"])
def test_encoder_matches_cotr_with_its_axes(golden, core, spatial_dim):
    g = golden("cotr_detrans_encoder")
    encoder = use_cotr_release_axes(_golden_encoder(g, core=core), spatial_dim)
    outs = encoder([_to_ours(f, spatial_dim) for f in g["feats"]])
    for out, expected in zip(outs, g["outs"]):
        torch.testing.assert_close(_to_release(out, spatial_dim), expected, atol=1e-5, rtol=1e-4)


def test_encoder_default_order_is_not_the_release(golden):
    g = golden("cotr_detrans_encoder")
    outs = _golden_encoder(g)([_to_ours(f, 2) for f in g["feats"]])
    assert max((_to_release(o, 2) - e).abs().max() for o, e in zip(outs, g["outs"])) > 1e-2


def test_layer_is_post_norm():
    layer = DeTransLayer(12, 16, num_heads=2, num_levels=1, num_points=2, dropout_rate=0.0).eval()
    shapes = [(2, 2, 3)]
    src = torch.randn(1, 12, 12) * 5 + 3
    out = layer(src, None, torch.full((1, 12, 3), 0.5), shapes)
    torch.testing.assert_close(out.mean(-1), torch.zeros(1, 12), atol=1e-5, rtol=0)  # LayerNorm last
    torch.testing.assert_close(out.std(-1, unbiased=False), torch.ones(1, 12), atol=1e-3, rtol=0)


def test_two_dimensional_encoder_shapes_and_backward():
    encoder = DeTransEncoder(16, num_levels=2, num_layers=2, mlp_dim=32, num_heads=4, num_points=2, spatial_dims=2)
    maps = [torch.randn(2, 16, 6, 5, requires_grad=True), torch.randn(2, 16, 3, 3)]
    outs = encoder(maps)
    assert [o.shape for o in outs] == [m.shape for m in maps]
    sum(o.sum() for o in outs).backward()
    assert maps[0].grad.abs().sum() > 0


def test_encoder_bad_inputs():
    encoder = DeTransEncoder(12, num_levels=2, num_layers=1, mlp_dim=8, num_heads=2)
    with pytest.raises(ValueError, match="expects 2 feature maps"):
        encoder([torch.randn(1, 12, 2, 2, 2)])
    with pytest.raises(ValueError, match="project the channels"):
        encoder([torch.randn(1, 12, 2, 2, 2), torch.randn(1, 8, 1, 1, 1)])
    with pytest.raises(ValueError, match="even"):
        DeTransEncoder(15, num_heads=3)
    with pytest.raises(ValueError, match="one tensor is one level"):
        encoder(torch.randn(1, 12, 2, 2, 2))


class DynUNetWithDeTrans(nn.Module):
    """A MONAI DynUNet whose two deepest encoder features (the last skip and the bottleneck) pass a DeTrans
    encoder before the decoder; ``detrans=None`` runs the plain DynUNet path step by step."""

    def __init__(self, net: DynUNet, detrans: DeTransEncoder | None) -> None:
        super().__init__()
        self.net, self.detrans = net, detrans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.net.input_block(x)]
        for down in self.net.downsamples:
            skips.append(down(skips[-1]))
        x = self.net.bottleneck(skips[-1])
        if self.detrans is not None:
            skips[-1], x = self.detrans([skips[-1], x])
        for up in self.net.upsamples:
            x = up(x, skips.pop())
        return self.net.output_block(x)


def test_encoder_on_dynunet_skip_features():
    torch.manual_seed(0)
    net = DynUNet(3, 1, 2, kernel_size=[3] * 4, strides=[1, 2, 2, 2], upsample_kernel_size=[2] * 3,
                  filters=[8, 16, 24, 24]).eval()  # fmt: skip
    x = torch.randn(1, 1, 16, 24, 16)
    plain = DynUNetWithDeTrans(net, None)
    torch.testing.assert_close(plain(x), net(x))  # the step-by-step path is DynUNet's own
    detrans = DeTransEncoder(24, num_levels=2, num_layers=2, mlp_dim=48, num_heads=4, num_points=2)
    model = DynUNetWithDeTrans(net, detrans).eval()
    y = model(x)
    assert y.shape == (1, 2, 16, 24, 16)
    assert (y - net(x)).abs().max() > 1e-3  # the DeTrans features change the prediction
    y.sum().backward()
    assert detrans.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


def test_one_level_encoder_after_dynunet_bottleneck():
    torch.manual_seed(0)
    net = DynUNet(3, 1, 2, [3] * 4, [1, 2, 2, 2], [2] * 3, filters=[8, 16, 24, 32], res_block=True).eval()
    x = torch.randn(1, 1, 32, 24, 16)  # (B, C, H, W, D), slices last
    before = net(x)
    detrans = DeTransEncoder(32, num_levels=1, num_layers=1, mlp_dim=64, num_heads=4, num_points=2)
    attach_block(net, "bottleneck", detrans)  # one tensor in, one tensor out
    after = net(x)
    assert after.shape == before.shape and (after - before).abs().max() > 1e-3
    after.sum().backward()
    assert detrans.layers[0].self_attn.sampling_offsets.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_equals_eager(spatial_dims):
    torch.manual_seed(0)
    one = DeTransEncoder(12, num_levels=1, num_layers=1, mlp_dim=16, num_heads=2, num_points=2, dropout_rate=0.0,
                         spatial_dims=spatial_dims).eval()  # fmt: skip
    x = torch.randn(2, 12, *[4, 6, 3][:spatial_dims])
    torch.testing.assert_close(torch.jit.script(one)(x), one(x), rtol=0, atol=0)  # one tensor in, one out
    two = DeTransEncoder(12, num_levels=2, num_layers=1, mlp_dim=16, num_heads=2, num_points=2, dropout_rate=0.0,
                         spatial_dims=spatial_dims).eval()  # fmt: skip
    maps = [x, torch.randn(2, 12, *[2, 3, 2][:spatial_dims])]
    for got, want in zip(torch.jit.script(two)(maps), two(maps)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
