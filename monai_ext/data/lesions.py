"""Synthetic multi-channel brain-MRI-like phantoms with small white-matter lesions (multiple sclerosis-like).

Each volume has three co-registered channels, ``MODALITIES = ("T1", "T2", "FLAIR")``, with the contrasts of MS
imaging, so that no single channel is enough to segment the lesions:

============  ======  ======  ======
tissue        T1      T2      FLAIR
============  ======  ======  ======
white matter  bright  dark    mid
grey matter   mid     mid     mid
CSF           dark    bright  dark
lesion        iso to  bright  bright
              hypo
============  ======  ======  ======

On T2 lesions are bright like CSF (ventricles, the CSF rim around the brain); FLAIR suppresses CSF and separates
them; T1 shows the lesions as iso- to hypo-intense. Intensities are normalised to about [0, 1] per channel.

Arrays are indexed ``(x, y, z)`` as NIfTI stores them, channels last: images are ``(X, Y, Z, 3)``. z (the last spatial
axis) is the slice axis; the ``"lesions"`` task of :mod:`monai_ext.data.tasks` stores it with thick slices (3 mm
default) as clinical MS protocols do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .checks import check_count, check_noise, check_seed, check_shape
from .geometry import ellipsoid_sdf, partial_volume, smooth_field, voxel_grid

__all__ = ["LESION_LABELS", "MODALITIES", "make_lesion_phantom"]

LESION_LABELS: dict[int, str] = {0: "background", 1: "lesion"}
MODALITIES: tuple[str, ...] = ("T1", "T2", "FLAIR")

# Tissue intensities per channel (T1, T2, FLAIR), before the per-case jitter, bias field and noise.
_TISSUES: dict[str, tuple[float, float, float]] = {
    "scalp": (0.85, 0.55, 0.60),  # fat: bright on T1
    "skull": (0.08, 0.06, 0.06),
    "csf": (0.12, 0.92, 0.08),  # bright on T2, suppressed on FLAIR
    "gm": (0.52, 0.55, 0.58),
    "wm": (0.78, 0.35, 0.45),
}
_TISSUE_JITTER = 0.03  # per case and channel, uniform +-
# Lesions, drawn per lesion: T1 as a fraction of the white-matter value (iso- to hypo-intense), T2 and FLAIR absolute.
_LESION_T1_FRACTION = (0.55, 1.0)
_LESION_T2 = (0.72, 0.92)  # overlaps CSF on T2
_LESION_FLAIR = (0.78, 0.95)

# Nested head layers, as fractions of the head's semi-axes (outer surface of each layer).
_SKULL, _CSF_RIM, _BRAIN, _WHITE = 0.94, 0.88, 0.85, 0.72
_FOLDS = 0.5  # voxels: the grey/white boundary moves by up to +-4 * _FOLDS, the brain surface by half of it

# Lesions: short semi-axis ("radius", voxels) and long / short semi-axis ratio ("elongation")
_OVOID_RADIUS, _OVOID_ELONGATION = (2.0, 4.5), (1.0, 1.5)  # random orientation
_FINGER_RADIUS, _FINGER_ELONGATION = (1.5, 2.5), (1.8, 2.6)  # "Dawson fingers": pointing away from a ventricle
_FINGER_PROBABILITY = 0.35
_SHRINK, _MIN_RADIUS = 0.96, 1.0  # per failed layout, after the first two; floor of the shrunk radius
_HALO = 1.0  # voxels of pure white matter around each lesion (so lesions are at least ~2 voxels apart)
_MAX_LAYOUTS = 20
_MAX_TRIES = 200


class _Lesion:
    """Spheroid: short semi-axis ``radius``, long semi-axis ``radius * elongation`` along the unit vector ``axis``."""

    def __init__(self, centre: np.ndarray, radius: float, elongation: float, axis: np.ndarray) -> None:
        self.centre, self.radius, self.elongation, self.axis = centre, radius, elongation, axis

    @property
    def extent(self) -> float:
        return self.radius * self.elongation

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance-like field, equal to ``radius`` on the surface (and the Euclidean distance across the axis)."""
        dx, dy, dz = x - self.centre[0], y - self.centre[1], z - self.centre[2]
        along = dx * self.axis[0] + dy * self.axis[1] + dz * self.axis[2]
        across2 = np.maximum(dx**2 + dy**2 + dz**2 - along**2, 0.0)
        return np.sqrt(across2 + (along / self.elongation) ** 2)

    def box(self, shape: tuple[int, int, int], margin: float) -> tuple[slice, slice, slice] | None:
        """Index box holding the lesion grown by ``margin``; None when it reaches outside the volume."""
        reach = self.extent + margin + 1.0
        lo = np.floor(self.centre - reach).astype(int)
        hi = np.ceil(self.centre + reach).astype(int) + 1
        if np.any(lo < 0) or np.any(hi > np.asarray(shape)):
            return None
        return slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2])


