"""The end-to-end demo: synthetic data, a bundle (SSH-UNet by default) trained and run on CPU, Dice, a picture."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np

from monai_ext.bundles import bundle_dir, run_bundle
from monai_ext.data import LABELS, write_msd_dataset
from monai_ext.metrics import dice_per_class
from monai_ext.networks import list_networks
from monai_ext.visualize.figures import pyplot, save_png

__all__ = ["VESSEL_TASKS", "demo_bundles", "run_demo", "save_comparison_png"]

VESSEL_TASKS = ("vessels", "vessels_oblique")  # the phantom tasks the demo runs on (single-channel CT, LABELS)


def demo_bundles() -> dict[str, str]:
    """Bundle -> network title, for the registry's methods whose bundle takes the phantom's single-channel CT
    (``network_data_format`` in its metadata.json); RSANet's takes three MRI modalities (the lesions task)."""
    found = {}
    for entry in list_networks(family="ours", main_only=True):
        metadata = json.loads((bundle_dir(entry.bundle) / "configs" / "metadata.json").read_text())
        if metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 1:
            found[entry.bundle] = entry.title
    return found


def save_comparison_png(
    image: np.ndarray, truth: np.ndarray, pred: np.ndarray, path: str | Path, model_name: str = "SSH-UNet"
) -> Path:
    """Write image / truth / prediction side by side: an axial slice (where a single slice is ambiguous) and a
    coronal one (where vessels show as tubes and nodules as balls). Arrays are (X, Y, Z) with Z axial."""
    from matplotlib.colors import ListedColormap

    plt = pyplot()

    both = np.minimum((truth == 1).sum(axis=(0, 1)), (truth == 2).sum(axis=(0, 1)))
    z = int(np.argmax(both))
    y = int(np.argmax(np.minimum((truth == 1).sum(axis=(0, 2)), (truth == 2).sum(axis=(0, 2)))))
    cmap = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.8), (0.2, 0.6, 1.0, 0.8)])
    views = [(f"axial z={z}", lambda a: a[:, :, z].T), (f"coronal y={y}", lambda a: a[:, y, :].T)]
    fig, axes = plt.subplots(2, 3, figsize=(10, 7))
    for row, (title, cut) in enumerate(views):
        for col, (name, lab) in enumerate([("image", None), ("truth", truth), ("prediction", pred)]):
            ax = axes[row, col]
            ax.imshow(cut(image), cmap="gray", vmin=-175, vmax=250, origin="lower")
            if lab is not None:
                ax.imshow(cut(lab), cmap=cmap, vmin=0, vmax=2, origin="lower", interpolation="nearest")
            ax.set_title(f"{name}, {title}")
            ax.axis("off")
    fig.suptitle(f"{model_name} on held-out demo data: red = vessel (tube), blue = nodule (ball)")
    fig.tight_layout()
    return save_png(fig, path, dpi=80)


