import json

import pytest

from monai_ext.demo import run_demo


@pytest.mark.slow
@pytest.mark.parametrize("task", ["vessels", "vessels_oblique"])
def test_demo_runs_the_bundle_end_to_end(tmp_path, capsys, task):
    # one epoch on tiny volumes: checks the pipeline (data, bundle train + inference, scoring, picture), not accuracy
    results = run_demo(str(tmp_path / "demo"), num_train=4, num_test=2, size=32, epochs=1, task=task)
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved == results and results["num_test_cases"] == 2 and results["task"] == task
    generator = json.loads((tmp_path / "demo" / "data" / "dataset.json").read_text())["generator"]
    assert generator.get("task", "vessels") == task
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


@pytest.mark.parametrize("task", ["lesions", "vessel"])
def test_demo_refuses_a_task_that_is_not_vessels_ct(tmp_path, task):
    with pytest.raises(ValueError, match=r"vessel/nodule CT task, one of \['vessels', 'vessels_oblique'\]"):
        run_demo(str(tmp_path / "demo"), task=task)
    assert not (tmp_path / "demo").exists()


def test_demo_bundles_come_from_the_registry():
    from monai_ext.demo import demo_bundles

    assert demo_bundles() == {
        "ssh_unet": "SSH-UNet",
        "scaa": "SCAA*",
        "thick2d": "Thickened 2D (ESM + SSA)",
        "cotr": "CoTr",
    }
