"""Checks of a loaded case that turn bad input into an error naming the file, the problem and the fix."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.data.utils import to_affine_nd
from monai.transforms import MapTransform, Transform

from monai_ext.data.volume_checks import GRID_TOLERANCE, check_label_values, check_same_grid, check_voxel_budget

__all__ = ["ValidateImage", "ValidateImaged"]


def _name(img) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


def _affine(img: torch.Tensor, spatial_dims: int) -> np.ndarray:
    """The image's square voxel-to-world matrix over its spatial axes; the identity (1 mm voxels) for a plain tensor."""
    if isinstance(img, MetaTensor):
        return to_affine_nd(spatial_dims, np.asarray(img.affine, dtype=float))
    return np.eye(spatial_dims + 1)


class ValidateImage(Transform):
    """Check a channel-first image: its number of spatial dimensions, channels, (optionally) finite values and size.

    Args:
        num_channels: expected channels (``None``: any).
        spatial_dims: expected spatial dimensions (3 for volumes).
        check_finite: refuse NaN or infinite voxels.
        max_voxels: refuse an image larger than this many voxels once resampled to ``pixdim`` (``None``: no limit);
            the size guard of whole-volume inference, e.g. a huge upload to the MONAI Label server. See
            :func:`monai_ext.data.volume_checks.check_voxel_budget`.
        pixdim: the voxel size (mm) the pipeline resamples to with ``Spacingd`` afterwards, for the size estimate;
            the spacing and orientation come from the image's affine (a plain tensor counts as 1 mm voxels).
        bytes_per_voxel: memory per voxel, to state the memory estimate in the size message (``None``: none).

    Shapes:
        input ``(C, *spatial)`` (after ``EnsureChannelFirst``); returned unchanged.

    Raises:
        ValueError: naming the file (from the image's metadata) and what was expected.
    """

    def __init__(
        self,
        num_channels: int | None = 1,
        spatial_dims: int = 3,
        check_finite: bool = True,
        max_voxels: int | None = None,
        pixdim: float | Sequence[float] | None = None,
        bytes_per_voxel: float | None = None,
    ) -> None:
        self.num_channels = num_channels
        self.spatial_dims = spatial_dims
        self.check_finite = check_finite
        self.max_voxels = max_voxels
        self.pixdim = pixdim
        self.bytes_per_voxel = bytes_per_voxel

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        name = _name(img)
        if img.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"{name}: got an image of shape {tuple(img.shape[1:])} (channel first: {tuple(img.shape)}), "
                f"expected a {self.spatial_dims}D volume; give {self.spatial_dims}D images (NIfTI, NRRD, MetaImage or "
                "DICOM)."
            )
        if self.num_channels is not None and img.shape[0] != self.num_channels:
            raise ValueError(
                f"{name}: got {img.shape[0]} channel(s), the network expects {self.num_channels}; "
                "stack the modalities the model was trained on, in the order of metadata.json's channel_def."
            )
        if self.max_voxels is not None:
            check_voxel_budget(
                name,
                tuple(img.shape[1:]),
                _affine(img, self.spatial_dims),
                self.pixdim,
                self.max_voxels,
                self.bytes_per_voxel,
            )
        values = torch.as_tensor(img)
        if self.check_finite and torch.is_floating_point(values):
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                raise ValueError(f"{name}: {bad} voxel(s) are NaN or infinite; repair or mask them before use.")
        return img


class ValidateImaged(MapTransform):
    """Dictionary version of :class:`ValidateImage`, which also checks each label against its image.

    The label must have its image's size and voxel grid (the affines of two ``MetaTensor`` s may place voxels at most
    ``grid_tolerance`` voxel apart: see :func:`monai_ext.data.volume_checks.check_same_grid`), and, with
    ``num_classes``, hold only class indices ``0 .. num_classes - 1``
    (:func:`monai_ext.data.volume_checks.check_label_values`). Place it right after ``EnsureChannelFirstd``, before
    any transform that resamples or reorients.

    Args:
        keys: the image key(s).
        label_key: key of the label to compare with the first image key (skipped when absent).
        num_channels, spatial_dims, check_finite, max_voxels, pixdim, bytes_per_voxel: as for :class:`ValidateImage`
            (the size guard applies to the images, not the label).
        num_classes: number of classes, background included (``None``: label values not checked).
        grid_tolerance: how far the label's grid may be from its image's, in voxels of the image.
        allow_missing_keys: skip absent image keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str | None = "label",
        num_channels: int | None = 1,
        spatial_dims: int = 3,
        check_finite: bool = True,
        num_classes: int | None = None,
        max_voxels: int | None = None,
        pixdim: float | Sequence[float] | None = None,
        bytes_per_voxel: float | None = None,
        grid_tolerance: float = GRID_TOLERANCE,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.num_classes = num_classes
        self.grid_tolerance = grid_tolerance
        self.validate = ValidateImage(num_channels, spatial_dims, check_finite, max_voxels, pixdim, bytes_per_voxel)
        self.validate_label = ValidateImage(1, spatial_dims, check_finite)

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        first = None
        for key in self.key_iterator(d):
            self.validate(d[key])
            first = key if first is None else first
        if self.label_key is not None and self.label_key in d and first is not None:
            label, image = d[self.label_key], d[first]
            self.validate_label(label)
            if tuple(label.shape[1:]) != tuple(image.shape[1:]):
                raise ValueError(
                    f"{_name(label)} has size {tuple(label.shape[1:])} but its image {_name(image)} has "
                    f"{tuple(image.shape[1:])}; a label must be drawn on its image's voxel grid."
                )
            if isinstance(label, MetaTensor) and isinstance(image, MetaTensor):
                spatial_dims = self.validate.spatial_dims
                check_same_grid(
                    _name(image),
                    _name(label),
                    tuple(image.shape[1:]),
                    _affine(image, spatial_dims),
                    _affine(label, spatial_dims),
                    self.grid_tolerance,
                )
            if self.num_classes is not None:
                check_label_values(torch.as_tensor(label).detach().cpu().numpy(), self.num_classes, _name(label))
        return d
