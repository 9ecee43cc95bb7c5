"""Time and memory of CoTr's deformable attention: our gather core against the grid_sample core, the DeTrans
encoder against a dense Transformer encoder, and CoTr against MONAI's DynUNet, at CoTr's sizes.

Every size comes from the registry's ``cotr`` (:func:`sizes`): its paper patch ``192 x 192 x 48`` (slices last)
and the levels its DeTrans encoder receives for it (``24 x 24 x 12`` and ``12 x 12 x 6`` tokens, d = 384, 6 heads,
4 points, 6 layers, FFN 1536). Three groups are measured:

- ``core``: the sampling step alone, :func:`~monai_ext.networks.blocks.deformable_attention_core` against
  :func:`~monai_ext.networks.blocks.deformable_attention_grid_sample`;
- ``encoder``: CoTr's DeTrans encoder with either core, and :class:`torch.nn.TransformerEncoder` (same width,
  heads, FFN and depth) over the same 7,776 tokens with dense attention; plus ``DeTrans linear layers``, the
  encoder's linear layers alone (value, offset, weight and output projections, FFN) on the same tokens: the time
  any sampling core adds to, so the floor of the encoder on this machine;
- ``network``: ``cotr`` and ``dynunet_3d`` (filters 32..320, strides fitted to the patch by
  :func:`~monai_ext.networks.nets.baselines.dynunet_strides`) on one ``1 x 1 x 192 x 192 x 48`` patch, forward only.

``precision="bf16"`` runs every contender under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (worth it on CPUs
with AVX-512 BF16 or AMX, where bf16 matrix products run several times faster than fp32).

Times (forward in inference mode; forward + backward of a scalar loss) are interleaved over the contenders of a
group within one process with ``torch.set_num_threads`` fixed, once per thread count; the peak resident-memory
growth of each contender is measured in a fresh process. Ratios are ``reference / contender`` within one group and
thread count (how many times faster or smaller).
"""

from __future__ import annotations

import functools
import gc
import math
import time
from collections.abc import Callable, Sequence

import torch
from torch import nn

from monai_ext.bench.process import peak_bytes, reset_peak, run_fresh
from monai_ext.bench.report import save_json, suite_meta
from monai_ext.bench.stats import ratio, spread
from monai_ext.networks import create_network, get_network_entry
from monai_ext.networks.blocks.deformable_attention import CORES, deformable_reference_points
from monai_ext.networks.blocks.detrans import DeTransEncoder
from monai_ext.networks.nets.baselines import DYNUNET_FILTERS, dynunet_strides

__all__ = [
    "GROUPS",
    "PRECISIONS",
    "REFERENCES",
    "build_contender",
    "measure_group",
    "peak_growth",
    "run_deformable",
    "sizes",
]

GROUPS = {
    "core": ("fast core", "grid_sample core"),
    "encoder": ("DeTrans fast", "DeTrans grid_sample", "dense TransformerEncoder", "DeTrans linear layers"),
    "network": ("cotr", "dynunet_3d"),
}
"""Contenders per group; the first of each group is ours."""
REFERENCES = {"core": ("grid_sample core",), "encoder": ("dense TransformerEncoder", "DeTrans grid_sample"),
              "network": ("dynunet_3d",)}  # fmt: skip
"""Contenders every ratio of a group is taken against."""
_MIB = 2**20
_QUICK = {  # tiny networks on a tiny patch for smoke runs
    "patch": (32, 32, 16),
    "cotr": {"encoder_channels": (8, 16, 24, 24), "num_layers": 1, "mlp_dim": 48, "num_heads": 2, "num_points": 2},
    "dynunet_3d": {"filters": (8, 16, 24, 32, 32)},
}


class _Captured(Exception):
    """Raised by the hook that reads what CoTr's DeTrans encoder receives, to skip the rest of the forward pass."""


def _cotr(quick: bool) -> tuple[nn.Module, DeTransEncoder, tuple[int, ...]]:
    """The registry's ``cotr`` (tiny with ``quick``), its DeTrans encoder, and its patch ``(H, W, D)``."""
    entry = get_network_entry("cotr")
    patch = _QUICK["patch"] if quick else entry.patch
    net = entry.build(in_channels=1, **(_QUICK["cotr"] if quick else {})).eval()
    return net, next(m for m in net.modules() if isinstance(m, DeTransEncoder)), tuple(patch)


