"""Experiment tracking of every bundle: TensorBoard event files from train.json, and ``--tracking mlflow``.

One tiny training run per bundle (two epochs, validated after each) with MONAI's default MLflow settings: the run
logs to a local SQLite store, ``<output_dir>/mlruns.db`` (mlflow 3.13+ has no file store; no server), and the
bundle's own ``TensorBoardStatsHandler`` s write event files to ``output_dir``. Both are read back here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from monai_ext.data import write_msd_dataset
from tests.bundles.test_bundles import CASES, Case, ok

pytestmark = pytest.mark.slow

EPOCHS = 2
ITERATIONS = 2  # per epoch: 4 training cases, val_fraction 0.5, batch size 1 (scaa: 1 volume per batch)


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.name)
def case(request) -> Case:
    return request.param


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, case) -> tuple[Path, subprocess.CompletedProcess]:
    """``bundle_root`` after a tiny ``--tracking mlflow`` training run, and the finished process."""
    tmp = tmp_path_factory.mktemp(f"{case.name}_tracking")
    data = tmp / "data"
    write_msd_dataset(data, num_train=4, num_test=0, shape=(32, 32, 32), seed=1, **case.data)
    root = tmp / "bundle"
    proc = ok(
        case.run(
            "run",
            config_file=case.configs("train.json"),
            bundle_root=root,
            dataset_dir=data,
            tracking="mlflow",
            epochs=EPOCHS,
            val_interval=1,
        )
    )
    return root, proc


def _scalars(output_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files of ``output_dir``: tag -> [(step, value), ...]."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(output_dir.glob("events.out.tfevents.*")):
        events = EventAccumulator(str(path))
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in events.Scalars(tag))
    return scalars


def test_train_json_logs_to_tensorboard(case, tracked):
    root, _ = tracked
    scalars = _scalars(root / "eval")
    losses = scalars["train_loss"]
    assert [step for step, _ in losses] == list(range(1, EPOCHS * ITERATIONS + 1))  # every iteration
    assert all(torch.isfinite(torch.tensor(v)) and v > 0 for _, v in losses)
    dice = scalars["val_mean_dice"]
    assert [step for step, _ in dice] == list(range(1, EPOCHS + 1))  # every validation, at the trainer's epoch
    assert all(0 <= v <= 1 for _, v in dice)


def test_tracking_mlflow_records_the_run_in_a_local_store(case, tracked):
    mlflow = pytest.importorskip("mlflow")
    root, proc = tracked
    store = root / "eval" / "mlruns.db"
    assert store.is_file(), proc.stderr[-3000:]
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("monai_experiment")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    losses = client.get_metric_history(run.info.run_id, "train_loss")
    # a float per iteration: a trainer that does not decollate (cotr, scaa) gave MLflow a tuple and failed
    assert sorted(m.step for m in losses) == list(range(1, EPOCHS * ITERATIONS + 1))
    tensorboard_losses = [v for _, v in _scalars(root / "eval")["train_loss"]]
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(tensorboard_losses, rel=1e-6)
    dice = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert sorted(m.step for m in dice) == list(range(1, EPOCHS + 1))
    # the executed config is logged as an artifact
    assert any(a.path.startswith("config_") for a in client.list_artifacts(run.info.run_id))
