"""Whole-volume inference time of the thickened 2D network (slice groups, one view and three views) beside MONAI's
DynUNet 3D with sliding windows, on the same volume in the same run.

The paper (Yu et al. 2019, Table 1) reports 110.75 s for one view against 446.64 s for a 3D U-Net on a
512 x 512 x 394 CT (GPU): the 3D network took 4.0x as long. This suite measures the same ratio on this machine's CPU.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import torch
from monai.inferers import SlidingWindowInferer
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.bench.registry import NETWORKS
from monai_ext.bench.report import malloc_env, save_json, suite_meta
from monai_ext.inferers import MultiViewInferer, SliceGroupInferer, slice_group_starts
from monai_ext.networks.nets import Thickened2DNet

__all__ = ["CONTENDERS", "REFERENCE", "build_contenders", "run_slice_groups"]

REFERENCE = "DynUNet 3D sliding window"
CONTENDERS = ("thick2d single view", "thick2d three views", REFERENCE)


def _settings(quick: bool) -> dict:
    if quick:  # a tiny ResNet and DynUNet on a small volume: seconds
        return {
            "volume": (1, 1, 32, 32, 32),
            "num_slices": 6,
            "thick2d": {"layers": (1, 1, 1, 1), "block_inplanes": (8, 16, 32, 64), "decoder_channels": 16},
            "dynunet_filters": None,
            "roi": (16, 16, 16),
            "repeats": 1,
        }
    return {  # ResNet-50 with ESM + SSA (k = 12), and the benchmark's reference DynUNet 3D at 96^3 patches
        "volume": (1, 1, 192, 192, 96),
        "num_slices": 12,
        "thick2d": {},
        "dynunet_filters": "registry",
        "roi": (96, 96, 96),
        "repeats": 3,
    }


def build_contenders(quick: bool = False, out_channels: int = 2) -> dict[str, tuple[torch.nn.Module, Callable]]:
    """Name -> (network, ``infer(volume) -> logits``) for :data:`CONTENDERS`, in eval mode.

    The thickened 2D network is the paper's ESM + SSA configuration on ResNet-50 with ``k = 12`` (tiny with
    ``quick``), run by :class:`~monai_ext.inferers.SliceGroupInferer` (stride 1, axial) and by
    :class:`~monai_ext.inferers.MultiViewInferer` (the same network along the three axes, majority vote); the
    reference is the benchmark registry's ``"DynUNet 3D"`` with MONAI's sliding window (overlap 0.25).
    """
    s = _settings(quick)
    k = s["num_slices"]
    thick = Thickened2DNet(out_channels=out_channels, num_slices=k, config="esm_ssa", **s["thick2d"]).eval()
    slice_inferer = SliceGroupInferer(k, spatial_axis=2, stride=1, sw_batch_size=4)
    views = MultiViewInferer(slice_inferer, views=(2, 1, 0), fusion="vote")
    if s["dynunet_filters"] == "registry":
        dynunet = NETWORKS["DynUNet 3D"].build(1, out_channels, s["roi"]).eval()
    else:
        from monai.networks.nets import DynUNet

        dynunet = DynUNet(3, 1, out_channels, [3, 3, 3], [1, 2, 2], [2, 2], filters=[8, 16, 32]).eval()
    sliding = SlidingWindowInferer(s["roi"], sw_batch_size=1, overlap=0.25)
    return {
        "thick2d single view": (thick, lambda x: slice_inferer(x, thick)),
        "thick2d three views": (thick, lambda x: views(x, thick)),
        REFERENCE: (dynunet, lambda x: sliding(x, dynunet)),
    }


def _calls_and_flops(name: str, net: torch.nn.Module, volume: Sequence[int], quick: bool) -> tuple[int, float]:
    """Network calls of one whole-volume inference and their FLOPs (2 x MAC), counted on one call each."""
    s = _settings(quick)
    if name == REFERENCE:
        roi = s["roi"]
        inferer = SlidingWindowInferer(roi, sw_batch_size=1, overlap=0.25)
        calls = []
        inferer(torch.zeros(*volume), lambda p: calls.append(p.shape) or torch.zeros(p.shape[0], 1, *p.shape[2:]))
        shapes = [(1, 1, *roi)] * len(calls)
    else:
        k = s["num_slices"]
        axes = (2,) if name == "thick2d single view" else (2, 1, 0)
        shapes = []
        for axis in axes:
            plane = [v for i, v in enumerate(volume[2:]) if i != axis]
            shapes += [(1, 1, *plane, k)] * len(slice_group_starts(volume[2 + axis], k, 1))
    flops = 0.0
    with torch.inference_mode():
        for shape in sorted(set(shapes)):
            with FlopCounterMode(display=False) as counter:
                net(torch.zeros(*shape))
            flops += counter.get_total_flops() * shapes.count(shape)
    return len(shapes), flops


def run_slice_groups(
    quick: bool = False,
    output_dir: str | None = None,
    threads: int | None = None,
    repeats: int | None = None,
    volume: Sequence[int] | None = None,
) -> list[dict]:
    """Time whole-volume inference of :data:`CONTENDERS` on one random ``1 x 1 x 192 x 192 x 96`` volume (a tiny
    volume and tiny networks with ``quick``) on the CPU, in one process.

    After one warm-up call of each network on a small input, the three whole-volume inferences run in turn,
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
        for name, (net, _) in contenders.items():  # warm-up on a small input
            warm = (1, 1, 32, 32, s["num_slices"]) if name != REFERENCE else (1, 1, *s["roi"])
            net(torch.zeros(*warm))
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for i in range(repeats):
            for name, (_, infer) in contenders.items():
                start = time.perf_counter()
                out = infer(volume)
                times[name].append(time.perf_counter() - start)
                print(f"  repeat {i + 1}/{repeats}: {name} {times[name][-1]:.2f} s", flush=True)
                assert out.shape[2:] == volume.shape[2:]
    rows = []
    for name, (net, _) in contenders.items():
        calls, flops = _calls_and_flops(name, net, shape, quick)
        t = times[name]
        rows.append(
            {
                "contender": name,
                "volume": list(shape),
                "params_m": sum(p.numel() for p in net.parameters()) / 1e6,
                "calls": calls,
                "gflop": flops / 1e9,
                "time_s": {"median": statistics.median(t), "min": min(t), "max": max(t)},
            }
        )
    reference = next(r for r in rows if r["contender"] == REFERENCE)["time_s"]["median"]
    for r in rows:
        r["reference_over_this"] = reference / r["time_s"]["median"]
    print("\n| contender | params (M) | network calls | GFLOP | time median [min, max] (s) | DynUNet 3D time / this |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        t = r["time_s"]
        print(
            f"| {r['contender']} | {r['params_m']:.2f} | {r['calls']} | {r['gflop']:.1f} | "
            f"{t['median']:.2f} [{t['min']:.2f}, {t['max']:.2f}] | {r['reference_over_this']:.2f}x |"
        )
    print("\nPaper (Table 1, GPU, 512 x 512 x 394): 3D U-Net 446.64 s / single view 110.75 s = 4.03x.")
    if output_dir is not None:
        meta = suite_meta(threads=torch.get_num_threads(), repeats=repeats, quick=quick, malloc_env=malloc_env())
        save_json(output_dir, "slice_groups", {"meta": meta, "rows": rows})
    return rows
