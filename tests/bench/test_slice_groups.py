"""Smoke test of the slice-group benchmark: the tiny run writes its JSON and table (no timing asserts)."""

from __future__ import annotations

import json

import pytest

from monai_ext.bench.slice_groups import CONTENDERS, REFERENCE, _calls_and_flops, build_contenders, run_slice_groups
from monai_ext.inferers import SliceGroupInferer


def test_quick_run_writes_json_and_table(tmp_path, capsys):
    rows = run_slice_groups(quick=True, output_dir=str(tmp_path), threads=1)
    report = json.loads((tmp_path / "slice_groups.json").read_text())
    assert report["rows"] == rows and report["meta"]["quick"] is True and report["meta"]["threads"] == 1
    assert [r["contender"] for r in rows] == list(CONTENDERS)
    single, three, reference = rows
    assert reference["reference_over_this"] == 1.0
    for r in rows:
        assert r["time_s"]["min"] <= r["time_s"]["median"] <= r["time_s"]["max"]
        assert r["reference_over_this"] == pytest.approx(reference["time_s"]["median"] / r["time_s"]["median"])
    # calls: groups of 6 with stride 1 along the 32 axial slices, and as many along X and Y for three views
    assert single["calls"] == 32 - 6 + 1 == 27
    assert three["calls"] == 3 * 27
    assert single["params_m"] == three["params_m"]  # the same network for every view
    assert three["gflop"] > single["gflop"] > 0
    assert "| thick2d single view |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="repeats must be positive"):
        run_slice_groups(quick=True, repeats=0)
    with pytest.raises(ValueError, match="volume must be"):
        run_slice_groups(quick=True, volume=(1, 1, 16, 32, 32))


def test_flops_are_per_call_times_calls():
    contenders = build_contenders(quick=True)
    net, single = contenders["thick2d single view"]
    assert isinstance(single, SliceGroupInferer) and (single.num_slices, single.stride) == (6, 1)  # the registry's
    calls, flops = _calls_and_flops(net, single, (1, 1, 32, 32, 6))
    assert calls == 1
    calls8, flops8 = _calls_and_flops(net, single, (1, 1, 32, 32, 8))
    assert calls8 == 3 and flops8 == pytest.approx(3 * flops)
    ref_calls, _ = _calls_and_flops(*contenders[REFERENCE], (1, 1, 32, 32, 32))
    assert ref_calls == 3 * 3 * 3  # 16^3 windows, overlap 0.25: 3 positions per axis
