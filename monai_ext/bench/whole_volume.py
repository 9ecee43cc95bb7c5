"""Peak memory and time of whole-volume SCAA (one training step on 16 slices, and inference) beside MONAI's
DynUNet 3D trained and run on the same volume.

SCAA's claim (Tang et al., WACV 2021) is that training on a whole volume fits where 3D U-Nets run out of memory:
its 3D encoder is small and runs at half resolution, and only 16 axial slices go through the 2D path per step.
Each contender runs in a fresh process (peak memory: the kernel's ``VmHWM`` on the CPU, or
``torch.cuda.max_memory_allocated`` on a GPU); a contender that runs out of memory is reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from monai.networks.nets import DynUNet

from monai_ext.bench.process import peak_bytes, reset_peak, run_fresh
from monai_ext.bench.report import save_json, suite_meta
from monai_ext.engines import RandomSlicesPrepareBatch
from monai_ext.losses import SCAALoss
from monai_ext.networks.nets import SCAA

__all__ = ["CONTENDERS", "build_network", "infer_scaa", "measure_step", "run_whole_volume", "train_loss_scaa"]

CONTENDERS = ("SCAA train", "SCAA infer", "DynUNet 3D train", "DynUNet 3D infer")
_MIB = 2**20
_QUICK = {"filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4}


def build_network(name: str, out_channels: int, quick: bool = False) -> torch.nn.Module:
    """``"SCAA"`` (SCAA*, paper sizes; tiny with ``quick``) or ``"DynUNet 3D"`` (filters 32..320, as
    :mod:`monai_ext.bench.efficiency`; 4..32 with ``quick``), one input channel, slices along the first spatial
    axis (tensor dim 2, the ``1 x 1 x D x H x W`` layout)."""
    if name == "SCAA":
        return SCAA(1, out_channels, slice_dim=2, **(_QUICK if quick else {}))
    if name == "DynUNet 3D":
        filters = [4, 8, 16, 32, 32] if quick else [32, 64, 128, 256, 320]
        return DynUNet(3, 1, out_channels, [3] * 5, [1, 2, 2, 2, 2], [2] * 4, filters=filters)
    raise ValueError(f"name must be 'SCAA' or 'DynUNet 3D', got {name!r}.")


def infer_scaa(net: torch.nn.Module, volume: torch.Tensor, roi=None) -> torch.Tensor:
    """Whole-volume inference for the benchmark registry (``kind="custom"``): ``(B, C, H, W, D)`` -> logits
    ``(B, K, H, W, D)``; SCAA pads itself, so no window (``roi`` is ignored)."""
    return net(volume)


def train_loss_scaa(
    net: torch.nn.Module, image: torch.Tensor, label: torch.Tensor, loss_fn=None, num_slices: int = 16
) -> torch.Tensor:
    """One SCAA training loss for the benchmark registry: ``num_slices`` random slices of each ``(B, C, H, W, D)``
    volume, :class:`~monai_ext.losses.SCAALoss` (the method's own loss; ``loss_fn`` is not used)."""
    prepare = RandomSlicesPrepareBatch(num_slices, slice_dim=getattr(net, "slice_dim", 4))
    image, target, _, kwargs = prepare({"image": image, "label": label})
    return SCAALoss()(net(image, **kwargs), target)


def measure_step(
    contender: str,
    shape: Sequence[int],
    num_slices: int = 16,
    out_channels: int = 14,
    device: str = "cpu",
    quick: bool = False,
    threads: int | None = None,
    memory_limit_gib: float | None = None,
) -> dict:
    """Time and peak memory of one training step (forward, loss, backward, Adam step) or one whole-volume
    inference of a :data:`CONTENDERS` entry, in this process, after one warm-up on the same input.

    SCAA trains with :class:`~monai_ext.engines.RandomSlicesPrepareBatch` (``num_slices`` slices) and
    :class:`~monai_ext.losses.SCAALoss`; DynUNet with MONAI's ``DiceCELoss`` on the whole volume.
    ``memory_limit_gib`` caps this process's address space (CPU only) so that a network that does not fit fails
    with an allocation error instead of exhausting the machine: run it in a fresh process.
    Returns ``{"time_s", "peak_mib", "growth_mib", "source"}`` (peak: resident or allocated total; growth: over
    what was held before the measured step), or ``{"error": "out of memory: ..."}``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if memory_limit_gib and device == "cpu":
        import resource  # POSIX only

        limit = int(memory_limit_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    name, mode = contender.rsplit(" ", 1)
    try:
        return _measure(name, mode, shape, num_slices, out_channels, device, quick)
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if "memory" not in str(e).lower() and not isinstance(e, (torch.OutOfMemoryError, MemoryError)):
            raise
        return {"error": f"out of memory: {str(e).splitlines()[0][:200]}"}


def _measure(
    name: str, mode: str, shape: Sequence[int], num_slices: int, out_channels: int, device: str, quick: bool
) -> dict:
    from monai.losses import DiceCELoss

    torch.manual_seed(0)
    net = build_network(name, out_channels, quick).to(device)
    x = torch.rand(*shape, device=device)
    y = torch.randint(0, out_channels, (shape[0], 1, *shape[2:]), device=device)
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    cuda = device.startswith("cuda")

    def step() -> None:
        if mode == "infer":
            net.eval()
            with torch.inference_mode():
                net(x)
        else:
            net.train()
            optimizer.zero_grad(set_to_none=True)
            loss = train_loss_scaa(net, x, y, num_slices=num_slices) if name == "SCAA" else loss_fn(net(x), y)
            loss.backward()
            optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    step()  # warm-up (also allocates Adam's state)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before, source = torch.cuda.memory_allocated(), "cuda max_memory_allocated"
    else:
        reset_peak()
        before, source = peak_bytes()
    start = time.perf_counter()
    step()
    elapsed = time.perf_counter() - start
    after = torch.cuda.max_memory_allocated() if cuda else peak_bytes()[0]
    # peak: everything the process (or the GPU allocator) held, model and optimizer state included
    return {"time_s": elapsed, "peak_mib": after / _MIB, "growth_mib": (after - before) / _MIB, "source": source}


def _measure_fresh(spec: dict) -> dict:
    """:func:`measure_step` in a new Python process; a child that dies (e.g. killed for memory) is reported."""
    try:
        return run_fresh("monai_ext.bench.whole_volume:measure_step", spec)
    except RuntimeError as e:
        return {"error": f"failed: {str(e).strip().splitlines()[-1][:200]}"}


def run_whole_volume(
    device: str = "cpu",
    quick: bool = False,
    out_channels: int = 14,
    memory_limit_gib: float | None = 16.0,
    output_dir: str | None = None,
    fresh_process: bool = True,
) -> list[dict]:
    """Measure :data:`CONTENDERS` on a ``1 x 1 x 128 x 256 x 256`` volume, SCAA training on 16 slices (with
    ``quick``: ``1 x 1 x 32 x 64 x 64``, 4 slices, tiny networks), each in a fresh process.

    Prints a Markdown table with the peak memory and time of each, and the ratios DynUNet 3D / SCAA for training
    and for inference; writes ``whole_volume.json`` to ``output_dir`` when given. On the CPU each child's address
    space is capped at ``memory_limit_gib`` (``None``: no cap); a contender over it is reported as out of memory.
    ``fresh_process=False`` measures in this process (quick smoke runs; the memory cap and clean peaks need fresh
    processes).
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: measuring on the CPU")
        device = "cpu"
    shape, slices = ((1, 1, 32, 64, 64), 4) if quick else ((1, 1, 128, 256, 256), 16)
    threads = torch.get_num_threads()
    rows = []
    for contender in CONTENDERS:
        print(f"measuring {contender} on {list(shape)} ({device}) ...", flush=True)
        spec = {"contender": contender, "shape": list(shape), "num_slices": slices, "out_channels": out_channels}
        spec.update({"device": device, "quick": quick, "threads": threads, "memory_limit_gib": memory_limit_gib})
        if not fresh_process:
            spec["memory_limit_gib"] = None
        result = _measure_fresh(spec) if fresh_process else measure_step(**spec)
        rows.append({"contender": contender, "shape": list(shape), **result})
    by = {r["contender"]: r for r in rows}
    ratios = {}
    for mode in ("train", "infer"):
        a, b = by[f"DynUNet 3D {mode}"], by[f"SCAA {mode}"]
        ratios[mode] = {
            key: (a[key] / b[key] if key in a and key in b and b[key] else None) for key in ("peak_mib", "time_s")
        }
    print("\n| contender | input | peak memory (MiB) | time (s) |\n|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else r["error"]
        t = f"{r['time_s']:.2f}" if "time_s" in r else "-"
        print(f"| {r['contender']} | {'x'.join(map(str, r['shape']))} | {mem} | {t} |")
    for mode, rr in ratios.items():
        fmt = {k: "-" if v is None else f"{v:.2f}x" for k, v in rr.items()}
        print(f"DynUNet 3D / SCAA ({mode}): memory {fmt['peak_mib']}, time {fmt['time_s']}")
    if output_dir is not None:
        meta = suite_meta(threads=threads, device=device, memory_limit_gib=memory_limit_gib)
        save_json(output_dir, "whole_volume", {"meta": meta, "rows": rows, "ratios": ratios})
    return rows
