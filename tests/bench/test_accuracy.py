import json
import math

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from monai_ext.bench.accuracy import load_cases, run_accuracy, train_and_score
from monai_ext.data import write_msd_dataset
from monai_ext.networks import NetworkEntry
from monai_ext.networks import registry as network_registry


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("acc") / "data"
    write_msd_dataset(root, num_train=2, num_test=1, shape=(24, 24, 24), seed=3)
    return root


@pytest.fixture
def tiny_row(monkeypatch):
    entry = NetworkEntry(
        "toy_acc", lambda in_channels=1, out_channels=2: torch.nn.Conv3d(in_channels, out_channels, 3, padding=1),
        "3d", "Toy", inferer=lambda **kw: SlidingWindowInferer(**{"roi_size": (96, 96, 96), **kw}),
    )  # fmt: skip
    monkeypatch.setitem(network_registry._REGISTRY, entry.name, entry)
    return entry


def test_cases_are_z_scored_with_their_labels(data):
    cases = load_cases(data, "test_labeled")
    ((image, label),) = cases
    assert image.shape == label.shape == (1, 24, 24, 24)
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1) < 1e-2
    assert set(label.unique().tolist()) <= {0.0, 1.0, 2.0}


def test_train_and_score_spends_the_budget_and_scores_each_class(tiny_row, data):
    r = train_and_score("toy_acc", str(data), seed=0, budget_s=0.5, roi=(24, 24, 24), threads=1)
    assert r["steps"] >= 1 and r["train_cpu_s"] >= 0.5
    assert set(r["dice"]) == {"vessel", "nodule"} and len(r["dice_per_case"]) == 1
    assert all(0.0 <= d <= 1.0 or math.isnan(d) for d in r["dice"].values())
    again = train_and_score("toy_acc", str(data), seed=0, budget_s=0.0, roi=(24, 24, 24), threads=1)
    assert again["steps"] == 0  # no budget, no step: the untrained network is scored


def test_run_accuracy_writes_records_and_a_table(tiny_row, tmp_path, capsys):
    records = run_accuracy(
        str(tmp_path), ["toy_acc"], seeds=(0, 1), budget_s=0.2, quick=True, threads=1, fresh_process=False
    )
    assert [(r["network"], r["seed"]) for r in records] == [("toy_acc", 0), ("toy_acc", 1)]
    assert json.loads((tmp_path / "accuracy.json").read_text()) == records
    table = (tmp_path / "accuracy.md").read_text()
    assert "| toy_acc | 2 |" in table and table in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown networks"):
        run_accuracy(str(tmp_path), networks=["nope"], fresh_process=False)


def test_run_accuracy_takes_the_task_and_runs_jobs_in_parallel_in_order(tiny_row, tmp_path, monkeypatch):
    import monai_ext.bench.accuracy as acc

    started = []

    def fake_fresh(target, args):
        started.append(args)
        dice = {"vessel": 0.5, "nodule": 0.5}
        return {"network": args["name"], "seed": args["seed"], "steps": 1, "dice": dice, "infer_s": 0.1}

    monkeypatch.setattr(acc, "run_fresh", fake_fresh)
    records = run_accuracy(str(tmp_path), ["toy_acc"], seeds=(0, 1, 2), budget_s=0.1, quick=True, jobs=2)
    assert [(r["network"], r["seed"], r["task"]) for r in records] == [
        ("toy_acc", s, "vessels_oblique") for s in range(3)
    ]
    assert {a["recipe"] for a in started} == {"bundle"}
    generator = json.loads((tmp_path / "accuracy_data" / "dataset.json").read_text())["generator"]
    assert generator["task"] == "vessels_oblique"
    run_accuracy(str(tmp_path), ["toy_acc"], seeds=(0,), budget_s=0.1, quick=True, task="vessels", recipe="plain")
    assert started[-1]["recipe"] == "plain"
    assert (
        json.loads((tmp_path / "accuracy_data" / "dataset.json").read_text())["generator"].get("task")
        != "vessels_oblique"
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"task": "lesions"}, "task must be"),
        ({"recipe": "own"}, "recipe must be"),
        ({"jobs": 0}, "jobs must be"),
        ({"jobs": 2, "fresh_process": False}, "jobs must be"),
    ],
)
def test_run_accuracy_refuses_what_it_cannot_run(tiny_row, tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_accuracy(str(tmp_path), ["toy_acc"], budget_s=0.1, quick=True, **kwargs)


def test_train_and_score_uses_the_recipe(tiny_row, data):
    r = train_and_score("toy_acc", str(data), budget_s=0.0, roi=(24, 24, 24), threads=1, learning_rate=0.02)
    assert r["optimizer"] == "Adam, lr 0.02"  # no bundle: Adam at the given rate
    with pytest.raises(ValueError, match="recipe must be"):
        train_and_score("toy_acc", str(data), budget_s=0.0, roi=(24, 24, 24), recipe="own")
