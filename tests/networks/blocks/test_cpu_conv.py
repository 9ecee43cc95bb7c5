"""CPU convolutions on oneDNN's fast path: one-channel 2D images, small 3D maps of one sample."""

import pytest
import torch
from torch import nn

from monai_ext.networks.blocks import cpu_conv
from monai_ext.networks.blocks.cpu_conv import (
    ChannelsLastConv2d,
    OneDNNConv3d,
    conv2d_channels_last,
    conv3d_onednn,
    fast_cpu_convs,
)


def _channels_last(x: torch.Tensor) -> bool:
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


@pytest.mark.parametrize("stride, padding, dilation", [([1, 1], [1, 1], [1, 1]), ([2, 1], [0, 2], [1, 2])])
def test_one_channel_gives_the_same_values_channels_last(stride, padding, dilation):
    x = torch.randn(3, 1, 12, 10).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(8, 1, 3, 3).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(8)
    expected = torch.nn.functional.conv2d(x, weight, bias, stride, padding, dilation)
    assert not _channels_last(expected)  # what aten gives for the layout-ambiguous pair: NCHW
    out = conv2d_channels_last(x, weight, bias, stride, padding, dilation)
    assert _channels_last(out)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_input_and_the_weight():
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda a, w, b: conv2d_channels_last(a, w, b, [1, 1], [1, 1], [1, 1]), (x, weight, bias)
    )


def test_several_channels_and_traces_take_the_plain_convolution():
    x = torch.randn(2, 3, 8, 8)
    weight = torch.randn(4, 3, 3, 3)
    assert torch.equal(
        conv2d_channels_last(x, weight, None, [1, 1], [1, 1], [1, 1]), torch.conv2d(x, weight, None, 1, 1)
    )
    one = torch.randn(2, 1, 8, 8)
    traced = torch.jit.trace(lambda a: conv2d_channels_last(a, weight[:, :1], None, [1, 1], [1, 1], [1, 1]), one)
    assert "cat" not in str(traced.graph)  # one recorded convolution (ONNX Conv), no zero channel
    torch.testing.assert_close(traced(one * 2), torch.conv2d(one * 2, weight[:, :1], None, 1, 1))


def test_from_conv_shares_the_parameters_and_keys():
    conv = nn.Conv2d(1, 6, 3, stride=2, padding=1)
    layer = ChannelsLastConv2d.from_conv(conv.eval())
    assert layer.weight is conv.weight and layer.bias is conv.bias and not layer.training
    assert list(layer.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 1, 9, 11)
    out = layer(x)
    assert _channels_last(out)
    torch.testing.assert_close(out, conv(x))
    torch.testing.assert_close(torch.jit.script(layer)(x), conv(x))
    no_bias = ChannelsLastConv2d.from_conv(nn.Conv2d(1, 2, 1, bias=False))
    assert no_bias.bias is None and no_bias(x).shape == (2, 2, 9, 11)


def test_from_conv_refuses_what_it_does_not_compute():
    with pytest.raises(ValueError, match="groups=2"):
        ChannelsLastConv2d.from_conv(nn.Conv2d(2, 4, 3, groups=2))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        ChannelsLastConv2d.from_conv(nn.Conv2d(1, 4, 3, padding=1, padding_mode="reflect"))
    with pytest.raises(ValueError, match="padding='same'"):
        OneDNNConv3d.from_conv(nn.Conv3d(2, 4, 3, padding="same"))


@pytest.mark.parametrize(
    "shape, taken",
    [
        ((1, 16, 6, 8, 5), True),  # N * C * D * H = 768: aten's native kernel, here oneDNN
        ((1, 64, 12, 24, 24), True),  # 18432
        ((2, 16, 6, 8, 5), False),  # more than one sample: aten takes oneDNN itself
        ((1, 128, 24, 24, 24), False),  # 73728: above the limit
        ((1, 1, 12, 12, 12), False),  # one input channel: the two kernels are alike
    ],
)
def test_small_3d_maps_run_on_onednn_with_the_same_values(shape, taken):
    x = torch.randn(shape)
    weight = torch.randn(8, shape[1] // 2 if taken else shape[1], 3, 3, 3)  # grouped where taken
    groups = 2 if taken else 1
    assert cpu_conv._native_would_run(x, weight) is taken
    expected = torch.nn.functional.conv3d(x, weight, None, [1, 2, 1], [1, 1, 0], [1, 1, 1], groups)
    out = conv3d_onednn(x, weight, None, [1, 2, 1], [1, 1, 0], [1, 1, 1], groups)
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=1e-4)


