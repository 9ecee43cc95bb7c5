"""CPU convolutions that aten's dispatch sends down a slow path, run on oneDNN's fast one (same values).

Two cases, measured here (AMD EPYC, AVX-512, 2 threads):

- **2D, one input channel.** A ``(N, 1, H, W)`` image and a ``(C_out, 1, kh, kw)`` weight are both channels-last and
  contiguous at once, so aten cannot tell which layout is wanted: oneDNN then convolves in NCHW, slowly for a single
  input channel, and hands back an NCHW map that the next channels-last layer has to transpose. 1 -> 64 channels over
  ``(2, 1, 192, 192)``: 6.6 ms, and 14.4 ms with the transposing copy. With the input and weight given a second,
  all-zero channel the layout is unambiguous: 0.5 ms, channels-last. The zero channel adds exact zeros (zero weights
  times zero inputs). :func:`conv2d_channels_last`, :class:`ChannelsLastConv2d`.
- **3D, one sample of a small map.** aten runs its native kernel instead of oneDNN's when ``N * C * D * H <= 20480``
  (a heuristic for tiny inputs), e.g. ``(1, 128, 12, 12, 12)`` or ``(1, 64, 12, 24, 24)``: the deep levels of a 3D
  U-Net on one patch, or a context encoder at low resolution. There oneDNN is 2-7x faster, with 1 thread and with 2:
  128 -> 256 channels over ``(1, 128, 12, 12, 12)`` 18.1 against 6.0 ms, 64 -> 64 over ``(1, 64, 12, 24, 24)`` 21.8
  against 3.1 ms (2 threads). :func:`conv3d_onednn` calls aten's oneDNN convolution (``aten::mkldnn_convolution``)
  for a float32 map in that range; everything else (other devices and dtypes, autocast, whose bf16 operands oneDNN
  gets anyway, one input channel, where the two are alike) goes to ``F.conv3d``. :class:`OneDNNConv3d`.

:func:`fast_cpu_convs` swaps both layers into a network in place; parameters are shared, so state-dict keys and
values do not change. Traces and compiled graphs record the plain convolution (:func:`capturing`), TorchScript runs
it too, and so does everything within :func:`plain_convolutions` (the benchmark's FLOP counts).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from monai_ext.networks.capture import capturing

__all__ = [
    "ChannelsLastConv2d",
    "OneDNNConv3d",
    "conv2d_channels_last",
    "conv3d_onednn",
    "fast_cpu_convs",
    "plain_convolutions",
]

NATIVE_CONV3D_LIMIT = 20480
"""aten runs a 3D convolution on its native kernel, not oneDNN's, when ``N * C * D * H`` of the input is at most
this (torch 2.x, ``ConvParams::use_mkldnn``)."""


class _Plain(threading.local):
    depth = 0


_PLAIN = _Plain()


@contextlib.contextmanager
def plain_convolutions() -> Iterator[None]:
    """Within this context (this thread), :func:`conv2d_channels_last` and :func:`conv3d_onednn` call ``F.conv2d`` and
    ``F.conv3d`` as written, e.g. for a FLOP count (``FlopCounterMode`` counts aten's convolutions, not oneDNN's
    direct call, and would count the zero channel's multiply-adds)."""
    _PLAIN.depth += 1
    try:
        yield
    finally:
        _PLAIN.depth -= 1


@torch.jit.unused
def _plain_wanted() -> bool:
    return capturing() or _PLAIN.depth > 0


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
    if x.shape[1] != 1 or weight.shape[1] != 1:
        return F.conv2d(x, weight, bias, stride, padding, dilation)
    if not torch.jit.is_scripting():  # TorchScript compiles this branch out
        if _plain_wanted():
            return F.conv2d(x, weight, bias, stride, padding, dilation)
    x = torch.cat([x, torch.zeros_like(x)], 1).contiguous(memory_format=torch.channels_last)
    weight = torch.cat([weight, torch.zeros_like(weight)], 1).contiguous(memory_format=torch.channels_last)
    return F.conv2d(x, weight, bias, stride, padding, dilation)


def conv3d_onednn(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int = 1,
) -> torch.Tensor:
    """``F.conv3d(x, weight, bias, stride, padding, dilation, groups)``, on oneDNN where aten would take its native
    kernel for a small float32 map of one sample (see the module docstring). Autograd records it as usual.

    Shapes:
        ``x`` ``(N, C_in, D, H, W)``, ``weight`` ``(C_out, C_in / groups, kd, kh, kw)`` -> ``(N, C_out, D', H', W')``.
    """
    if not torch.jit.is_scripting():  # TorchScript compiles this branch out
        if _native_would_run(x, weight):
            return torch.ops.aten.mkldnn_convolution(x, weight, bias, padding, stride, dilation, groups)
    return F.conv3d(x, weight, bias, stride, padding, dilation, groups)


def _native_would_run(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether aten would convolve ``x`` on its native kernel where oneDNN takes the same float32 operands."""
    if _plain_wanted() or x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    if torch.is_autocast_enabled("cpu") or x.dim() != 5 or x.shape[0] != 1 or x.shape[1] < 2:
        return False
    return x.shape[1] * x.shape[2] * x.shape[3] <= NATIVE_CONV3D_LIMIT


def _unfit(conv: nn.Module, groups_ok: bool) -> str | None:
    """Why ``conv`` cannot become a fast CPU layer (groups only where ``groups_ok``, numeric zero padding), or None."""
    if (conv.groups != 1 and not groups_ok) or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        needs = "numeric zero padding" if groups_ok else "numeric zero padding and groups=1"
        return (
            f"the fast CPU layer for {type(conv).__name__} needs {needs}, got groups={conv.groups}, "
            f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}."
        )
    return None


def _take_over(cls: type, conv: nn.Module, groups_ok: bool) -> nn.Module:
    """``conv`` as a ``cls`` layer with the same parameters (not copies) and mode; raises ValueError if unfit."""
    reason = _unfit(conv, groups_ok)
    if reason is not None:
        raise ValueError(reason)
    layer = cls(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
        bias=conv.bias is not None, device="meta",
    )  # fmt: skip
    layer.weight, layer.bias = conv.weight, conv.bias
    return layer.train(conv.training)


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
        return _take_over(cls, conv, groups_ok=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Conv2d's argument name)
        stride, padding, dilation = [int(s) for s in self.stride], [int(p) for p in self.padding], list(self.dilation)
        return conv2d_channels_last(input, self.weight, self.bias, stride, padding, dilation)


class OneDNNConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` (zero padding) that runs on oneDNN also for a small map of one sample (:func:`conv3d_onednn`).
    :meth:`from_conv` takes over an existing layer's parameters (shared, not copied).

    Shapes:
        as ``nn.Conv3d``: ``(N, C_in, D, H, W)`` -> ``(N, C_out, D', H', W')``.
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv3d) -> OneDNNConv3d:
        """The layer ``conv`` as a :class:`OneDNNConv3d` with the same parameters (not copies).

        Raises:
            ValueError: for a padding mode other than zeros.
        """
        return _take_over(cls, conv, groups_ok=True)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (nn.Conv3d's argument name)
        stride, padding, dilation = [int(s) for s in self.stride], [int(p) for p in self.padding], list(self.dilation)
        return conv3d_onednn(input, self.weight, self.bias, stride, padding, dilation, self.groups)


def fast_cpu_convs(network: nn.Module) -> nn.Module:
    """Swap, in place, every plain ``nn.Conv3d`` (zero padding) of ``network`` for an :class:`OneDNNConv3d` and every
    ``nn.Conv2d`` of one input channel (no groups, zero padding) for a :class:`ChannelsLastConv2d`. Parameters are
    shared, so state-dict keys and values do not change; a layer held by several parents becomes one new layer under
    all of them. Subclasses of the two layers are left alone. Returns ``network``."""
    swapped: dict[int, nn.Module] = {}
    for parent in list(network.modules()):
        for name, child in list(parent.named_children()):
            if id(child) not in swapped:
                if type(child) is nn.Conv3d and _unfit(child, groups_ok=True) is None:
                    swapped[id(child)] = OneDNNConv3d.from_conv(child)
                elif type(child) is nn.Conv2d and child.in_channels == 1 and _unfit(child, groups_ok=False) is None:
                    swapped[id(child)] = ChannelsLastConv2d.from_conv(child)
            if id(child) in swapped:
                setattr(parent, name, swapped[id(child)])
    return network
