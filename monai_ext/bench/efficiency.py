"""Efficiency of every benchmark row on one machine in one run: size, FLOPs, latency, memory, share of the peak.

The rows are the registry's networks (:mod:`monai_ext.bench.rows`). Each row is measured in a fresh process
(:func:`measure_row`), once with glibc's default allocator and once with :data:`monai_ext.bundles.ALLOCATOR_ENV`;
the machine's fp32 matmul rate (:func:`matmul_peak`) and the rate of a dense 3^3 Conv3d (:func:`conv_peak`) are
measured the same way. Ratios to DynUNet 3D (:data:`~monai_ext.bench.rows.REFERENCE`) are taken within one allocator
setting of one run. With ``amp``, forward and whole-volume passes (and the conv rate) run under autocast (bf16 on
the CPU, fp16 on CUDA: :func:`monai_ext.inferers.autocast`); training steps stay fp32. With ``compile``, they run
the network compiled by :func:`monai_ext.networks.compile_network` (weights frozen); training steps stay eager.
"""

from __future__ import annotations

import copy
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from monai_ext.bench import protocol, rows
from monai_ext.bench.device import resolve_device
from monai_ext.bench.flops import counting_flops
from monai_ext.bench.process import peak_bytes, reset_peak, run_fresh
from monai_ext.bench.rows import REFERENCE
from monai_ext.bench.stats import ratio, spread
from monai_ext.bundles import ALLOCATOR_ENV
from monai_ext.inferers.autocast import AMP_DTYPES, autocast
from monai_ext.networks import compile_network, get_network_entry

__all__ = [
    "ALLOCATORS",
    "conv_peak",
    "machine_info",
    "matmul_peak",
    "measure",
    "measure_row",
    "precision",
    "run_efficiency",
]

ALLOCATORS = {"default": {}, "tuned": ALLOCATOR_ENV}
_GIB = 2**30


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], object], device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def measure(
    net: torch.nn.Module,
    shape: tuple[int, ...],
    device: str,
    repeats: int,
    forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor] | None = None,
    timed: torch.nn.Module | None = None,
) -> dict:
    """Count parameters and FLOPs (2 x multiply-adds) and time ``repeats`` forward passes after one warm-up.

    ``forward(net, x)`` (default ``net(x)``) is how the network consumes the ``shape`` input, e.g. slice by slice.
    ``timed``: the module timed instead of ``net`` (e.g. its compiled copy; the FLOPs are counted on ``net``); its
    warm-up pass (compilation included) is timed too, as ``first_s``.
    """
    forward = forward or (lambda n, t: n(t))
    gflop = _flops(net, forward, shape, device)  # also the warm-up pass
    x = torch.randn(*shape, device=device)
    row = {"params": sum(p.numel() for p in net.parameters()), "gflop": gflop}
    with torch.inference_mode():
        if timed is not None:
            row["first_s"] = _timed(lambda: forward(timed.eval(), x), device)
        run = net if timed is None else timed
        row["latency_s"] = spread([_timed(lambda: forward(run, x), device) for _ in range(repeats)])
    return row


def _flops(net: torch.nn.Module, forward: Callable, shape: tuple[int, ...], device: str) -> float:
    """GFLOP (2 x multiply-adds) of one forward pass of ``net`` (moved to ``device``, eval mode) on ``shape``."""
    with torch.inference_mode(), counting_flops() as counter:
        forward(net.to(device).eval(), torch.randn(*shape, device=device))
    return counter.get_total_flops() / 1e9


def _sizes(quick: bool) -> dict:
    if quick:
        return {"patch": (64, 64, 32), "volume": (96, 96, 32), "repeats": 2}
    return {"patch": (96, 96, 96), "volume": (192, 192, 96), "repeats": 5}


def precision(device: str, amp: bool) -> str:
    """``"fp32"``, or the autocast dtype's name on ``device`` with ``amp`` (``"bfloat16"`` on the CPU)."""
    return str(AMP_DTYPES[torch.device(device).type]).removeprefix("torch.") if amp else "fp32"


