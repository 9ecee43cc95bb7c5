import json

import numpy as np
import pytest

from monai_ext.data import LABELS
from monai_ext.demo import dice_per_class, run_demo


def test_dice_per_class_by_hand():
    truth = np.array([0, 1, 1, 2, 2, 0])
    pred = np.array([0, 1, 2, 2, 2, 1])
    scores = dice_per_class(pred, truth, LABELS)
    assert scores["vessel"] == pytest.approx(2 * 1 / (2 + 2))
    assert scores["nodule"] == pytest.approx(2 * 2 / (3 + 2))
    assert np.isnan(dice_per_class(np.zeros(3), np.zeros(3), LABELS)["vessel"])


@pytest.mark.slow
def test_demo_runs_the_bundle_end_to_end(tmp_path, capsys):
    # one epoch on tiny volumes: checks the pipeline (data, bundle train + inference, scoring, picture), not accuracy
    results = run_demo(str(tmp_path / "demo"), num_train=4, num_test=2, size=32, epochs=1)
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved == results and results["num_test_cases"] == 2
    for name in ("vessel", "nodule"):
        assert 0.0 <= results["dice"][name] <= 1.0
    assert sum(results["chance"].values()) == pytest.approx(1.0)
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 10_000
    assert len(list((tmp_path / "demo" / "predictions").glob("*_seg.nii.gz"))) == 2
    out = capsys.readouterr().out
    assert "| vessel |" in out and "| nodule |" in out and "peak" in out


def test_demo_refuses_a_bundle_without_a_vessels_demo(tmp_path):
    with pytest.raises(ValueError, match="rsanet"):
        run_demo(str(tmp_path / "demo"), bundle="rsanet")
    assert not (tmp_path / "demo").exists()  # refused before anything is written
