"""Memory, FLOPs and time of recurrent slice-wise attention (RSA) against a non-local block over all voxels.

The non-local block runs either *naive* (the ``N x N`` softmax map is materialised) or through
:func:`torch.nn.functional.scaled_dot_product_attention` (*sdpa*, which never materialises it). The contenders
are measured on RSANet's bottleneck and on a larger feature map, in one run: FLOPs with
:class:`~torch.utils.flop_counter.FlopCounterMode`, forward time interleaved over repeats, and the peak memory
growth of one forward pass in a fresh process per variant.
"""

from __future__ import annotations

import gc
import inspect
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from monai_ext.bench.flops import counting_flops
from monai_ext.bench.process import peak_bytes, reset_peak, run_fresh
from monai_ext.bench.report import malloc_env, save_json, suite_meta
from monai_ext.bench.stats import ratio, spread
from monai_ext.networks.blocks.slice_attention import RecurrentSliceAttention
from monai_ext.networks.nets.rsanet import RSANet

__all__ = [
    "VARIANTS",
    "NonLocalBlock",
    "build_variant",
    "count_flops",
    "map_bytes",
    "peak_growth",
    "rsanet_bottleneck_shape",
    "run_attention",
]

VARIANTS = ("RSA", "non-local naive", "non-local sdpa")
_MIB = 2**20


class NonLocalBlock(nn.Module):
    """Non-local block, embedded Gaussian (Wang et al., "Non-local Neural Networks", CVPR 2018): the baseline.

    ``theta``, ``phi`` and ``g`` are ``1^n`` convolutions ``C -> inner_channels``; every voxel attends to all
    ``N`` voxels with ``softmax(theta^T phi)`` (unscaled, as the paper), mixes ``g``, and a ``1^n`` convolution
    ``out`` maps back to ``C`` before the residual: ``x + out(softmax(theta^T phi) g)``. ``out`` keeps PyTorch's
    default initialisation (the paper zero-initialises it), so the attention path is visible in outputs.

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels ``C`` of input and output.
        inner_channels: channels of theta, phi and g; default ``C // 2`` (at least 1).
        mode: ``"naive"`` materialises the ``(B, N, N)`` map with ``bmm`` and ``softmax``; ``"sdpa"`` calls
            :func:`torch.nn.functional.scaled_dot_product_attention` on contiguous 4D ``(B, 1, N, C')`` tensors
            (with 3D inputs PyTorch's CPU dispatch falls back to its math path, which does build the map).

    Shapes:
        input and output ``(B, in_channels, *spatial)``.
    """

    def __init__(
        self, spatial_dims: int, in_channels: int, inner_channels: int | None = None, mode: str = "naive"
    ) -> None:
        super().__init__()
        if mode not in ("naive", "sdpa"):
            raise ValueError(f"mode must be 'naive' or 'sdpa', got {mode!r}.")
        if spatial_dims not in (1, 2, 3) or in_channels < 1:
            raise ValueError(f"need spatial_dims in (1, 2, 3) and in_channels >= 1, got {spatial_dims}, {in_channels}.")
        inner = max(in_channels // 2, 1) if inner_channels is None else inner_channels
        conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]
        self.mode = mode
        self.theta = conv(in_channels, inner, kernel_size=1)
        self.phi = conv(in_channels, inner, kernel_size=1)
        self.g = conv(in_channels, inner, kernel_size=1)
        self.out = conv(inner, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, spatial = x.shape[0], x.shape[2:]
        q = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        k = self.phi(x).flatten(2).transpose(1, 2)  # (B, N, C')
        v = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        if self.mode == "naive":
            attention = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)  # (B, N, N)
            y = torch.bmm(attention, v)  # (B, N, C')
        else:
            q, k, v = (t.unsqueeze(1).contiguous() for t in (q, k, v))  # (B, 1, N, C'): the fused CPU kernel
            y = nn.functional.scaled_dot_product_attention(q, k, v, scale=1.0).squeeze(1)
        return x + self.out(y.transpose(1, 2).reshape(b, -1, *spatial))


def build_variant(variant: str, channels: int, spatial_dims: int = 3) -> nn.Module:
    """One of :data:`VARIANTS` for ``channels`` input channels: RSA as in RSANet, or a :class:`NonLocalBlock`."""
    if variant == "RSA":
        return RecurrentSliceAttention(spatial_dims, channels)
    if variant in ("non-local naive", "non-local sdpa"):
        return NonLocalBlock(spatial_dims, channels, mode=variant.split()[-1])
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")


