import json

import pytest

from monai_ext.bench.whole_volume import CONTENDERS, NETWORKS, _measure_fresh, build_network, run_whole_volume


def test_quick_run_measures_every_contender(tmp_path, capsys):
    rows = run_whole_volume(quick=True, out_channels=2, output_dir=str(tmp_path), fresh_process=False)
    assert [r["contender"] for r in rows] == list(CONTENDERS)
    assert CONTENDERS == ("scaa_star train", "scaa_star infer", "dynunet_3d train", "dynunet_3d infer")
    for r in rows:
        assert "error" not in r, r
        assert r["peak_mib"] > 0 and r["time_s"] > 0 and r["shape"] == [1, 1, 64, 64, 32]
    saved = json.loads((tmp_path / "whole_volume.json").read_text())
    assert saved["ratios"]["train"]["peak_mib"] == pytest.approx(rows[2]["peak_mib"] / rows[0]["peak_mib"])
    assert "dynunet_3d / scaa_star (train)" in capsys.readouterr().out


def test_fresh_process_result_and_out_of_memory_is_reported_not_raised():
    spec = {"contender": "dynunet_3d train", "shape": [1, 1, 64, 64, 32], "num_slices": 4, "out_channels": 2}
    spec.update({"device": "cpu", "quick": True, "threads": 1, "memory_limit_gib": 0.05})
    result = _measure_fresh(spec)  # 50 MiB of address space: the first allocations fail
    assert "error" in result
    spec.update({"contender": "scaa_star infer", "memory_limit_gib": None})
    result = _measure_fresh(spec)
    assert result["peak_mib"] > 0 and result["source"] == "VmHWM"


def test_the_contenders_come_from_the_registry():
    assert NETWORKS == ("scaa_star", "dynunet_3d")
    assert type(build_network("dynunet_3d", 2, quick=True)).__name__ == "DynUNet"
    with pytest.raises(ValueError, match="name must be one of"):
        build_network("unetr", 2)