def _place_lesions(
    shape: tuple[int, int, int], white: np.ndarray, depth: np.ndarray, ventricles: Sequence[np.ndarray], num: int,
    rng: np.random.Generator,
) -> list[_Lesion]:  # fmt: skip
    """Lesions inside pure white matter (``white``: boolean), each with a white-matter halo, not touching each other.

    ``depth`` approximates the distance (voxels) to the nearest voxel outside ``white``; it only preselects centres.
    """
    if num == 0:
        return []
    for layout in range(_MAX_LAYOUTS):
        # sizes are drawn per layout, not per placement attempt, so that rejections do not favour small lesions;
        # a volume too tight for the first layouts gets progressively smaller lesions (down to about half the size)
        fingers = rng.uniform(size=num) < _FINGER_PROBABILITY
        radii = np.where(fingers, rng.uniform(*_FINGER_RADIUS, size=num), rng.uniform(*_OVOID_RADIUS, size=num))
        radii = np.maximum(radii * _SHRINK ** max(layout - 1, 0), _MIN_RADIUS)
        elongations = np.where(
            fingers, rng.uniform(*_FINGER_ELONGATION, size=num), rng.uniform(*_OVOID_ELONGATION, size=num)
        )
        occupied = np.zeros(shape, dtype=bool)
        lesions: list[_Lesion] = []
        for i in np.argsort(-radii * elongations, kind="stable"):  # largest first
            lesion = _place_one(shape, white, depth, occupied, ventricles, radii[i], elongations[i], fingers[i], rng)
            if lesion is None:
                break
            lesions.append(lesion)
        if len(lesions) == num:
            return lesions
    raise RuntimeError(
        f"could not place {num} lesions inside the white matter of a volume of shape {shape}; use a larger shape or "
        "fewer lesions."
    )


def _place_one(
    shape: tuple[int, int, int], white: np.ndarray, depth: np.ndarray, occupied: np.ndarray,
    ventricles: Sequence[np.ndarray], radius: float, elongation: float, finger: bool, rng: np.random.Generator,
) -> _Lesion | None:  # fmt: skip
    """One lesion whose halo lies in ``white`` and off ``occupied`` (which gets it), or None after ``_MAX_TRIES``."""
    candidates = np.flatnonzero(depth >= radius + _HALO)  # centres deep enough for the short semi-axis
    if candidates.size == 0:
        return None
    for _ in range(_MAX_TRIES):
        voxel = np.unravel_index(candidates[rng.integers(candidates.size)], shape)
        centre = np.asarray(voxel, dtype=float) + rng.uniform(-0.5, 0.5, size=3)
        if finger:  # in the slice plane, away from the nearest ventricle
            axis = centre - min(ventricles, key=lambda v: float(np.linalg.norm(centre - v)))
            axis[2] = 0.0
        else:
            axis = rng.normal(size=3)
        lesion = _Lesion(centre, float(radius), float(elongation), axis / max(float(np.linalg.norm(axis)), 1e-6))
        box = lesion.box(shape, _HALO)
        if box is None:
            continue
        halo = lesion.distance(*np.ogrid[box]) <= lesion.radius + _HALO
        if white[box][halo].all() and not occupied[box][halo].any():
            occupied[box] |= halo
            return lesion
    return None


