"""Run a network on an input padded to sizes the network can take, and crop the output back."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer, SimpleInferer
from monai.utils import convert_to_dst_type
from torch import nn
from torch.nn import functional as F

__all__ = ["PadInferer"]

_MODES = ("constant", "replicate", "reflect")


class PadInferer(Inferer):
    """Pad every spatial axis at its far end to a multiple of ``divisor`` (and at least ``min_size``), run an inner
    inferer, and crop the output back to the input's size.

    Networks of monai_ext take only sizes they can compute on and raise otherwise (as MONAI's DynUNet does); this
    inferer is how a whole volume of any size reaches a whole-volume network (SCAA, RSANet). The output is cropped
    on the spatial axes only; it must have the padded input's spatial size.

    A network can keep the padding out of what it attends to if it learns the unpadded sizes: with
    ``pass_valid_size`` the inner inferer is called with the keyword ``valid_size``, the input's spatial sizes before
    padding (a list of ints, the same for the whole batch). By default that happens where the inner inferer takes it
    (an attribute ``takes_valid_size = True``, as :class:`~monai_ext.inferers.ContextSliceInferer`), or where the inner
    inferer is a :class:`~monai.inferers.SimpleInferer` and the network's ``forward`` has a ``valid_size`` parameter
    (as :class:`~monai_ext.networks.nets.SCAA`, which then masks the padded depth slices out of MSFA's attention).

    Args:
        divisor: per spatial axis, or one int for every axis.
        min_size: smallest padded size per spatial axis (or one int); default 1.
        inferer: the inferer that runs the network on the padded input; default :class:`monai.inferers.SimpleInferer`.
        mode: ``"constant"`` (zeros, default), ``"replicate"`` or ``"reflect"`` (``torch.nn.functional.pad`` modes).
        pass_valid_size: True: always call the inner inferer with ``valid_size``; False: never; None (default): where
            the inner inferer or the network takes it (above).

    Shapes:
        ``inputs`` ``(B, C, *spatial)``; returns ``(B, O, *spatial)``, a MetaTensor with the input's meta data when
        the input is one.

    Raises:
        ValueError: for non-positive sizes, an unknown mode, or an output whose spatial size is not the padded one.
    """

    def __init__(
        self,
        divisor: int | Sequence[int] = 1,
        min_size: int | Sequence[int] = 1,
        inferer: Inferer | None = None,
        mode: str = "constant",
        pass_valid_size: bool | None = None,
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}.")
        self.divisor = divisor
        self.min_size = min_size
        self.inferer = inferer if inferer is not None else SimpleInferer()
        self.mode = mode
        self.pass_valid_size = pass_valid_size
        for name, value in (("divisor", divisor), ("min_size", min_size)):
            if min([value] if isinstance(value, int) else list(value)) < 1:
                raise ValueError(f"{name} must be positive, got {value}.")

    def padded_size(self, sizes: Sequence[int]) -> list[int]:
        """The padded spatial size for spatial sizes ``sizes``."""
        n = len(sizes)
        div = [self.divisor] * n if isinstance(self.divisor, int) else list(self.divisor)
        low = [self.min_size] * n if isinstance(self.min_size, int) else list(self.min_size)
        if len(div) != n or len(low) != n:
            raise ValueError(f"divisor {self.divisor} and min_size {self.min_size} need one entry per axis of {sizes}.")
        return [max(s, m) + (-max(s, m) % d) for s, d, m in zip(sizes, div, low)]

    def pad(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[int], list[int]]:
        """``inputs`` ``(B, C, *spatial)`` padded at the far end of each axis: ``(padded, sizes, padded sizes)``."""
        sizes = list(inputs.shape[2:])
        target = self.padded_size(sizes)
        padding: list[int] = []
        for size, goal in zip(reversed(sizes), reversed(target)):  # F.pad lists (before, after) from the last axis
            padding += [0, goal - size]
        x = torch.as_tensor(inputs)
        return (F.pad(x, padding, mode=self.mode) if any(padding) else x), sizes, target

    def wants_valid_size(self, network: Callable[..., Any]) -> bool:
        """Whether the inner inferer is called with ``valid_size`` for ``network`` (see ``pass_valid_size``)."""
        if self.pass_valid_size is not None:
            return self.pass_valid_size
        if getattr(self.inferer, "takes_valid_size", False):
            return True
        if type(self.inferer) is not SimpleInferer:
            return False
        net = network.module if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)) else network
        try:
            return "valid_size" in inspect.signature(getattr(net, "forward", net)).parameters
        except (TypeError, ValueError):  # not introspectable (e.g. a TorchScript module)
            return False

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        x, sizes, target = self.pad(inputs)
        if self.wants_valid_size(network):
            kwargs["valid_size"] = sizes
        out = self.inferer(x, network, *args, **kwargs)
        if list(out.shape[2:]) != target:
            raise ValueError(f"the network mapped the padded input {target} to spatial size {list(out.shape[2:])}.")
        for axis, size in enumerate(sizes):
            out = out.narrow(axis + 2, 0, size)
        if isinstance(inputs, MetaTensor):
            return convert_to_dst_type(out, inputs, device=out.device)[0]
        return out
