"""Three-view (axial, coronal, sagittal) inference: any slice inferer run along each axis, fused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn

__all__ = ["MultiViewInferer", "fuse_views"]

_FUSIONS = ("vote", "mean")


def fuse_views(outputs: Sequence[torch.Tensor], fusion: str = "vote") -> torch.Tensor:
    """Fuse per-view predictions ``(B, O, *spatial)`` of one volume.

    ``"mean"``: the mean of the outputs. ``"vote"``: every view votes for its argmax class and the class with most
    votes wins; ties go to the class with the highest softmax of the mean output. Returns the one-hot ``(B, O,
    *spatial)`` float tensor of the winning class, so a later argmax (or softmax then argmax) gives the label.
    """
    if fusion not in _FUSIONS:
        raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}.")
    if not outputs or any(o.shape != outputs[0].shape for o in outputs):
        raise ValueError(f"need one or more view outputs of one shape, got {[list(o.shape) for o in outputs]}.")
    mean = torch.stack(list(outputs)).mean(0)
    if fusion == "mean":
        return mean
    classes = mean.shape[1]
    votes = sum(nn.functional.one_hot(o.argmax(1), classes) for o in outputs).movedim(-1, 1).to(mean.dtype)
    score = votes + 0.5 * torch.softmax(mean, dim=1)  # the tie-break in [0, 0.5] never overturns a vote
    return nn.functional.one_hot(score.argmax(1), classes).movedim(-1, 1).to(mean.dtype)


class MultiViewInferer(Inferer):
    """Run a slice inferer along several axes of a volume and fuse the views by majority vote or mean (Yu et al.,
    "Thickened 2D Networks for Efficient 3D Medical Image Segmentation", 2019: axial, coronal, sagittal, vote).

    The wrapped inferer slides along one fixed spatial axis (``inferer_axis``: read from its ``spatial_axis``
    attribute, as :class:`~monai_ext.inferers.SliceGroupInferer`, or ``spatial_dim``, as MONAI's
    :class:`~monai.inferers.SliceInferer`). For each view axis ``v`` the volume's spatial axes ``v`` and
    ``inferer_axis`` are swapped, the inferer runs, and the output is swapped back, so any such inferer works
    unchanged. The network may be one module for all views or a sequence with one per view (the paper trains one
    per view).

    Args:
        inferer: an inferer of ``(B, C, X, Y, Z)`` volumes that slides along ``inferer_axis``.
        views: spatial axes to slide along (0, 1, 2), in order, no repeats.
        fusion: ``"vote"`` (the paper; returns the one-hot fused label, see :func:`fuse_views`) or ``"mean"``.
        inferer_axis: the wrapped inferer's slice axis; default: read from the inferer.

    Shapes:
        ``inputs`` ``(B, C, X, Y, Z)``; returns ``(B, O, X, Y, Z)``.

    Raises:
        ValueError: for bad views, fusion or axis; on a call for a non-5D input or a wrong number of networks.
    """

    def __init__(
        self,
        inferer: Inferer | Callable[..., torch.Tensor],
        views: Sequence[int] = (0, 1, 2),
        fusion: str = "vote",
        inferer_axis: int | None = None,
    ) -> None:
        super().__init__()
        views = list(views)
        if not views or any(v not in (0, 1, 2) for v in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct spatial axes from (0, 1, 2), got {views}.")
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}.")
        if inferer_axis is None:
            inferer_axis = getattr(inferer, "spatial_axis", getattr(inferer, "spatial_dim", None))
        if inferer_axis not in (0, 1, 2):
            raise ValueError(
                f"cannot tell which axis the wrapped inferer slides along (got {inferer_axis!r}): pass "
                "inferer_axis=0, 1 or 2."
            )
        self.inferer = inferer
        self.views = views
        self.fusion = fusion
        self.inferer_axis = inferer_axis

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor] | Sequence, *args: Any, **kwargs: Any
    ):
        if inputs.dim() != 5:
            raise ValueError(f"MultiViewInferer expects a (B, C, X, Y, Z) volume, got shape {list(inputs.shape)}.")
        if isinstance(network, (list, tuple, nn.ModuleList)):
            if len(network) != len(self.views):
                raise ValueError(f"got {len(network)} networks for {len(self.views)} views: give one, or one per view.")
            networks = list(network)
        else:
            networks = [network] * len(self.views)
        x = torch.as_tensor(inputs)
        a = self.inferer_axis + 2
        outputs = []
        for view, net in zip(self.views, networks):
            moved = x.transpose(view + 2, a)  # the view's axis where the inferer slides
            outputs.append(torch.as_tensor(self.inferer(moved, net, *args, **kwargs)).transpose(view + 2, a))
        result = fuse_views(outputs, self.fusion)
        if isinstance(inputs, MetaTensor):
            return convert_to_dst_type(result, inputs, device=result.device)[0]
        return result
