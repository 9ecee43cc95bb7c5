"""Synthetic CT-like vessel/nodule phantoms and a demo dataset in the Medical Segmentation Decathlon layout.

The task is built so that a single axial slice is ambiguous and only 3D context decides the class:

- label 1 ``vessel``: long tubes running across the axial slices (mostly along z, the last array axis), gently tilted
  and curved so that their cross-sections move a little from slice to slice;
- label 2 ``nodule``: compact, roughly spherical blobs.

Both draw their radius from the same range and their intensity from the same distribution, so an axial cross-section
of either is a bright disk of similar size; in 3D one is a tube and the other a ball.

Arrays are indexed ``(x, y, z)`` as NIfTI stores them; z is the axial slice axis.

:func:`write_msd_dataset` also writes the multi-channel brain-MRI lesion task of :mod:`monai_ext.data.lesions`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["LABELS", "TASKS", "make_phantom", "write_msd_dataset"]

LABELS: dict[int, str] = {0: "background", 1: "vessel", 2: "nodule"}

MIN_SIZE = 24  # smallest allowed extent along each axis, in voxels

# Hounsfield units
_AIR_HU = -1000.0
_FAT_HU = -100.0
_SOFT_TISSUE_HU = 40.0
_OBJECT_HU_RANGE = (180.0, 260.0)  # contrast enhanced, shared by vessels and nodules

_RADIUS_RANGE = (2.5, 4.0)  # voxels, shared by vessels and nodules
_NODULE_Z_POWER = 3.0  # slightly flattened poles: axial cross-sections of nodules stay vessel-like
_GAP = 3.0  # minimum surface-to-surface gap between objects, voxels
_MAX_LAYOUTS = 20  # restarts of the whole object layout
_MAX_TRIES = 200  # placement attempts per object within one layout


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    msg = f"shape must be a sequence of 3 integers, each >= {MIN_SIZE}, got {shape!r}."
    try:
        items = tuple(shape)
    except TypeError:
        raise ValueError(msg) from None
    if len(items) != 3 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in items):
        raise ValueError(msg)
    if min(items) < MIN_SIZE:
        raise ValueError(msg)
    return int(items[0]), int(items[1]), int(items[2])


def _check_count(name: str, value: int, minimum: int = 0) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_seed(seed: int) -> int:
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _check_noise(noise_std: float, unit: str = "") -> None:
    bad_type = isinstance(noise_std, bool) or not isinstance(noise_std, (int, float, np.number))
    if bad_type or not math.isfinite(noise_std) or noise_std < 0:
        raise ValueError(f"noise_std must be a finite number >= 0{unit}, got {noise_std!r}.")


def _grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable voxel coordinates ``x (X,1,1)``, ``y (1,Y,1)``, ``z (1,1,Z)``."""
    nx, ny, nz = shape
    return (
        np.arange(nx, dtype=float)[:, None, None],
        np.arange(ny, dtype=float)[None, :, None],
        np.arange(nz, dtype=float)[None, None, :],
    )


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    msg = f"spacing must be a sequence of 3 positive finite numbers (mm), got {spacing!r}."
    try:
        items = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise ValueError(msg) from None
    if len(items) != 3 or not all(math.isfinite(s) and s > 0 for s in items):
        raise ValueError(msg)
    return items[0], items[1], items[2]


