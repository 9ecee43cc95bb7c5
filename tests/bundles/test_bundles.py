"""Every monai_ext bundle, run end to end as a user runs it: ``python -m monai.bundle ...`` in child processes.

A bundle joins these tests with one entry in ``CASES``: tiny overrides that make each run take seconds on a CPU,
the epochs and learning rate with which that tiny network learns to segment the synthetic data, and the demo task
whose data it trains on. The trained model must show it learnt: its training loss falls, and its predictions find
the labelled foreground (an all-background or all-foreground output fails).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset

pytestmark = pytest.mark.slow


@dataclass
class Case:
    name: str
    tiny: dict  # overrides of every run: a tiny network and one short epoch
    learn: dict  # overrides of the `trained` run on top of `tiny`: the epochs and learning rate with which it learns
    data: dict = field(default_factory=dict)  # extra write_msd_dataset arguments
    in_channels: int = 1
    num_classes: int = 3

    @property
    def root(self) -> Path:
        return bundle_dir(self.name)

    @property
    def configs_dir(self) -> Path:
        return self.root / "configs"

    def configs(self, *names: str) -> str:
        return "[" + ",".join(repr(str(self.configs_dir / n)) for n in names) + "]"

    def run(self, *args: str, timeout: int = 600, **overrides) -> subprocess.CompletedProcess:
        """``python -m monai.bundle ARGS --key value ...`` in the bundle folder, with the tiny overrides."""
        return run_in(self.root, [sys.executable, "-m", "monai.bundle", *args], {**self.tiny, **overrides}, timeout)


def run_in(cwd: Path, cmd: list[str], overrides: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    for key, value in overrides.items():
        cmd = [*cmd, f"--{key}", str(value)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)


CASES = [
    Case(
        "cotr",
        {
            "num_classes": 3,
            "pixdim": "[1.5,1.5,1.5]",
            "roi_size": "[32,32,32]",
            "network_def#encoder_channels": "[8,16,24,24]",
            "network_def#encoder_blocks": "[1,1,1]",
            "network_def#num_layers": 1,
            "network_def#mlp_dim": 32,
            "network_def#num_heads": 2,
            "network_def#num_points": 2,
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        learn={"epochs": 40, "learning_rate": 0.05},
    ),
    Case(
        "ssh_unet",
        {
            "num_classes": 3,
            "pixdim": "[1.5,1.5,1.5]",
            "roi_size": "[32,32,32]",
            "network_def#filters": "[8,16,32,64,128]",
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        learn={"epochs": 16, "warmup_epochs": 0, "learning_rate": 0.01},  # the bundle warms up for 50 epochs
    ),
    Case(
        "rsanet",
        {
            "roi_size": "[32,32,16]",
            "network_def#filters": "[8,16,32,64,128]",
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        # small lesions (0.3% of the voxels): none is predicted before ~20 epochs; at 0.003 (Adam, no schedule) the
        # prediction came and went between epochs, 0.002 gave lesion Dice 0.30-0.61 with seeds 0-3
        learn={"epochs": 40, "learning_rate": 0.002},
        data={"task": "lesions"},
        in_channels=3,
        num_classes=2,
    ),
    Case(
        "scaa",
        {
            "num_classes": 3,
            "network_def#filters": "[4,8,8,16,16]",
            "network_def#context_channels": "[4,4,8,8]",
            "network_def#pool_sizes": "[4,2,2,2]",
            "num_slices": 4,
            "epochs": 1,
            "val_interval": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        learn={"epochs": 12, "learning_rate": 0.01},
    ),
    Case(
        "thick2d",
        {
            "num_classes": 3,
            "num_slices": 6,
            "slice_size": "[32,32]",
            "network_def#layers": "[1,1,1,1]",
            "network_def#block_inplanes": "[8,16,32,64]",
            "network_def#decoder_channels": 16,
            "network_def#low_level_channels": 8,
            "epochs": 1,
            "val_interval": 1,
            "batch_size": 1,
            "num_workers": 0,
            "val_fraction": 0.5,
        },
        learn={"epochs": 30, "learning_rate": 0.03},  # 16 epochs: foreground Dice 0.22 with one of three seeds
    ),
]


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, case) -> Path:
    root = tmp_path_factory.mktemp(f"{case.name}_data") / "data"
    write_msd_dataset(root, num_train=4, num_test=2, shape=(32, 32, 32), seed=1, **case.data)
    return root


# What the `learn` runs must reach. Foreground Dice per test case: twice that of the best prediction that ignores
# the image (all foreground: 2p / (1 + p) for a foreground fraction p, about 0.15 on the vessels, 0.007 on the
# lesions), and at least MIN_FOREGROUND_DICE; measured 0.55-0.92 on the vessels, 0.30-0.61 on the lesions (seeds 0-2
# of set_determinism or more, 1 and 2 threads). The mean Dice of the foreground classes on the validation cases
# (evaluate.json), 0 for an all-background output: measured 0.27-0.58. The last epoch's mean training loss over the
# first's: 0.01-0.79.
MIN_FOREGROUND_DICE = 0.1
MIN_VAL_MEAN_DICE = 0.05
MAX_LOSS_RATIO = 0.9


@pytest.fixture(scope="module")
def trained(tmp_path_factory, case, dataset) -> Path:
    """bundle_root after the tiny network's learning run: ``case.learn`` epochs, validated once, at the end, so the
    key-metric checkpoint models/model.pt is the final model; the run's log is kept in train.log."""
    root = tmp_path_factory.mktemp(f"{case.name}_bundle")
    overrides = {**case.learn, "val_interval": case.learn["epochs"]}
    proc = ok(
        case.run("run", config_file=case.configs("train.json"), bundle_root=root, dataset_dir=dataset, **overrides)
    )
    (root / "train.log").write_text(proc.stdout + proc.stderr)
    return root