@functools.cache
def sizes(quick: bool = False) -> dict:
    """CoTr's measured sizes, read from the registry's ``cotr`` (tiny overrides with ``quick``): its ``patch``, the
    ``levels`` (spatial shapes) its DeTrans encoder receives for that patch, the encoder's width ``d``, ``heads``,
    ``points``, ``layers`` and ``ffn``, and the ``dynunet_filters`` of the reference (``dynunet_3d``'s default)."""
    net, encoder, patch = _cotr(quick)
    levels: list[tuple[int, ...]] = []

    def capture(module: nn.Module, args: tuple) -> None:
        levels.extend(tuple(f.shape[2:]) for f in args[0])
        raise _Captured

    handle = encoder.register_forward_pre_hook(capture)
    try:
        with torch.inference_mode():
            net(torch.zeros(1, 1, *patch))  # the stem and CNN encoder run; the hook stops at DeTrans
    except _Captured:
        pass
    finally:
        handle.remove()
    attention = encoder.layers[0].self_attn
    filters = _QUICK["dynunet_3d"]["filters"] if quick else DYNUNET_FILTERS
    return {
        "patch": patch,
        "levels": levels,
        "d": encoder.hidden_size,
        "heads": attention.num_heads,
        "points": attention.num_points,
        "layers": len(encoder.layers),
        "ffn": encoder.layers[0].linear1.out_features,
        "dynunet_filters": tuple(filters),
    }


