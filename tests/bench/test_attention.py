"""Tests of the attention benchmark: the non-local baseline, FLOP counts and map sizes by hand, the JSON report."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from monai_ext.bench import NonLocalBlock, attention, run_attention
from monai_ext.bench.attention import (
    VARIANTS,
    build_variant,
    count_flops,
    map_bytes,
    peak_growth,
    rsanet_bottleneck_shape,
)
from monai_ext.bench.process import run_fresh
from monai_ext.inferers import PadInferer
from monai_ext.networks.nets import RSANet

SHAPE = (1, 4, 2, 3, 4)  # N = 24 voxels, C = 4, inner channels 2; RSA attends along sizes 2, 3 then 4


@pytest.mark.parametrize("shape", [(2, 6, 3, 4, 5), (1, 5, 7, 1, 2)])
def test_non_local_naive_and_sdpa_agree(shape):
    torch.manual_seed(0)
    naive = NonLocalBlock(3, shape[1], mode="naive").eval()
    sdpa = NonLocalBlock(3, shape[1], mode="sdpa").eval()
    sdpa.load_state_dict(naive.state_dict())
    x = torch.randn(*shape)
    with torch.inference_mode():
        a, b = naive(x), sdpa(x)
    assert a.shape == x.shape
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a, x)  # the attention path contributes


def test_non_local_2d_and_inner_channels():
    block = NonLocalBlock(2, 8, inner_channels=3, mode="sdpa")
    assert block.theta.out_channels == 3 and block.out.in_channels == 3
    assert NonLocalBlock(3, 1).theta.out_channels == 1  # C // 2, at least 1
    assert block(torch.randn(2, 8, 5, 6)).shape == (2, 8, 5, 6)
    with pytest.raises(ValueError, match="mode must be"):
        NonLocalBlock(3, 8, mode="flash")
    with pytest.raises(ValueError, match="variant must be one of"):
        build_variant("local", 8)


def test_flops_by_hand():
    n, c, ci = 24, 4, 2
    conv_nl = 3 * 2 * n * c * ci + 2 * n * ci * c  # theta, phi, g (C -> C'), out (C' -> C)
    attn_nl = 2 * (2 * n * n * ci)  # (N x C')(C' x N), then (N x N)(N x C')
    for variant in ("non-local naive", "non-local sdpa"):
        flops = count_flops(build_variant(variant, c), torch.randn(*SHAPE))
        assert flops == {"total": conv_nl + attn_nl, "attention": attn_nl}, variant
    # RSA along a dimension with S slices of length L = C * N / S: (S x L)(L x S) then (S x S)(S x L)
    attn_rsa = sum(2 * (2 * s * s * (c * n // s)) for s in (2, 3, 4))
    conv_rsa = 3 * 3 * 2 * n * c * c  # theta, phi, g (C -> C) recomputed for each of the 3 directions
    assert count_flops(build_variant("RSA", c), torch.randn(*SHAPE)) == {
        "total": conv_rsa + attn_rsa,
        "attention": attn_rsa,
    }


def test_sdpa_variant_uses_the_fused_kernel():
    """3D (B, N, C') inputs send the CPU dispatch to the math path, which builds the map with bmm."""
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=attention._CUSTOM_FLOPS) as c:
        build_variant("non-local sdpa", 4)(torch.randn(*SHAPE))
    ops = {str(op) for op in c.get_flop_counts()["Global"]}
    assert "aten.bmm" not in ops and any("scaled_dot_product" in op for op in ops), ops


def test_map_bytes_by_hand():
    assert map_bytes("RSA", SHAPE) == 4 * (3 * 3 + 4 * 4 + 2 * 2)
    assert map_bytes("non-local naive", SHAPE) == 24 * 24 * 4
    assert map_bytes("non-local sdpa", SHAPE) == 0
    assert map_bytes("RSA", (2, *SHAPE[1:])) == 2 * map_bytes("RSA", SHAPE)  # one map per batch element
    assert map_bytes("non-local naive", (2, *SHAPE[1:])) == 2 * 24 * 24 * 4
    assert map_bytes("RSA", SHAPE, spatial_dims_order=(2,)) == 4 * 4 * 4  # along the last axis only
    # the full-size rows: RSANet's bottleneck 12x12x4 and a 24^3 map
    assert map_bytes("RSA", (1, 512, 12, 12, 4)) == 4 * (144 + 144 + 16)
    assert map_bytes("non-local naive", (1, 512, 12, 12, 4)) == 576**2 * 4
    assert map_bytes("non-local naive", (1, 64, 24, 24, 24)) == 24**6 * 4  # 729 MiB


