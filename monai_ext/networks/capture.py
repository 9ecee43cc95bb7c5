"""Graph capture: the plain path a tracer or compiler records (:func:`capturing`), and :func:`compile_network`.

Our blocks run hand-scheduled eager code where autograd records nothing (in-place norms, buffer pools, convolutions
in slice chunks). A graph compiler plans memory and fuses passes itself, and an exporter needs standard operators:
while ``torch.jit.trace`` or ``torch.compile`` records a call, :func:`capturing` is True and the blocks take their
plain functional path instead (the same values up to float round-off).
"""

from __future__ import annotations

import os
import shutil
import types
from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["capturing", "compile_network", "compiled_methods"]


def capturing() -> bool:
    """Whether ``torch.jit.trace`` or ``torch.compile`` (dynamo, ``torch.export``) is recording this call; False in
    TorchScript, which compiles the eager code as it is."""
    if torch.jit.is_scripting():
        return False
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def compiled_methods(network: nn.Module) -> tuple[str, ...]:
    """The methods of ``network`` that hold its computation, the ones :func:`compile_network` compiles: the
    network's ``compile_methods`` attribute (e.g. SCAA's ``encode_context`` and ``forward_slices``, which its
    inferer calls instead of ``forward``), else ``("forward",)``."""
    return tuple(getattr(network, "compile_methods", ("forward",)))


def _plain(value):
    """A tensor subclass (MONAI's ``MetaTensor``) as a plain tensor, anything else as is."""
    if isinstance(value, torch.Tensor) and type(value) is not torch.Tensor:
        return value.as_subclass(torch.Tensor)
    return value


def _compiled(fn: Callable, freeze: bool) -> Callable:
    """The class function ``fn`` (the module its first argument) compiled, called with plain tensors (compiled
    kernels take no tensor subclass such as MONAI's ``MetaTensor``; the inferers put the metadata back), under
    inductor's freezing when ``freeze``."""
    compiled = torch.compile(fn, dynamic=False)

    def call(module, *args, **kwargs):
        args, kwargs = [_plain(a) for a in args], {k: _plain(v) for k, v in kwargs.items()}
        if not freeze:
            return compiled(module, *args, **kwargs)
        from torch._inductor import config

        with config.patch(freezing=True):
            return compiled(module, *args, **kwargs)

    return call


def _check_compiler(network: nn.Module) -> None:
    """Inductor builds C++ kernels for the CPU: say so before the first call fails deep inside it."""
    on_cpu = all(p.device.type == "cpu" for p in network.parameters())
    names = [os.environ.get("CXX", ""), "g++", "clang++", "c++"]
    if on_cpu and not any(n and shutil.which(n) for n in names):
        raise RuntimeError(
            "compile_network: torch.compile needs a C++ compiler on the CPU and none was found (g++, clang++, c++ or "
            "$CXX); install one (e.g. `apt install g++`) or run the network uncompiled."
        )


def compile_network(network: nn.Module, freeze: bool = False, methods: Sequence[str] | None = None) -> nn.Module:
    """Compile ``network``'s computation with ``torch.compile`` (inductor, static shapes), in place, and return it.

    Each method of :func:`compiled_methods` (or ``methods``) is replaced on the instance by its compiled form, so
    the module, its parameters, its state-dict keys and the inferers that call it stay as they are. Compilation
    happens at the first call of each input shape (about a minute for a U-Net on 2 CPU cores) and again for each new
    shape; it pays where many windows or volumes of one size follow (a whole volume, a dataset of one protocol, a
    server). On a CPU, inductor fuses each norm, activation and residual sum into few vectorised passes, which the
    eager bf16 kernels here do not manage: thickened 2D and SCAA then run bf16 several times faster than fp32 eager
    (docs/benchmarks.md). A compiled graph allocates its intermediate maps afresh at every call: on Linux, run it
    with :data:`monai_ext.bundles.ALLOCATOR_ENV` in the environment, or glibc maps and faults in every block above
    32 MB anew (SSH-UNet's bf16 volume 16.3 s without, 10.6 s with). A network compiled twice is compiled once; a
    deep copy of a compiled network runs its own weights (its methods compile again for it).

    Args:
        network: the network, its weights on the device it will run on.
        freeze: fold the weights into the graph as constants (inductor's freezing; inference without autograd only,
            faster): weights changed after the first call are not seen, so load them before.
        methods: the method names to compile instead of :func:`compiled_methods`.

    Raises:
        RuntimeError: on the CPU, when no C++ compiler is installed (inductor builds its kernels with one).
        AttributeError: for a name in ``methods`` that ``network`` does not have.
    """
    names = tuple(methods) if methods is not None else compiled_methods(network)
    missing = [n for n in names if not callable(getattr(type(network), n, None))]
    if missing:
        raise AttributeError(f"compile_network: {type(network).__name__} has no method {missing}.")
    _check_compiler(network)
    for name in names:
        if name not in network.__dict__:  # an instance attribute of that name is its compiled form already
            # bound to the instance: a deep copy is bound to the copy (and compiles its own graph)
            setattr(network, name, types.MethodType(_compiled(getattr(type(network), name), freeze), network))
    return network
