"""Checks of a volume file and of its geometry and content, shared by the up-front datalist check and
``ValidateImaged``.

A volume file is read through the MONAI reader that ``LoadImage`` picks for it (:func:`read_volume_header`): NIfTI
through ``NibabelReader`` (the header alone), NRRD, MetaImage and DICOM series through ``ITKReader`` (or whichever
installed reader ``LoadImage`` prefers). Each check takes what the reader gives or a loaded ``MetaTensor`` holds
(spatial shape, affine, voxel values) and the name of the file, and raises an error that names the file, says what is
wrong and how to fix it.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from monai.data import ImageReader, NibabelReader
from monai.transforms import LoadImage
from nibabel.openers import ImageOpener

from .checks import check_count

__all__ = [
    "FORMATS_TEXT",
    "GRID_TOLERANCE",
    "VOLUME_FORMATS",
    "VolumeHeader",
    "check_label_values",
    "check_same_grid",
    "check_volume_data",
    "check_volume_paths",
    "check_voxel_budget",
    "is_dicom_series",
    "read_volume_header",
    "read_volume_values",
    "resampled_shape",
    "target_pixdim",
    "volume_format",
    "voxel_spacing",
]

# the volume formats the bundles take, by file name ending (lower case); a DICOM series is a folder
VOLUME_FORMATS = {
    ".nii.gz": "NIfTI",
    ".nii": "NIfTI",
    ".nrrd": "NRRD",
    ".nhdr": "NRRD",
    ".mha": "MetaImage",
    ".mhd": "MetaImage",
    ".dcm": "DICOM",
}
FORMATS_TEXT = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), DICOM (a folder holding one series, "
    "or a multi-frame .dcm file)"
)
_DICOM_PROBE = 8  # files of a folder looked at to tell a DICOM series
_CHUNK = 1 << 24  # bytes read at a time when a compressed file is read through
_FIX_DAMAGED = "copy the file again from its source (or re-export it), or remove it from the input."

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


# ---------------------------------------------------------------- volume files, read through MONAI's readers


def is_dicom_series(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder of DICOM files: one named ``*.dcm``, or one of its first files carrying the
    ``DICM`` marker at byte 128 (DICOM files often have no extension)."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if any(p.suffix.lower() == ".dcm" for p in files):
        return True
    for p in files[:_DICOM_PROBE]:
        try:
            with open(p, "rb") as f:
                f.seek(128)
                if f.read(4) == b"DICM":
                    return True
        except OSError:
            continue
    return False


def volume_format(path: str | os.PathLike) -> str | None:
    """The format of a volume file from its name (``"NIfTI"``, ``"NRRD"``, ``"MetaImage"``, ``"DICOM"``),
    ``"DICOM"`` for a folder holding a DICOM series, ``None`` for anything else."""
    if os.path.isdir(path):
        return "DICOM" if is_dicom_series(path) else None
    name = str(path).lower()
    return next((fmt for suffix, fmt in VOLUME_FORMATS.items() if name.endswith(suffix)), None)


def check_volume_paths(paths: Sequence[str], source: str = "named in the datalist") -> None:
    """Refuse missing paths (all listed), then paths that are not volumes the bundles read (all listed).

    Args:
        paths: files or DICOM series folders.
        source: where the paths come from, for the message.

    Raises:
        FileNotFoundError: listing every path that does not exist.
        ValueError: listing every path of another format (or a folder that holds no DICOM series), with the formats
            taken and how to convert.
    """
    missing = [str(p) for p in paths if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} file(s) {source} do not exist:\n  {_listed(missing)}")
    unsupported = [str(p) for p in paths if volume_format(p) is None]
    if unsupported:
        raise ValueError(
            f"{len(unsupported)} file(s) {source} are not volumes in a format the bundle reads:\n  "
            f"{_listed(unsupported)}\nGive {FORMATS_TEXT}; convert other files to NIfTI first (for example "
            "itk.imwrite(itk.imread('scan.vtk'), 'scan.nii.gz')), or remove them from the input."
        )


def _listed(paths: Sequence[str], shown: int = 10) -> str:
    return "\n  ".join(paths[:shown]) + ("\n  ..." if len(paths) > shown else "")


@functools.cache
def _readers() -> tuple[ImageReader, ...]:
    """The readers ``LoadImage`` has with the installed packages, in the order it tries them."""
    return tuple(LoadImage(image_only=True).readers[::-1])


def _reader_for(path: str) -> ImageReader:
    """The reader ``LoadImage`` picks for ``path`` (the first, in its order, that takes the file name)."""
    for reader in _readers():
        if reader.verify_suffix(path):
            return reader
    raise ValueError(
        f"no installed image reader takes {path}: install ITK (pip install itk), which reads NRRD, MetaImage and "
        "DICOM, or convert the file to NIfTI."
    )


def _reason(error: BaseException) -> str:
    """An error's text on one line, without the C++ source locations ITK puts in it."""
    text = re.sub(r"\S+\.(?:cxx|h|hxx|cpp):\d+:", "", str(error))
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class VolumeHeader:
    """What the checks need of a volume file, read through the MONAI reader that ``LoadImage`` picks for it.

    Attributes:
        path: the file, or the folder of a DICOM series.
        format: ``"NIfTI"``, ``"NRRD"``, ``"MetaImage"`` or ``"DICOM"``.
        shape: spatial size ``(X, Y, Z)`` in voxels.
        channels: the image's channels (1 for a single-channel volume).
        affine: ``(4, 4)`` voxel-to-world matrix, as ``LoadImage`` gives it (RAS, mm).
        reader: the MONAI reader.
        image: for NIfTI, the nibabel image (header read, voxels not); ``None`` for the other formats, whose reader
            read (and thereby checked) every voxel, which were then dropped.
    """

    path: str
    format: str
    shape: tuple[int, ...]
    channels: int
    affine: np.ndarray
    reader: ImageReader
    image: nib.spatialimages.SpatialImage | None = None