def build_contender(name: str, quick: bool = False) -> tuple[Callable[[], torch.Tensor], list[torch.Tensor]]:
    """``(run, leaves)``: ``run()`` computes the contender's output once (a scalar-reducible tensor) from fixed
    random inputs; ``leaves`` are the tensors and parameters a backward pass reaches (for zeroing).

    Raises:
        ValueError: for a name not in :data:`GROUPS`.
    """
    s = sizes(quick)
    torch.manual_seed(0)
    levels, d, heads, points = s["levels"], s["d"], s["heads"], s["points"]
    tokens = sum(math.prod(shape) for shape in levels)
    if name in ("fast core", "grid_sample core"):
        core = CORES["fast" if name == "fast core" else "grid_sample"]
        value = torch.randn(1, tokens, heads, d // heads)
        reference = deformable_reference_points(levels)[None, :, None, None, None, :]  # (1, S, 1, 1, 1, 3)
        jitter = torch.tensor([1.0 / min(shape) for shape in levels]).view(1, 1, 1, -1, 1, 1)  # a few voxels
        loc = reference + 2 * jitter * torch.randn(1, tokens, heads, len(levels), points, 3)
        weights = torch.randn(1, tokens, heads, len(levels) * points).softmax(-1).view(loc.shape[:-1])
        leaves = [t.requires_grad_() for t in (value, loc, weights)]
        return (lambda: core(value, levels, loc, weights)), leaves
    if name in ("DeTrans fast", "DeTrans grid_sample", "DeTrans linear layers"):
        _, net, _ = _cotr(quick)
        net.eval()  # CoTr's encoder without dropout
        for layer in net.layers:
            if name != "DeTrans linear layers":
                layer.self_attn.core = name.split()[-1]
            with torch.no_grad():  # trained-looking offsets and attention weights (the release starts at 0)
                layer.self_attn.sampling_offsets.weight.normal_(0, 0.01)
                layer.self_attn.attention_weights.weight.normal_(0, 0.01)
        if name == "DeTrans linear layers":
            x = torch.randn(1, tokens, d)

            def linears_only() -> torch.Tensor:
                out = x
                for layer in net.layers:
                    attn = layer.self_attn
                    out = out + attn.output_proj(attn.value_proj(out))
                    out = out + attn.sampling_offsets(out).sum(-1, keepdim=True) + attn.attention_weights(out).sum(
                        -1, True)  # fmt: skip
                    out = out + layer.linear2(layer.linear1(out))
                return out

            return linears_only, list(net.parameters())
        feats = [torch.randn(1, d, *shape) for shape in levels]
        return (lambda: torch.cat([f.flatten() for f in net(feats)])), list(net.parameters())
    if name == "dense TransformerEncoder":
        layer = nn.TransformerEncoderLayer(d, heads, s["ffn"], dropout=0.0, activation="gelu", batch_first=True)
        net = nn.TransformerEncoder(layer, s["layers"], enable_nested_tensor=False)
        x = torch.randn(1, tokens, d)
        return (lambda: net(x)), list(net.parameters())
    if name == "cotr":
        net = _cotr(quick)[0]
    elif name == "dynunet_3d":
        filters = s["dynunet_filters"]
        strides = dynunet_strides(s["patch"], len(filters))
        net = create_network("dynunet_3d", in_channels=1, out_channels=14, filters=filters, strides=strides).eval()
    else:
        raise ValueError(f"unknown contender {name!r}; choose from {[c for g in GROUPS.values() for c in g]}.")
    x = torch.randn(1, 1, *s["patch"])
    return (lambda: net(x)), list(net.parameters())


PRECISIONS = ("fp32", "bf16")


def _autocast(precision: str):
    """fp32 as is, or bf16 autocast on the CPU."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def _step(run: Callable[[], torch.Tensor], leaves: list[torch.Tensor], precision: str = "fp32") -> None:
    for t in leaves:
        t.grad = None
    with _autocast(precision):
        loss = run().float().square().mean()
    loss.backward()


def measure_group(
    group: str, quick: bool = False, threads: int = 1, repeats: int = 3, backward: bool = True, precision: str = "fp32"
) -> dict:
    """Forward (inference mode) and forward + backward times of every contender of ``group`` in this process:
    one warm-up each, then ``repeats`` rounds with the contenders interleaved within a round. Returns
    ``{contender: {"forward_s": stats, "train_s": stats or None}}``."""
    torch.set_num_threads(threads)
    built = {name: build_contender(name, quick) for name in GROUPS[group]}
    forward = {name: [] for name in built}
    train = {name: [] for name in built}
    for round_ in range(repeats + 1):
        for name, (run, leaves) in built.items():
            with torch.inference_mode(), _autocast(precision):
                start = time.perf_counter()
                run()
                elapsed = time.perf_counter() - start
            if round_:
                forward[name].append(elapsed)
            if backward:
                start = time.perf_counter()
                _step(run, leaves, precision)
                elapsed = time.perf_counter() - start
                if round_:
                    train[name].append(elapsed)
    return {n: {"forward_s": spread(forward[n]), "train_s": spread(train[n]) if backward else None} for n in built}


def peak_growth(
    name: str, quick: bool = False, threads: int = 1, backward: bool = True, precision: str = "fp32"
) -> dict:
    """Peak resident-memory growth (MiB) of one forward pass (inference mode) and, with ``backward``, of one
    forward + backward pass of contender ``name``, in this process (run it in a fresh one)."""
    torch.set_num_threads(threads)
    run, leaves = build_contender(name, quick)
    gc.collect()
    out = {}
    for mode in ("forward", "train") if backward else ("forward",):
        reset_peak()
        before, source = peak_bytes()
        if mode == "forward":
            with torch.inference_mode(), _autocast(precision):
                run()
        else:
            _step(run, leaves, precision)
        out[f"peak_{mode}_mib"] = (peak_bytes()[0] - before) / _MIB
        out["source"] = source
        gc.collect()
    return out


def run_deformable(
    quick: bool = False,
    output_dir: str | None = None,
    threads: Sequence[int] = (1, 2),
    repeats: int | None = None,
    groups: Sequence[str] = tuple(GROUPS),
    fresh_process: bool = True,
    precision: str = "fp32",
) -> list[dict]:
    """Measure every group of :data:`GROUPS` at CoTr's sizes (tiny ones with ``quick``), once per thread count.

    Per contender and thread count a record holds ``forward_s`` and ``train_s`` (forward + backward; None for the
    ``network`` group) as median/min/max over ``repeats`` interleaved rounds (3, or 2 with ``quick``), the peak
    memory growth of one forward and one forward + backward pass (``peak_forward_mib``, ``peak_train_mib``,
    measured at the first thread count, in a fresh process per contender unless ``fresh_process=False``), and
    ``vs``: ``{reference: {"forward": x, "train": x, "peak_forward": x, "peak_train": x}}`` with
    ``reference / contender`` ratios. ``precision``: ``"fp32"`` or ``"bf16"`` (autocast), for every contender.
    Prints a Markdown table; writes ``deformable.json`` to ``output_dir``.
    """
    _autocast(precision)  # fail early on an unknown precision
    repeats = repeats or (2 if quick else 3)
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"groups must be taken from {list(GROUPS)}, got {sorted(unknown)}.")
    rows: list[dict] = []
    for group in groups:
        backward = group != "network"
        memory = {}
        for name in GROUPS[group]:
            print(f"memory of {name} ...", flush=True)
            kwargs = {"name": name, "quick": quick, "threads": threads[0], "backward": backward, "precision": precision}
            memory[name] = (
                run_fresh("monai_ext.bench.deformable:peak_growth", kwargs) if fresh_process else peak_growth(**kwargs)
            )
        for n_threads in threads:
            print(f"timing {group} with {n_threads} thread(s) ...", flush=True)
            kwargs = {"group": group, "quick": quick, "threads": n_threads, "repeats": repeats, "backward": backward,
                      "precision": precision}  # fmt: skip
            times = run_fresh("monai_ext.bench.deformable:measure_group", kwargs) if fresh_process else (
                measure_group(**kwargs))  # fmt: skip
            group_rows = []
            for name in GROUPS[group]:
                group_rows.append(
                    {
                        "group": group,
                        "contender": name,
                        "threads": n_threads,
                        "forward_s": times[name]["forward_s"],
                        "train_s": times[name]["train_s"],
                        "peak_forward_mib": memory[name]["peak_forward_mib"],
                        "peak_train_mib": memory[name].get("peak_train_mib"),
                    }
                )
            by_name = {r["contender"]: r for r in group_rows}
            for r in group_rows:
                r["vs"] = {}
                for ref_name in REFERENCES[group]:
                    ref = by_name[ref_name]
                    r["vs"][ref_name] = {
                        "forward": ratio(ref["forward_s"]["median"], r["forward_s"]["median"]),
                        "train": ratio((ref["train_s"] or {}).get("median"), (r["train_s"] or {}).get("median")),
                        "peak_forward": ratio(ref["peak_forward_mib"], r["peak_forward_mib"]),
                        "peak_train": ratio(ref["peak_train_mib"], r["peak_train_mib"]),
                    }
            rows += group_rows
    _print_table(rows)
    if output_dir is not None:
        meta = suite_meta(
            threads=list(threads),
            repeats=repeats,
            quick=quick,
            sizes=sizes(quick),
            fresh_process=fresh_process,
            precision=precision,
        )
        save_json(output_dir, "deformable", {"meta": meta, "rows": rows})
    return rows


def _fmt(stats: dict | None) -> str:
    return "-" if stats is None else f"{stats['median']:.4g} [{stats['min']:.4g}, {stats['max']:.4g}]"


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.3g}x"


def _print_table(rows: list[dict]) -> None:
    print("\nTimes in s, median [min, max]; peak memory growth in MiB; ratios are reference / contender.")
    print("\n| group | contender | threads | forward | forward + backward | peak fwd | peak fwd+bwd | ratios vs "
          "reference: forward, fwd+bwd, peak fwd, peak fwd+bwd |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratios = "; ".join(
            f"{ref}: " + ", ".join(_fmt_ratio(v[k]) for k in ("forward", "train", "peak_forward", "peak_train"))
            for ref, v in r["vs"].items()
            if ref != r["contender"]
        )
        peak_train = "-" if r["peak_train_mib"] is None else f"{r['peak_train_mib']:.1f}"
        print(
            f"| {r['group']} | {r['contender']} | {r['threads']} | {_fmt(r['forward_s'])} | {_fmt(r['train_s'])} | "
            f"{r['peak_forward_mib']:.1f} | {peak_train} | {ratios or '-'} |"
        )
