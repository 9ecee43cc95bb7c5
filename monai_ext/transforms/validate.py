"""Checks of a loaded case that turn bad input into an error naming the file, the problem and the fix."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Transform

__all__ = ["ValidateImage", "ValidateImaged"]


def _name(img) -> str:
    meta = getattr(img, "meta", None) or {}
    return str(meta.get("filename_or_obj", "<in-memory image>"))


class ValidateImage(Transform):
    """Check a channel-first image: its number of spatial dimensions, channels, and (optionally) finite values.

    Args:
        num_channels: expected channels (``None``: any).
        spatial_dims: expected spatial dimensions (3 for volumes).
        check_finite: refuse NaN or infinite voxels.

    Shapes:
        input ``(C, *spatial)`` (after ``EnsureChannelFirst``); returned unchanged.

    Raises:
        ValueError: naming the file (from the image's metadata) and what was expected.
    """

    def __init__(self, num_channels: int | None = 1, spatial_dims: int = 3, check_finite: bool = True) -> None:
        self.num_channels = num_channels
        self.spatial_dims = spatial_dims
        self.check_finite = check_finite

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        name = _name(img)
        if img.ndim != self.spatial_dims + 1:
            raise ValueError(
                f"{name}: got an image of shape {tuple(img.shape[1:])} (channel first: {tuple(img.shape)}), "
                f"expected a {self.spatial_dims}D volume; give {self.spatial_dims}D NIfTI files."
            )
        if self.num_channels is not None and img.shape[0] != self.num_channels:
            raise ValueError(
                f"{name}: got {img.shape[0]} channel(s), the network expects {self.num_channels}; "
                "stack the modalities the model was trained on, in the order of metadata.json's channel_def."
            )
        values = torch.as_tensor(img)
        if self.check_finite and torch.is_floating_point(values):
            bad = int((~torch.isfinite(values)).sum())
            if bad:
                raise ValueError(f"{name}: {bad} voxel(s) are NaN or infinite; repair or mask them before use.")
        return img


class ValidateImaged(MapTransform):
    """Dictionary version of :class:`ValidateImage`, which also checks that each label lies on its image's grid.

    Args:
        keys: the image key(s).
        label_key: key of the label to compare with the first image key (skipped when absent).
        num_channels, spatial_dims, check_finite: as for :class:`ValidateImage`.
        allow_missing_keys: skip absent image keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str | None = "label",
        num_channels: int | None = 1,
        spatial_dims: int = 3,
        check_finite: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.validate = ValidateImage(num_channels, spatial_dims, check_finite)
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
        return d
