"""Training that survives a crash: every bundle's train.json saves a resumable checkpoint each epoch, atomically, and
``--resume true`` continues from it.

The wiring is checked in every bundle's configs (it is the same in all five); the crash itself (SIGKILL in the middle
of training, then a rerun with ``--resume true``) is run end to end on two bundles, one with an LR scheduler and one
without.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from monai_ext.bundles import bundle_dir
from monai_ext.data import write_msd_dataset
from tests.bundles.test_bundles import CASES, Case, ok

BUNDLES = ["cotr", "rsanet", "scaa", "ssh_unet", "thick2d"]

ATTACH = "$[handler.attach(@train#trainer) for handler in @train#checkpoint_handlers]"
LOADER = {
    "_target_": "CheckpointLoader",
    "_disabled_": "$not monai_ext.handlers.resume_from(@resume, @last_checkpoint)",
    "load_path": "@last_checkpoint",
    "load_dict": "@train#checkpoint",
    "map_location": "@device",
}
LAST_SAVER = {
    "_target_": "monai_ext.handlers.AtomicCheckpointSaver",
    "save_dir": "$os.path.dirname(@last_checkpoint)",
    "save_dict": "@train#checkpoint",
    "save_interval": 1,
    "interval_filename": "$os.path.basename(@last_checkpoint)",
}
BEST_SAVER = {
    "_target_": "monai_ext.handlers.AtomicCheckpointSaver",
    "save_dir": "@ckpt_dir",
    "save_dict": {"model": "@network"},
    "save_key_metric": True,
    "key_metric_filename": "model.pt",
}


def config(bundle: str, name: str) -> dict:
    return json.loads((bundle_dir(bundle) / "configs" / name).read_text())


def _targets(node) -> list[str]:
    """Every ``_target_`` in a config, however deep."""
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in ([v] if k == "_target_" else _targets(v))]
    if isinstance(node, list):
        return [t for v in node for t in _targets(v)]
    return []


@pytest.mark.parametrize("bundle", BUNDLES)
def test_train_json_saves_a_resumable_checkpoint_and_resumes_on_request(bundle):
    train = config(bundle, "train.json")
    assert train["resume"] is False  # resuming is asked for: --resume true
    parser = ConfigParser(config(bundle, "train.json"))  # (the parser rewrites the dict it is given)
    parser["bundle_root"] = "/b"
    assert parser.get_parsed_content("last_checkpoint") == "/b/models/checkpoint_last.pt"
    expected = {
        "model": "@network",
        "optimizer": "@optimizer",
        "trainer": "@train#trainer",
        "key_metric_saver": "@validate#checkpoint_saver",  # the best score so far: a resumed run keeps model.pt
    }
    if train.get("lr_scheduler") is not None:
        expected["lr_scheduler"] = "@lr_scheduler"
    assert train["train"]["checkpoint"] == expected
    assert train["train"]["checkpoint_handlers"][:2] == [LOADER, LAST_SAVER]  # then model_final.pt's (test_bundles)
    assert train["initialize"][-1] == ATTACH  # attached after the trainer is built: the trainer is in the checkpoint
    assert train["validate"]["checkpoint_saver"] == BEST_SAVER
    assert "@validate#checkpoint_saver" in train["validate"]["handlers"]
    schedulers = [h["lr_scheduler"] for h in train["train"]["handlers"] if h.get("_target_") == "LrScheduleHandler"]
    assert all(s in expected.values() for s in schedulers)


@pytest.mark.parametrize("bundle", BUNDLES)
def test_multi_gpu_train_attaches_the_same_checkpoints_and_ends_with_a_clean_shutdown(bundle):
    multi = config(bundle, "multi_gpu_train.json")
    init = multi["initialize"]
    assert init[-1] == ATTACH
    assert any("init_process_group" in step for step in init[:-1])  # the trainer holds DDP: built after the group
    assert multi["finalize"] == ["$monai_ext.handlers.shutdown_distributed()"]


@pytest.mark.parametrize("bundle", BUNDLES)
def test_every_checkpoint_a_bundle_writes_is_atomic(bundle):
    for path in (bundle_dir(bundle) / "configs").glob("*.json"):
        assert "CheckpointSaver" not in _targets(json.loads(path.read_text())), path.name


# ---------------------------------------------------------------- a killed run resumes (end to end)

EPOCHS = 4
TRAINER_EPOCH = re.compile(r"SupervisedTrainer - INFO - Epoch\[(\d+)\] Complete")


def _epoch(checkpoint: Path) -> int:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)["trainer"]
    return state["iteration"] // state["epoch_length"]


def _trained_epochs(log: str) -> list[int]:
    return [int(e) for e in TRAINER_EPOCH.findall(log)]


@pytest.fixture(params=[c for c in CASES if c.name in ("ssh_unet", "rsanet")], ids=lambda c: c.name)
def resume_case(request) -> Case:
    return request.param


@pytest.mark.slow
def test_training_killed_mid_run_resumes_from_its_last_epoch(resume_case, tmp_path):
    case = resume_case
    data = tmp_path / "data"
    write_msd_dataset(data, num_train=4, num_test=0, shape=(32, 32, 32), seed=1, **case.data)
    root = tmp_path / "bundle"
    overrides = {**case.tiny, "epochs": EPOCHS, "val_interval": 1, "bundle_root": root, "dataset_dir": data}
    last = root / "models" / "checkpoint_last.pt"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", case.configs("train.json")]
    for key, value in overrides.items():
        cmd += [f"--{key}", str(value)]

    first_log = tmp_path / "first.log"
    with first_log.open("w") as out:
        first = subprocess.Popen(cmd, cwd=case.root, stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while not last.is_file() and first.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)
            assert last.is_file(), "no checkpoint_last.pt was written: " + first_log.read_text()[-3000:]
            first.send_signal(signal.SIGKILL)  # in the next epoch: mid-training, perhaps mid-save
        finally:
            first.kill()
            first.wait()
    killed_at = _epoch(last)
    assert 1 <= killed_at < EPOCHS, first_log.read_text()[-3000:]
    assert first.returncode == -signal.SIGKILL

    resumed = ok(case.run("run", config_file=case.configs("train.json"), **overrides, resume="true"))
    log = resumed.stdout + resumed.stderr
    assert f"Restored all variables from {last}" in log
    assert _trained_epochs(log) == list(range(killed_at + 1, EPOCHS + 1)), log[-3000:]
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert _epoch(last) == EPOCHS
    assert checkpoint["optimizer"]["state"]  # the optimizer's moments were saved (and restored) too
    if "lr_scheduler" in checkpoint:
        assert checkpoint["lr_scheduler"]["last_epoch"] == EPOCHS  # the schedule continued, not restarted

    parser = ConfigParser()
    parser.read_config(str(case.configs_dir / "inference.json"))
    for key, value in case.tiny.items():  # as the command line reads them
        parser[key] = ast.literal_eval(value) if isinstance(value, str) else value
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(root / "models" / "model.pt", weights_only=True))  # strict: every key fits
