"""The networks the benchmark compares, and how each one sees a volume (its own inferer and training batch).

A row is a :class:`BenchNetwork`: a builder, a *kind* that says how the network consumes a 3D volume, and its
paper patch. The kinds share one protocol (:mod:`monai_ext.bench.protocol`); a method with its own inferer or
training step (slice groups, whole volumes) passes ``infer`` / ``train_loss`` callables instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from monai.networks.nets import UNETR, DynUNet, SwinUNETR

from monai_ext.bench.whole_volume import infer_scaa, train_loss_scaa
from monai_ext.networks.nets import SCAA, CoTr, RSANet, SSHUNet, Thickened2DNet

__all__ = ["KINDS", "NETWORKS", "BenchNetwork", "register"]

# "3d": patches in, sliding-window inference; "2d": every slice along the last axis on its own;
# "2.5d": every slice with its two neighbours as channels; "custom": the entry's own infer / train_loss
KINDS = ("3d", "2d", "2.5d", "custom")


@dataclass(frozen=True)
class BenchNetwork:
    """One row of the benchmark.

    Args:
        name: row label.
        build: ``build(in_channels, out_channels, roi)`` -> module; ``roi`` is the 3D patch (H, W, D) the network
            will see (networks with a fixed input size, e.g. UNETR, are built for it; others ignore it).
        kind: one of :data:`KINDS`.
        patch: the method's own paper patch (H, W, D), measured beside the common 96^3 one.
        family: ``"ours"`` or ``"monai"`` (anchors).
        infer: with ``kind="custom"``: ``infer(net, volume (B, C, H, W, D), roi) -> logits (B, K, H, W, D)``.
        train_loss: with ``kind="custom"``: ``train_loss(net, image, label, loss_fn) -> scalar`` for one
            (B, C, H, W, D) image and (B, 1, H, W, D) label.
        note: what the row is, in a few words (configuration, source).
    """

    name: str
    build: Callable[[int, int, Sequence[int]], torch.nn.Module]
    kind: str
    patch: tuple[int, int, int] = (96, 96, 96)
    family: str = "ours"
    infer: Callable | None = None
    train_loss: Callable | None = None
    note: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r} for {self.name!r}.")
        if self.kind == "custom" and (self.infer is None or self.train_loss is None):
            raise ValueError(f"{self.name!r}: kind 'custom' needs both infer and train_loss callables.")


NETWORKS: dict[str, BenchNetwork] = {}


def register(entry: BenchNetwork) -> BenchNetwork:
    """Add (or replace) a row; rows are measured in the order they were registered."""
    NETWORKS[entry.name] = entry
    return entry


def _infer_whole(net: torch.nn.Module, volume: torch.Tensor, roi=None) -> torch.Tensor:
    """Networks that take a whole volume themselves (thickened 2D slides its k-slice groups inside)."""
    return net(volume)


def _train_loss_slice_groups(net: Thickened2DNet, image: torch.Tensor, label: torch.Tensor, loss_fn) -> torch.Tensor:
    """The patch's slices cut into consecutive k-slice groups, one batch of groups (the same voxels as a 3D step)."""
    k = net.num_slices
    depth = image.shape[-1] // k * k
    if depth == 0:
        raise ValueError(f"the patch has {image.shape[-1]} slices, fewer than one group of {k}.")

    def groups(t: torch.Tensor) -> torch.Tensor:  # (B, C, H, W, n*k) -> (B*n, C, H, W, k)
        b, c, h, w, _ = t.shape
        return t[..., :depth].reshape(b, c, h, w, -1, k).permute(0, 4, 1, 2, 3, 5).reshape(-1, c, h, w, k)

    return loss_fn(net.forward_group(groups(image)), groups(label))


def _dynunet(spatial_dims: int, in_channels: int, out_channels: int, filters: Sequence[int]) -> DynUNet:
    n = len(filters)
    strides = [1] + [2] * (n - 1)
    return DynUNet(spatial_dims, in_channels, out_channels, [3] * n, strides, [2] * (n - 1), filters=filters)


register(
    BenchNetwork(
        "DynUNet 3D",
        lambda i, o, roi: _dynunet(3, i, o, [32, 64, 128, 256, 320, 320]),
        "3d",
        (128, 128, 128),
        family="monai",
        note="nnU-Net-like 3D U-Net, filters 32..320 (the reference of every ratio)",
    )
)
register(
    BenchNetwork(
        "DynUNet 2D",
        lambda i, o, roi: _dynunet(2, i, o, [32, 64, 128, 256, 320, 320]),
        "2d",
        (512, 512, 1),
        family="monai",
        note="nnU-Net-like 2D U-Net, filters 32..320, run slice by slice",
    )
)
register(
    BenchNetwork(
        "DynUNet 2.5D",
        lambda i, o, roi: _dynunet(2, 3 * i, o, [32, 64, 128, 256, 320, 320]),
        "2.5d",
        (512, 512, 1),
        family="monai",
        note="DynUNet 2D with each slice's two neighbours as extra channels",
    )
)
register(
    BenchNetwork(
        "SwinUNETR",
        lambda i, o, roi: SwinUNETR(in_channels=i, out_channels=o, feature_size=48),
        "3d",
        family="monai",
        note="feature size 48",
    )
)
register(
    BenchNetwork(
        "UNETR",
        lambda i, o, roi: UNETR(i, o, img_size=tuple(roi)),
        "3d",
        family="monai",
        note="ViT-B/16 encoder, built for the patch it sees",
    )
)
register(
    BenchNetwork(
        "SSH-UNet",
        lambda i, o, roi: SSHUNet(in_channels=i, out_channels=o),
        "3d",
        note="released configuration (slice shifts, three views, shared weights)",
    )
)
register(
    BenchNetwork(
        "RSANet",
        lambda i, o, roi: RSANet(in_channels=i, out_channels=o, rsa_placement="010"),
        "3d",
        (128, 128, 32),
        note="released configuration, RSA at the bottleneck (RSA-010)",
    )
)
register(
    BenchNetwork(
        "CoTr",
        lambda i, o, roi: CoTr(i, o, stem_stride=(2, 2, 1)),
        "3d",
        (192, 192, 48),
        note="released configuration (41.87 M at 14 classes), slices last as in the bundle",
    )
)
register(
    BenchNetwork(
        "SCAA",
        lambda i, o, roi: SCAA(i, o),
        "custom",
        (256, 256, 128),
        infer=infer_scaa,
        train_loss=train_loss_scaa,
        note="SCAA* (our reading; no public code): whole volume in, 16 random slices per training step",
    )
)
register(
    BenchNetwork(
        "Thickened 2D",
        lambda i, o, roi: Thickened2DNet(i, o, num_slices=12, config="esm_ssa"),
        "custom",
        (512, 512, 12),
        infer=_infer_whole,
        train_loss=_train_loss_slice_groups,
        note="ESM + SSA on ResNet-50, k = 12 (our reading; no public code), groups slid with stride 1",
    )
)
