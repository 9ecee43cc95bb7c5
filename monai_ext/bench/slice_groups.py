"""Whole-volume inference time of the thickened 2D network (slice groups, one view and three views) beside MONAI's
DynUNet 3D with sliding windows, on the same volume in the same run.

The paper (Yu et al. 2019, Table 1) reports 110.75 s for one view against 446.64 s for a 3D U-Net on a
512 x 512 x 394 CT (GPU): the 3D network took 4.0x as long. This suite measures the same ratio on this machine's CPU.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from monai.inferers import Inferer

from monai_ext.bench import rows
from monai_ext.bench.flops import counting_flops
from monai_ext.bench.report import malloc_env, save_json, suite_meta
from monai_ext.bench.stats import ratio, spread
from monai_ext.inferers import MultiViewInferer
from monai_ext.networks import get_network_entry

__all__ = ["CONTENDERS", "REFERENCE", "build_contenders", "run_slice_groups"]

REFERENCE = "dynunet_3d sliding window"
CONTENDERS = ("thick2d single view", "thick2d three views", REFERENCE)


def _settings(quick: bool) -> dict:
    if quick:  # a tiny ResNet and DynUNet on a small volume: seconds
        return {
            "volume": (1, 1, 32, 32, 32),
            "thick2d": {"num_slices": 6, "layers": (1, 1, 1, 1), "block_inplanes": (8, 16, 32, 64),
                        "decoder_channels": 16},
            "dynunet_3d": {"filters": (8, 16, 32)},
            "roi": (16, 16, 16),
            "repeats": 1,
        }  # fmt: skip
    return {  # the registry's thick2d (ResNet-50, ESM + SSA, k = 12) and DynUNet 3D, 96^3 windows
        "volume": (1, 1, 192, 192, 96),
        "thick2d": {},
        "dynunet_3d": {},
        "roi": (96, 96, 96),
        "repeats": 3,
    }


def build_contenders(quick: bool = False, out_channels: int = 2) -> dict[str, tuple[torch.nn.Module, Inferer]]:
    """Name -> (network in eval mode, its whole-volume inferer) for :data:`CONTENDERS`, from the registry.

    The thickened 2D network is the registry's ``thick2d`` (ESM + SSA on ResNet-50, ``k = 12``; tiny with
    ``quick``) with its own inferer (:class:`~monai_ext.inferers.SliceGroupInferer`, stride 1, along the last axis),
    and inside :class:`~monai_ext.inferers.MultiViewInferer` (the same network along the three axes, majority
    vote); the reference is ``dynunet_3d`` with its sliding window (:func:`monai_ext.bench.rows.inferer`).
    """
    s = _settings(quick)
    thick2d = get_network_entry("thick2d")
    k = {"num_slices": s["thick2d"]["num_slices"]} if "num_slices" in s["thick2d"] else {}
    thick = thick2d.build(out_channels=out_channels, **s["thick2d"]).eval()
    single = thick2d.make_inferer(**k)
    views = MultiViewInferer(single, spatial_dims_order=(2, 1, 0), fusion="vote")
    dynunet_3d = get_network_entry("dynunet_3d")
    dynunet = dynunet_3d.build(in_channels=1, out_channels=out_channels, **s["dynunet_3d"]).eval()
    return {
        "thick2d single view": (thick, single),
        "thick2d three views": (thick, views),
        REFERENCE: (dynunet, rows.inferer(dynunet_3d, s["roi"])),
    }


def _calls_and_flops(
    net: torch.nn.Module, inferer: Inferer, volume: Sequence[int], out_channels: int = 2
) -> tuple[int, float]:
    """Network inputs (windows or slice groups) of one whole-volume inference of ``inferer`` and their FLOPs
    (2 x MAC): the inferer runs once with a stand-in that records what the network would receive, and ``net`` is
    counted once per distinct input shape."""
    seen: list[tuple[int, ...]] = []

    def stand_in(x: torch.Tensor) -> torch.Tensor:
        seen.extend([tuple(x.shape[1:])] * x.shape[0])  # one entry per window of the batch
        return x.new_zeros(x.shape[0], out_channels, *x.shape[2:])

    with torch.inference_mode():
        inferer(torch.zeros(*volume), stand_in)
        flops = 0.0
        for shape in sorted(set(seen)):
            with counting_flops() as counter:
                net(torch.zeros(1, *shape))
            flops += counter.get_total_flops() * seen.count(shape)
    return len(seen), flops


def run_slice_groups(
    quick: bool = False,
    output_dir: str | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    volume: Sequence[int] | None = None,
) -> list[dict]:
    """Time whole-volume inference of :data:`CONTENDERS` on one random ``1 x 1 x 192 x 192 x 96`` volume (a tiny
    volume and tiny networks with ``quick``) on the CPU, in one process.

    After one warm-up inference of each contender on a ``32^3`` volume, the three whole-volume inferences run in turn,
    ``repeats`` times (default 3; 1 with ``quick``), interleaved so that load from other processes hits all of
    them alike.
    Reports per contender: parameters, network calls and GFLOP of one inference, time (median, min, max) and the
    ratio ``reference time / this time`` (how many times faster than DynUNet 3D). Prints a Markdown table and
    writes ``slice_groups.json`` to ``output_dir`` when given. ``volume`` replaces the volume shape
    ``(1, 1, X, Y, Z)``; each in-plane size of every view must be at least 32.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    s = _settings(quick)
    repeats = s["repeats"] if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"repeats must be positive, got {repeats}.")
    shape = tuple(s["volume"] if volume is None else volume)
    if len(shape) != 5 or shape[:2] != (1, 1) or min(shape[2:]) < 32:
        raise ValueError(f"volume must be (1, 1, X, Y, Z) with X, Y, Z >= 32, got {list(shape)}.")
    torch.manual_seed(0)
    contenders = build_contenders(quick)
    volume = torch.rand(*shape)
    print(f"whole-volume inference on {list(volume.shape)}, {torch.get_num_threads()} thread(s) ...", flush=True)
    with torch.inference_mode():
        for net, infer in contenders.values():  # warm-up on a small volume
            infer(torch.zeros(1, 1, 32, 32, 32), net)
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(repeats):
            for name, (net, infer) in contenders.items():
                start = time.perf_counter()
                out = infer(volume, net)
                times[name].append(time.perf_counter() - start)
                print(f"  repeat {i + 1}/{repeats}: {name} {times[name][-1]:.2f} s", flush=True)
                assert out.shape[2:] == volume.shape[2:]
    records = []
    for name, (net, infer) in contenders.items():
        calls, flops = _calls_and_flops(net, infer, shape)
        records.append(
            {
                "contender": name,
                "volume": list(shape),
                "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
                "calls": calls,
                "gflop": flops / 1e9,
                "time_s": spread(times[name]),
            }
        )
    reference = next(r for r in records if r["contender"] == REFERENCE)["time_s"]["median"]
    for r in records:
        r["reference_over_this"] = ratio(reference, r["time_s"]["median"])
    print("\n| contender | params (M) | network calls | GFLOP | time median [min, max] (s) | DynUNet 3D time / this |")
    print("|---|---|---|---|---|---|")
    for r in records:
        t = r["time_s"]
        print(
            f"| {r['contender']} | {r['params_m']:.2f} | {r['calls']} | {r['gflop']:.1f} | "
            f"{t['median']:.2f} [{t['min']:.2f}, {t['max']:.2f}] | {r['reference_over_this']:.2f}x |"
        )
    print("\nPaper (Table 1, GPU, 512 x 512 x 394): 3D U-Net 446.64 s / single view 110.75 s = 4.03x.")
    if output_dir is not None:
        meta = suite_meta(threads=torch.get_num_threads(), repeats=repeats, quick=quick, malloc_env=malloc_env())
        save_json(output_dir, "slice_groups", {"meta": meta, "rows": records})
    return records
