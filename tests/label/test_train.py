"""The training task's weights: the best-metric model.pt is served, the final weights are kept beside it."""

from __future__ import annotations

import os

import torch

from monai_ext.label.train import FINAL_WEIGHTS, _signature, publish_final_weights


def _save(path, value: float) -> None:
    torch.save({"w": torch.full((2,), value)}, path)


def test_a_run_that_saved_its_best_model_keeps_it(tmp_path):
    served = tmp_path / "model.pt"
    _save(served, 0.0)
    before = _signature(served)
    _save(served, 1.0)  # the bundle's best-metric saver wrote model.pt during the run
    _save(tmp_path / FINAL_WEIGHTS, 2.0)
    assert not publish_final_weights(tmp_path, before)
    assert torch.load(served)["w"][0] == 1.0


def test_a_run_without_validation_serves_its_final_weights(tmp_path):
    served = tmp_path / "model.pt"
    _save(served, 0.0)
    before = _signature(served)
    _save(tmp_path / FINAL_WEIGHTS, 2.0)
    inode = os.stat(served).st_ino
    assert publish_final_weights(tmp_path, before)
    assert torch.load(served)["w"][0] == 2.0
    assert os.stat(served).st_ino != inode  # replaced by a rename, never written in place
    assert torch.load(tmp_path / FINAL_WEIGHTS)["w"][0] == 2.0


def test_first_run_without_any_model(tmp_path):
    _save(tmp_path / FINAL_WEIGHTS, 3.0)
    assert publish_final_weights(tmp_path, None)
    assert torch.load(tmp_path / "model.pt")["w"][0] == 3.0


def test_a_run_that_saved_nothing_changes_nothing(tmp_path):
    served = tmp_path / "model.pt"
    _save(served, 0.0)
    assert not publish_final_weights(tmp_path, _signature(served))
    assert torch.load(served)["w"][0] == 0.0 and not (tmp_path / FINAL_WEIGHTS).exists()
