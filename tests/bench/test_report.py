import json

import pytest

from monai_ext.bench.report import accuracy_summary, accuracy_table, efficiency_table, plot_from_dir

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


def _efficiency_record(network: str, gflops: float) -> dict:
    machine = {"device": "cpu", "threads": 2}
    return {
        "network": network, "allocator": "default", "amp": True, "precision": "bfloat16", "params": 2e6,
        "gflop": 10.0, "gflop_own_patch": None, "latency_s": {"median": 10 / gflops, "min": 0.05, "max": 0.2},
        "latency_vs_reference": 1.0, "gflops_achieved": gflops, "peak_fraction": gflops / 400,
        "conv_fraction": gflops / 200, "volume_s": 1.5, "volume_vs_reference": None, "train_step_s": 2.0,
        "train_step_vs_reference": 1.0, "peak_memory_gib": 1.25, "matmul_gflops": 400.0, "conv3d_gflops": 200.0,
        "conv3d_shape": [1, 32, 64, 64, 64], "machine": machine,
    }  # fmt: skip


def test_efficiency_table_gives_the_rates_and_each_rows_share_of_the_conv_rate():
    table = efficiency_table([_efficiency_record("A", 100.0), _efficiency_record("B", 250.0)])
    title = (
        "default allocator, cpu (2 threads), forward and whole volume in bfloat16 (autocast); matmul 400 GFLOP/s "
        "(fp32), dense 3^3 Conv3d 200 GFLOP/s (1x32x64x64x64, bfloat16)"
    )
    assert title in table
    assert "| GFLOP/s | % of matmul | % of conv3d |" in table
    assert "| A | 2.00 | 10.0 | n/a | 0.100 [0.050, 0.200] | 1.00x | 100 | 25 % | 50 % | 1.50 | n/a | 2.00 |" in table
    assert "| peak GiB, inference | peak GiB, with training |" in table
    assert "| 1.00x | n/a | 1.25 |" in table  # a record from before the inference peak was measured
    assert "| B | 2.00 | 10.0 | n/a | 0.040 [0.050, 0.200] | 1.00x | 250 | 62 % | 125 % |" in table


def test_efficiency_table_gives_the_inference_peak_beside_the_overall_one():
    table = efficiency_table([_efficiency_record("A", 100.0) | {"inference_peak_gib": 0.75}])
    assert "| 2.00 | 1.00x | 0.75 | 1.25 |" in table
