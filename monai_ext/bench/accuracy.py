"""Accuracy under one CPU-time budget: every row trained on the same synthetic cases, Dice held out.

Every row trains on z-scored volumes, random crops of ``roi`` with random flips, through MONAI's SupervisedTrainer
with the row's own training batch and loss (:mod:`monai_ext.bench.protocol`: Dice + cross-entropy, a context
network's bundle loss), until ``budget_s`` seconds of process CPU time are spent; then the row's own whole-volume
inferer (:func:`monai_ext.bench.rows.inferer`) runs on the held-out cases, scored with MONAI's DiceMetric
(:func:`monai_ext.metrics.dice_per_class`). ``recipe="bundle"`` (default) gives each method row its bundle's
optimizer and learning rate as its demo sets them (:func:`monai_ext.bench.protocol.recipe_optimizer`; MONAI's
baselines: Adam at ``learning_rate``); ``recipe="plain"`` gives every row Adam at ``learning_rate``. The default
data are the oblique-vessel phantom, where a network without 3D context cannot tell a vessel's section from a
nodule's. Each (row, seed) runs in a fresh process, ``jobs`` of them at a time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_ext.bench import protocol, rows
from monai_ext.bench.device import resolve_device
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
    recipe: str = "bundle",
) -> dict:
    """Train row ``name`` from scratch for ``budget_s`` s of CPU time, then score it on the held-out cases.

    ``recipe``: ``"bundle"`` (the row's bundle optimizer, see the module) or ``"plain"`` (Adam at
    ``learning_rate``).

    Returns ``optimizer`` (what trained it), ``steps``, ``train_cpu_s``, ``train_wall_s``, ``infer_s``, ``dice``
    per class name (mean over the held-out cases, NaN-skipping: a class absent from a case's truth scores NaN
    there) and ``dice_per_case``.
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
    if recipe == "bundle":
        optimizer, optimizer_name = protocol.recipe_optimizer(entry, net, learning_rate)
    elif recipe == "plain":
        optimizer, optimizer_name = torch.optim.Adam(net.parameters(), learning_rate), f"Adam, lr {learning_rate:g}"
    else:
        raise ValueError(f"recipe must be 'bundle' or 'plain', got {recipe!r}.")
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
        "optimizer": optimizer_name,
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
    task: str = "vessels_oblique",
    recipe: str = "bundle",
    jobs: int = 1,
) -> list[dict]:
    """Train and score every main entry of the registry (or ``networks``, registry names) for each seed on freshly
    generated phantom data.

    The data are :func:`monai_ext.data.write_msd_dataset` cases of ``task`` (``"vessels_oblique"`` by default, or
    ``"vessels"``; 8 training and 4 held-out of 64^3, seed 0; with ``quick`` 2 and 1). ``recipe``: see the module.
    ``jobs`` runs go at once, each in its fresh process (give ``threads`` so that ``jobs * threads`` fits the
    cores; the budget is CPU time, so sharing the machine slows a run without shortening its training). Writes
    ``accuracy.json`` (one record per run, in seed then row order) and ``accuracy.md`` to ``output_dir`` and
    returns the records. ``device="cuda"`` on a machine without CUDA trains on the CPU
    (:func:`monai_ext.bench.device.resolve_device`).

    Raises:
        ValueError: for a name the registry does not hold, a device other than the CPU or CUDA, a task other
            than the two vessel tasks, an unknown recipe, or ``jobs`` below 1 (above 1 without ``fresh_process``).
    """
    from monai_ext.bench.report import accuracy_summary, accuracy_table, save_json

    if task not in ("vessels", "vessels_oblique"):
        raise ValueError(f"task must be 'vessels' or 'vessels_oblique' (vessel and nodule labels), got {task!r}.")
    if recipe not in ("bundle", "plain"):
        raise ValueError(f"recipe must be 'bundle' or 'plain', got {recipe!r}.")
    if jobs < 1 or (jobs > 1 and not fresh_process):
        raise ValueError(f"jobs must be >= 1, and 1 without fresh processes; got {jobs} (fresh {fresh_process}).")
    names = [e.name for e in rows.bench_rows(networks)]
    out = Path(output_dir)
    n_train, n_test, size = (2, 1, 64) if quick else (8, 4, 64)
    data = write_msd_dataset(
        out / "accuracy_data", n_train, n_test, shape=(size,) * 3, seed=0, overwrite=True, task=task
    )
    kwargs = {"data_dir": str(data.parent), "budget_s": budget_s, "roi": [size] * 3, "recipe": recipe}
    kwargs |= {"device": resolve_device(device), "threads": threads}
    # seeds outermost: every row sees the machine in the same state once per seed
    runs = [{"name": name, "seed": seed, **kwargs} for seed in seeds for name in names]

    def one(args: dict) -> dict:
        print(f"training {args['name']}, seed {args['seed']}, {budget_s:.0f} s of CPU time ...", flush=True)
        if fresh_process:
            return run_fresh("monai_ext.bench.accuracy:train_and_score", args)
        return train_and_score(**args)

    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on the child processes
        records = list(pool.map(one, runs))
    for record in records:
        record["task"] = task
    table = accuracy_table(accuracy_summary(records), budget_s)
    print(table)
    save_json(out, "accuracy", records)
    (out / "accuracy.md").write_text(table)
    return records
