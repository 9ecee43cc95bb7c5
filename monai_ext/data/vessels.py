"""Synthetic CT-like vessel/nodule phantoms: a single axial slice is ambiguous, only 3D context decides the class.

- label 1 ``vessel``: long tubes running across the axial slices (mostly along z, the last array axis), gently tilted
  and curved so that their cross-sections move a little from slice to slice;
- label 2 ``nodule``: compact, roughly spherical blobs.

Both draw their radius from the same range and their intensity from the same distribution, so an axial cross-section
of either is a bright disk of similar size; in 3D one is a tube and the other a ball.

``make_phantom(..., tilt=(low, high))`` is the oblique variant: straight vessels ``low``-``high`` degrees from z and
nodules whose axial sections are the same ellipses (see :func:`make_phantom`).

Arrays are indexed ``(x, y, z)`` as NIfTI stores them; z is the axial slice axis. :mod:`monai_ext.data.tasks` turns
the phantom into the ``"vessels"`` and ``"vessels_oblique"`` tasks of :func:`monai_ext.data.write_msd_dataset`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .checks import check_count, check_noise, check_seed, check_shape
from .geometry import Blob, BodyCylinder, ObliqueTube, Tube, voxel_grid

__all__ = ["LABELS", "make_phantom"]

LABELS: dict[int, str] = {0: "background", 1: "vessel", 2: "nodule"}

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
_MIN_OBLIQUE_DEPTH = 0.5  # an oblique vessel's centreline crosses at least this share of the depth
_MAX_TILT = 60.0  # degrees from z


def _place_objects(
    shape: tuple[int, int, int],
    body: BodyCylinder,
    num_vessels: int,
    num_nodules: int,
    rng: np.random.Generator,
    tilt: tuple[float, float] | None = None,
) -> tuple[list[Tube] | list[ObliqueTube], list[Blob]]:
    """Vessels, then nodules, inside the body's core and ``_GAP`` apart; whole layouts restart when one does not fit.

    ``tilt`` None: :class:`Tube` vessels along z and near-round nodules. ``tilt`` ``(low, high)`` degrees: straight
    :class:`ObliqueTube` vessels crossing at least ``_MIN_OBLIQUE_DEPTH`` of the depth, and nodules whose axial
    sections are the ellipses an oblique vessel cuts (semi-axes ``r / cos t`` and ``r`` for a tilt ``t`` drawn from
    the same range, turned by a random azimuth).

    Raises:
        RuntimeError: when no layout out of ``_MAX_LAYOUTS`` fits.
    """
    nz = shape[2]
    for _ in range(_MAX_LAYOUTS):
        # sizes are drawn per layout, not per placement attempt, so that rejections do not favour small objects
        # (only a volume too tight for the first layout gets a slight bias)
        vessel_radii = rng.uniform(*_RADIUS_RANGE, size=num_vessels)
        nodule_radii = rng.uniform(*_RADIUS_RANGE, size=num_nodules)
        nodule_scales = rng.uniform(0.9, 1.1, size=(num_nodules, 3))
        nodule_azimuths = np.zeros(num_nodules)
        if tilt is not None:  # stretch along a random azimuth by 1 / cos(tilt), as an oblique vessel's section
            nodule_scales[:, 0] /= np.cos(np.radians(rng.uniform(*tilt, size=num_nodules)))
            nodule_azimuths = rng.uniform(0, 2 * math.pi, size=num_nodules)
        vessels: list = []
        nodules: list[Blob] = []
        for radius in vessel_radii:
            for _ in range(_MAX_TRIES):
                if tilt is None:
                    v = Tube(shape, body, float(radius), rng)
                    fits = v.fits(body)
                else:
                    v = ObliqueTube(shape, body, float(radius), tilt, rng)
                    fits = v.depth >= _MIN_OBLIQUE_DEPTH * (nz - 1)
                if fits and all(v.gap_to_tube(o) >= _GAP for o in vessels):
                    vessels.append(v)
                    break
            else:
                break
        if len(vessels) < num_vessels:
            continue
        for radius, scale, azimuth in zip(nodule_radii, nodule_scales, nodule_azimuths):
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
                    nodules.append(Blob(p, float(radius), scale, _NODULE_Z_POWER, float(azimuth)))
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
    shape: tuple[int, int, int], body: BodyCylinder, objects: Sequence[Tube | Blob], rng: np.random.Generator
) -> list[Blob]:
    """A few dark fat lobules in the core, away from the objects; those that do not fit are skipped."""
    nz = shape[2]
    fat: list[Blob] = []
    for _ in range(int(rng.integers(1, 4))):
        radius = rng.uniform(2.0, max(2.5, 0.08 * min(shape)))
        scale = rng.uniform(0.7, 1.3, size=3)
        extent = radius * float(scale.max())
        x, y = body.sample_core(rng, extent)
        p = np.array([x, y, rng.uniform(0, nz - 1)])
        clear = all(o.gap_to_point(p, extent) >= _GAP for o in objects)
        clear = clear and all(f.gap_to_point(p, extent) >= 1.0 for f in fat)
        if clear and body.inside_core(np.array(x), np.array(y), extent):
            fat.append(Blob(p, radius, scale))
    return fat


def _check_tilt(tilt: Sequence[float] | None) -> tuple[float, float] | None:
    """``tilt`` as a ``(low, high)`` pair of floats, or None.

    Raises:
        ValueError: when ``tilt`` is not None or two numbers with ``0 <= low <= high <= 60``.
    """
    if tilt is None:
        return None
    try:
        low, high = (float(t) for t in tilt)
    except (TypeError, ValueError):
        raise ValueError(f"tilt must be None or (low, high) in degrees, got {tilt!r}.") from None
    if not 0.0 <= low <= high <= _MAX_TILT:
        raise ValueError(
            f"tilt must satisfy 0 <= low <= high <= {_MAX_TILT:g} degrees (steeper vessels do not cross half the "
            f"depth inside the body), got {tilt!r}."
        )
    return low, high


def make_phantom(
    shape: Sequence[int] = (64, 64, 64),
    seed: int = 0,
    num_vessels: int = 3,
    num_nodules: int = 3,
    noise_std: float = 20.0,
    tilt: Sequence[float] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one CT-like volume with tubular vessels and spherical nodules of matching size and intensity.

    Background: air (-1000 HU) outside an elliptic body cylinder along z, a fat rim (-100 HU) under the skin and a
    soft-tissue core (~40 HU, smooth low-frequency variation) holding a few fat lobules. Vessels run along z through
    most of the depth; nodules are balls with slightly flattened poles (so that most of their axial cross-sections
    are near-full disks, as a vessel's). Both have radii in [2.5, 4] voxels and a per-object intensity in
    [180, 260] HU, soft (partial-volume) edges, and are kept at least 3 voxels apart inside the core.
    Gaussian noise of ``noise_std`` HU is added everywhere. The default counts need an in-plane size of about
    40 voxels or more; a 24-voxel volume holds one vessel and one nodule.

    ``tilt=(low, high)`` makes the oblique variant: each vessel is a straight tube whose axis makes an angle drawn
    uniformly from ``[low, high]`` degrees with z (the slice normal), in a random direction, crossing at least half
    of the depth inside the core; it cuts every axial slice in an ellipse of semi-axes ``r`` and ``r / cos(angle)``,
    shifted by ``tan(angle)`` voxels per slice. Each nodule's in-plane semi-axes are stretched to match: ``r`` and
    ``r / cos(angle)`` (angle drawn from the same range, long axis along a random azimuth, the same 0.9-1.1 jitter),
    so a single axial section still does not tell the classes apart. ``None`` (default) keeps the near-z vessels;
    the arrays are then those the phantom has always produced.

    Args:
        shape: spatial size ``(X, Y, Z)``; z (the last axis) is the axial slice axis. Each at least 24.
        seed: seed of ``np.random.default_rng``; the same arguments give identical arrays.
        num_vessels: number of vessels (label 1), >= 0.
        num_nodules: number of nodules (label 2), >= 0.
        noise_std: standard deviation of the additive Gaussian noise in HU, >= 0.
        tilt: ``(low, high)`` angles between the vessels and z in degrees, ``0 <= low <= high <= 60``, or None
            (default): vessels along z, gently tilted and curved.

    Returns:
        ``(image, label)``, both of shape ``shape``: the image in HU as float32, the label as uint8 with values in
        ``LABELS`` (0 background, 1 vessel, 2 nodule).

    Raises:
        ValueError: when an argument is out of range or of the wrong type.
        RuntimeError: when the objects cannot be placed without overlap (volume too small for the requested counts).
    """
    shape_ = check_shape(shape)
    seed = check_seed(seed)
    num_vessels = check_count("num_vessels", num_vessels)
    num_nodules = check_count("num_nodules", num_nodules)
    check_noise(noise_std, " (HU)")
    tilt_ = _check_tilt(tilt)

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_
    x, y, z = voxel_grid(shape_)

    body = BodyCylinder(shape_, rng)
    vessels, nodules = _place_objects(shape_, body, num_vessels, num_nodules, rng, tilt_)
    fat = _place_fat(shape_, body, [*vessels, *nodules], rng)

    # soft tissue with a smooth low-frequency variation (a few random plane waves, about +-10 HU); not
    # geometry.smooth_field, which draws amplitude and phase in the other order and sums from zero: the two
    # phantoms keep the random streams (and so the arrays) they were published with
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