def epoch_losses(log: str) -> list[float]:
    """The mean training loss of each epoch, from the per-iteration lines of the bundle's ``StatsHandler``
    (``Epoch: 3/16, Iter: 2/2 -- train_loss: 0.8123``), in epoch order."""
    losses: dict[int, list[float]] = {}
    for epoch, loss in re.findall(r"Epoch: (\d+)/\d+, Iter: \d+/\d+ -- train_loss: (\S+)", log):
        losses.setdefault(int(epoch), []).append(float(loss))
    return [float(np.mean(losses[e])) for e in sorted(losses)]


def foreground_dice(pred: np.ndarray, label: np.ndarray) -> float:
    """Dice of foreground (any label > 0) against background; 0 when both are empty."""
    pred, label = pred > 0, label > 0
    total = pred.sum() + label.sum()
    return float(2 * (pred & label).sum() / total) if total else 0.0


def test_configs_are_formatted_with_indent_4(case):
    for path in case.configs_dir.glob("*.json"):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", path.name


@pytest.mark.parametrize(
    "files, ids",
    [
        (["inference.json", "demo.json"], ["network_def", "preprocessing", "inferer", "postprocessing"]),
        (["train.json", "demo.json"], ["network_def", "train#preprocessing", "validate#preprocessing", "optimizer"]),
        (["train.json", "evaluate.json"], ["validate#preprocessing", "validate#key_metric"]),
    ],
)
def test_demo_and_layered_configs_resolve(case, files, ids):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([case.configs_dir / f for f in files])
    for id_ in ids:
        assert parser.get_parsed_content(id_) is not None


def test_training_loss_falls(case, trained):
    losses = epoch_losses((trained / "train.log").read_text())
    assert len(losses) == case.learn["epochs"], losses
    assert losses[-1] < MAX_LOSS_RATIO * losses[0], f"the loss did not fall: {np.round(losses, 4).tolist()}"


def test_train_writes_a_plain_state_dict(case, trained):
    state = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values())
    assert not any(k.startswith("module.") for k in state)


# A validation score that falls at every validation (-0.5, -2.5, -4.5 with two validation cases), in place of the
# Dice: the first validation is the best and the last is not, whatever the tiny network learns.
FALLING_SCORE = {
    "val_score": {
        "_target_": "ignite.metrics.Average",
        "output_transform": "$lambda output, n=__import__('itertools').count(): torch.tensor(-float(next(n)))",
    }
}
FINAL_SAVER = {
    "_target_": "monai_ext.handlers.AtomicCheckpointSaver",
    "save_dir": "@ckpt_dir",
    "save_dict": {"model": "@network"},
    "save_final": True,
    "final_filename": "model_final.pt",
}


def test_train_json_saves_the_final_weights_apart_from_the_best(case):
    train = json.loads((case.configs_dir / "train.json").read_text())
    assert FINAL_SAVER in train["train"]["checkpoint_handlers"]
    assert train["validate"]["checkpoint_saver"]["key_metric_filename"] == "model.pt"