def read_volume_header(path: str, num_channels: int | None = None, is_image: bool = True) -> VolumeHeader:
    """Read a volume file's header through MONAI's reader and check it is a 3D volume with the expected channels.

    NIfTI is read by ``NibabelReader`` (the header only: milliseconds; :func:`check_volume_data` then reads the
    voxels through). The other formats are read by their reader in full (``ITKReader`` reads a whole NRRD,
    MetaImage or DICOM series): a truncated or damaged file fails here.

    Args:
        path: a volume file or DICOM series folder (see :data:`VOLUME_FORMATS`).
        num_channels: the channels expected: an image may then be 4D with this many channels in the last axis (a
            label: 1); ``None``: a 3D volume only.
        is_image: whether it is an image (else a label), for the message.

    Returns:
        the :class:`VolumeHeader`.

    Raises:
        ValueError: the format is not one the bundles take, the reader fails (an unreadable, truncated or damaged
            file), the volume is not 3D, or it has other channels than expected.
    """
    fmt = volume_format(path)
    if fmt is None:
        check_volume_paths([path], "given")
    reader = _reader_for(path)
    try:
        img = reader.read(path)
        if isinstance(reader, NibabelReader):
            full, affine, image = tuple(int(s) for s in img.shape), np.asarray(img.affine, dtype=float), img
        else:
            data, meta = reader.get_data(img)
            channel_dim = meta.get("original_channel_dim")
            channels = (data.shape[channel_dim],) if isinstance(channel_dim, (int, np.integer)) else ()
            full = tuple(int(s) for s in meta["spatial_shape"]) + channels
            affine, image = np.asarray(meta["affine"], dtype=float), None
            del data, img  # the voxels are not kept
    except Exception as e:
        if fmt == "NIfTI":
            raise ValueError(
                f"cannot read {path} as a NIfTI volume ({e}); replace the file or remove it from the input."
            ) from e
        raise ValueError(
            f"cannot read {path} as a {fmt} volume: {type(reader).__name__} failed ({_reason(e)}); the file may be "
            f"truncated or damaged: {_FIX_DAMAGED}"
        ) from e
    shape = full
    if len(full) == 4 and num_channels is not None:
        if full[3] != num_channels:
            fix = (
                "give the modalities the model was trained on, in the order of metadata.json's channel_def"
                if is_image
                else "a label is one channel of class indices"
            )
            raise ValueError(f"{path} has {full[3]} channels (shape {full}), {num_channels} expected; {fix}.")
        shape = full[:3]
    if len(shape) != 3:
        raise ValueError(
            f"{path} has shape {full}: a 3D volume (X, Y, Z) is expected; 2D images and time series are not supported."
        )
    channels = full[3] if len(full) == 4 else 1
    return VolumeHeader(str(path), fmt, shape, channels, affine, reader, image)


def check_volume_data(header: VolumeHeader) -> None:
    """Make sure every voxel of the file can be read: a truncated or damaged file is caught here, not mid-run.

    A NIfTI file's whole voxel data stream is read through (decompressed, keeping nothing) and its length compared
    with what the header describes; the other formats were read in full by :func:`read_volume_header` already.

    Raises:
        ValueError: the file is truncated or damaged, naming it and the fix.
    """
    if header.image is None:
        return
    img, path = header.image, header.path
    data_file = img.file_map["image"].filename or path
    offset = img.dataobj.offset  # where the voxels start in the file (the loaded header's offset is reset to 0)
    expected = int(offset) + int(np.prod(img.shape)) * img.get_data_dtype().itemsize
    try:
        if Path(data_file).suffix in ImageOpener.compress_ext_map:
            size = 0
            with ImageOpener(data_file) as stream:
                while chunk := stream.read(_CHUNK):
                    size += len(chunk)
        else:
            size = os.path.getsize(data_file)
    except Exception as e:  # EOFError, zlib.error, gzip.BadGzipFile, ...: the stream stops or is damaged
        raise ValueError(
            f"{data_file} is truncated or damaged: reading its voxel data failed ({e}); {_FIX_DAMAGED}"
        ) from e
    if size < expected:
        raise ValueError(
            f"{data_file} is truncated: its header describes {expected} bytes, the file holds {size}; {_FIX_DAMAGED}"
        )


def read_volume_values(header: VolumeHeader) -> np.ndarray:
    """The voxels of a volume, as its reader gives them (NIfTI: the stored values; others: read again)."""
    if header.image is not None:
        return np.asanyarray(header.image.dataobj)
    return np.asarray(header.reader.get_data(header.reader.read(header.path))[0])
