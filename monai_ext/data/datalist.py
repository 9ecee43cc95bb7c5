"""Datalists in the Medical Segmentation Decathlon form, loaded with checks that name the problem and the fix."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
from monai.data import load_decathlon_datalist, partition_dataset

from .checks import check_count

__all__ = ["check_datalist", "load_datalist", "split_datalist"]


def load_datalist(
    datalist_file: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    check: bool = True,
    num_channels: int | None = None,
) -> list[dict]:
    """Load one list of a Decathlon-style datalist (``training``, ``validation``, ``test``, ...).

    Relative paths are resolved against ``base_dir`` (default: the datalist's folder). Unlike
    ``monai.data.load_decathlon_datalist`` alone, a missing datalist, a missing list key and missing or
    unreadable image files are reported up front, before any work starts (see :func:`check_datalist`).

    Args:
        datalist_file: path of the JSON datalist (e.g. ``dataset.json``).
        key: which list to load.
        base_dir: folder the paths are relative to.
        check: run :func:`check_datalist` on the entries.
        num_channels: expected image channels, passed to :func:`check_datalist`.

    Returns:
        a list of dicts with absolute ``image`` (and ``label``) paths.

    Raises:
        FileNotFoundError: the datalist file or a referenced file does not exist.
        ValueError: the key is missing or empty, or an image is not a readable 3D volume.
    """
    datalist_file = Path(datalist_file)
    if not datalist_file.is_file():
        raise FileNotFoundError(
            f"datalist file {datalist_file} not found; point the bundle at your data with "
            "--dataset_dir <folder holding dataset.json> or --datalist <file>."
        )
    base = Path(base_dir) if base_dir is not None else datalist_file.parent
    try:
        items = load_decathlon_datalist(str(datalist_file), is_segmentation=True, data_list_key=key, base_dir=str(base))
    except ValueError as e:
        raise ValueError(f"datalist {datalist_file} has no usable list {key!r}: {e}") from e
    if not items:
        raise ValueError(f"datalist {datalist_file} has an empty list {key!r}; add cases or choose another key.")
    if check:
        check_datalist(items, num_channels=num_channels)
    return items


def _spatial_shape(path: str, num_channels: int | None, is_image: bool = True) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in nib.load(path).shape)
    except Exception as e:
        raise ValueError(
            f"cannot read {path} as a NIfTI volume ({e}); replace the file or remove it from the datalist."
        ) from e
    if len(shape) == 4 and num_channels is not None and shape[3] != num_channels:
        fix = (
            "give the modalities the model was trained on, in the order of metadata.json's channel_def"
            if is_image
            else "a label is one channel of class indices"
        )
        raise ValueError(f"{path} has {shape[3]} channels (shape {shape}), {num_channels} expected; {fix}.")
    if len(shape) == 4 and num_channels is not None:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(
            f"{path} has shape {shape}: a 3D volume (X, Y, Z) is expected; 2D images and time series are not supported."
        )
    return shape


def check_datalist(items: Sequence[dict], keys: Sequence[str] = ("image", "label"), num_channels: int | None = None):
    """Check, from the NIfTI headers only, that every file exists, is a 3D volume and that image and label agree.

    Raises:
        FileNotFoundError: listing every missing file.
        ValueError: the first unreadable file, non-3D volume, or image/label shape mismatch.
    """
    missing = [str(item[k]) for item in items for k in keys if k in item and not os.path.isfile(str(item[k]))]
    if missing:
        shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
        raise FileNotFoundError(f"{len(missing)} file(s) named in the datalist do not exist:\n  {shown}")
    for item in items:
        shapes = {
            k: _spatial_shape(str(item[k]), num_channels if k == "image" else 1, k == "image")
            for k in keys
            if k in item
        }
        if len(set(shapes.values())) > 1:
            raise ValueError(
                "image and label sizes differ: "
                + ", ".join(f"{k} {item[k]} is {s}" for k, s in shapes.items())
                + "; every label must be drawn on the voxel grid of its image."
            )


def split_datalist(items: Sequence[dict], val_fraction: float = 0.2, min_val: int = 1) -> tuple[list, list]:
    """Split a datalist into (train, validation) deterministically: the last cases, in list order, validate.

    A thin layer over ``monai.data.partition_dataset`` (unshuffled, by ratios), which does the split; on top it fixes
    the validation size to ``round(len(items) * val_fraction)`` (Python rounding), at least ``min_val`` and at most
    ``len(items) - 1``, so that training always keeps a case; a single case is used for both.

    Args:
        items: the datalist (any sequence); it is not modified.
        val_fraction: share of the cases that validate, in [0, 1). Defaults to 0.2.
        min_val: smallest number of validation cases (capped at ``len(items) - 1``), >= 0. Defaults to 1.

    Returns:
        ``(train, validation)``, new lists; both hold the single case when ``items`` has one, both are empty when it
        has none.

    Raises:
        ValueError: when ``val_fraction`` is outside [0, 1) or ``min_val`` is not an integer >= 0.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    min_val = check_count("min_val", min_val)
    items = list(items)
    if len(items) < 2:
        return items, list(items)
    num_val = min(len(items) - 1, max(min_val, round(len(items) * val_fraction)))
    train, val = partition_dataset(items, ratios=[len(items) - num_val, num_val])
    return train, val