@pytest.mark.parametrize("name", ["cotr", "ssh_unet"])  # the wiring is the same in all five (test above)
def test_model_pt_keeps_the_best_validation_when_the_last_is_worse(name, tmp_path):
    case = next(c for c in CASES if c.name == name)
    data = tmp_path / "data"
    write_msd_dataset(data, num_train=4, num_test=0, shape=(32, 32, 32), seed=1, **case.data)
    root = tmp_path / "bundle"
    overrides = {
        "epochs": 3,
        "val_interval": 1,
        "validate#key_metric": FALLING_SCORE,
        # keep every epoch's checkpoint (checkpoint_epoch=N.pt) instead of the one checkpoint_last.pt ("$None": the
        # command line drops a plain None)
        "train#checkpoint_handlers#1#interval_filename": "$None",
        "train#checkpoint_handlers#1#n_saved": "$None",
    }
    ok(case.run("run", config_file=case.configs("train.json"), bundle_root=root, dataset_dir=data, **overrides))
    models = root / "models"

    def weights(path: Path, key: str | None = None) -> dict:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state[key] if key else state

    best, final = weights(models / "model.pt"), weights(models / "model_final.pt")
    epochs = {e: weights(models / f"checkpoint_epoch={e}.pt", "model") for e in (1, 2, 3)}
    assert not any(k.startswith("module.") for k in final) and final.keys() == best.keys()
    same = [e for e, state in epochs.items() if all(torch.equal(state[k], best[k]) for k in best)]
    assert same == [1], f"model.pt holds the weights of epoch(s) {same}, not those of the best validation (1)"
    assert all(torch.equal(final[k], epochs[3][k]) for k in final)  # model_final.pt: the last epoch's weights


def test_evaluate_writes_metrics(case, trained, dataset):
    ok(
        case.run(
            "run", config_file=case.configs("train.json", "evaluate.json"), bundle_root=trained, dataset_dir=dataset
        )
    )
    metrics = dict(line.split(",") for line in (trained / "eval" / "metrics.csv").read_text().splitlines())
    assert float(metrics["val_mean_dice"]) > MIN_VAL_MEAN_DICE, metrics


def _pred_name(image: str) -> str:
    return Path(image).name.replace(".nii.gz", "_seg.nii.gz")


@pytest.fixture(scope="module")
def predictions(tmp_path_factory, case, trained, dataset) -> Path:
    """The output folder of the trained model's inference run on the dataset's test images."""
    out = tmp_path_factory.mktemp(f"{case.name}_inference") / "pred"
    ok(
        case.run(
            "run", config_file=case.configs("inference.json"), bundle_root=trained, dataset_dir=dataset, output_dir=out
        )
    )
    return out


def test_inference_writes_labels_on_the_input_grid(case, predictions, dataset):
    tests = json.loads((dataset / "dataset.json").read_text())["test"]
    assert sorted(p.name for p in predictions.iterdir()) == sorted(_pred_name(t) for t in tests)
    for t in tests:
        image = nib.load(dataset / t)
        pred = nib.load(predictions / _pred_name(t))
        assert pred.shape == image.shape[:3]
        np.testing.assert_allclose(pred.affine, image.affine, atol=1e-5)
        assert set(np.unique(np.asarray(pred.dataobj))) <= set(range(case.num_classes))


def test_inference_finds_the_labelled_foreground(case, predictions, dataset):
    for item in json.loads((dataset / "dataset.json").read_text())["test_labeled"]:
        pred = np.asarray(nib.load(predictions / _pred_name(item["image"])).dataobj)
        label = np.asarray(nib.load(dataset / item["label"]).dataobj)
        dice, chance = foreground_dice(pred, label), foreground_dice(np.ones_like(label), label)
        assert dice > max(2 * chance, MIN_FOREGROUND_DICE), (
            f"{item['image']}: foreground Dice {dice:.3f}, all-foreground {chance:.3f} (predicted foreground fraction "
            f"{np.mean(pred > 0):.4f}, labelled {np.mean(label > 0):.4f})"
        )


def test_foreground_dice_of_predictions_that_ignore_the_image(case, dataset):
    for item in json.loads((dataset / "dataset.json").read_text())["test_labeled"]:
        label = np.asarray(nib.load(dataset / item["label"]).dataobj)
        p = np.mean(label > 0)
        assert 0 < p < 0.1
        assert foreground_dice(np.zeros_like(label), label) == 0.0  # all background
        assert foreground_dice(np.ones_like(label), label) == pytest.approx(2 * p / (1 + p))  # all foreground
        assert foreground_dice(label, label) == 1.0


def test_epoch_losses_are_read_from_the_stats_handler_log():
    log = "\n".join(
        f"2026-01-01 00:00:00,000 - INFO - Epoch: {e}/2, Iter: {i}/2 -- train_loss: {loss} "
        for e, i, loss in [(1, 1, 2.0), (1, 2, 1.0), (2, 1, 0.5), (2, 2, "nan")]
    )
    losses = epoch_losses(log + "\n... Epoch[2] Metrics -- train_mean_dice: 0.5000 ")
    assert losses[0] == 1.5 and np.isnan(losses[1])  # a NaN loss never passes `last < ratio * first`


