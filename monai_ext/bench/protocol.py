"""How each kind of benchmark row consumes a volume: one forward pass, whole-volume inference, one training loss.

Volumes are MONAI-style ``(B, C, H, W, D)`` with the slices along the last axis. 2D rows see ``(B * D, C, H, W)``
slices; 2.5D rows see each slice with its two neighbours stacked on channels (edges repeat the end slice).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from monai.inferers import sliding_window_inference

from monai_ext.bench.registry import BenchNetwork

__all__ = ["forward", "infer_volume", "main_output", "slices_of", "stack_slices", "training_loss"]


def main_output(out: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The full-resolution output of a network that may return deep-supervision heads as a list or tuple."""
    return out[0] if isinstance(out, (list, tuple)) else out


def slices_of(x: torch.Tensor, neighbours: bool = False) -> torch.Tensor:
    """``(B, C, H, W, D)`` -> ``(B * D, C, H, W)``, or ``(B * D, 3 * C, H, W)`` with each slice's neighbours."""
    if neighbours:
        padded = torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)
        x = torch.cat([padded[..., :-2], x, padded[..., 2:]], dim=1)
    b, c, h, w, d = x.shape
    return x.permute(0, 4, 1, 2, 3).reshape(b * d, c, h, w)


def stack_slices(y: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B * D, K, H, W)`` -> ``(B, K, H, W, D)``; the inverse of :func:`slices_of`."""
    bd, k, h, w = y.shape
    return y.reshape(batch, bd // batch, k, h, w).permute(0, 2, 3, 4, 1)


def _slice_wise(net: torch.nn.Module, x: torch.Tensor, neighbours: bool, chunk: int | None) -> torch.Tensor:
    s = slices_of(x, neighbours)
    chunk = chunk or s.shape[0]
    out = [main_output(net(s[i : i + chunk])) for i in range(0, s.shape[0], chunk)]
    return stack_slices(torch.cat(out), x.shape[0])


def forward(entry: BenchNetwork, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One pass over a patch ``(B, C, H, W, D)``; 2D kinds take all its slices as one batch."""
    if entry.kind == "3d":
        return main_output(net(x))
    if entry.kind in ("2d", "2.5d"):
        return _slice_wise(net, x, entry.kind == "2.5d", None)
    return entry.infer(net, x, tuple(x.shape[2:]))


def infer_volume(
    entry: BenchNetwork, net: torch.nn.Module, volume: torch.Tensor, roi: Sequence[int], slice_batch: int = 16
) -> torch.Tensor:
    """Logits ``(B, K, H, W, D)`` for a whole volume with the row's own inferer.

    3D rows: sliding windows of ``roi`` (overlap 0.25, one window per batch); 2D / 2.5D rows: every slice,
    ``slice_batch`` at a time; custom rows: their ``infer``.
    """
    if entry.kind == "3d":
        return sliding_window_inference(volume, tuple(roi), 1, lambda t: main_output(net(t)), overlap=0.25)
    if entry.kind in ("2d", "2.5d"):
        return _slice_wise(net, volume, entry.kind == "2.5d", slice_batch)
    return entry.infer(net, volume, tuple(roi))


def training_loss(
    entry: BenchNetwork,
    net: torch.nn.Module,
    image: torch.Tensor,
    label: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """Loss of one training step on ``image (B, C, H, W, D)`` and ``label (B, 1, H, W, D)``.

    2D kinds train on all slices of the patch as one batch, so every kind sees the same voxels.
    """
    if entry.kind == "3d":
        return loss_fn(main_output(net(image)), label)
    if entry.kind in ("2d", "2.5d"):
        return loss_fn(main_output(net(slices_of(image, entry.kind == "2.5d"))), slices_of(label))
    return entry.train_loss(net, image, label, loss_fn)
