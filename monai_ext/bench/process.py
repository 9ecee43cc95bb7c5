"""Measurements in a fresh Python process, and the peak memory of the current one (resident memory on the CPU,
the allocator's maximum on CUDA).

A fresh process per measurement keeps one network's allocations (and the allocator's cache) out of the next
one's peak, and lets a row run with or without the allocator settings of :data:`monai_ext.bundles.ALLOCATOR_ENV`.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

__all__ = ["peak_bytes", "reset_peak", "run_fresh"]

_MARK = "MONAI_EXT_RESULT "


def reset_peak(device: str = "cpu") -> bool:
    """Restart the peak that :func:`peak_bytes` reads from what is held now; whether that was possible.

    On the CPU, the kernel's high-water mark of this process's resident memory (Linux only); on a CUDA device,
    PyTorch's peak-memory counters."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_bytes(device: str = "cpu") -> tuple[int, str]:
    """Peak memory of this process, and where it was read. On a CUDA device, the allocator's maximum
    (``torch.cuda.max_memory_allocated``). On the CPU, resident memory: ``VmHWM`` from ``/proc/self/status``, else
    ``ru_maxrss``. The latter is no good in a child on Linux: it starts at the parent's resident size at the
    fork (the kernel carries it across ``exec``), so it hides any growth below that."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024, "VmHWM"
    except OSError:
        pass
    import resource  # POSIX only

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"  # kilobytes on Linux


def run_fresh(target: str, kwargs: dict, env: dict[str, str] | None = None, timeout: float | None = None):
    """Call ``module:function(**kwargs)`` in a new Python process and return its JSON-able result.

    ``env`` entries are added to this process's environment. The child's printed progress is echoed; on failure
    the error names the target and quotes the end of the child's output (stderr included).
    """
    root = str(Path(__file__).resolve().parents[2])
    child_env = dict(os.environ, **(env or {}))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "monai_ext.bench.process", target, json.dumps(kwargs)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env, timeout=timeout)
    sys.stderr.write(proc.stderr[-4000:] if proc.returncode else "")
    lines = proc.stdout.splitlines()
    print("\n".join(line for line in lines if not line.startswith(_MARK)), flush=True)  # the child's progress
    results = [line[len(_MARK) :] for line in lines if line.startswith(_MARK)]
    if proc.returncode != 0 or not results:
        raise RuntimeError(
            f"{target}({kwargs}) failed in a fresh process (exit code {proc.returncode}):\n"
            f"{proc.stdout[-2000:]}{proc.stderr[-3000:]}"
        )
    return json.loads(results[-1])


def _main(argv: list[str]) -> None:
    module, function = argv[0].split(":")
    result = getattr(importlib.import_module(module), function)(**json.loads(argv[1]))
    print(_MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