TORCHRUN = Path(sys.executable).parent / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists() and shutil.which("torchrun") is None, reason="torchrun not installed")
def test_two_process_training_on_cpu(case, dataset, tmp_path):
    torchrun = str(TORCHRUN) if TORCHRUN.exists() else shutil.which("torchrun")
    cmd = [torchrun, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run"]
    overrides = {
        "config_file": case.configs("train.json", "multi_gpu_train.json"),
        "bundle_root": tmp_path,
        "dataset_dir": dataset,
        **case.tiny,
    }
    ok(run_in(case.root, cmd, overrides))  # ends through shutdown_distributed: no abort at exit, no retry
    for name in ("model.pt", "model_final.pt"):
        state = torch.load(tmp_path / "models" / name, weights_only=True)
        assert not any(k.startswith("module.") for k in state)  # saved unwrapped from DistributedDataParallel


def _good_image(dataset: Path) -> np.ndarray:
    return np.asarray(nib.load(dataset / "imagesTr" / "case_000.nii.gz").dataobj).astype(np.float32)


def _custom_datalist(tmp_path: Path, dataset: Path, images: dict[str, np.ndarray]) -> Path:
    """Write images (name -> array) as NIfTI beside a datalist listing them under ``training`` with a real label."""
    affine = nib.load(dataset / "imagesTr" / "case_000.nii.gz").affine
    entries = []
    for name, array in images.items():
        nib.save(nib.Nifti1Image(array, affine), tmp_path / f"{name}.nii.gz")
        entries.append({"image": f"./{name}.nii.gz", "label": str(dataset / "labelsTr" / "case_000.nii.gz")})
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"training": entries}))
    return path


def _infer(case: Case, trained: Path, datalist: Path, out: Path) -> subprocess.CompletedProcess:
    return case.run(
        "run",
        config_file=case.configs("inference.json"),
        bundle_root=trained,
        datalist=datalist,
        dataset_dir=datalist.parent,
        data_list_key="training",
        output_dir=out,
    )


def _fails_with(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_missing_datalist_is_reported_and_nothing_written(case, trained, tmp_path):
    out = tmp_path / "pred"
    proc = _infer(case, trained, tmp_path / "nowhere" / "dataset.json", out)
    _fails_with(proc, "not found; point the bundle at your data")
    assert not out.exists()


def test_2d_image_is_refused(case, trained, dataset, tmp_path):
    image = _good_image(dataset)
    flat = image[:, :, 0] if image.ndim == 3 else image[:, :, 0, 0]  # one slice of one channel
    datalist = _custom_datalist(tmp_path, dataset, {"flat": flat})
    _fails_with(_infer(case, trained, datalist, tmp_path / "pred"), "a 3D volume (X, Y, Z) is expected")
    assert not (tmp_path / "pred").exists()


def test_wrong_channel_count_is_refused(case, trained, dataset, tmp_path):
    image = _good_image(dataset)
    volume = image if image.ndim == 3 else image[..., 0]
    wrong = np.stack([volume] * (case.in_channels + 1), axis=-1)
    datalist = _custom_datalist(tmp_path, dataset, {"wrong_channels": wrong})
    _fails_with(_infer(case, trained, datalist, tmp_path / "pred"), f"has {case.in_channels + 1} channels")
    assert not (tmp_path / "pred").exists()


def test_nan_voxels_fail_and_leave_no_partial_predictions(case, trained, dataset, tmp_path):
    bad = _good_image(dataset)
    bad[(3, 4, 5) + (0,) * (bad.ndim - 3)] = np.nan  # one voxel of one channel
    # the good case is processed first: its prediction must not be published when the second case fails
    datalist = _custom_datalist(tmp_path, dataset, {"a_good": _good_image(dataset), "b_nan": bad})
    out = tmp_path / "pred"
    _fails_with(_infer(case, trained, datalist, out), "1 voxel(s) are NaN or infinite")
    assert not out.exists() and not (tmp_path / "pred.partial").exists()


def test_image_label_size_mismatch_stops_training_before_it_starts(case, dataset, tmp_path):
    image = _good_image(dataset)
    datalist = _custom_datalist(tmp_path, dataset, {f"c{i}": image[:, :, :24] for i in range(3)})
    proc = case.run(
        "run",
        config_file=case.configs("train.json"),
        bundle_root=tmp_path / "b",
        datalist=datalist,
        dataset_dir=tmp_path,
    )
    _fails_with(proc, "image and label sizes differ")
    assert not (tmp_path / "b" / "models").exists()