def test_small_3d_maps_keep_autograd_and_leave_other_dtypes_to_aten():
    x = torch.randn(1, 6, 5, 6, 7, requires_grad=True)
    weight = torch.randn(4, 6, 3, 3, 3, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    grads = torch.autograd.grad(
        conv3d_onednn(x, weight, bias, [1] * 3, [1] * 3, [1] * 3).square().sum(), (x, weight, bias)
    )
    expected = torch.autograd.grad(torch.nn.functional.conv3d(x, weight, bias, 1, 1).square().sum(), (x, weight, bias))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, atol=1e-3, rtol=1e-4)
    assert not cpu_conv._native_would_run(x.double(), weight.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast gives oneDNN bf16 operands through F.conv3d
        assert not cpu_conv._native_would_run(x, weight)
        assert conv3d_onednn(x, weight, bias, [1] * 3, [1] * 3, [1] * 3).dtype == torch.bfloat16
    w, b = weight.detach(), bias.detach()
    traced = torch.jit.trace(lambda a: conv3d_onednn(a, w, b, [1] * 3, [1] * 3, [1] * 3), x.detach())
    assert "mkldnn" not in str(traced.graph)  # a trace (ONNX export) records the plain convolution


def test_fast_cpu_convs_swaps_layers_in_place_keeping_keys_and_values():
    shared = nn.Conv3d(4, 4, 3, padding=1)
    net = nn.Sequential(
        nn.Conv3d(2, 4, 3, padding=1),
        nn.Sequential(shared, nn.ReLU()),
        shared,  # one layer under two parents
        nn.Conv3d(4, 4, 3, padding=1, padding_mode="reflect"),  # left: another padding
    ).eval()
    image_net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Conv2d(3, 3, 3))
    x = torch.randn(1, 2, 6, 6, 6)
    expected, keys = net(x), list(net.state_dict())
    assert fast_cpu_convs(net) is net
    assert [type(m).__name__ for m in net] == ["OneDNNConv3d", "Sequential", "OneDNNConv3d", "Conv3d"]
    assert net[1][0] is net[2] and net[2].weight is shared.weight
    assert list(net.state_dict()) == keys and not net[0].training
    torch.testing.assert_close(net(x), expected, atol=1e-5, rtol=1e-5)
    fast_cpu_convs(image_net)
    assert [type(m).__name__ for m in image_net] == ["ChannelsLastConv2d", "Conv2d"]  # only the one-channel layer
    torch.testing.assert_close(torch.jit.script(net)(x), expected, atol=1e-5, rtol=1e-5)


def test_plain_convolutions_count_the_flops_of_the_layers_as_written():
    from torch.utils.flop_counter import FlopCounterMode

    net = fast_cpu_convs(nn.Sequential(nn.Conv3d(4, 8, 3, padding=1), nn.Conv3d(8, 8, 3, padding=1)))
    image_net = fast_cpu_convs(nn.Sequential(nn.Conv2d(1, 8, 3, padding=1)))
    x, image = torch.randn(1, 4, 6, 6, 6), torch.randn(2, 1, 8, 8)
    expected = 2 * 6**3 * 27 * (4 * 8 + 8 * 8) + 2 * 2 * 8 * 8 * 9 * 8  # 2 x multiply-adds, one input channel
    with torch.no_grad(), cpu_conv.plain_convolutions(), FlopCounterMode(display=False) as counter:
        assert not cpu_conv._native_would_run(x, net[0].weight)
        net(x)
        out = image_net(image)
    assert counter.get_total_flops() == expected
    assert out.is_contiguous()  # aten's NCHW output: the zero channel is not added
    assert cpu_conv._native_would_run(x, net[0].weight)  # outside the context again
