"""Random k-slice groups of a volume (image and label) for training a thickened 2D network."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, SpatialCrop
from monai.transforms.traits import MultiSampleTrait

from monai_ext.networks.layout import DEFAULT_SPATIAL_DIM, check_spatial_dim, tensor_dim

__all__ = ["RandSliceGroup", "RandSliceGroupd", "slice_group"]


def slice_group(img: torch.Tensor, start: int, num_slices: int, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> torch.Tensor:
    """Slices ``start .. start + num_slices - 1`` of a channel-first ``(C, H, W, D)`` volume along spatial axis
    ``spatial_dim`` (0, 1 or 2; default 2, the last), that axis moved last: ``(C, H', W', num_slices)``, the slab
    layout of :class:`~monai_ext.networks.nets.Thickened2DNet` and :class:`~monai_ext.inferers.SliceGroupInferer`.

    A volume with fewer than ``num_slices`` slices along the axis is first padded at the far end by repeating its
    last slice (as the inferer does); ``start`` must then be 0. The crop is MONAI's ``SpatialCrop`` (the affine
    follows the crop); moving the axis does not permute the affine.

    Raises:
        ValueError: for an input that is not ``(C, H, W, D)``, a bad ``spatial_dim`` or a group that does not fit.
    """
    if img.dim() != 4:
        raise ValueError(f"expected a channel-first volume (C, H, W, D), got shape {list(img.shape)}.")
    axis = tensor_dim(check_spatial_dim(spatial_dim), batched=False)
    depth = img.shape[axis]
    if depth < num_slices:
        last = img.narrow(axis, depth - 1, 1)
        img = torch.cat([img] + [last] * (num_slices - depth), dim=axis)
        depth = num_slices
    if not 0 <= start <= depth - num_slices:
        raise ValueError(f"start must be in [0, {depth - num_slices}] for {num_slices} of {depth} slices, got {start}.")
    roi = [slice(None)] * 3
    roi[spatial_dim] = slice(start, start + num_slices)
    return SpatialCrop(roi_slices=roi)(img).movedim(axis, -1)


class RandSliceGroup(Randomizable):
    """Crop a random group of ``num_slices`` consecutive slices along spatial axis ``spatial_dim`` (see
    :func:`slice_group`).

    Args:
        num_slices: slices per group ``k``.
        spatial_dim: 0, 1 or 2, the spatial axis of ``(C, H, W, D)`` to take slices along (default 2, the last).

    Shapes:
        input ``(C, H, W, D)``; output ``(C, H', W', num_slices)``.

    Raises:
        ValueError: for ``num_slices < 1`` or a bad ``spatial_dim``.
    """

    def __init__(self, num_slices: int, spatial_dim: int = DEFAULT_SPATIAL_DIM) -> None:
        if num_slices < 1:
            raise ValueError(f"num_slices must be positive, got {num_slices}.")
        self.num_slices = num_slices
        self.spatial_dim = check_spatial_dim(spatial_dim)
        self._start = 0

    def randomize(self, depth: int) -> None:
        self._start = int(self.R.randint(0, max(depth - self.num_slices, 0) + 1))

    def __call__(self, img: torch.Tensor, randomize: bool = True) -> torch.Tensor:
        if randomize:
            self.randomize(img.shape[tensor_dim(self.spatial_dim, batched=False)])
        return slice_group(img, self._start, self.num_slices, self.spatial_dim)


class RandSliceGroupd(Randomizable, MapTransform, MultiSampleTrait):
    """Dictionary version of :class:`RandSliceGroup`: ``num_samples`` random k-slice groups, the same slices for
    every key (image and label), returned as a list of dictionaries (as MONAI's multi-sample croppers).

    With ``label_key`` and ``pos_fraction > 0``, a group is drawn around a random foreground slice (a slice where
    the label is non-zero) with probability ``pos_fraction``: a slice is picked uniformly among the foreground
    slices, then a group containing it uniformly among those that fit. Otherwise (or when the label is empty) the
    group's start is uniform. With ``ratios`` (one weight per class of an integer label, background first) the
    class is drawn first, by those weights over the classes present in the volume, and the group is centred on a
    slice holding it (background: a uniform start), as MONAI's ``RandCropByLabelClassesd`` does for patches;
    rare classes (e.g. nodules among vessels) then get their share of groups.

    Args:
        keys: keys to crop, all with the same spatial shape.
        num_slices: slices per group ``k``.
        spatial_dim: 0, 1 or 2, the spatial axis of ``(C, H, W, D)`` to take slices along (default 2, the last;
            moved last in the output).
        num_samples: groups per input dictionary.
        label_key: label used for foreground sampling (``None``: uniform only).
        pos_fraction: probability of a foreground-centred group, in ``[0, 1]`` (used when ``ratios`` is None).
        ratios: per-class sampling weights ``(background, class 1, ...)``, non-negative, not all zero; needs
            ``label_key``.
        allow_missing_keys: as MONAI.

    Raises:
        ValueError: for bad arguments; on a call when the keys' spatial shapes differ.
    """

    def __init__(
        self,
        keys: KeysCollection,
        num_slices: int,
        spatial_dim: int = DEFAULT_SPATIAL_DIM,
        num_samples: int = 1,
        label_key: str | None = None,
        pos_fraction: float = 0.5,
        ratios: Sequence[float] | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.cropper = RandSliceGroup(num_slices, spatial_dim)
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}.")
        if not 0.0 <= pos_fraction <= 1.0:
            raise ValueError(f"pos_fraction must be in [0, 1], got {pos_fraction}.")
        if ratios is not None:
            ratios = [float(r) for r in ratios]
            if label_key is None or len(ratios) < 2 or min(ratios) < 0 or sum(ratios) <= 0:
                raise ValueError(
                    "ratios needs label_key and one non-negative weight per class (background first, at least two, "
                    f"not all zero), got {ratios} with label_key={label_key!r}."
                )
        self.num_samples = num_samples
        self.label_key = label_key
        self.pos_fraction = pos_fraction
        self.ratios = ratios
        self._starts: list[int] = []

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None):
        super().set_random_state(seed, state)
        self.cropper.set_random_state(seed, state)
        return self

    def randomize(self, depth: int, pools: Sequence[np.ndarray | None] = (None,), weights: Sequence[float] = (1.0,)):
        """Draw the group starts: a pool by ``weights`` (empty pools left out), then a slice of that pool and a
        group holding it (pool ``None``: a uniform start)."""
        k = self.cropper.num_slices
        last = max(depth - k, 0)
        kept = [(pool, w) for pool, w in zip(pools, weights) if w > 0 and (pool is None or len(pool))]
        total = sum(w for _, w in kept)
        self._starts = []
        for _ in range(self.num_samples):
            pool = None
            if total > 0:
                pool = kept[int(self.R.choice(len(kept), p=[w / total for _, w in kept]))][0]
            if pool is None:
                self._starts.append(int(self.R.randint(0, last + 1)))
            else:
                z = int(pool[self.R.randint(len(pool))])
                self._starts.append(int(self.R.randint(max(0, z - k + 1), min(z, last) + 1)))

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> list[dict[Hashable, torch.Tensor]]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        shapes = {tuple(d[k].shape[1:]) for k in keys}
        if len(shapes) > 1:
            raise ValueError(f"the keys {keys} have different spatial shapes {sorted(shapes)}; resample them first.")
        axis = tensor_dim(self.cropper.spatial_dim, batched=False)
        depth = d[keys[0]].shape[axis]
        pools: list[np.ndarray | None] = [None]
        weights = [1.0]
        if self.label_key is not None:
            label = torch.as_tensor(d[self.label_key])
            other = tuple(i for i in range(label.dim()) if i != axis)

            def slices_where(mask: torch.Tensor) -> np.ndarray:
                return torch.nonzero(mask.amax(dim=other)).flatten().cpu().numpy()

            if self.ratios is not None:
                pools += [slices_where(label == c) for c in range(1, len(self.ratios))]
                weights = self.ratios
            else:
                pools.append(slices_where(label != 0))
                weights = [1.0 - self.pos_fraction, self.pos_fraction]
        self.randomize(depth, pools, weights)
        out = []
        for start in self._starts:
            sample = dict(d)
            for key in keys:
                sample[key] = slice_group(d[key], min(start, max(depth - self.cropper.num_slices, 0)),
                                          self.cropper.num_slices, self.cropper.spatial_dim)  # fmt: skip
            out.append(sample)
        return out
