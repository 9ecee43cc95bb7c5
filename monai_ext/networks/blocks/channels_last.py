"""2D convolutions of one-channel images that give channels-last maps, as the layers after them run.

A ``(N, 1, H, W)`` image and a ``(C_out, 1, kh, kw)`` weight are both channels-last and contiguous at once, so aten
cannot tell which layout is wanted: oneDNN then convolves in NCHW, slowly for a single input channel, and hands back
an NCHW map that the next channels-last layer has to transpose. Measured here (2 threads), 1 -> 64 channels over
``(2, 1, 192, 192)``: 6.6 ms, and 14.4 ms with the transposing copy; with the input and weight given a second,
all-zero channel, the layout is unambiguous and the same convolution takes 0.5 ms, channels-last. The zero channel
adds exact zeros (zero weights times zero inputs), so the values do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.networks.capture import capturing

__all__ = ["ChannelsLastConv2d", "conv2d_channels_last"]


def conv2d_channels_last(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, dilation)`` (no groups) with a channels-last output also for
    one input channel (see the module docstring); other inputs, and traces or compiled graphs (which record the plain
    convolution), go to ``F.conv2d`` as they are.

    Shapes:
        ``x`` ``(N, C_in, H, W)``, ``weight`` ``(C_out, C_in, kh, kw)`` -> ``(N, C_out, H', W')``.
    """
    if capturing() or x.shape[1] != 1 or weight.shape[1] != 1:
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    x = torch.cat([x, torch.zeros_like(x)], 1).contiguous(memory_format=torch.channels_last)
    weight = torch.cat([weight, torch.zeros_like(weight)], 1).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, weight, bias, stride, padding, dilation)


class ChannelsLastConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` (no groups, zero padding) whose output is channels-last also for a one-channel input
    (:func:`conv2d_channels_last`). :meth:`from_conv` takes over an existing layer's parameters (shared, not copied),
    so a network's state-dict keys and values do not change.

    Shapes:
        as ``nn.Conv2d``: ``(N, C_in, H, W)`` -> ``(N, C_out, H', W')``.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> ChannelsLastConv2d:
        """The layer ``conv`` as a :class:`ChannelsLastConv2d` with the same parameters (not copies).

        Raises:
            ValueError: for grouped convolutions or a padding mode other than zeros.
        """
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "ChannelsLastConv2d takes plain convolutions (groups=1, numeric zero padding), got groups="
                f"{conv.groups}, padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
            )
        layer = cls(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
            bias=conv.bias is not None, device="meta",
        )  # fmt: skip
        layer.weight, layer.bias = conv.weight, conv.bias
        layer.train(conv.training)
        return layer

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Conv2d's argument name)
        stride = [int(self.stride[0]), int(self.stride[1])]
        dilation = [int(self.dilation[0]), int(self.dilation[1])]
        padding = [int(self.padding[0]), int(self.padding[1])]
        return conv2d_channels_last(input, self.weight, self.bias, stride, padding, dilation)
