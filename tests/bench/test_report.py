import json

import pytest

from monai_ext.bench.report import accuracy_summary, accuracy_table, plot_from_dir

RUNS = [
    {"network": "A", "seed": 0, "steps": 10, "infer_s": 1.0, "dice": {"vessel": 0.8, "nodule": 0.4}},
    {"network": "A", "seed": 1, "steps": 12, "infer_s": 3.0, "dice": {"vessel": 0.6, "nodule": 0.2}},
    {"network": "B", "seed": 0, "steps": 5, "infer_s": 2.0, "dice": {"vessel": 0.9, "nodule": 0.9}},
]


def test_accuracy_summary_by_hand():
    a, b = accuracy_summary(RUNS)
    assert a["network"] == "A" and a["seeds"] == [0, 1] and a["steps"] == 11 and a["infer_s"] == 2.0
    assert a["dice"]["vessel"] == pytest.approx({"mean": 0.7, "min": 0.6, "max": 0.8})
    assert a["mean_dice"] == pytest.approx({"mean": 0.5, "min": 0.4, "max": 0.6})
    assert b["mean_dice"]["mean"] == pytest.approx(0.9)
    table = accuracy_table([a, b], 60)
    assert "| A | 2 | 11 | 0.700 [0.600, 0.800] | 0.300 [0.200, 0.400] | 0.500 | 2.0 |" in table


def test_plot_needs_both_reports(tmp_path):
    assert plot_from_dir(tmp_path) is None
    (tmp_path / "accuracy.json").write_text(json.dumps(RUNS))
    assert plot_from_dir(tmp_path) is None
    efficiency = [{"network": "A", "gflop": 10.0, "params": 1e6}, {"network": "B", "gflop": 300.0, "params": 3e7}]
    (tmp_path / "efficiency.json").write_text(json.dumps(efficiency))
    path = plot_from_dir(tmp_path)
    assert path == tmp_path / "flops_vs_dice.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