def measure_row(
    name: str,
    device: str = "cpu",
    quick: bool = False,
    threads: int | None = None,
    out_channels: int = 14,
    amp: bool = False,
    compile: bool = False,
) -> dict:
    """Every efficiency figure of registry entry ``name``, in this process.

    - ``params``; ``gflop``: one pass of the row's own inferer (:func:`monai_ext.bench.rows.inferer`) over a
      ``1 x 1 x P^3`` patch (96^3, 64 x 64 x 32 with ``quick``): one window for a 3D network, every slice for a 2D
      one, the stride-1 slice groups of thickened 2D, the whole patch for SCAA; ``gflop_own_patch``: the same on
      the method's paper patch (the entry's ``patch``; not with ``quick``);
    - ``latency_s``: median, min and max of 5 such passes (2 with ``quick``) after a warm-up;
      ``gflops_achieved``: ``gflop / latency median``;
    - ``volume_s``: whole-volume inference of ``1 x 1 x 192 x 192 x 96`` (96 x 96 x 32 with ``quick``) with the
      same inferer, once (the network is warm from the forward timings);
    - ``train_step_s``: one training step on the patch through MONAI's SupervisedTrainer
      (:func:`monai_ext.bench.protocol.make_trainer`, Adam), after a warm-up step;
    - ``inference_peak_gib``: the process's peak memory during the whole-volume pass (resident memory, VmHWM,
      reset before it through ``/proc/self/clear_refs``, on the CPU; max allocated on CUDA, its counter reset), the
      network's weights and the process's baseline included; None where the peak cannot be reset;
    - ``peak_memory_gib``: the process's peak over the whole measurement, training step included.

    ``amp``: the forward and whole-volume passes run under :func:`monai_ext.inferers.autocast` (bf16 on the CPU,
    fp16 on CUDA); the training step stays fp32. ``compile``: the forward and whole-volume passes run a copy of the
    network compiled by :func:`monai_ext.networks.compile_network` (``freeze=True``); its first pass on the patch and
    on the volume (compilation included) are reported as ``first_s`` and ``volume_first_s``, and the timed passes
    follow them. The FLOPs are counted, and the training step is taken, on the eager network.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    entry = get_network_entry(name)
    size = _sizes(quick)
    torch.manual_seed(0)
    net = rows.build(entry, 1, out_channels, size["patch"]).to(device)
    inferer = rows.inferer(entry, size["patch"])
    run = compile_network(copy.deepcopy(net).eval(), freeze=True) if compile else net
    with autocast(device, amp):
        timed = run if compile else None
        row = measure(net, (1, 1, *size["patch"]), device, size["repeats"], lambda n, t: inferer(t, n), timed)
    row["gflops_achieved"] = row["gflop"] / row["latency_s"]["median"]
    row["gflop_own_patch"] = None
    if not quick and entry.patch is not None:
        own, own_inferer = rows.build(entry, 1, out_channels, entry.patch), rows.inferer(entry, entry.patch)
        row["gflop_own_patch"] = _flops(own, lambda n, t: own_inferer(t, n), (1, 1, *entry.patch), device)
        del own

    volume = torch.randn(1, 1, *size["volume"], device=device)
    if compile:  # compiled for the shapes of the volume's windows or slices before its timed pass
        with torch.inference_mode(), autocast(device, amp):
            row["volume_first_s"] = _timed(lambda: inferer(volume, run), device)
    before = peak_bytes(device)[0]  # the FLOP counts and forward timings; the peak restarts for the whole volume
    reset = reset_peak(device)
    with torch.inference_mode(), autocast(device, amp):
        # the network is warm from the forward timings; one run of a whole volume is long enough to time
        row["volume_s"] = _timed(lambda: inferer(volume, run), device)
    row["inference_peak_gib"] = peak_bytes(device)[0] / _GIB if reset else None

    image = torch.randn(1, 1, *size["patch"], device=device)
    label = torch.randint(0, out_channels, (1, 1, *size["patch"]), device=device).float()
    batch = {"image": image, "label": label}
    optimizer = torch.optim.Adam(net.parameters(), 1e-4)
    trainer = protocol.make_trainer(entry, net, [batch, batch], optimizer, device)
    row["train_step_s"] = protocol.step_times(trainer, device)[-1]  # the first step warms up optimizer and allocator
    peak, row["peak_memory_source"] = peak_bytes(device)
    row["peak_memory_gib"] = max(peak, before) / _GIB
    return row


def matmul_peak(device: str = "cpu", quick: bool = False, threads: int | None = None) -> dict:
    """The machine's fp32 matmul rate: best of 5 ``n x n`` products (n = 2048, 1024 with ``quick``), in GFLOP/s."""
    if threads is not None:
        torch.set_num_threads(threads)
    n = 1024 if quick else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    best = min(_timed(lambda: a @ b, device) for _ in range(5))
    return {"n": n, "gflops": 2 * n**3 / best / 1e9}


