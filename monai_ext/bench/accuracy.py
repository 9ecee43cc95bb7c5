"""Accuracy under one CPU-time budget: every row trained the same way on the same synthetic cases, Dice held out.

The protocol is deliberately plain and identical for every row: z-scored volumes, random crops of ``roi`` with
random flips, Adam, Dice + cross-entropy, the row's own training batch (:func:`monai_ext.bench.protocol.training_loss`)
until ``budget_s`` seconds of process CPU time are spent, then the row's own whole-volume inferer on the held-out
cases. Each (row, seed) runs in a fresh process.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.losses import DiceCELoss

from monai_ext.bench import protocol
from monai_ext.bench.process import run_fresh
from monai_ext.bench.registry import NETWORKS
from monai_ext.data import load_datalist, write_msd_dataset

__all__ = ["dice_per_class", "load_cases", "run_accuracy", "train_and_score"]


def load_cases(data_dir: str | Path, key: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(image (1, H, W, D) z-scored, label (1, H, W, D))`` pairs of a Decathlon list with labels."""
    cases = []
    for item in load_datalist(Path(data_dir) / "dataset.json", key):
        image = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(item["label"]).dataobj, dtype=np.float32)
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
        cases.append((torch.from_numpy(image)[None], torch.from_numpy(label)[None]))
    return cases


def dice_per_class(pred: torch.Tensor, label: torch.Tensor, classes: int) -> list[float]:
    """Dice of each foreground class (1 .. classes - 1) between label maps; 1.0 when both are empty."""
    out = []
    for c in range(1, classes):
        p, t = pred == c, label == c
        denom = int(p.sum() + t.sum())
        out.append(1.0 if denom == 0 else 2 * int((p & t).sum()) / denom)
    return out


def _crop(image: torch.Tensor, label: torch.Tensor, roi: Sequence[int], rng: np.random.Generator):
    starts = [int(rng.integers(0, s - r + 1)) for s, r in zip(image.shape[1:], roi)]
    region = tuple(slice(s, s + r) for s, r in zip(starts, roi))
    image, label = image[(slice(None), *region)], label[(slice(None), *region)]
    flips = [d + 1 for d in range(3) if rng.random() < 0.5]
    return (image.flip(flips), label.flip(flips)) if flips else (image, label)


def train_and_score(
    name: str,
    data_dir: str,
    seed: int = 0,
    budget_s: float = 60.0,
    roi: Sequence[int] = (64, 64, 64),
    learning_rate: float = 1e-3,
    device: str = "cpu",
    threads: int | None = None,
) -> dict:
    """Train row ``name`` from scratch for ``budget_s`` s of CPU time, then score it on the held-out cases.

    Returns ``steps``, ``train_cpu_s``, ``train_wall_s``, ``infer_s``, and ``dice`` per class name (mean over the
    held-out cases) with ``dice_per_case``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    entry = NETWORKS[name]
    meta = json.loads((Path(data_dir) / "dataset.json").read_text())
    names = [meta["labels"][k] for k in sorted(meta["labels"], key=int)]
    train, test = load_cases(data_dir, "training"), load_cases(data_dir, "test_labeled")
    roi = [min(r, s) for r, s in zip(roi, train[0][0].shape[1:])]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = entry.build(1, len(names), roi).to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), learning_rate)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    steps, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
    while time.process_time() - cpu0 < budget_s:
        image, label = _crop(*train[int(rng.integers(len(train)))], roi, rng)
        optimizer.zero_grad(set_to_none=True)
        protocol.training_loss(entry, net, image[None].to(device), label[None].to(device), loss_fn).backward()
        optimizer.step()
        steps += 1
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    net.eval()
    per_case, start = [], time.perf_counter()
    with torch.inference_mode():
        for image, label in test:
            logits = protocol.infer_volume(entry, net, image[None].to(device), roi)
            per_case.append(dice_per_class(logits.argmax(1)[0].cpu(), label[0], len(names)))
    infer_s = time.perf_counter() - start
    print(f"{name} seed {seed}: {steps} steps in {train_cpu:.0f} s CPU, Dice {per_case}", flush=True)
    return {
        "network": name,
        "seed": seed,
        "steps": steps,
        "train_cpu_s": train_cpu,
        "train_wall_s": train_wall,
        "infer_s": infer_s,
        "dice": {n: statistics.mean(c[i] for c in per_case) for i, n in enumerate(names[1:])},
        "dice_per_case": per_case,
        "roi": roi,
    }


def run_accuracy(
    output_dir: str = "bench_output",
    networks: Sequence[str] | None = None,
    seeds: Sequence[int] = (0, 1),
    budget_s: float = 120.0,
    quick: bool = False,
    device: str = "cpu",
    threads: int | None = None,
    fresh_process: bool = True,
) -> list[dict]:
    """Train and score every row (or ``networks``) for each seed on freshly generated demo data.

    The data are :func:`monai_ext.data.write_msd_dataset` vessels/nodules cases (8 training and 4 held-out of
    64^3; with ``quick`` 2 and 1). Writes ``accuracy.json`` (one record per run) and
    ``accuracy.md`` to ``output_dir`` and returns the records.
    """
    from monai_ext.bench.report import accuracy_summary, accuracy_table, save_json

    names = list(networks or NETWORKS)
    unknown = [n for n in names if n not in NETWORKS]
    if unknown:
        raise ValueError(f"unknown networks {unknown}; known: {list(NETWORKS)}.")
    out = Path(output_dir)
    n_train, n_test, size = (2, 1, 64) if quick else (8, 4, 64)
    data = write_msd_dataset(out / "accuracy_data", n_train, n_test, shape=(size,) * 3, seed=0, overwrite=True)
    kwargs = {"data_dir": str(data.parent), "budget_s": budget_s, "roi": [size] * 3}
    kwargs |= {"device": device, "threads": threads}
    records = []
    for seed in seeds:  # seeds outermost: every row sees the machine in the same state once per seed
        for name in names:
            print(f"training {name}, seed {seed}, {budget_s:.0f} s of CPU time ...", flush=True)
            args = {"name": name, "seed": seed, **kwargs}
            if fresh_process:
                records.append(run_fresh("monai_ext.bench.accuracy:train_and_score", args))
            else:
                records.append(train_and_score(**args))
    table = accuracy_table(accuracy_summary(records), budget_s)
    print(table)
    save_json(out, "accuracy", records)
    (out / "accuracy.md").write_text(table)
    return records
