"""Tests of the efficiency suite: parameter and FLOP counts against hand-computed values, latency, records, reports."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from monai.inferers import SliceInferer, SlidingWindowInferer
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.bench import efficiency, measure, run_efficiency
from monai_ext.bench.efficiency import conv_peak
from monai_ext.networks import NetworkEntry, compile_network
from monai_ext.networks import registry as network_registry


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


def test_measure_counts_what_the_forward_function_runs():
    conv2d = torch.nn.Conv2d(1, 2, 3, padding=1)
    slice_wise = lambda n, x: n(x.permute(0, 4, 1, 2, 3).reshape(-1, 1, 4, 4))  # noqa: E731
    r = measure(conv2d, (1, 1, 4, 4, 6), "cpu", repeats=1, forward=slice_wise)
    assert r["gflop"] == pytest.approx(2 * (2 * 16 * 9) * 6 / 1e9, rel=1e-12)  # 6 slices of 2 x 4^2 outputs


def _tiny3d(in_channels=1, out_channels=2):
    return torch.nn.Sequential(torch.nn.Conv3d(in_channels, 4, 3, padding=1), torch.nn.Conv3d(4, out_channels, 1))


@pytest.fixture
def tiny_rows(monkeypatch):
    """A toy 2D row, and a toy in place of the reference dynunet_3d."""
    rows = {
        "tiny_2d": NetworkEntry(
            "tiny_2d", lambda in_channels=1, out_channels=2: torch.nn.Conv2d(in_channels, out_channels, 1), "2d",
            "Tiny 2D", inferer=lambda **kw: SliceInferer(2, roi_size=(-1, -1), sw_batch_size=16), patch=(8, 8, 1),
        ),
        "dynunet_3d": NetworkEntry(
            "dynunet_3d", _tiny3d, "3d", "Tiny 3D", family="monai",
            inferer=lambda **kw: SlidingWindowInferer(**{"roi_size": (96, 96, 96), "overlap": 0.25, **kw}),
        ),
    }  # fmt: skip
    for name, entry in rows.items():
        monkeypatch.setitem(network_registry._REGISTRY, name, entry)
    return rows


def test_run_efficiency_records_ratios_and_reports(tiny_rows, tmp_path, capsys):
    out = tmp_path / "bench" / "nested"
    records = run_efficiency(quick=True, output_dir=str(out), networks=list(tiny_rows), threads=1, fresh_process=False)
    assert json.loads((out / "efficiency.json").read_text()) == records
    assert (out / "efficiency.md").read_text() in capsys.readouterr().out
    assert [(r["network"], r["allocator"]) for r in records] == [
        ("tiny_2d", "default"),
        ("tiny_2d", "tuned"),
        ("dynunet_3d", "default"),
        ("dynunet_3d", "tuned"),
    ]
    voxels = 64 * 64 * 32
    for r in records:
        assert r["machine"]["torch"] == torch.__version__ and r["machine"]["threads"] == 1
        assert r["machine"]["device"] == "cpu" and r["amp"] is False and r["precision"] == "fp32"
        assert r["conv3d_shape"] == [1, 32, 32, 32, 32] and r["conv3d_gflops"] > 0
        assert r["conv_fraction"] == pytest.approx(r["gflops_achieved"] / r["conv3d_gflops"])
        assert r["volume_s"] > 0 and r["train_step_s"] > 0 and r["peak_memory_gib"] > 0
        assert r["gflops_achieved"] == pytest.approx(r["gflop"] / r["latency_s"]["median"])
        assert r["peak_fraction"] == pytest.approx(r["gflops_achieved"] / r["matmul_gflops"])
        assert r["gflop_own_patch"] is None  # quick mode skips the paper patch
        ref = next(x for x in records if x["network"] == "dynunet_3d" and x["allocator"] == r["allocator"])
        assert r["latency_vs_reference"] == pytest.approx(r["latency_s"]["median"] / ref["latency_s"]["median"])
        assert r["volume_vs_reference"] == pytest.approx(r["volume_s"] / ref["volume_s"])
    assert records[0]["params"] == 1 * 14 + 14 and records[0]["gflop"] == pytest.approx(2 * voxels * 14 / 1e9)
    assert records[2]["params"] == (4 * 27 + 4) + (4 * 14 + 14)
    assert records[2]["latency_vs_reference"] == 1.0


def test_conv_peak_counts_the_flops_torch_counts():
    r = conv_peak(quick=True, threads=1)
    conv = torch.nn.Conv3d(32, 32, 3, padding=1, bias=False)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        conv(torch.randn(*r["shape"]))
    assert r["shape"] == [1, 32, 32, 32, 32]
    assert r["gflop"] == pytest.approx(counter.get_total_flops() / 1e9, rel=1e-12) == 2 * 32 * 32 * 27 * 32**3 / 1e9
    assert 0.1 < r["gflops"] < 1e6


def test_amp_runs_forward_and_volume_in_bf16_and_training_in_fp32(tiny_rows, monkeypatch, tmp_path):
    dtypes = []

    def build(in_channels=1, out_channels=2):
        net = _tiny3d(in_channels, out_channels)
        net[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
        return net

    hooked = dataclasses.replace(tiny_rows["dynunet_3d"], builder=build)
    monkeypatch.setitem(network_registry._REGISTRY, "dynunet_3d", hooked)
    kw = {"networks": ["dynunet_3d"], "allocators": ["default"], "threads": 1, "fresh_process": False}
    (r,) = run_efficiency(quick=True, amp=True, output_dir=str(tmp_path), **kw)
    assert r["amp"] is True and r["precision"] == "bfloat16"
    assert "forward and whole volume in bfloat16 (autocast)" in (tmp_path / "efficiency.md").read_text()
    # FLOP count + 2 timed forward passes + whole volume (several windows) in bf16, then two fp32 training steps
    first_fp32 = dtypes.index(torch.float32)
    assert first_fp32 >= 4 and set(dtypes[:first_fp32]) == {torch.bfloat16}
    assert dtypes[first_fp32:] == [torch.float32] * 2


def test_compile_times_a_compiled_copy_after_its_first_passes(tiny_rows, monkeypatch, tmp_path):
    compiled = []

    def spy(net, freeze=False):
        compiled.append((net, freeze))
        return compile_network(net, freeze=freeze)

    monkeypatch.setattr(efficiency, "compile_network", spy)
    kw = {"networks": ["dynunet_3d"], "allocators": ["default"], "threads": 1, "fresh_process": False}
    (r,) = run_efficiency(quick=True, compile=True, output_dir=str(tmp_path), **kw)
    ((net, freeze),) = compiled
    assert freeze and [name for name in vars(net) if callable(getattr(type(net), name, None))] == ["forward"]
    assert r["compiled"] is True and r["first_s"] > 0 and r["volume_first_s"] > 0 and r["volume_s"] > 0
    assert "fp32, compiled (torch.compile)" in (tmp_path / "efficiency.md").read_text()
    (plain,) = run_efficiency(quick=True, **kw)
    assert plain["compiled"] is False and "first_s" not in plain and "volume_first_s" not in plain


def test_run_efficiency_refuses_unknown_rows_and_settings(tiny_rows):
    with pytest.raises(ValueError, match=r"unknown networks \['nope'\]"):
        run_efficiency(networks=["nope"], fresh_process=False)
    with pytest.raises(ValueError, match=r"allocators \['fast'\]"):
        run_efficiency(allocators=["fast"], fresh_process=False)
    with pytest.raises(ValueError, match="measures on 'cpu' or 'cuda"):
        run_efficiency(device="mps", fresh_process=False)


def test_run_efficiency_falls_back_to_cpu_without_cuda(tiny_rows, monkeypatch, capsys):
    monkeypatch.setattr(efficiency.torch.cuda, "is_available", lambda: False)
    kw = {"networks": ["tiny_2d"], "allocators": ["default"], "fresh_process": False}
    records = run_efficiency(device="cuda", quick=True, **kw)
    assert "CUDA is not available" in capsys.readouterr().out
    assert records[0]["machine"]["device"] == "cpu"
    assert records[0]["latency_vs_reference"] is None  # no dynunet_3d row in this run


def test_a_real_row_in_a_fresh_process_with_the_tuned_allocator():
    (r,) = run_efficiency(quick=True, networks=["dynunet_2d"], allocators=["tuned"], threads=1)
    assert r["params"] == 10_705_134 and r["allocator"] == "tuned"
    assert r["peak_memory_source"] == "VmHWM" and 0.1 < r["peak_memory_gib"] < 8
    assert 0.1 < r["inference_peak_gib"] <= r["peak_memory_gib"]


def test_flops_count_the_fast_cpu_layers_as_the_convolutions_they_compute():
    from torch import nn

    from monai_ext.bench.efficiency import _flops
    from monai_ext.networks.blocks.cpu_conv import fast_cpu_convs

    net = nn.Sequential(nn.Conv3d(4, 8, 3, padding=1), nn.Conv3d(8, 2, 1))
    plain = _flops(net, lambda n, x: n(x), (1, 4, 6, 6, 6), "cpu")
    fast_cpu_convs(net)  # a small single-sample map: oneDNN's direct call, which FlopCounterMode does not count
    assert _flops(net, lambda n, x: n(x), (1, 4, 6, 6, 6), "cpu") == plain == 2 * 6**3 * (27 * 4 * 8 + 8 * 2) / 1e9
