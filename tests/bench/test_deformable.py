"""Smoke tests of the deformable-attention benchmark at tiny sizes: it runs and its records hold the fields."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.bench.deformable import (
    GROUPS,
    REFERENCES,
    _autocast,
    build_contender,
    peak_growth,
    run_deformable,
    sizes,
)
from monai_ext.networks.blocks import MSDeformableAttention, deformable_reference_points


def test_sizes_are_read_from_the_registrys_cotr():
    s = sizes()
    assert s["patch"] == (192, 192, 48)  # the paper patch, slices last
    assert s["levels"] == [(24, 24, 12), (12, 12, 6)]
    assert sum(h * w * d for h, w, d in s["levels"]) == 7776  # the tokens of one 192 x 192 x 48 patch
    assert (s["d"], s["heads"], s["points"], s["layers"], s["ffn"]) == (384, 6, 4, 6, 1536)
    assert s["dynunet_filters"] == (32, 64, 128, 256, 320, 320)
    assert sizes(quick=True)["levels"] == [(4, 4, 4), (2, 2, 2)]


@pytest.mark.parametrize("group", ["core", "encoder"])
def test_contenders_of_a_group_agree_where_they_should(group):
    fast, reference = (build_contender(name, quick=True)[0] for name in GROUPS[group][:2])
    with torch.inference_mode():
        torch.testing.assert_close(fast(), reference())  # same seed and weights: the two cores give one result


def test_linear_floor_does_the_encoders_matrix_work():
    # FlopCounterMode counts matrix products only; the fast core (embedding_bag) adds none of them
    counts = []
    for name in ("DeTrans fast", "DeTrans linear layers"):
        run, _ = build_contender(name, quick=True)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            run()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1] > 0


def test_run_records_hold_the_fields(tmp_path):
    rows = run_deformable(quick=True, output_dir=str(tmp_path), threads=(1,), repeats=1, fresh_process=False)
    assert [(r["group"], r["contender"]) for r in rows] == [(g, c) for g, names in GROUPS.items() for c in names]
    for r in rows:
        assert r["threads"] == 1 and r["forward_s"]["min"] > 0 and r["peak_forward_mib"] is not None
        assert set(r["vs"]) == set(REFERENCES[r["group"]])
        if r["group"] == "network":
            assert r["train_s"] is None and r["peak_train_mib"] is None
        else:
            assert r["train_s"]["median"] > 0 and r["vs"][REFERENCES[r["group"]][0]]["train"] > 0
        own = r["vs"].get(r["contender"])
        if own is not None:  # a reference against itself
            assert own["forward"] == pytest.approx(1.0)
    saved = json.loads((tmp_path / "deformable.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(rows)) and saved["meta"]["quick"] is True


def test_peak_growth_fields():
    out = peak_growth("fast core", quick=True)
    assert set(out) == {"peak_forward_mib", "peak_train_mib", "source"} and out["peak_train_mib"] >= 0
    assert set(peak_growth("fast core", quick=True, backward=False)) == {"peak_forward_mib", "source"}


def test_unknown_inputs_raise():
    with pytest.raises(ValueError, match="unknown contender"):
        build_contender("nope", quick=True)
    with pytest.raises(ValueError, match="groups must be taken"):
        run_deformable(quick=True, groups=("cores",))
    with pytest.raises(ValueError, match="precision must be one of"):
        run_deformable(quick=True, groups=("core",), precision="fp16")


def test_bf16_autocast_runs_the_encoder_in_bf16(tmp_path):
    attn = MSDeformableAttention(hidden_size=16, num_levels=2, num_heads=2, num_points=2)
    shapes = [(4, 4, 4), (2, 2, 2)]
    x = torch.randn(1, 72, 16)
    with torch.inference_mode(), _autocast("bf16"):
        out = attn(x, deformable_reference_points(shapes)[None], x, shapes)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()  # the projections and the core ran in bf16
    rows = run_deformable(quick=True, output_dir=str(tmp_path), threads=(1,), repeats=1, groups=("encoder",),
                          fresh_process=False, precision="bf16")  # fmt: skip
    assert len(rows) == len(GROUPS["encoder"]) and all(r["train_s"]["median"] > 0 for r in rows)
    assert json.loads((tmp_path / "deformable.json").read_text())["meta"]["precision"] == "bf16"