class _Body:
    """Elliptic body cylinder along z with a subcutaneous fat rim; objects live in the inner (soft tissue) ellipse."""

    def __init__(self, shape: tuple[int, int, int], rng: np.random.Generator) -> None:
        nx, ny, _ = shape
        self.cx = (nx - 1) / 2 + rng.uniform(-0.5, 0.5)
        self.cy = (ny - 1) / 2 + rng.uniform(-0.5, 0.5)
        self.ax = nx * rng.uniform(0.45, 0.48)  # semi-axes of the skin
        self.ay = ny * rng.uniform(0.41, 0.45)
        self.rim = max(1.5, 0.04 * min(nx, ny))  # fat rim thickness
        self.ix, self.iy = self.ax - self.rim, self.ay - self.rim  # semi-axes of the soft-tissue core

    def inside_core(self, x: np.ndarray, y: np.ndarray, clearance: float) -> np.ndarray:
        """Whether points are inside the soft-tissue core with at least ``clearance`` voxels to spare."""
        ex, ey = self.ix - clearance, self.iy - clearance
        if ex <= 0 or ey <= 0:
            return np.zeros(np.shape(x), dtype=bool)
        return ((x - self.cx) / ex) ** 2 + ((y - self.cy) / ey) ** 2 <= 1.0

    def sample_core(self, rng: np.random.Generator, clearance: float) -> tuple[float, float]:
        """A uniform random point of the core shrunk by ``clearance`` (may be outside if the core is too small)."""
        ex, ey = max(self.ix - clearance, 0.0), max(self.iy - clearance, 0.0)
        rho, phi = math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        return self.cx + ex * rho * math.cos(phi), self.cy + ey * rho * math.sin(phi)

    @staticmethod
    def _signed_distance(x: np.ndarray, y: np.ndarray, cx: float, cy: float, ex: float, ey: float) -> np.ndarray:
        # first-order signed distance to an ellipse (negative inside), good enough for soft edges
        rho = np.sqrt(((x - cx) / ex) ** 2 + ((y - cy) / ey) ** 2)
        grad = np.sqrt(((x - cx) / ex**2) ** 2 + ((y - cy) / ey**2) ** 2) / np.maximum(rho, 1e-6)
        return (rho - 1.0) / np.maximum(grad, 1e-6)

    def fractions(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Partial-volume fractions of (body, soft-tissue core) on an in-plane grid."""
        body = np.clip(0.5 - self._signed_distance(x, y, self.cx, self.cy, self.ax, self.ay), 0.0, 1.0)
        core = np.clip(0.5 - self._signed_distance(x, y, self.cx, self.cy, self.ix, self.iy), 0.0, 1.0)
        return body, core


class _Vessel:
    """Tube of constant radius around a centreline ``(cx(z), cy(z), z)`` for ``z`` in ``[z0, z1]``, with round caps."""

    def __init__(self, shape: tuple[int, int, int], body: _Body, radius: float, rng: np.random.Generator) -> None:
        nz = shape[2]
        self.radius = radius
        self.z0 = rng.uniform(0.0, 0.12) * (nz - 1)
        self.z1 = (1.0 - rng.uniform(0.0, 0.12)) * (nz - 1)
        self.x0, self.y0 = body.sample_core(rng, self.radius + 0.5)
        self.slope = rng.uniform(-0.1, 0.1, size=2)  # tilt, voxels per slice in x and y
        self.amp = rng.uniform(0.5, 1.5, size=2)  # curvature: sinusoidal wiggle of the centreline
        self.period = rng.uniform(1.0, 2.0, size=2) * nz
        self.phase = rng.uniform(0, 2 * math.pi, size=2)
        self.zc = (nz - 1) / 2
        self.nz = nz

    def centre(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Centreline position ``(cx, cy)`` and derivative ``(dcx/dz, dcy/dz)`` at (clamped) slice positions ``z``."""
        z = np.clip(z, self.z0, self.z1)
        w = 2 * math.pi / self.period
        out = []
        for d, origin in enumerate((self.x0, self.y0)):
            out.append(origin + self.slope[d] * (z - self.zc) + self.amp[d] * np.sin(w[d] * z + self.phase[d]))
        for d in range(2):
            out.append(self.slope[d] + self.amp[d] * w[d] * np.cos(w[d] * z + self.phase[d]))
        return out[0], out[1], out[2], out[3]

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance to the centreline for a broadcastable ``(X, 1, 1), (1, Y, 1), (1, 1, Z)`` grid."""
        zc = np.clip(z, self.z0, self.z1)
        cx, cy, sx, sy = self.centre(zc)
        vx, vy, vz = x - cx, y - cy, z - zc
        in_plane2 = vx**2 + vy**2
        # within the tube: perpendicular distance to the locally straight centreline; beyond the ends: round caps
        along = (vx * sx + vy * sy) / np.sqrt(sx**2 + sy**2 + 1.0)
        within = (z >= self.z0) & (z <= self.z1)
        dist2 = np.where(within, in_plane2 - along**2, in_plane2 + vz**2)
        return np.sqrt(np.maximum(dist2, 0.0))

    def fits(self, body: _Body) -> bool:
        cx, cy, _, _ = self.centre(np.arange(self.nz, dtype=float))
        return bool(np.all(body.inside_core(cx, cy, self.radius + 0.5)))

    def gap_to_vessel(self, other: _Vessel) -> float:
        z = np.arange(self.nz, dtype=float)
        ax, ay, _, _ = self.centre(z)
        bx, by, _, _ = other.centre(z)
        return float(np.min(np.hypot(ax - bx, ay - by))) - self.radius - other.radius

    def gap_to_point(self, p: np.ndarray, radius: float) -> float:
        z = np.linspace(self.z0, self.z1, 4 * self.nz)
        cx, cy, _, _ = self.centre(z)
        return float(np.min(np.sqrt((cx - p[0]) ** 2 + (cy - p[1]) ** 2 + (z - p[2]) ** 2))) - self.radius - radius


class _Blob:
    """Roughly spherical blob: ``(dx / sx)^2 + (dy / sy)^2 + |dz / sz|^p <= 1`` with semi-axes ``radius * scale``.

    ``p = 2`` is an ellipsoid; ``p > 2`` flattens the poles a little, so that most axial cross-sections are close to
    the full disk (as for a vessel) while the extent along z stays ``2 * radius * sz``.
    """

    def __init__(self, centre: np.ndarray, radius: float, scale: np.ndarray, z_power: float = 2.0) -> None:
        self.centre, self.radius, self.scale, self.z_power = centre, radius, scale, z_power

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Radial distance-like field, equal to ``radius`` on the surface, on a broadcastable grid."""
        c, s = self.centre, self.scale * self.radius
        level = ((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2 + np.abs((z - c[2]) / s[2]) ** self.z_power
        return self.radius * np.sqrt(level)

    def gap_to_point(self, p: np.ndarray, radius: float) -> float:
        return float(np.linalg.norm(self.centre - p)) - self.radius * float(self.scale.max()) - radius


def _place_objects(
    shape: tuple[int, int, int], body: _Body, num_vessels: int, num_nodules: int, rng: np.random.Generator
) -> tuple[list[_Vessel], list[_Blob]]:
    nz = shape[2]
    for _ in range(_MAX_LAYOUTS):
        # sizes are drawn per layout, not per placement attempt, so that rejections do not favour small objects
        # (only a volume too tight for the first layout gets a slight bias)
        vessel_radii = rng.uniform(*_RADIUS_RANGE, size=num_vessels)
        nodule_radii = rng.uniform(*_RADIUS_RANGE, size=num_nodules)
        nodule_scales = rng.uniform(0.9, 1.1, size=(num_nodules, 3))
        vessels: list[_Vessel] = []
        nodules: list[_Blob] = []
        for radius in vessel_radii:
            for _ in range(_MAX_TRIES):
                v = _Vessel(shape, body, float(radius), rng)
                if v.fits(body) and all(v.gap_to_vessel(o) >= _GAP for o in vessels):
                    vessels.append(v)
                    break
            else:
                break
        if len(vessels) < num_vessels:
            continue
        for radius, scale in zip(nodule_radii, nodule_scales):
            extent = radius * float(scale.max())
            for _ in range(_MAX_TRIES):
                x, y = body.sample_core(rng, extent + 0.5)
                z = rng.uniform(extent + 1.0, nz - 2.0 - extent)
                p = np.array([x, y, z])
                if (
                    body.inside_core(np.array(x), np.array(y), extent + 0.5)
                    and all(v.gap_to_point(p, extent) >= _GAP for v in vessels)
                    and all(n.gap_to_point(p, extent) >= _GAP for n in nodules)
                ):
                    nodules.append(_Blob(p, float(radius), scale, _NODULE_Z_POWER))
                    break
            else:
                break
        if len(nodules) == num_nodules:
            return vessels, nodules
    raise RuntimeError(
        f"could not place {num_vessels} vessels and {num_nodules} nodules without overlap in a volume of shape "
        f"{shape}; use a larger shape or fewer objects."
    )


def _place_fat(
    shape: tuple[int, int, int], body: _Body, objects: Sequence[_Vessel | _Blob], rng: np.random.Generator
) -> list[_Blob]:
    """A few dark fat lobules in the core, away from the objects; those that do not fit are skipped."""
    nz = shape[2]
    fat: list[_Blob] = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(2.0, max(2.5, 0.08 * min(shape)))
        scale = rng.uniform(0.7, 1.3, size=3)
        extent = radius * float(scale.max())
        x, y = body.sample_core(rng, extent)
        p = np.array([x, y, rng.uniform(0, nz - 1)])
        clear = all(o.gap_to_point(p, extent) >= _GAP for o in objects)
        clear = clear and all(f.gap_to_point(p, extent) >= 1.0 for f in fat)
        if clear and body.inside_core(np.array(x), np.array(y), extent):
            fat.append(_Blob(p, radius, scale))
    return fat


def make_phantom(
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
    num_vessels: int = 3,
    num_nodules: int = 3,
    noise_std: float = 20.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one CT-like volume with tubular vessels and spherical nodules of matching size and intensity.

    Background: air (-1000 HU) outside an elliptic body cylinder along z, a fat rim (-100 HU) under the skin and a
    soft-tissue core (~40 HU, smooth low-frequency variation) holding a few fat lobules. Vessels run along z through
    most of the depth; nodules are balls with slightly flattened poles (so that most of their axial cross-sections
    are near-full disks, as a vessel's). Both have radii in [2.5, 4] voxels and a per-object intensity in
    [180, 260] HU, soft (partial-volume) edges, and are kept at least 3 voxels apart inside the core.
    Gaussian noise of ``noise_std`` HU is added everywhere. The default counts need an in-plane size of about
    40 voxels or more; a 24-voxel volume holds one vessel and one nodule.

    Args:
        shape: spatial size ``(X, Y, Z)``; z (the last axis) is the axial slice axis. Each at least 24.
        seed: seed of ``np.random.default_rng``; the same arguments give identical arrays.
        num_vessels: number of vessels (label 1), >= 0.
        num_nodules: number of nodules (label 2), >= 0.
        noise_std: standard deviation of the additive Gaussian noise in HU, >= 0.

    Returns:
        ``(image, label)``, both of shape ``shape``: the image in HU as float32, the label as uint8 with values in
        ``LABELS`` (0 background, 1 vessel, 2 nodule).

    Raises:
        ValueError: when an argument is out of range or of the wrong type.
        RuntimeError: when the objects cannot be placed without overlap (volume too small for the requested counts).
    """
    shape_ = _check_shape(shape)
    seed = _check_seed(seed)
    num_vessels = _check_count("num_vessels", num_vessels)
    num_nodules = _check_count("num_nodules", num_nodules)
    _check_noise(noise_std, " (HU)")

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_
    x, y, z = _grid(shape_)

    body = _Body(shape_, rng)
    vessels, nodules = _place_objects(shape_, body, num_vessels, num_nodules, rng)
    fat = _place_fat(shape_, body, [*vessels, *nodules], rng)

    # soft tissue with a smooth low-frequency variation (a few random plane waves, about +-10 HU)
    tissue = np.full(shape_, _SOFT_TISSUE_HU)
    for _ in range(3):
        freq = rng.uniform(0.3, 1.5, size=3) * rng.choice([-1.0, 1.0], size=3)
        arg = 2 * math.pi * (freq[0] * x / nx + freq[1] * y / ny + freq[2] * z / nz) + rng.uniform(0, 2 * math.pi)
        tissue = tissue + rng.uniform(2.0, 5.0) * np.cos(arg)
    for f in fat:
        frac = np.clip(f.radius + 0.5 - f.distance(x, y, z), 0.0, 1.0)
        tissue = tissue * (1 - frac) + _FAT_HU * frac

    body_frac, core_frac = body.fractions(x[..., 0], y[..., 0])
    body_frac, core_frac = body_frac[..., None], core_frac[..., None]
    image = _AIR_HU * (1 - body_frac) + body_frac * (_FAT_HU * (1 - core_frac) + tissue * core_frac)

    label = np.zeros(shape_, dtype=np.uint8)
    for value, objects in ((1, vessels), (2, nodules)):
        for obj in objects:
            dist = obj.distance(x, y, z)
            frac = np.clip(obj.radius + 0.5 - dist, 0.0, 1.0)
            image = image * (1 - frac) + rng.uniform(*_OBJECT_HU_RANGE) * frac
            label[dist <= obj.radius] = value

    if noise_std > 0:
        image = image + rng.normal(0.0, float(noise_std), size=shape_)
    return image.astype(np.float32), label


def _case_seed(seed: int, index: int, stream: int = 0) -> int:
    """Deterministic, well-mixed seed for one case (``stream`` separates independent uses within a case)."""
    return int(np.random.SeedSequence(entropy=seed, spawn_key=(index, stream)).generate_state(1)[0])


def _fitting_phantom(
    shape: tuple[int, int, int], seed: int, num_vessels: int, num_nodules: int
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`make_phantom`, with fewer objects (at least one of each) when the requested ones do not fit."""
    while True:
        try:
            image, label = make_phantom(shape, seed, num_vessels, num_nodules)
            return image, label, (num_vessels, num_nodules)
        except RuntimeError:
            if max(num_vessels, num_nodules) <= 1:
                raise
            if num_vessels >= num_nodules:
                num_vessels -= 1
            else:
                num_nodules -= 1


def _affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    """RAS affine with the given spacing, centred on the volume (world origin at the volume centre)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape, dtype=float) - 1) * np.asarray(spacing) / 2
    return affine


def _to_nifti(array: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    return img


def _write_case(image_path: Path, label_path: Path, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    """Write one case: the image with its dtype and shape as given (3D, or 4D channels last), the label as uint8."""
    nib.save(_to_nifti(image, affine), str(image_path))
    nib.save(_to_nifti(label.astype(np.uint8), affine), str(label_path))


@dataclass(frozen=True)
class _TaskSpec:
    """What :func:`write_msd_dataset` needs to know about one task.

    ``make_case(shape, seed, index)`` returns ``(image, label, note)`` for case ``index`` of a dataset with base seed
    ``seed``: the image as it is stored (dtype included), the label, and a short note for the progress line.
    ``header`` holds the leading ``dataset.json`` keys (``name`` to ``labels``); ``shape`` and ``spacing`` are the
    defaults used when the caller passes None.
    """

    make_case: Callable[[tuple[int, int, int], int, int], tuple[np.ndarray, np.ndarray, str]]
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    header: dict


def _vessel_case(shape: tuple[int, int, int], seed: int, index: int) -> tuple[np.ndarray, np.ndarray, str]:
    """One case of the MSD vessel task: 2-4 vessels and 2-4 nodules (see :func:`_fitting_phantom`), int16 HU."""
    case_seed = _case_seed(seed, index)
    counts = np.random.default_rng(_case_seed(seed, index, stream=1)).integers(2, 5, size=2)
    image, label, counts = _fitting_phantom(shape, case_seed, int(counts[0]), int(counts[1]))
    hu = np.clip(np.rint(image), -1024, 3071).astype(np.int16)
    return hu, label, f"{counts[0]} vessels, {counts[1]} nodules"


_VESSEL_TASK = _TaskSpec(
    make_case=_vessel_case,
    shape=(64, 64, 64),
    spacing=(1.5, 1.5, 1.5),
    header={
        "name": "SyntheticVesselNodule",
        "description": "Synthetic CT-like phantoms: tubular vessels and spherical nodules of matching size and "
        "intensity, only separable with 3D context. labelsTs (not in MSD) holds the test ground truth.",
        "reference": "monai_ext.data.synthetic (generated data, no patient data)",
        "licence": "CC0-1.0",
        "release": "1.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in LABELS.items()},
    },
)

TASKS = ("vessels", "lesions")


def _task_spec(task: str) -> _TaskSpec:
    if task == "vessels":
        return _VESSEL_TASK
    if task == "lesions":
        from .lesions import _MSD_TASK  # lesions imports this module's helpers: import it when needed, not on top

        return _MSD_TASK
    raise ValueError(f"task must be one of {', '.join(map(repr, TASKS))}, got {task!r}.")


def _move_into_place(src: Path, dst: Path) -> None:
    """Rename directory ``src`` to ``dst``, replacing ``dst`` if it exists; ``dst`` is restored if the rename fails."""
    if not dst.exists():
        os.replace(src, dst)
        return
    if not any(dst.iterdir()):
        dst.rmdir()
        os.replace(src, dst)
        return
    backup = dst.parent / f".{dst.name}.old-{uuid.uuid4().hex[:12]}"
    os.replace(dst, backup)
    try:
        os.replace(src, dst)
    except BaseException:
        os.replace(backup, dst)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def write_msd_dataset(
    output_dir: str | os.PathLike,
    num_train: int = 8,
    num_test: int = 4,
    shape: Sequence[int] | None = None,
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
    task: str = "vessels",
) -> Path:
    """Write a synthetic dataset in the Medical Segmentation Decathlon (MSD) layout.

    Two tasks:

    - ``"vessels"``: CT-like vessel/nodule volumes (:func:`make_phantom`), labels ``LABELS``, ``modality``
      ``{"0": "CT"}``; default shape ``(64, 64, 64)``, spacing 1.5 mm.
    - ``"lesions"``: brain-MRI-like volumes with MS-like lesions (:func:`monai_ext.data.lesions.make_lesion_phantom`),
      4D images ``(X, Y, Z, 3)`` (float32 in [0, 1], channels last, ``tensorImageSize`` ``"4D"``), ``modality``
      ``{"0": "T1", "1": "T2", "2": "FLAIR"}``, labels ``{"0": "background", "1": "lesion"}``; default shape
      ``(64, 64, 32)``, spacing ``(1.0, 1.0, 3.0)`` mm (thick slices). ``generator`` in ``dataset.json`` records
      ``"task": "lesions"``.

    Layout under ``output_dir``::

        dataset.json
        imagesTr/case_000.nii.gz ...   labelsTr/case_000.nii.gz ...
        imagesTs/case_008.nii.gz ...   labelsTs/case_008.nii.gz ...

    ``labelsTs`` is not part of MSD: it holds the ground truth of the test cases for evaluation, listed in the extra
    ``dataset.json`` key ``test_labeled`` (``[{"image": ..., "label": ...}]``); ``test`` lists image paths only, as in
    MSD. Cases are numbered consecutively, training first, each with a seed derived from ``seed`` and the case index.
    Vessel cases are :func:`make_phantom` volumes with 2-4 vessels and 2-4 nodules (fewer, but at least one of each,
    when they do not fit: small shapes), stored as int16 HU (rounded); lesion cases have 4-8 lesions (fewer, at least
    one, when they do not fit). Labels are stored as uint8; the affine is RAS with ``spacing`` on the diagonal and the
    origin at the volume centre (``-(shape - 1) * spacing / 2``), qform and sform codes 1 (scanner).

    The dataset is written into a temporary sibling directory and renamed into place, so a failure leaves no partial
    dataset behind.

    Args:
        output_dir: dataset directory to create (parents are created as needed).
        num_train: number of training cases, >= 0.
        num_test: number of test cases, >= 0; ``num_train + num_test`` must be >= 1.
        shape: spatial size ``(X, Y, Z)`` of every volume, each >= 24; z is the axial slice axis. None: the task's
            default.
        spacing: voxel size in mm along ``(x, y, z)``, positive. None: the task's default.
        seed: base seed; the same arguments give identical arrays and an identical ``dataset.json``.
        overwrite: replace ``output_dir`` if it exists and is not empty.
        progress: print one line per written case.
        task: ``"vessels"`` or ``"lesions"``.

    Returns:
        Path of the written ``dataset.json``.

    Raises:
        ValueError: when an argument is out of range or of the wrong type.
        FileExistsError: when ``output_dir`` exists and is not empty and ``overwrite`` is False, or is not a directory.
    """
    num_train = _check_count("num_train", num_train)
    num_test = _check_count("num_test", num_test)
    if num_train + num_test < 1:
        raise ValueError(f"num_train + num_test must be >= 1, got num_train={num_train}, num_test={num_test}.")
    spec = _task_spec(task)
    shape_ = spec.shape if shape is None else _check_shape(shape)
    spacing_ = spec.spacing if spacing is None else _check_spacing(spacing)
    seed = _check_seed(seed)

    out = Path(output_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"output_dir {str(out)!r} exists and is not a directory.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"output_dir {str(out)!r} exists and is not empty; pass overwrite=True to replace it or pick another "
            "directory."
        )
    out.parent.mkdir(parents=True, exist_ok=True)

    affine = _affine(shape_, spacing_)
    total = num_train + num_test
    training, test, test_labeled = [], [], []
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # unlike tempfile.mkdtemp, honours the umask
    try:
        for split in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (tmp / split).mkdir()
        for index in range(total):
            name = f"case_{index:03d}.nii.gz"
            images, labels = ("imagesTr", "labelsTr") if index < num_train else ("imagesTs", "labelsTs")
            image, label, note = spec.make_case(shape_, seed, index)
            _write_case(tmp / images / name, tmp / labels / name, image, label, affine)
            pair = {"image": f"./{images}/{name}", "label": f"./{labels}/{name}"}
            if index < num_train:
                training.append(pair)
            else:
                test.append(pair["image"])
                test_labeled.append(pair)
            if progress:
                print(f"[{index + 1}/{total}] {pair['image']} ({note})")

        generator = {"seed": seed, "shape": list(shape_), "spacing": list(spacing_)}
        if task != "vessels":  # the vessel dataset.json predates tasks and stays as it was
            generator = {"task": task, **generator}
        dataset = {
            **spec.header,
            "numTraining": num_train,
            "numTest": num_test,
            "training": training,
            "test": test,
            "test_labeled": test_labeled,
            "generator": generator,
        }
        json_path = tmp / "dataset.json"
        json_path.write_text(json.dumps(dataset, indent=4) + "\n", encoding="utf-8")
        _move_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "dataset.json"
