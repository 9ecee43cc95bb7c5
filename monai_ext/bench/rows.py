"""The benchmark's rows: the registry's networks (:func:`monai_ext.networks.list_networks`), nothing retyped.

A row is a :class:`~monai_ext.networks.NetworkEntry`: its builder, kind, paper patch and whole-volume inferer are
the registry's. The bench sets two things of its own, the same for every row: the patch it measures on, which is
the window of every sliding-window inferer (their overlap and blending stay the entry's), and the input size of a
network built for one size (UNETR).
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.inferers import Inferer, SliceInferer, SlidingWindowInferer
from torch import nn

from monai_ext.inferers import SharedBuffersInferer
from monai_ext.networks import NetworkEntry, list_networks

__all__ = ["REFERENCE", "bench_rows", "build", "inferer"]

REFERENCE = "dynunet_3d"
"""The row every ratio is taken against: MONAI's nnU-Net-like DynUNet 3D."""


def bench_rows(names: Sequence[str] | None = None) -> list[NetworkEntry]:
    """The entries called ``names``, in that order, or every main entry (the methods and MONAI's baselines, paper
    variants left out) in the registry's order.

    Raises:
        ValueError: for a name the registry does not hold; the message lists the registered names.
    """
    if names is None:
        return list_networks(main_only=True)
    known = {e.name: e for e in list_networks()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown networks {unknown}; registered: {sorted(known)}.")
    return [known[n] for n in names]


def build(entry: NetworkEntry, in_channels: int, out_channels: int, patch: Sequence[int]) -> nn.Module:
    """Row ``entry``'s network for ``in_channels`` and ``out_channels``; a network built for one input size (its
    defaults name ``img_size``, as UNETR) is built for ``patch``."""
    fixed = {"img_size": tuple(patch)} if "img_size" in entry.defaults else {}
    return entry.build(in_channels=in_channels, out_channels=out_channels, **fixed)


def inferer(entry: NetworkEntry, patch: Sequence[int]) -> Inferer:
    """Row ``entry``'s whole-volume inferer; a sliding window (not a slice-wise one) runs windows of ``patch``."""
    own = entry.make_inferer()
    window = own.inferer if isinstance(own, SharedBuffersInferer) else own
    if isinstance(window, SlidingWindowInferer) and not isinstance(window, SliceInferer):
        return entry.make_inferer(roi_size=tuple(patch))
    return own
