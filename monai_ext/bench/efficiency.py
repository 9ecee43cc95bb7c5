"""Parameters, FLOPs and forward latency of networks on one machine, measured in one run."""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from monai.networks.nets import DynUNet
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.networks.nets import SSHUNet

__all__ = ["NETWORKS", "measure", "run_efficiency"]

# name -> builder(in_channels, out_channels); the anchors are MONAI's own networks
NETWORKS: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "SSH-UNet": lambda i, o: SSHUNet(in_channels=i, out_channels=o),
    "DynUNet 3D": lambda i, o: DynUNet(
        3,
        i,
        o,
        kernel_size=[3] * 5,
        strides=[1, 2, 2, 2, 2],
        upsample_kernel_size=[2] * 4,
        filters=[32, 64, 128, 256, 320],
    ),
}


def measure(net: torch.nn.Module, shape: tuple[int, ...], device: str, repeats: int) -> dict:
    """Count parameters and FLOPs (2 x multiply-adds) and time ``repeats`` forward passes after one warm-up."""
    net = net.to(device).eval()
    x = torch.randn(*shape, device=device)
    with torch.inference_mode():
        with FlopCounterMode(display=False) as counter:
            net(x)
        times = []
        for _ in range(repeats):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            net(x)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return {
        "params": sum(p.numel() for p in net.parameters()),
        "gflop": counter.get_total_flops() / 1e9,
        "latency_s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
    }


def run_efficiency(
    device: str = "cpu", quick: bool = False, out_channels: int = 14, output_dir: str | None = None
) -> list[dict]:
    """Measure every network of :data:`NETWORKS` on one ``1 x 1 x S^3`` patch (S = 96, or 32 with ``quick``).

    Prints a Markdown table with each latency relative to DynUNet 3D, and writes ``efficiency.json`` to
    ``output_dir`` when given.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available: measuring on the CPU")
        device = "cpu"
    size, repeats = (32, 2) if quick else (96, 5)
    shape = (1, 1, size, size, size)
    rows = []
    for name, build in NETWORKS.items():
        print(f"measuring {name} on {shape} ({device}) ...", flush=True)
        rows.append(
            {
                "network": name,
                "input": list(shape),
                "device": device,
                **measure(build(1, out_channels), shape, device, repeats),
            }
        )
    refs = [r for r in rows if r["network"] == "DynUNet 3D"]
    if not refs:
        raise ValueError(f"NETWORKS needs a 'DynUNet 3D' entry, the reference of every ratio; got {list(NETWORKS)}.")
    ref = refs[0]["latency_s"]["median"]
    print("\n| network | params (M) | GFLOP | latency median [min, max] (s) | vs DynUNet 3D |")
    print("|---|---|---|---|---|")
    for r in rows:
        lat = r["latency_s"]
        r["latency_vs_dynunet3d"] = lat["median"] / ref
        print(
            f"| {r['network']} | {r['params'] / 1e6:.2f} | {r['gflop']:.1f} | "
            f"{lat['median']:.3f} [{lat['min']:.3f}, {lat['max']:.3f}] | {r['latency_vs_dynunet3d']:.2f}x |"
        )
    if output_dir is not None:
        meta = {"torch": torch.__version__, "machine": platform.machine(), "threads": torch.get_num_threads()}
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "efficiency.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=4) + "\n")
    return rows