def _lesion_phantom(
    shape: Sequence[int], seed: int, num_lesions: int, noise_std: float
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """:func:`make_lesion_phantom`, plus the noise-free tissue fractions ``{"wm", "gm", "csf"}`` (float, ``shape``)."""
    shape_ = check_shape(shape)
    seed = check_seed(seed)
    num_lesions = check_count("num_lesions", num_lesions)
    check_noise(noise_std)

    rng = np.random.default_rng(seed)
    nx, ny, nz = shape_
    x, y, z = voxel_grid(shape_)

    # head geometry (voxels): an ellipsoid filling most of the volume
    centre = (np.asarray(shape_, dtype=float) - 1) / 2 + rng.uniform(-0.5, 0.5, size=3)
    semi = np.asarray(shape_, dtype=float) * rng.uniform(0.44, 0.47, size=3)
    values = {
        k: np.clip(np.asarray(v) + rng.uniform(-_TISSUE_JITTER, _TISSUE_JITTER, 3), 0, 1) for k, v in _TISSUES.items()
    }

    head = partial_volume(ellipsoid_sdf(x, y, z, centre, semi))
    skull = partial_volume(ellipsoid_sdf(x, y, z, centre, _SKULL * semi))
    csf_rim = partial_volume(ellipsoid_sdf(x, y, z, centre, _CSF_RIM * semi))
    folds = smooth_field(x, y, z, shape_, rng, waves=4, cycles=(2.0, 5.0), amplitude=(0.5, 1.0)) * _FOLDS
    brain = partial_volume(ellipsoid_sdf(x, y, z, centre, _BRAIN * semi) + folds / 2)
    white_sdf = ellipsoid_sdf(x, y, z, centre, _WHITE * semi) + folds
    white = partial_volume(white_sdf)
    # two lateral ventricles, side by side along x
    offset = np.array([0.13, 0.05, 0.08]) * semi
    vent_semi = np.array([0.07, 0.30, 0.22]) * semi * rng.uniform(0.9, 1.2)
    vent_centres = [centre + offset * np.array([side, 1.0, 1.0]) for side in (-1.0, 1.0)]
    vent_sdf = np.minimum(*(ellipsoid_sdf(x, y, z, c, vent_semi) for c in vent_centres))
    ventricles = partial_volume(vent_sdf)

    # fractions of each tissue (nested layers; the ventricles replace white matter)
    skull = np.minimum(skull, head)
    csf_rim = np.minimum(csf_rim, skull)
    brain = np.minimum(brain, csf_rim)
    white = np.minimum(white, brain)
    fractions = {
        "air": 1 - head,
        "scalp": head - skull,
        "skull": skull - csf_rim,
        "csf": csf_rim - brain + white * ventricles,
        "gm": brain - white,
        "wm": white * (1 - ventricles),
    }

    depth = np.minimum(-white_sdf, vent_sdf) - 0.5  # approximate distance to the nearest voxel not purely white
    lesions = _place_lesions(shape_, fractions["wm"] >= 0.999, depth, vent_centres, num_lesions, rng)
    label = np.zeros(shape_, dtype=np.uint8)
    lesion_frac = np.zeros(shape_)
    lesion_values = np.zeros((*shape_, 3))
    for lesion in lesions:
        box = lesion.box(shape_, 0.0)
        dist = lesion.distance(*np.ogrid[box])
        frac = np.clip(lesion.radius + 0.5 - dist, 0.0, 1.0)
        value = np.array(
            [
                values["wm"][0] * rng.uniform(*_LESION_T1_FRACTION),
                rng.uniform(*_LESION_T2),
                rng.uniform(*_LESION_FLAIR),
            ]
        )
        lesion_frac[box] += frac  # lesions (with their halos) do not overlap, their boxes may
        lesion_values[box] += frac[..., None] * value
        label[box][dist <= lesion.radius] = 1
    fractions["wm"] = fractions["wm"] * (1 - lesion_frac)

    image = lesion_values
    for tissue in ("scalp", "skull", "csf", "gm", "wm"):
        image = image + fractions[tissue][..., None] * values[tissue]
    for c in range(3):  # smooth multiplicative bias field per channel (coil inhomogeneity), about +-5 %
        image[..., c] *= 1 + smooth_field(x, y, z, shape_, rng, waves=3, cycles=(0.3, 1.0), amplitude=(0.01, 0.02))
    if noise_std > 0:  # Rician (magnitude) noise: non-negative, as in MR magnitude images
        image = np.hypot(image + rng.normal(0, noise_std, image.shape), rng.normal(0, noise_std, image.shape))
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return image, label, {k: fractions[k] for k in ("wm", "gm", "csf")}


def make_lesion_phantom(
    shape: Sequence[int] = (64, 64, 32), seed: int = 0, num_lesions: int = 6, noise_std: float = 0.03
) -> tuple[np.ndarray, np.ndarray]:
    """Generate one brain-MRI-like volume (T1, T2, FLAIR) with small MS-like white-matter lesions.

    The head is an ellipsoid of nested layers: scalp (fat, bright on T1), skull (dark), a rim of CSF, the cortical grey
    matter (a band with a folded inner and outer surface) and the white matter, which holds two CSF-filled lateral
    ventricles. Tissue intensities jitter by +-0.03 per case and channel, a smooth multiplicative bias field of a few
    percent varies per channel, and Rician noise of ``noise_std`` is added; the result is clipped to [0, 1].

    ``num_lesions`` lesions lie inside the white matter with a rim of at least one voxel of white matter around them
    (so they touch neither the ventricles, the cortex nor each other). Each is a spheroid with soft (partial-volume)
    edges: about two thirds are ovoid (short semi-axis 2-4.5 voxels, long one up to 1.5 times that, random
    orientation), the others elongated "Dawson fingers" (short semi-axis 1.5-2.5 voxels, 1.8-2.6 times longer along
    the slice plane, pointing away from the nearest ventricle). In a volume too small for the requested lesions at
    these sizes the lesions shrink (to about half, radius at least 1 voxel) before a RuntimeError is raised. Lesions
    are iso- to hypo-intense on T1 (55-100 % of white matter), hyper-intense on T2 (0.72-0.92, about as bright as CSF)
    and on FLAIR (0.78-0.95, where CSF is dark). With the default arguments lesions cover about 0.3-1.2 % of the
    voxels (0.8 % on average).

    Args:
        shape: spatial size ``(X, Y, Z)``; z (the last axis) is the slice axis. Each at least 24.
        seed: seed of ``np.random.default_rng``; the same arguments give identical arrays.
        num_lesions: number of lesions (label 1), >= 0.
        noise_std: standard deviation of the Gaussian components of the Rician noise, >= 0 (intensity units).

    Returns:
        ``(image, label)``: the image as float32 of shape ``(X, Y, Z, 3)``, channels in the order of ``MODALITIES``
        (T1, T2, FLAIR), values in [0, 1]; the label as uint8 of shape ``(X, Y, Z)`` with values in
        ``LESION_LABELS`` (0 background, 1 lesion).

    Raises:
        ValueError: when an argument is out of range or of the wrong type.
        RuntimeError: when the lesions do not fit in the white matter (volume too small for the requested count).
    """
    image, label, _ = _lesion_phantom(shape, seed, num_lesions, noise_std)
    return image, label
