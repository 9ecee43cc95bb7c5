"""Convolutions of one-channel images with channels-last outputs."""

import pytest
import torch
from torch import nn

from monai_ext.networks.blocks.channels_last import ChannelsLastConv2d, conv2d_channels_last


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