def rsanet_bottleneck_shape(
    input_shape: Sequence[int] = (1, 3, 192, 192, 64), filters: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Shape of the feature map RSANet's bottleneck RSA sees for ``input_shape`` ``(B, C, H, W, D)`` padded to
    multiples of ``2 ** (len(filters) - 1)`` (as :class:`~monai_ext.inferers.PadInferer` pads for it);
    ``filters`` defaults to RSANet's own default."""
    if filters is None:
        filters = inspect.signature(RSANet).parameters["filters"].default
    divisor = 2 ** (len(filters) - 1)
    return (input_shape[0], filters[-1], *(-(-s // divisor) for s in input_shape[2:]))


def map_bytes(variant: str, shape: Sequence[int], spatial_dims_order: Sequence[int] = (0, 1, 2)) -> int:
    """Bytes of the fp32 attention map(s) a variant stores for an input ``shape`` ``(B, C, *spatial)``.

    RSA: one ``B x S x S`` map per attended spatial axis of ``spatial_dims_order`` (``S`` slices along it; RSA's
    default order, every axis); naive non-local: ``B x N x N`` over all ``N`` voxels; sdpa: none.
    """
    if variant == "RSA":
        return sum(shape[0] * shape[2 + a] ** 2 * 4 for a in spatial_dims_order)
    if variant == "non-local naive":
        return shape[0] * math.prod(shape[2:]) ** 2 * 4
    if variant == "non-local sdpa":
        return 0
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}.")


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """``q k^T`` and ``attention v`` as two matmuls (2 x MAC), as PyTorch counts its GPU attention kernels."""
    *batch, s_q, d_q = query_shape
    return 2 * math.prod(batch) * s_q * key_shape[-2] * (d_q + value_shape[-1])


# FlopCounterMode knows the CUDA attention kernels but not the fused CPU one
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_CUSTOM_FLOPS = {_CPU_SDPA: _sdpa_flops} if _CPU_SDPA is not None else {}


def count_flops(module: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs (2 x MAC) of one forward pass: ``total`` and ``attention`` (everything but the convolutions)."""
    with torch.inference_mode(), counting_flops(_CUSTOM_FLOPS) as counter:
        module(x)
    counts = counter.get_flop_counts().get("Global", {})
    conv = sum(n for op, n in counts.items() if "convolution" in str(op))
    total = counter.get_total_flops()
    return {"total": total, "attention": total - conv}


def peak_growth(variant: str, shape: Sequence[int], threads: int | None = None) -> dict:
    """Peak resident memory growth of one forward pass, measured in this process.

    Builds the module and the input, runs the module once on a ``2^n`` input (library set-up, little memory),
    resets the peak to the current resident size where the kernel allows it, and reads the peak before and
    after the forward pass on ``shape``. Memory the allocator kept from earlier work can hide growth: measure
    in a fresh process (:func:`run_attention` does).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = build_variant(variant, shape[1], len(shape) - 2).eval()
    x = torch.randn(*shape)
    with torch.inference_mode():
        module(torch.randn(*shape[:2], *(min(s, 2) for s in shape[2:])))
        gc.collect()
        reset = reset_peak()
        before, source = peak_bytes()
        module(x)
        after, _ = peak_bytes()
    return {"before_mib": before / _MIB, "growth_mib": (after - before) / _MIB, "source": source, "reset": reset}


def _time_interleaved(modules: dict[str, nn.Module], x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Forward times of every module over ``repeats`` rounds after one warm-up each, the modules interleaved
    within a round so that load from other processes hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in modules}
    with torch.inference_mode():
        for module in modules.values():
            module(x)
        for _ in range(repeats):
            for name, module in modules.items():
                start = time.perf_counter()
                module(x)
                times[name].append(time.perf_counter() - start)
    return times


def _shapes(quick: bool) -> list[tuple[str, tuple[int, ...]]]:
    if quick:  # a 2-level RSANet(filters=(8, 16)) on 1x3x12x12x4, and a 16-channel 8^3 map
        return [
            ("RSANet(filters=(8, 16)) bottleneck of 1x3x12x12x4", rsanet_bottleneck_shape((1, 3, 12, 12, 4), (8, 16))),
            ("feature map", (1, 16, 8, 8, 8)),
        ]
    return [
        ("RSANet bottleneck of 1x3x192x192x64", rsanet_bottleneck_shape((1, 3, 192, 192, 64))),
        ("feature map", (1, 64, 24, 24, 24)),
    ]


def _fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:,.0f}x" if r >= 100 else f"{r:.3g}x"


def _fmt_mib(mib: float) -> str:
    if mib == 0:
        return "0"
    return f"{mib:.4g} MiB" if mib >= 1 else f"{mib * 1024:.3g} KiB"


def run_attention(quick: bool = False, output_dir: str | None = None, fresh_process: bool = True) -> list[dict]:
    """Measure RSA, naive non-local and sdpa non-local on RSANet's bottleneck (512 x 12 x 12 x 4 for a
    1 x 3 x 192 x 192 x 64 input) and on a 1 x 64 x 24^3 map (much smaller shapes with ``quick``), on the CPU.

    Per shape and variant: FLOPs (whole block, and its attention products alone), the bytes of the stored
    attention maps, forward time (median, min, max over 5 interleaved repeats after a warm-up; 3 with
    ``quick``) and peak memory growth of one forward pass, in a fresh process per variant unless
    ``fresh_process=False`` (then in this process, where memory the allocator kept can hide the growth).
    Ratios are ``reference / variant`` against the naive and the sdpa non-local block (how many times less
    memory or FLOPs, or how many times faster). Prints a Markdown table and writes ``attention.json`` to
    ``output_dir`` when given.
    """
    threads = torch.get_num_threads()
    repeats = 3 if quick else 5
    rows: list[dict] = []
    for label, shape in _shapes(quick):
        torch.manual_seed(0)
        modules = {v: build_variant(v, shape[1], len(shape) - 2).eval() for v in VARIANTS}
        x = torch.randn(*shape)
        print(f"measuring {', '.join(VARIANTS)} on {list(shape)} ({label}) ...", flush=True)
        flops = {v: count_flops(m, x) for v, m in modules.items()}
        times = _time_interleaved(modules, x, repeats)
        del modules, x
        gc.collect()
        for variant in VARIANTS:
            memory = (
                run_fresh(
                    "monai_ext.bench.attention:peak_growth",
                    {"variant": variant, "shape": list(shape), "threads": threads},
                )
                if fresh_process
                else peak_growth(variant, shape)
            )
            rows.append(
                {
                    "input": label,
                    "shape": list(shape),
                    "variant": variant,
                    "voxels": math.prod(shape[2:]),
                    "gflop": flops[variant]["total"] / 1e9,
                    "gflop_attention": flops[variant]["attention"] / 1e9,
                    "map_mib": map_bytes(variant, shape) / _MIB,
                    "peak_growth_mib": memory["growth_mib"],
                    "peak_source": memory["source"],
                    "time_s": spread(times[variant]),
                }
            )
        refs = {r["variant"]: r for r in rows[-len(VARIANTS) :]}
        for r in rows[-len(VARIANTS) :]:
            for name, ref in (("naive", refs["non-local naive"]), ("sdpa", refs["non-local sdpa"])):
                r[f"vs_{name}"] = {
                    key: ratio(get(ref), get(r))
                    for key, get in (
                        ("map", lambda row: row["map_mib"]),
                        ("peak_growth", lambda row: row["peak_growth_mib"]),
                        ("gflop", lambda row: row["gflop"]),
                        ("gflop_attention", lambda row: row["gflop_attention"]),
                        ("time", lambda row: row["time_s"]["median"]),
                    )
                }
    where = "a fresh process per variant" if fresh_process else "this process"
    print(
        f"\nRatios are naive / variant and sdpa / variant (x less memory or FLOPs, x faster); peak memory in {where}."
    )
    print(
        "\n| input | variant | stored map | peak growth (MiB) | GFLOP attention / block | time median [min, max] (s) "
        "| naive / this: map, peak, FLOP attention, FLOP block, time | sdpa / this: peak, FLOP attention, time |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        t, n, s = r["time_s"], r["vs_naive"], r["vs_sdpa"]
        naive = ", ".join(_fmt_ratio(n[k]) for k in ("map", "peak_growth", "gflop_attention", "gflop", "time"))
        sdpa = ", ".join(_fmt_ratio(s[k]) for k in ("peak_growth", "gflop_attention", "time"))
        print(
            f"| {'x'.join(map(str, r['shape']))} ({r['input']}) | {r['variant']} | {_fmt_mib(r['map_mib'])} | "
            f"{r['peak_growth_mib']:.1f} | {r['gflop_attention']:.4g} / {r['gflop']:.4g} | "
            f"{t['median']:.4f} [{t['min']:.4f}, {t['max']:.4f}] | {naive} | {sdpa} |"
        )
    if output_dir is not None:
        meta = suite_meta(threads=threads, repeats=repeats, fresh_process=fresh_process, malloc_env=malloc_env())
        save_json(output_dir, "attention", {"meta": meta, "rows": rows})
    return rows
