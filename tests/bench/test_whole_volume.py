import json

import pytest
import torch

from monai_ext.bench.whole_volume import CONTENDERS, build_network, infer_scaa, run_whole_volume, train_loss_scaa


def test_quick_run_measures_every_contender(tmp_path, capsys):
    rows = run_whole_volume(quick=True, out_channels=2, output_dir=str(tmp_path), fresh_process=False)
    assert [r["contender"] for r in rows] == list(CONTENDERS)
    for r in rows:
        assert "error" not in r, r
        assert r["peak_mib"] > 0 and r["time_s"] > 0 and r["shape"] == [1, 1, 32, 64, 64]
    saved = json.loads((tmp_path / "whole_volume.json").read_text())
    assert saved["ratios"]["train"]["peak_mib"] == pytest.approx(rows[2]["peak_mib"] / rows[0]["peak_mib"])
    assert "DynUNet 3D / SCAA (train)" in capsys.readouterr().out


def test_fresh_process_result_and_out_of_memory_is_reported_not_raised():
    from monai_ext.bench.whole_volume import _measure_fresh

    spec = {"contender": "DynUNet 3D train", "shape": [1, 1, 32, 64, 64], "num_slices": 4, "out_channels": 2}
    spec.update({"device": "cpu", "quick": True, "threads": 1, "memory_limit_gib": 0.05})
    result = _measure_fresh(spec)  # 50 MiB of address space: the first allocations fail
    assert "error" in result
    spec.update({"contender": "SCAA infer", "memory_limit_gib": None})
    result = _measure_fresh(spec)
    assert result["peak_mib"] > 0 and result["source"] == "VmHWM"


def test_unknown_network():
    with pytest.raises(ValueError, match="name must be"):
        build_network("UNETR", 2)


def test_registry_callables_train_and_infer_scaa():
    net = build_network("SCAA", 2, quick=True)
    net.slice_dim = 4  # the registry's (B, C, H, W, D) layout
    x, y = torch.rand(1, 1, 32, 32, 32), torch.randint(0, 2, (1, 1, 32, 32, 32))
    loss = train_loss_scaa(net, x, y, num_slices=2)
    loss.backward()
    assert loss.item() > 0
    with torch.no_grad():
        assert infer_scaa(net.eval(), x).shape == (1, 2, 32, 32, 32)
