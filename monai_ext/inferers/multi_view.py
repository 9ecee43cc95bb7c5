"""Three-view (axial, coronal, sagittal) inference: any slice inferer run along each axis, fused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.data.meta_tensor import MetaTensor
from monai.inferers import Inferer
from monai.utils import convert_to_dst_type
from torch import nn

from monai_ext.networks.layout import check_spatial_axes, check_spatial_dim, slices_last, slices_restored

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
    """Run a slice inferer along several spatial axes of a volume and fuse the views by majority vote or mean (Yu et
    al., "Thickened 2D Networks for Efficient 3D Medical Image Segmentation", 2019: axial, coronal, sagittal, vote).

    The wrapped inferer slides along its own ``spatial_dim`` (:class:`~monai_ext.inferers.SliceGroupInferer`,
    MONAI's :class:`~monai.inferers.SliceInferer`). For each view axis ``v`` of ``spatial_dims_order`` the volume's
    axis ``v`` is moved to ``inferer.spatial_dim`` so that the inferer's slabs are those of the same inferer with
    ``spatial_dim=v``: slice axis ``v`` last, the other two spatial axes in order (``slices_last``, the layout in
    which :class:`~monai_ext.transforms.RandSliceGroupd` with ``spatial_dim=v`` trains a view's network). The
    output is moved back. The network may be one module for all views or a sequence with one per view (the paper
    trains one per view), in the order of ``spatial_dims_order``.

    Args:
        inferer: an inferer of ``(B, C, H, W, D)`` volumes with a ``spatial_dim`` attribute, the axis it slides along.
        spatial_dims_order: the spatial axes to slide along (0, 1, 2), in order, no repeats (default ``(0, 1, 2)``).
        fusion: ``"vote"`` (the paper; returns the one-hot fused label, see :func:`fuse_views`) or ``"mean"``.

    Shapes:
        ``inputs`` ``(B, C, H, W, D)``; returns ``(B, O, H, W, D)``.

    Raises:
        ValueError: for bad axes or fusion, an inferer without a valid ``spatial_dim``; on a call for a non-5D
            input or a wrong number of networks.
    """

    def __init__(self, inferer: Inferer, spatial_dims_order: Sequence[int] = (0, 1, 2), fusion: str = "vote") -> None:
        super().__init__()
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}.")
        if getattr(inferer, "spatial_dim", None) is None:
            raise ValueError(
                f"the wrapped inferer must say which spatial axis it slides along (a spatial_dim attribute, as "
                f"SliceGroupInferer and monai.inferers.SliceInferer have); {type(inferer).__name__} has none."
            )
        self.inferer = inferer
        self.spatial_dims_order = list(check_spatial_axes(spatial_dims_order))
        self._inferer_dim = check_spatial_dim(inferer.spatial_dim, name="the wrapped inferer's spatial_dim")
        self.fusion = fusion

    def __call__(
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor] | Sequence, *args: Any, **kwargs: Any
    ):
        if inputs.dim() != 5:
            raise ValueError(f"MultiViewInferer expects a (B, C, H, W, D) volume, got shape {list(inputs.shape)}.")
        views = self.spatial_dims_order
        if isinstance(network, (list, tuple, nn.ModuleList)):
            if len(network) != len(views):
                raise ValueError(f"got {len(network)} networks for {len(views)} views: give one, or one per view.")
            networks = list(network)
        else:
            networks = [network] * len(views)
        x = inputs.as_subclass(torch.Tensor)
        a = self._inferer_dim  # the inferer's slice axis
        outputs = []
        for view, net in zip(views, networks):
            # the view's axis where the inferer slides, the other two in order: the inferer then sees
            # slices_last(x, view), the layout RandSliceGroupd trains a view's network on
            moved = slices_restored(slices_last(x, view), a)
            out = self.inferer(moved, net, *args, **kwargs).as_subclass(torch.Tensor)
            outputs.append(slices_restored(slices_last(out, a), view))
        result = fuse_views(outputs, self.fusion)
        if isinstance(inputs, MetaTensor):
            return convert_to_dst_type(result, inputs, device=result.device)[0]
        return result
