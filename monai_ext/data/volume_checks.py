"""Checks of a volume's geometry and content, shared by the up-front datalist check and ``ValidateImaged``.

Each check takes what a NIfTI header or a loaded ``MetaTensor`` gives (spatial shape, affine, voxel values) and the
name of the file, and raises a ``ValueError`` that names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from .checks import check_count

__all__ = [
    "GRID_TOLERANCE",
    "check_label_values",
    "check_same_grid",
    "check_voxel_budget",
    "resampled_shape",
    "target_pixdim",
    "voxel_spacing",
]

GRID_TOLERANCE = 0.1  # how far (in voxels of the image) a label's grid may drift from its image's, anywhere

_SHOWN = 5  # offending values listed in a message


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.4g}" for v in values)


def voxel_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel size along each voxel axis, in mm: the lengths of the columns of the affine's linear part.

    Args:
        affine: ``(N + 1, N + 1)`` voxel-to-world matrix of an ``N``-D image.

    Returns:
        ``(N,)`` float array.
    """
    affine = np.asarray(affine, dtype=float)
    return np.linalg.norm(affine[:-1, :-1], axis=0)


def target_pixdim(pixdim: float | Sequence[float], spatial_dims: int = 3) -> tuple[float, ...]:
    """``pixdim`` as MONAI's ``Spacing`` reads it: one value per spatial axis, a shorter sequence padded with its last
    value; a value <= 0 keeps that axis's own spacing.

    Raises:
        ValueError: when ``pixdim`` is empty or holds a value that is not a finite number.
    """

    def is_number(v) -> bool:
        return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)

    values = [pixdim] if is_number(pixdim) else list(pixdim) if isinstance(pixdim, (Sequence, np.ndarray)) else []
    if not values or isinstance(pixdim, str) or not all(is_number(v) for v in values):
        raise ValueError(f"pixdim must be a number or a sequence of numbers (mm; <= 0 keeps an axis), got {pixdim!r}.")
    values = values[:spatial_dims] + [values[-1]] * (spatial_dims - len(values))
    return tuple(float(v) for v in values)


def resampled_shape(
    shape: Sequence[int], affine: np.ndarray, pixdim: float | Sequence[float] | None
) -> tuple[float, ...]:
    """Estimated spatial size of an image after ``Orientationd(axcodes="RAS")`` and ``Spacingd(pixdim)``.

    Each voxel axis keeps the distance between its first and last voxel centres, as MONAI's ``Spacing`` does:
    ``(shape - 1) * spacing / pixdim + 1``, where ``pixdim`` is read in RAS axis order (the axis a voxel axis lands on
    after reorientation). MONAI rounds the result to whole voxels; this estimate does not.

    Args:
        shape: spatial size ``(X, Y, Z)`` in voxels.
        affine: ``(4, 4)`` voxel-to-world matrix (``(N + 1, N + 1)`` for ``N`` spatial axes).
        pixdim: target voxel size in mm (see :func:`target_pixdim`); ``None``: no resampling.

    Returns:
        the size along each voxel axis of the input, as floats.
    """
    shape = tuple(int(s) for s in shape)
    if pixdim is None:
        return tuple(float(s) for s in shape)
    affine = np.asarray(affine, dtype=float)
    spacing = voxel_spacing(affine)
    target = target_pixdim(pixdim, len(shape))
    ras_axis = nib.orientations.io_orientation(affine)[:, 0]  # voxel axis i lands on RAS axis ras_axis[i]
    out = []
    for size, spc, axis in zip(shape, spacing, ras_axis):
        p = target[int(axis)] if not np.isnan(axis) else -1.0
        out.append((size - 1) * spc / p + 1 if p > 0 else float(size))
    return tuple(out)


def check_voxel_budget(
    name: str,
    shape: Sequence[int],
    affine: np.ndarray,
    pixdim: float | Sequence[float] | None,
    max_voxels: int,
    bytes_per_voxel: float | None = None,
) -> int:
    """Refuse an image that would be larger than ``max_voxels`` voxels once resampled to ``pixdim``.

    A size guard for inference that holds a whole volume (SCAA's 3D context encoder, the slice-group and
    sliding-window inferers' output buffers): its memory grows with the number of voxels, so a volume over the budget
    is refused before anything runs, instead of exhausting the machine.

    Args:
        name: the file, for the message.
        shape: spatial size in voxels.
        affine: voxel-to-world matrix (for the spacing and orientation).
        pixdim: the bundle's target voxel size (``None``: not resampled).
        max_voxels: the largest voxel count accepted (after resampling).
        bytes_per_voxel: memory per voxel of the bundle's inference, to print an estimate in GiB (``None``: no
            estimate).

    Returns:
        the estimated voxel count.

    Raises:
        ValueError: when the estimate exceeds ``max_voxels``, or ``max_voxels`` is not a positive integer.
    """
    max_voxels = check_count("max_voxels", max_voxels, minimum=1)
    size = resampled_shape(shape, affine, pixdim)
    voxels = int(round(math.prod(size)))
    if voxels <= max_voxels:
        return voxels
    spacing = voxel_spacing(affine)
    memory = f" (about {voxels * bytes_per_voxel / 2**30:.2g} GiB of memory)" if bytes_per_voxel else ""
    target = "" if pixdim is None else f", resampled to {_fmt(target_pixdim(pixdim, len(size)))} mm,"
    raise ValueError(
        f"{name} is too large: {_fmt(shape)} voxels of {_fmt(spacing)} mm{target} make about {voxels:,} voxels"
        f"{memory}, above max_voxels={max_voxels}, the largest volume this bundle processes; crop the image to the "
        f"region you need, or raise max_voxels (e.g. --max_voxels {voxels}) on a machine with the memory (the "
        "bundle's docs/README.md gives its memory per voxel)."
    )


