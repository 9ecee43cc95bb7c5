"""Markdown tables and the FLOPs-versus-Dice plot of the benchmark records."""

from __future__ import annotations

import json
import os
import platform
import statistics
from collections.abc import Sequence
from pathlib import Path

import torch

from monai_ext.bench.stats import mean_range
from monai_ext.visualize.figures import pyplot, save_png

__all__ = [
    "accuracy_summary",
    "accuracy_table",
    "efficiency_table",
    "malloc_env",
    "plot_flops_vs_dice",
    "plot_from_dir",
    "save_json",
    "suite_meta",
]


def save_json(output_dir: str | Path, name: str, payload) -> Path:
    """Write ``payload`` as ``<output_dir>/<name>.json`` (indent 4), creating the folder."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=4) + "\n")
    return path


def suite_meta(**extra) -> dict:
    """The ``meta`` of a suite's report: torch version and machine, then the suite's own settings."""
    return {"torch": torch.__version__, "machine": platform.machine(), **extra}


def malloc_env() -> dict[str, str]:
    """The glibc allocator settings (``MALLOC_*``) of this process's environment."""
    return {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def efficiency_table(records: Sequence[dict]) -> str:
    """One Markdown table per allocator setting; ratios are to DynUNet 3D in the same setting.

    The title names the device, threads, precision (fp32, or the autocast dtype of forward and whole-volume passes)
    and the two machine rates of the setting: fp32 matmul and dense 3^3 Conv3d (in that precision). Each row gives
    its achieved GFLOP/s and their share of each rate.
    """
    lines = []
    for allocator in dict.fromkeys(r["allocator"] for r in records):
        rows = [r for r in records if r["allocator"] == allocator]
        first, machine = rows[0], rows[0]["machine"]
        conv = "x".join(map(str, first["conv3d_shape"]))
        lines += [
            f"\n{allocator} allocator, {machine['device']} ({machine['threads']} threads), forward and whole volume "
            f"in {first['precision']}{' (autocast)' if first['amp'] else ''}"
            f"{', compiled (torch.compile)' if first.get('compiled') else ''}; matmul {first['matmul_gflops']:.0f} "
            f"GFLOP/s (fp32), dense 3^3 Conv3d {first['conv3d_gflops']:.0f} GFLOP/s ({conv}, {first['precision']})",
            "",
            "| network | params (M) | GFLOP (patch) | GFLOP (own patch) | forward s, median [min, max] | vs DynUNet 3D "
            "| GFLOP/s | % of matmul | % of conv3d | whole volume s | vs DynUNet 3D | train step s | vs DynUNet 3D "
            "| peak GiB, inference | peak GiB, with training |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lat, own = r["latency_s"], r["gflop_own_patch"]
            inference = "n/a" if r.get("inference_peak_gib") is None else f"{r['inference_peak_gib']:.2f}"
            lines.append(
                f"| {r['network']} | {r['params'] / 1e6:.2f} | {r['gflop']:.1f} | "
                f"{'n/a' if own is None else f'{own:.1f}'} | {lat['median']:.3f} [{lat['min']:.3f}, {lat['max']:.3f}] "
                f"| {_x(r['latency_vs_reference'])} | {r['gflops_achieved']:.0f} | {100 * r['peak_fraction']:.0f} % "
                f"| {100 * r['conv_fraction']:.0f} % | {r['volume_s']:.2f} | {_x(r['volume_vs_reference'])} "
                f"| {r['train_step_s']:.2f} | {_x(r['train_step_vs_reference'])} | {inference} "
                f"| {r['peak_memory_gib']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def accuracy_summary(records: Sequence[dict]) -> list[dict]:
    """Per network: mean, min and max over seeds of each class's Dice and of their mean."""
    out = []
    for name in dict.fromkeys(r["network"] for r in records):
        runs = [r for r in records if r["network"] == name]
        classes = list(runs[0]["dice"])
        per_class = {c: [r["dice"][c] for r in runs] for c in classes}
        means = [statistics.mean(r["dice"].values()) for r in runs]
        out.append(
            {
                "network": name,
                "seeds": [r["seed"] for r in runs],
                "steps": statistics.mean(r["steps"] for r in runs),
                "dice": {c: mean_range(v) for c, v in per_class.items()},
                "mean_dice": mean_range(means),
                "infer_s": statistics.mean(r["infer_s"] for r in runs),
            }
        )
    return out


def accuracy_table(summary: Sequence[dict], budget_s: float) -> str:
    classes = list(summary[0]["dice"]) if summary else []
    head = " | ".join(f"Dice {c}, mean [min, max]" for c in classes)
    lines = [
        f"\nHeld-out Dice after {budget_s:.0f} s of training CPU time per run",
        "",
        f"| network | seeds | training steps | {head} | mean Dice | inference s (held-out set) |",
        "|---|---|---|" + "---|" * len(classes) + "---|---|",
    ]
    for s in summary:
        dice = " | ".join(f"{d['mean']:.3f} [{d['min']:.3f}, {d['max']:.3f}]" for d in s["dice"].values())
        lines.append(
            f"| {s['network']} | {len(s['seeds'])} | {s['steps']:.0f} | {dice} | {s['mean_dice']['mean']:.3f} "
            f"| {s['infer_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def plot_flops_vs_dice(efficiency: Sequence[dict], summary: Sequence[dict], path: str | Path) -> Path:
    """Scatter of GFLOP per patch against mean held-out Dice, marker area proportional to parameters."""
    plt = pyplot()

    size = {r["network"]: (r["gflop"], r["params"]) for r in efficiency}
    fig, ax = plt.subplots(figsize=(7, 5))
    for s in summary:
        if s["network"] not in size:
            continue
        gflop, params = size[s["network"]]
        dice = s["mean_dice"]
        ax.errorbar(
            gflop,
            dice["mean"],
            yerr=[[dice["mean"] - dice["min"]], [dice["max"] - dice["mean"]]],
            fmt="none",
            ecolor="grey",
        )
        ax.scatter(gflop, dice["mean"], s=max(params / 1e5, 10), alpha=0.6)
        ax.annotate(s["network"], (gflop, dice["mean"]), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("GFLOP per forward pass (1 x 1 x patch)")
    ax.set_ylabel("mean held-out Dice (demo data)")
    ax.set_title("Cost against accuracy; marker area ~ parameters")
    fig.tight_layout()
    return save_png(fig, path, dpi=120)


def plot_from_dir(output_dir: str | Path) -> Path | None:
    """Draw ``flops_vs_dice.png`` from ``efficiency.json`` and ``accuracy.json`` in ``output_dir``, when both exist.

    FLOPs and parameters do not depend on the allocator setting, so either record of a network will do.
    """
    out = Path(output_dir)
    if not ((out / "efficiency.json").is_file() and (out / "accuracy.json").is_file()):
        return None
    efficiency = json.loads((out / "efficiency.json").read_text())
    summary = accuracy_summary(json.loads((out / "accuracy.json").read_text()))
    return plot_flops_vs_dice(efficiency, summary, out / "flops_vs_dice.png")
