"""Tests of the efficiency harness: parameter and FLOP counts against hand-computed values, latency, the JSON report."""

from __future__ import annotations

import json

import pytest
import torch

from monai_ext.bench import efficiency, measure, run_efficiency


def _tiny_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(2, 1, 1))


def test_measure_single_conv_params_and_flops_by_hand():
    r = measure(torch.nn.Conv3d(1, 2, 3, padding=1), (1, 1, 4, 4, 4), "cpu", repeats=1)
    # weights 2 * 1 * 3^3 + 2 biases; every one of the 2 * 4^3 outputs is 1 * 3^3 multiply-adds (padding included)
    assert r["params"] == 2 * 27 + 2 == 56
    assert r["gflop"] == pytest.approx(2 * (2 * 64 * 27) / 1e9, rel=1e-12)


def test_measure_sums_layers_and_scales_with_input():
    r = measure(_tiny_net(), (1, 1, 4, 4, 4), "cpu", repeats=1)
    assert r["params"] == 56 + (2 * 1 + 1)
    macs = 2 * 64 * 27 + 1 * 64 * 2  # conv 3^3 (1 -> 2) + conv 1^3 (2 -> 1)
    assert r["gflop"] == pytest.approx(2 * macs / 1e9, rel=1e-12)
    r2 = measure(_tiny_net(), (2, 1, 4, 4, 8), "cpu", repeats=1)  # 4x the voxels
    assert r2["params"] == r["params"]
    assert r2["gflop"] == pytest.approx(4 * r["gflop"], rel=1e-12)


def test_measure_latency_keys_ordering_and_forward_count():
    net = _tiny_net()
    calls = []
    net.register_forward_hook(lambda m, i, o: calls.append(torch.is_inference_mode_enabled()))
    net.train()
    r = measure(net, (1, 1, 4, 4, 4), "cpu", repeats=3)
    assert set(r) == {"params", "gflop", "latency_s"}
    lat = r["latency_s"]
    assert set(lat) == {"median", "min", "max"}
    assert 0 < lat["min"] <= lat["median"] <= lat["max"] < 10
    assert calls == [True] * 4  # one counted pass + 3 timed ones, all without autograd
    assert not net.training  # measured in eval mode


@pytest.fixture
def tiny_networks(monkeypatch):
    nets = {
        "Tiny A": lambda i, o: torch.nn.Conv3d(i, o, 1),
        "DynUNet 3D": lambda i, o: torch.nn.Sequential(torch.nn.Conv3d(i, 4, 3, padding=1), torch.nn.Conv3d(4, o, 1)),
    }
    monkeypatch.setattr(efficiency, "NETWORKS", nets)
    return nets


def test_run_efficiency_quick_writes_json_with_ratio_to_dynunet(tiny_networks, tmp_path, capsys):
    out = tmp_path / "bench" / "nested"
    rows = run_efficiency(quick=True, out_channels=3, output_dir=str(out))
    report = json.loads((out / "efficiency.json").read_text())
    assert report["rows"] == rows
    assert set(report["meta"]) == {"torch", "machine", "threads"}
    assert report["meta"]["torch"] == torch.__version__
    assert [r["network"] for r in rows] == ["Tiny A", "DynUNet 3D"]
    voxels = 32**3
    for r in rows:
        assert r["input"] == [1, 1, 32, 32, 32] and r["device"] == "cpu"
        lat = r["latency_s"]
        assert lat["min"] <= lat["median"] <= lat["max"]
    tiny, ref = rows
    assert tiny["params"] == 1 * 3 + 3
    assert tiny["gflop"] == pytest.approx(2 * voxels * 3 / 1e9)
    assert ref["params"] == (4 * 27 + 4) + (4 * 3 + 3)
    assert ref["gflop"] == pytest.approx(2 * voxels * (4 * 27 + 3 * 4) / 1e9)
    assert ref["latency_vs_dynunet3d"] == 1.0
    assert tiny["latency_vs_dynunet3d"] == pytest.approx(tiny["latency_s"]["median"] / ref["latency_s"]["median"])
    table = capsys.readouterr().out
    assert "| network | params (M) | GFLOP | latency median [min, max] (s) | vs DynUNet 3D |" in table
    assert "| DynUNet 3D | 0.00 | 0.0 |" in table and "| 1.00x |" in table
    assert f"| {tiny['latency_vs_dynunet3d']:.2f}x |" in table


def test_run_efficiency_without_output_dir_writes_nothing(tiny_networks, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = run_efficiency(quick=True, out_channels=2)
    assert len(rows) == 2 and list(tmp_path.iterdir()) == []


def test_run_efficiency_falls_back_to_cpu_without_cuda(tiny_networks, monkeypatch, capsys):
    monkeypatch.setattr(efficiency.torch.cuda, "is_available", lambda: False)
    rows = run_efficiency(device="cuda", quick=True, out_channels=2)
    assert "CUDA is not available: measuring on the CPU" in capsys.readouterr().out
    assert {r["device"] for r in rows} == {"cpu"}


def test_run_efficiency_needs_the_dynunet_reference(monkeypatch):
    monkeypatch.setattr(efficiency, "NETWORKS", {"tiny": lambda i, o: torch.nn.Conv3d(i, o, 1)})
    with pytest.raises(ValueError, match="needs a 'DynUNet 3D' entry"):
        efficiency.run_efficiency(quick=True)