def check_same_grid(
    image_name: str,
    label_name: str,
    shape: Sequence[int],
    image_affine: np.ndarray,
    label_affine: np.ndarray,
    tolerance: float = GRID_TOLERANCE,
) -> float:
    """Refuse a label whose voxel grid is not its image's: same size, but a different spacing, orientation or origin.

    The two affines map the corners of the voxel grid (the largest distance of any voxel, since both maps are
    affine) into the world; they may be at most ``tolerance`` of the image's smallest voxel size apart. The default,
    0.1 voxel, absorbs the rounding of headers written by different tools and refuses any real difference: a flipped
    axis, a half-voxel shift, or a spacing off by 0.1 % over 100 voxels.

    Args:
        image_name, label_name: the files, for the message.
        shape: the common spatial size, in voxels.
        image_affine, label_affine: voxel-to-world matrices, ``(N + 1, N + 1)``.
        tolerance: the largest distance allowed, in voxels of the image (>= 0).

    Returns:
        the largest distance between the two grids, in mm.

    Raises:
        ValueError: when the grids differ by more than ``tolerance`` voxel, or ``tolerance`` is negative.
    """
    if not tolerance >= 0:
        raise ValueError(f"the grid tolerance must be a number of voxels >= 0, got {tolerance!r}.")
    a, b = np.asarray(image_affine, dtype=float), np.asarray(label_affine, dtype=float)
    corners = np.array(list(itertools.product(*[(0, int(s) - 1) for s in shape])), dtype=float)  # (2^N, N)
    corners = np.concatenate([corners, np.ones((len(corners), 1))], axis=1).T  # homogeneous, (N + 1, 2^N)
    distance = float(np.linalg.norm((a @ corners - b @ corners)[:-1], axis=0).max())
    spacing = voxel_spacing(a)
    if distance <= tolerance * float(spacing.min()):
        return distance
    raise ValueError(
        f"{label_name} is not on the voxel grid of its image {image_name}: both are {_fmt(shape)} voxels, but their "
        f"affines place voxels up to {distance:.3g} mm apart (more than {tolerance:g} voxel); image: spacing "
        f"{_fmt(spacing)} mm, orientation {''.join(nib.aff2axcodes(a))}; label: spacing {_fmt(voxel_spacing(b))} mm, "
        f"orientation {''.join(nib.aff2axcodes(b))}. Resample the label onto its image's grid (nearest neighbour), "
        "or, if only the label's header is wrong, copy the image's affine into it."
    )


def check_label_values(values, num_classes: int, name: str) -> None:
    """Refuse a label map that is not made of class indices ``0 .. num_classes - 1``.

    Args:
        values: the label's voxels, any shape (numpy array, or a tensor on the CPU).
        num_classes: the bundle's number of classes, background included (>= 1).
        name: the file, for the message.

    Raises:
        ValueError: naming the file and the offending values: a non-integer value (an interpolated or probability
            map), or a class index below 0 or at least ``num_classes``.
    """
    num_classes = check_count("num_classes", num_classes, minimum=1)
    v = np.asarray(values)
    if v.size == 0:
        return
    if v.dtype.kind == "f":
        fractional = v != np.round(v)  # NaN is fractional too
        count = int(np.count_nonzero(fractional))
        if count:
            shown = ", ".join(f"{x:g}" for x in np.unique(v[fractional])[:_SHOWN])
            raise ValueError(
                f"{name}: {count} label voxel(s) are not whole numbers (e.g. {shown}); a label holds class indices "
                f"0..{num_classes - 1}: save it as an integer map, and resample labels with nearest-neighbour "
                "interpolation, never linear."
            )
    elif v.dtype.kind not in "biu":
        raise ValueError(f"{name}: a label of type {v.dtype} is not a map of class indices; save it as integers.")
    if v.min() >= 0 and v.max() < num_classes:
        return
    outside = (v < 0) | (v >= num_classes)
    bad = np.unique(v[outside])
    shown = ", ".join(f"{x:g}" for x in bad[:_SHOWN]) + (", ..." if len(bad) > _SHOWN else "")
    raise ValueError(
        f"{name}: label values {shown} are outside 0..{num_classes - 1} (num_classes={num_classes}; "
        f"{int(np.count_nonzero(outside))} voxel(s)); relabel those voxels with class indices below {num_classes}, "
        "or set num_classes to the number of classes your labels hold (--num_classes N) and train a model for it."
    )