def run_demo(
    output_dir: str = "demo_output",
    num_train: int = 8,
    num_test: int = 4,
    size: int = 64,
    seed: int = 0,
    epochs: int | None = None,
    fast_allocator: bool = True,
    bundle: str = "ssh_unet",
    task: str = "vessels",
) -> dict:
    """Generate the demo data, train a bundle on CPU, infer on held-out cases, report.

    Args:
        output_dir: everything goes here (``data/``, ``bundle/models``, ``predictions/``, logs, PNG,
            ``results.json``); it is replaced.
        num_train, num_test, size, seed: the synthetic dataset (cubes of ``size`` voxels at 1.5 mm).
        epochs: override the training length of ``configs/demo.json``; validation (which saves the model) then
            runs once, at the end.
        fast_allocator: run the bundle processes with the glibc allocator settings of
            :data:`monai_ext.bundles.ALLOCATOR_ENV`.
        bundle: one of :func:`demo_bundles`; trained with its ``configs/train.json`` + ``configs/demo.json``.
        task: the phantom, a CT vessel/nodule task of :data:`monai_ext.data.tasks.TASKS`: ``"vessels"`` (vessels
            along z) or ``"vessels_oblique"`` (vessels 15-45 degrees from the slice normal).

    Returns:
        the results also written to ``results.json``.

    Raises:
        ValueError: ``bundle`` is not one of :func:`demo_bundles`, or ``task`` is not a vessel/nodule CT task.
        RuntimeError: a bundle run failed (its log file is named).
    """
    titles = demo_bundles()
    if bundle not in titles:
        raise ValueError(
            f"the demo trains one of {list(titles)} on the vessels/nodules phantom, got bundle={bundle!r}; "
            "RSANet's demo runs on `python -m monai_ext phantom DIR --task lesions` (see docs/rsanet.md)."
        )
    if task not in VESSEL_TASKS:
        raise ValueError(
            f"the demo runs on a vessel/nodule CT task, one of {list(VESSEL_TASKS)}, got task={task!r}; "
            "the lesions task is RSANet's (`python -m monai_ext phantom DIR --task lesions`, docs/rsanet.md)."
        )
    out = Path(output_dir).resolve()
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    print(
        f"[1/4] writing {num_train} training and {num_test} held-out synthetic CT volumes ({size}^3, task {task}) "
        f"to {out}/data"
    )
    write_msd_dataset(out / "data", num_train=num_train, num_test=num_test, shape=(size,) * 3, seed=seed, task=task)
    common = {"bundle_root": out / "bundle", "dataset_dir": out / "data"}

    print(f"[2/4] training {bundle}: python -m monai.bundle run with configs/train.json + configs/demo.json")
    schedule = {"epochs": epochs, "val_interval": epochs} if epochs else {}
    train = run_bundle(bundle, ["train.json", "demo.json"], {**common, **schedule}, out / "train.log", fast_allocator)
    if train.returncode != 0:
        raise RuntimeError(f"training failed (exit {train.returncode}); see {train.log_file}")

    print("[3/4] bundle inference on the held-out cases: configs/inference.json + configs/demo.json")
    infer = run_bundle(
        bundle, ["inference.json", "demo.json"], {**common, "output_dir": out / "predictions"},
        out / "inference.log", fast_allocator, echo=(),
    )  # fmt: skip
    if infer.returncode != 0:
        raise RuntimeError(f"inference failed (exit {infer.returncode}); see {infer.log_file}")

    print("[4/4] scoring against the held-out labels")
    dataset = json.loads((out / "data" / "dataset.json").read_text())
    per_case, chance, pictured = [], [], None
    for case in dataset["test_labeled"]:
        truth = np.asarray(nib.load(out / "data" / case["label"]).dataobj)
        pred_name = Path(case["image"]).name.replace(".nii.gz", "_seg.nii.gz")  # SaveImaged's output_postfix
        pred = np.asarray(nib.load(out / "predictions" / pred_name).dataobj)
        per_case.append(dice_per_class(pred, truth, LABELS))
        # a predictor that finds every object voxel but draws its class at random, in the true proportions,
        # scores the class's share of the foreground: the chance level for telling vessels from nodules
        fg = truth > 0
        chance.append({name: float((truth[fg] == v).mean()) for v, name in LABELS.items() if v})
        if pictured is None:
            pictured = (np.asarray(nib.load(out / "data" / case["image"]).dataobj), truth, pred)
    png = save_comparison_png(*pictured, out / "demo.png", model_name=titles[bundle])
    classes = [name for v, name in LABELS.items() if v]
    results = {
        "bundle": bundle,
        "task": task,
        "dice": {c: float(np.nanmean([d[c] for d in per_case])) for c in classes},
        "dice_min": {c: float(np.nanmin([d[c] for d in per_case])) for c in classes},
        "chance": {c: float(np.mean([d[c] for d in chance])) for c in classes},
        "train_wall_s": train.wall_s,
        "train_peak_rss_mb": train.peak_rss_mb,
        "inference_wall_s": infer.wall_s,
        "inference_peak_rss_mb": infer.peak_rss_mb,
        "total_wall_s": time.perf_counter() - started,
        "num_test_cases": len(per_case),
        "png": str(png),
    }
    (out / "results.json").write_text(json.dumps(results, indent=4) + "\n")
    print()
    print(f"| class | Dice, mean of {len(per_case)} held-out cases | worst case | chance |")
    print("|---|---|---|---|")
    for c in classes:
        print(f"| {c} | {results['dice'][c]:.3f} | {results['dice_min'][c]:.3f} | {results['chance'][c]:.3f} |")
    print()
    print(f"training   {train.wall_s:7.1f} s wall, peak {train.peak_rss_mb:6.0f} MB")
    print(f"inference  {infer.wall_s:7.1f} s wall, peak {infer.peak_rss_mb:6.0f} MB")
    print(f"total      {results['total_wall_s']:7.1f} s; picture: {png}")
    return results
