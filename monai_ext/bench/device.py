"""The device a benchmark suite measures on: the one asked for, or the CPU when CUDA is asked for and absent.

A run asked for CUDA on a machine without it falls back to the CPU (with a message) rather than failing, so the same
command works on CPU-only machines and CI; every record names the device it was measured on, so a fallback run cannot
pass for a GPU one.
"""

from __future__ import annotations

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> str:
    """``device`` as the suites use it (``"cpu"``, ``"cuda"``, ``"cuda:N"``); ``"cpu"`` when CUDA is asked for and
    ``torch.cuda.is_available()`` is False, after printing why.

    Raises:
        ValueError: for another device type, or a CUDA index the machine does not have.
    """
    dev = torch.device(device)
    if dev.type == "cpu":
        return "cpu"
    if dev.type != "cuda":
        raise ValueError(f"the benchmark measures on 'cpu' or 'cuda[:N]', got {str(device)!r}.")
    if not torch.cuda.is_available():
        build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, no GPU visible"
        print(f"CUDA is not available (torch {torch.__version__}, {build}): measuring on the CPU instead of {dev}")
        return "cpu"
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{dev} asked for, but this machine has {torch.cuda.device_count()} CUDA device(s).")
    return str(dev)