def conv_peak(device: str = "cpu", quick: bool = False, threads: int | None = None, amp: bool = False) -> dict:
    """The machine's rate on a dense 3^3 Conv3d, 32 -> 32 channels over ``1 x 32 x 64^3`` (32^3 with ``quick``),
    padding 1, no bias: best of 5 passes in ``inference_mode`` after a warm-up, in GFLOP/s (2 x multiply-adds:
    ``2 * 32 * 32 * 27`` per output voxel). The layer that a 3D U-Net spends most of its time in, at the width of its
    first levels; under ``amp``, in the autocast dtype (what the rows' forward passes are then compared against).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    side, channels = (32 if quick else 64), 32
    conv = torch.nn.Conv3d(channels, channels, 3, padding=1, bias=False, device=device).eval()
    x = torch.randn(1, channels, side, side, side, device=device)
    with torch.inference_mode(), autocast(device, amp):
        conv(x)
        best = min(_timed(lambda: conv(x), device) for _ in range(5))
    gflop = 2 * channels * channels * 27 * side**3 / 1e9
    return {"shape": [1, channels, side, side, side], "gflop": gflop, "gflops": gflop / best}


def machine_info(device: str, threads: int) -> dict:
    """Versions and machine facts recorded with every measurement."""
    import monai

    import monai_ext

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name() if device.startswith("cuda") else cpu,
        "threads": threads,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "monai_ext": monai_ext.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def run_efficiency(
    device: str = "cpu",
    quick: bool = False,
    output_dir: str | None = None,
    networks: Sequence[str] | None = None,
    allocators: Sequence[str] = ("default", "tuned"),
    threads: int | None = None,
    fresh_process: bool = True,
    amp: bool = False,
    compile: bool = False,
) -> list[dict]:
    """Measure every main entry of the registry (or ``networks``, registry names) under each allocator setting,
    each in a fresh process.

    Returns one record per (network, allocator) with :func:`measure_row`'s figures, the allocator, the precision
    (``amp``, ``precision``, ``compiled``), the machine (:func:`machine_info`), ratios to DynUNet 3D in the same setting
    (``*_vs_reference``), the share of the measured fp32 matmul rate (``peak_fraction``) and of the dense Conv3d
    rate measured in the same precision (``conv_fraction``). Prints a Markdown table per setting; with
    ``output_dir``, writes ``efficiency.json`` and ``efficiency.md`` there. ``fresh_process=False`` measures in this
    process (for tests: the allocator settings then only label the records, they cannot take effect).
    ``device="cuda"`` on a machine without CUDA measures on the CPU (:func:`monai_ext.bench.device.resolve_device`).

    Raises:
        ValueError: for a name the registry does not hold, an unknown allocator setting, or a device other than
            the CPU or CUDA.
    """
    from monai_ext.bench.report import efficiency_table, save_json

    device = resolve_device(device)
    bad_alloc = [a for a in allocators if a not in ALLOCATORS]
    if bad_alloc:
        raise ValueError(f"unknown allocators {bad_alloc}; known: {list(ALLOCATORS)}.")
    entries = rows.bench_rows(networks)
    threads = threads or torch.get_num_threads()
    info = machine_info(device, threads)
    amp, prec = bool(amp), precision(device, bool(amp))

    def call(fn: Callable[..., dict], kwargs: dict, allocator: str) -> dict:
        if fresh_process:
            return run_fresh(f"{fn.__module__}:{fn.__name__}", kwargs, env=ALLOCATORS[allocator])
        return fn(**kwargs)

    settings = {"device": device, "quick": quick, "threads": threads}
    peaks = {a: call(matmul_peak, settings, a) for a in allocators}
    convs = {a: call(conv_peak, settings | {"amp": amp}, a) for a in allocators}
    records = []
    for entry in entries:  # the settings interleave per network, so drifting machine load hits both alike
        for allocator in allocators:
            what = f"{allocator} allocator, {device}, {threads} threads, {prec}{', compiled' if compile else ''}"
            print(f"measuring {entry.name} ({what}) ...", flush=True)
            row = call(measure_row, settings | {"name": entry.name, "amp": amp, "compile": compile}, allocator)
            row["peak_fraction"] = row["gflops_achieved"] / peaks[allocator]["gflops"]
            row["conv_fraction"] = row["gflops_achieved"] / convs[allocator]["gflops"]
            records.append(
                {"network": entry.name, "family": entry.family, "kind": entry.kind, "allocator": allocator}
                | {"amp": amp, "precision": prec, "compiled": bool(compile)}
                | row
                | {"matmul_gflops": peaks[allocator]["gflops"], "conv3d_gflops": convs[allocator]["gflops"]}
                | {"conv3d_shape": convs[allocator]["shape"], "machine": info}
            )
    for allocator in allocators:
        ref = next((r for r in records if r["network"] == REFERENCE and r["allocator"] == allocator), None)
        for r in (r for r in records if r["allocator"] == allocator):
            r["latency_vs_reference"] = ratio(r["latency_s"]["median"], ref and ref["latency_s"]["median"])
            r["volume_vs_reference"] = ratio(r["volume_s"], ref and ref["volume_s"])
            r["train_step_vs_reference"] = ratio(r["train_step_s"], ref and ref["train_step_s"])
    table = efficiency_table(records)
    print(table)
    if output_dir is not None:
        save_json(output_dir, "efficiency", records)
        (Path(output_dir) / "efficiency.md").write_text(table)
    return records
