"""Accuracy under one CPU-time budget: every row trained the same way on the same synthetic cases, Dice held out.

The protocol is deliberately plain and identical for every row: z-scored volumes, random crops of ``roi`` with
random flips, Adam, Dice + cross-entropy, through MONAI's SupervisedTrainer with the row's own training batch
(:mod:`monai_ext.bench.protocol`) until ``budget_s`` seconds of process CPU time are spent, then the row's own
whole-volume inferer (:func:`monai_ext.bench.rows.inferer`) on the held-out cases, scored with MONAI's DiceMetric
(:func:`monai_ext.metrics.dice_per_class`). Each (row, seed) runs in a fresh process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_ext.bench import protocol, rows
from monai_ext.bench.process import run_fresh
from monai_ext.data import load_datalist, write_msd_dataset
from monai_ext.metrics import dice_per_class
from monai_ext.networks import get_network_entry

__all__ = ["load_cases", "run_accuracy", "train_and_score"]


def load_cases(data_dir: str | Path, key: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(image (1, H, W, D) z-scored, label (1, H, W, D))`` pairs of a Decathlon list with labels."""
    cases = []
    for item in load_datalist(Path(data_dir) / "dataset.json", key):
        image = np.asarray(nib.load(item["image"]).dataobj, dtype=np.float32)
        label = np.asarray(nib.load(item["label"]).dataobj, dtype=np.float32)
        image = (image - image.mean()) / max(float(image.std()), 1e-6)
        cases.append((torch.from_numpy(image)[None], torch.from_numpy(label)[None]))
    return cases


def _crop(image: torch.Tensor, label: torch.Tensor, roi: Sequence[int], rng: np.random.Generator):
    starts = [int(rng.integers(0, s - r + 1)) for s, r in zip(image.shape[1:], roi)]
    region = tuple(slice(s, s + r) for s, r in zip(starts, roi))
    image, label = image[(slice(None), *region)], label[(slice(None), *region)]
    flips = [d + 1 for d in range(3) if rng.random() < 0.5]
    return (image.flip(flips), label.flip(flips)) if flips else (image, label)


def _crops(
    cases: list[tuple[torch.Tensor, torch.Tensor]], roi: Sequence[int], rng: np.random.Generator, budget_s: float
) -> Iterator[dict[str, torch.Tensor]]:
    """Random flipped crops of random cases, one per training step, while less than ``budget_s`` s of this
    process's CPU time have passed since the first request."""
    start = time.process_time()
    while time.process_time() - start < budget_s:
        image, label = _crop(*cases[int(rng.integers(len(cases)))], roi, rng)
        yield {"image": image[None], "label": label[None]}


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

    Returns ``steps``, ``train_cpu_s``, ``train_wall_s``, ``infer_s``, ``dice`` per class name (mean over the
    held-out cases, NaN-skipping: a class absent from a case's truth scores NaN there) and ``dice_per_case``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    entry = get_network_entry(name)
    meta = json.loads((Path(data_dir) / "dataset.json").read_text())
    labels = {int(k): v for k, v in meta["labels"].items()}
    train, test = load_cases(data_dir, "training"), load_cases(data_dir, "test_labeled")
    roi = [min(r, s) for r, s in zip(roi, train[0][0].shape[1:])]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = rows.build(entry, 1, len(labels), roi).to(device)
    optimizer = torch.optim.Adam(net.parameters(), learning_rate)
    trainer = protocol.make_trainer(entry, net, _crops(train, roi, rng, budget_s), optimizer, device)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    trainer.run()
    steps = trainer.state.iteration
    train_cpu, train_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    net.eval()
    inferer = rows.inferer(entry, roi)
    per_case, start = [], time.perf_counter()
    with torch.inference_mode():
        for image, label in test:
            logits = inferer(image[None].to(device), net)
            per_case.append(dice_per_class(logits.argmax(1)[0].cpu(), label[0], labels))
    infer_s = time.perf_counter() - start
    print(f"{name} seed {seed}: {steps} steps in {train_cpu:.0f} s CPU, Dice {per_case}", flush=True)
    return {
        "network": name,
        "seed": seed,
        "steps": steps,
        "train_cpu_s": train_cpu,
        "train_wall_s": train_wall,
        "infer_s": infer_s,
        "dice": {c: float(np.nanmean([d[c] for d in per_case])) for c in per_case[0]},
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
    """Train and score every main entry of the registry (or ``networks``, registry names) for each seed on freshly
    generated demo data.

    The data are :func:`monai_ext.data.write_msd_dataset` vessels/nodules cases (8 training and 4 held-out of
    64^3; with ``quick`` 2 and 1). Writes ``accuracy.json`` (one record per run) and
    ``accuracy.md`` to ``output_dir`` and returns the records.

    Raises:
        ValueError: for a name the registry does not hold.
    """
    from monai_ext.bench.report import accuracy_summary, accuracy_table, save_json

    names = [e.name for e in rows.bench_rows(networks)]
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