def test_bottleneck_shape_matches_rsanet():
    assert rsanet_bottleneck_shape() == (1, 512, 12, 12, 4)  # RSANet's default filters, 1x3x192x192x64
    net = RSANet(filters=(8, 16, 16), dropout=None).eval()
    seen = []
    net.rsa_bottleneck.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    for image in [(1, 3, 8, 12, 20), (2, 3, 6, 11, 17)]:  # divisible, and padded up to multiples of 4
        with torch.inference_mode():
            PadInferer(4)(torch.randn(*image), net)
        assert seen[-1] == rsanet_bottleneck_shape(image, (8, 16, 16)) == (image[0], 16, 2, 3, 5)


def test_peak_growth_fresh_process_sees_the_naive_map():
    shape = (1, 8, 16, 16, 16)  # N = 4096: a 64 MiB map (and as much again for its softmax)
    naive = run_fresh(
        "monai_ext.bench.attention:peak_growth", {"variant": "non-local naive", "shape": list(shape), "threads": 1}
    )
    assert naive["source"] == "VmHWM"
    assert naive["growth_mib"] >= map_bytes("non-local naive", shape) / 2**20
    sdpa = peak_growth("non-local sdpa", shape, threads=1)  # in this process: an upper bound is still one
    assert sdpa["growth_mib"] < 16


def test_run_attention_quick_writes_json_with_ratios(tmp_path, capsys):
    out = tmp_path / "bench" / "nested"
    rows = run_attention(quick=True, output_dir=str(out), fresh_process=False)
    report = json.loads((out / "attention.json").read_text())
    assert report["rows"] == rows
    assert set(report["meta"]) == {"torch", "machine", "threads", "repeats", "fresh_process", "malloc_env"}
    assert report["meta"]["fresh_process"] is False and report["meta"]["repeats"] == 3
    assert [(r["shape"], r["variant"]) for r in rows] == [
        (s, v) for s in ([1, 16, 6, 6, 2], [1, 16, 8, 8, 8]) for v in VARIANTS
    ]
    ratio_keys = {"map", "peak_growth", "gflop", "gflop_attention", "time"}
    for r in rows:
        assert set(r["vs_naive"]) == set(r["vs_sdpa"]) == ratio_keys
        assert r["map_mib"] == map_bytes(r["variant"], r["shape"]) / 2**20
        assert r["time_s"]["min"] <= r["time_s"]["median"] <= r["time_s"]["max"]
        assert r["peak_growth_mib"] >= 0
    for i in (0, 3):
        rsa, naive, sdpa = rows[i : i + 3]
        assert naive["vs_naive"]["map"] == naive["vs_naive"]["gflop"] == naive["vs_naive"]["time"] == 1
        assert sdpa["vs_naive"]["map"] is None and sdpa["vs_sdpa"]["map"] is None  # sdpa stores no map
        assert sdpa["gflop"] == naive["gflop"] and sdpa["vs_naive"]["gflop_attention"] == 1
        assert rsa["vs_naive"]["map"] == pytest.approx(naive["map_mib"] / rsa["map_mib"])
        assert rsa["vs_naive"]["time"] == pytest.approx(naive["time_s"]["median"] / rsa["time_s"]["median"])
        assert rsa["vs_sdpa"]["gflop_attention"] == pytest.approx(sdpa["gflop_attention"] / rsa["gflop_attention"])
    # 8^3 map, C = 16: naive attention 4 N^2 C/2 FLOPs; RSA 4 S C N per direction, S = 8 three times
    assert rows[4]["gflop_attention"] == pytest.approx(4 * 512**2 * 8 / 1e9)
    assert rows[3]["vs_naive"]["gflop_attention"] == pytest.approx((4 * 512**2 * 8) / (3 * 4 * 8 * 16 * 512))
    table = capsys.readouterr().out
    assert "| input | variant | stored map | peak growth (MiB) |" in table
    assert "| 1x16x8x8x8 (feature map) | non-local naive | 1 MiB |" in table
