"""evaluate.json scores in the input's space, as the Model Zoo's bundles do, and multi_gpu_evaluate.json runs it on
two CPU processes.

The data have 1 x 1 x 2.5 mm voxels while every bundle resamples to another grid (``pixdim``). A tiny model is
trained and validated once, at its last epoch, so ``model.pt`` is that model and its validation score, on the
resampled grid, is the one the key-metric saver recorded. evaluate.json must report a different score: the Dice of
the prediction mapped back (``Invertd``) to each input's grid against the original label, which the test computes
itself from the saved predictions and the label files.
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.data import write_msd_dataset
from tests.bundles.test_bundles import CASES, Case, ok, run_in

pytestmark = pytest.mark.slow

SPACING = (1.0, 1.0, 2.5)  # no bundle resamples to it (cotr and ssh_unet here: 1.5 mm; rsanet 1 x 1 x 3 mm)
EPOCHS = 2
TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def trained(tmp_path_factory, case) -> tuple[Path, Path]:
    """(bundle_root, dataset folder) after a tiny run on anisotropic data, validated once, after the last epoch."""
    tmp = tmp_path_factory.mktemp(f"{case.name}_evaluate")
    data = tmp / "data"
    # 48 x 48 mm in-plane: at least 32 voxels at 1.5 mm, the smallest slice thick2d's tiny network takes
    write_msd_dataset(data, num_train=4, num_test=0, shape=(48, 48, 24), spacing=SPACING, seed=1, **case.data)
    root = tmp / "bundle"
    ok(
        case.run(
            "run",
            config_file=case.configs("train.json"),
            bundle_root=root,
            dataset_dir=data,
            epochs=EPOCHS,
            val_interval=EPOCHS,
        )
    )
    return root, data


def _evaluate(case: Case, root: Path, data: Path, out: Path, cmd: list[str] | None = None, extra: tuple = ()):
    overrides = {
        **case.tiny,
        "config_file": case.configs("train.json", "evaluate.json", *extra),
        "bundle_root": root,
        "dataset_dir": data,
        "output_dir": out,
        "save_predictions": True,
    }
    return ok(run_in(case.root, cmd or [sys.executable, "-m", "monai.bundle", "run"], overrides))


def _reported(out: Path) -> float:
    rows = dict(csv.reader((out / "metrics.csv").open()))
    return float(rows["val_mean_dice"])


def _dice_in_input_space(out: Path, data: Path, num_classes: int) -> float:
    """Mean Dice of the foreground classes over the saved predictions, against the label files, as MONAI's MeanDice
    reduces it (the mean over every case and class whose label is not empty)."""
    scores = []
    for pred_path in sorted(out.glob("*_seg.nii.gz")):
        name = pred_path.name.replace("_seg.nii.gz", ".nii.gz")
        pred_image, label_image = nib.load(pred_path), nib.load(data / "labelsTr" / name)
        assert pred_image.shape == label_image.shape  # the input's grid
        np.testing.assert_allclose(pred_image.affine, nib.load(data / "imagesTr" / name).affine, atol=1e-5)
        pred, label = np.asarray(pred_image.dataobj), np.asarray(label_image.dataobj)
        for k in range(1, num_classes):
            if (label == k).any():
                scores.append(2 * np.sum((pred == k) & (label == k)) / (np.sum(pred == k) + np.sum(label == k)))
    assert scores, f"no predictions in {out}"
    return float(np.mean(scores))


def _resampled_score(root: Path) -> float:
    """The validation Dice of model.pt on the resampled grid, as train.json's key-metric saver recorded it."""
    checkpoint = torch.load(root / "models" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    ((score, _),) = checkpoint["key_metric_saver"]["_saved"]  # one validation: one record (saved as model.pt)
    return float(score)


def test_evaluate_scores_the_prediction_on_the_input_grid(case, trained, tmp_path):
    root, data = trained
    out = tmp_path / "eval"
    _evaluate(case, root, data, out)
    reported = _reported(out)
    assert reported == pytest.approx(_dice_in_input_space(out, data, case.num_classes), abs=1e-6)
    resampled = _resampled_score(root)
    assert abs(reported - resampled) > 1e-4, f"the same score on both grids: {reported} ({resampled} resampled)"


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_multi_gpu_evaluate_on_two_cpu_processes_reports_the_same_score(case, trained, tmp_path):
    root, data = trained
    single, double = tmp_path / "single", tmp_path / "double"
    _evaluate(case, root, data, single)
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    proc = _evaluate(case, root, data, double, cmd, extra=("multi_gpu_evaluate.json",))
    assert sorted(p.name for p in double.glob("*_seg.nii.gz")) == sorted(p.name for p in single.glob("*_seg.nii.gz"))
    assert _reported(double) == pytest.approx(_reported(single), abs=1e-6)  # gathered from both processes
    log = proc.stdout + proc.stderr
    assert log.count("Metrics -- ") == 1, log[-3000:]  # rank 1 logs nothing but warnings
