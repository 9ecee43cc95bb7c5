"""Peak memory and time of whole-volume SCAA* (one training step, and inference) beside MONAI's DynUNet 3D trained
and run on the same volume.

SCAA's claim (Tang et al., WACV 2021) is that training on a whole volume fits where 3D U-Nets run out of memory:
its 3D encoder is small and runs at half resolution, and only 16 axial slices go through the 2D path per step.
Both networks come from the registry (``scaa_star``, ``dynunet_3d``) and train through
:func:`monai_ext.bench.protocol.make_trainer`: SCAA* with its bundle's slice sampling and loss, DynUNet 3D on the
whole volume. SCAA* infers with its own inferer, DynUNet 3D in one pass over the whole volume (the point of the
comparison). Each contender runs in a fresh process (peak memory: the kernel's ``VmHWM`` on the CPU, or
``torch.cuda.max_memory_allocated`` on a GPU); a contender that runs out of memory is reported as such.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from monai.inferers import SimpleInferer

from monai_ext.bench import protocol
from monai_ext.bench.device import resolve_device
from monai_ext.bench.process import peak_bytes, reset_peak, run_fresh
from monai_ext.bench.report import save_json, suite_meta
from monai_ext.bench.stats import ratio
from monai_ext.networks import create_network, get_network_entry

__all__ = ["CONTENDERS", "NETWORKS", "build_network", "measure_step", "run_whole_volume"]

NETWORKS = ("scaa_star", "dynunet_3d")
"""Registry names: the method, then the reference."""
CONTENDERS = tuple(f"{name} {mode}" for name in NETWORKS for mode in ("train", "infer"))
_MIB = 2**20
_QUICK = {  # tiny networks for smoke runs
    "scaa_star": {"filters": (4, 8, 8, 16, 16), "context_channels": (4, 4, 8, 8), "global_channels": 4},
    "dynunet_3d": {"filters": (4, 8, 16, 32, 32)},
}


def build_network(name: str, out_channels: int, quick: bool = False) -> torch.nn.Module:
    """Registry network ``name`` of :data:`NETWORKS` at its defaults (tiny with ``quick``), one input channel.

    Raises:
        ValueError: for another name.
    """
    if name not in NETWORKS:
        raise ValueError(f"name must be one of {NETWORKS}, got {name!r}.")
    return create_network(name, in_channels=1, out_channels=out_channels, **(_QUICK[name] if quick else {}))


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
    """Time and peak memory of one training step (forward, loss, backward, Adam step through MONAI's
    SupervisedTrainer) or one whole-volume inference of a :data:`CONTENDERS` entry, in this process, after one
    warm-up on the same input.

    SCAA* samples ``num_slices`` slices per step (its bundle's ``prepare_batch`` with that ``num_slices``).
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
    torch.manual_seed(0)
    entry = get_network_entry(name)
    net = build_network(name, out_channels, quick).to(device)
    x = torch.rand(*shape, device=device)
    y = torch.randint(0, out_channels, (shape[0], 1, *shape[2:]), device=device).float()
    cuda = device.startswith("cuda")
    marks: dict[str, float] = {}

    def reset(step: int) -> None:  # before the measured step: what the process holds so far is the baseline
        if step == 2:
            reset_peak(device)
            marks["before"] = peak_bytes(device)[0]

    if mode == "train":
        optimizer = torch.optim.Adam(net.parameters(), 1e-4)
        trainer = protocol.make_trainer(
            entry, net, [{"image": x, "label": y}] * 2, optimizer, device, {"num_slices": num_slices}
        )
        elapsed = protocol.step_times(trainer, device, before_step=reset)[-1]  # the first step warms up
    else:
        inferer = SimpleInferer() if name == NETWORKS[1] else entry.make_inferer()  # the reference: one pass
        net.eval()
        times = []
        for step in (1, 2):
            reset(step)
            with torch.inference_mode():
                start = time.perf_counter()
                inferer(x, net)
                if cuda:
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
        elapsed = times[-1]
    after, source = peak_bytes(device)
    # peak: everything the process (or the GPU allocator) held, model and optimizer state included
    return {
        "time_s": elapsed,
        "peak_mib": after / _MIB,
        "growth_mib": (after - marks["before"]) / _MIB,
        "source": source,
    }


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
    """Measure :data:`CONTENDERS` on a ``1 x 1 x 256 x 256 x 128`` volume (slices last), SCAA* training on 16
    slices (with ``quick``: ``1 x 1 x 64 x 64 x 32``, 4 slices, tiny networks), each in a fresh process.

    Prints a Markdown table with the peak memory and time of each, and the ratios dynunet_3d / scaa_star for
    training and for inference; writes ``whole_volume.json`` to ``output_dir`` when given. On the CPU each child's
    address space is capped at ``memory_limit_gib`` (``None``: no cap); a contender over it is reported as out of
    memory.
    ``fresh_process=False`` measures in this process (quick smoke runs; the memory cap and clean peaks need fresh
    processes).
    """
    device = resolve_device(device)  # CUDA asked for and absent: the CPU
    shape, slices = ((1, 1, 64, 64, 32), 4) if quick else ((1, 1, 256, 256, 128), 16)
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
    method, reference = NETWORKS
    ratios = {}
    for mode in ("train", "infer"):
        a, b = by[f"{reference} {mode}"], by[f"{method} {mode}"]
        ratios[mode] = {key: ratio(a.get(key), b.get(key)) for key in ("peak_mib", "time_s")}
    print("\n| contender | input | peak memory (MiB) | time (s) |\n|---|---|---|---|")
    for r in rows:
        mem = f"{r['peak_mib']:.0f}" if "peak_mib" in r else r["error"]
        t = f"{r['time_s']:.2f}" if "time_s" in r else "-"
        print(f"| {r['contender']} | {'x'.join(map(str, r['shape']))} | {mem} | {t} |")
    for mode, rr in ratios.items():
        fmt = {k: "-" if v is None else f"{v:.2f}x" for k, v in rr.items()}
        print(f"{reference} / {method} ({mode}): memory {fmt['peak_mib']}, time {fmt['time_s']}")
    if output_dir is not None:
        meta = suite_meta(threads=threads, device=device, memory_limit_gib=memory_limit_gib)
        save_json(output_dir, "whole_volume", {"meta": meta, "rows": rows, "ratios": ratios})
    return rows
