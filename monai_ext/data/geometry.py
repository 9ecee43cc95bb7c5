"""Shapes and smooth fields on a voxel grid, the building blocks of the synthetic phantoms.

Arrays are indexed ``(x, y, z)`` as NIfTI stores them; z (the last axis) is the slice axis. Shapes are evaluated on
the broadcastable grid of :func:`voxel_grid` (``x (X, 1, 1)``, ``y (1, Y, 1)``, ``z (1, 1, Z)``) and give a
distance-like field; soft (partial-volume) edges come from :func:`partial_volume`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Blob",
    "BodyCylinder",
    "ObliqueTube",
    "Tube",
    "ellipsoid_sdf",
    "partial_volume",
    "smooth_field",
    "voxel_grid",
]


def voxel_grid(shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Broadcastable voxel coordinates ``x (X, 1, 1)``, ``y (1, Y, 1)``, ``z (1, 1, Z)`` (float64) of ``shape``."""
    nx, ny, nz = shape
    return (
        np.arange(nx, dtype=float)[:, None, None],
        np.arange(ny, dtype=float)[None, :, None],
        np.arange(nz, dtype=float)[None, None, :],
    )


def ellipsoid_sdf(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, centre: Sequence[float], semi: Sequence[float]
) -> np.ndarray:
    """First-order signed distance (voxels, negative inside) to an axis-aligned ellipsoid on a broadcastable grid.

    Args:
        x, y, z: broadcastable coordinates, e.g. from :func:`voxel_grid`.
        centre: the ellipsoid's centre ``(cx, cy, cz)``.
        semi: its semi-axes ``(sx, sy, sz)``, positive.

    Returns:
        the signed distance, broadcast over ``x``, ``y`` and ``z``; exact on the surface, good enough for soft edges.
    """
    d = [(x - centre[0]) / semi[0], (y - centre[1]) / semi[1], (z - centre[2]) / semi[2]]
    rho = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2)
    grad = np.sqrt((d[0] / semi[0]) ** 2 + (d[1] / semi[1]) ** 2 + (d[2] / semi[2]) ** 2) / np.maximum(rho, 1e-6)
    return (rho - 1.0) / np.maximum(grad, 1e-6)


def partial_volume(sdf: np.ndarray) -> np.ndarray:
    """Fraction of each voxel inside a surface, in [0, 1], from the surface's signed distance (negative inside)."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def smooth_field(
    x: np.ndarray, y: np.ndarray, z: np.ndarray, shape: tuple[int, int, int], rng: np.random.Generator,
    waves: int, cycles: tuple[float, float], amplitude: tuple[float, float],
) -> np.ndarray:  # fmt: skip
    """Sum of ``waves`` random plane waves on the grid of ``shape``.

    Each wave has ``cycles`` (a range) periods per volume along each axis, a random sign per axis, an amplitude drawn
    from the range ``amplitude`` and a random phase.

    Returns:
        a float64 array of ``shape``.
    """
    field = np.zeros(shape)
    for _ in range(waves):
        freq = rng.uniform(*cycles, size=3) * rng.choice([-1.0, 1.0], size=3)
        arg = 2 * math.pi * (freq[0] * x / shape[0] + freq[1] * y / shape[1] + freq[2] * z / shape[2])
        field = field + rng.uniform(*amplitude) * np.cos(arg + rng.uniform(0, 2 * math.pi))
    return field


class BodyCylinder:
    """Elliptic body cylinder along z with a subcutaneous fat rim around a soft-tissue core.

    The centre is jittered by up to half a voxel, the skin's semi-axes are 45-48 % (x) and 41-45 % (y) of the
    in-plane size, the rim is ``max(1.5, 4 % of the smaller in-plane size)`` voxels thick.

    Args:
        shape: the volume's size ``(X, Y, Z)``.
        rng: the random generator the jitter is drawn from.
    """

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
        # first-order signed distance to an ellipse (negative inside): ellipsoid_sdf in the plane, with the gradient
        # rounded as the phantom has always computed it (ellipsoid_sdf's order moves edge fractions by an ulp)
        rho = np.sqrt(((x - cx) / ex) ** 2 + ((y - cy) / ey) ** 2)
        grad = np.sqrt(((x - cx) / ex**2) ** 2 + ((y - cy) / ey**2) ** 2) / np.maximum(rho, 1e-6)
        return (rho - 1.0) / np.maximum(grad, 1e-6)

    def fractions(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Partial-volume fractions of (body, soft-tissue core) on an in-plane grid ``x (X, 1)``, ``y (1, Y)``."""
        body = partial_volume(self._signed_distance(x, y, self.cx, self.cy, self.ax, self.ay))
        core = partial_volume(self._signed_distance(x, y, self.cx, self.cy, self.ix, self.iy))
        return body, core


class Tube:
    """Random tube of constant radius around a gently tilted and curved centreline running along z, with round caps.

    The centreline is ``(cx(z), cy(z), z)`` for ``z`` in ``[z0, z1]`` (each end up to 12 % of the depth short of the
    volume's faces): a tilt of up to 0.1 voxel per slice plus a sinusoidal wiggle of 0.5-1.5 voxels with a period of
    1-2 depths, per in-plane axis. It starts at a uniform random point of the body's core.

    Args:
        shape: the volume's size ``(X, Y, Z)``.
        body: the body the tube starts in.
        radius: the tube's radius in voxels.
        rng: the random generator the centreline is drawn from.
    """

    def __init__(
        self, shape: tuple[int, int, int], body: BodyCylinder, radius: float, rng: np.random.Generator
    ) -> None:
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
        """Distance to the centreline on a broadcastable ``(X, 1, 1), (1, Y, 1), (1, 1, Z)`` grid."""
        zc = np.clip(z, self.z0, self.z1)
        cx, cy, sx, sy = self.centre(zc)
        vx, vy, vz = x - cx, y - cy, z - zc
        in_plane2 = vx**2 + vy**2
        # within the tube: perpendicular distance to the locally straight centreline; beyond the ends: round caps
        along = (vx * sx + vy * sy) / np.sqrt(sx**2 + sy**2 + 1.0)
        within = (z >= self.z0) & (z <= self.z1)
        dist2 = np.where(within, in_plane2 - along**2, in_plane2 + vz**2)
        return np.sqrt(np.maximum(dist2, 0.0))

    def fits(self, body: BodyCylinder) -> bool:
        """Whether the whole tube, radius plus half a voxel, lies inside the body's core."""
        cx, cy, _, _ = self.centre(np.arange(self.nz, dtype=float))
        return bool(np.all(body.inside_core(cx, cy, self.radius + 0.5)))

    def gap_to_tube(self, other: Tube) -> float:
        """Smallest in-plane surface-to-surface gap to ``other`` over the slices, in voxels."""
        z = np.arange(self.nz, dtype=float)
        ax, ay, _, _ = self.centre(z)
        bx, by, _, _ = other.centre(z)
        return float(np.min(np.hypot(ax - bx, ay - by))) - self.radius - other.radius

    def gap_to_point(self, p: np.ndarray, radius: float) -> float:
        """Surface-to-surface gap to a ball of ``radius`` around ``p = (x, y, z)``, in voxels."""
        z = np.linspace(self.z0, self.z1, 4 * self.nz)
        cx, cy, _, _ = self.centre(z)
        return float(np.min(np.sqrt((cx - p[0]) ** 2 + (cy - p[1]) ** 2 + (z - p[2]) ** 2))) - self.radius - radius


class ObliqueTube:
    """Straight tube of constant radius whose axis makes ``tilt`` degrees with z, with round caps.

    The axis has direction ``(sin t cos a, sin t sin a, cos t)`` for the tilt ``t`` (drawn uniformly from
    ``tilt_range``) and the azimuth ``a`` (uniform in ``[0, 2 pi)``) and passes through a uniform random point of the
    body's core at a depth in the middle half of the volume. It runs as far as it can while the tube (radius plus
    half a voxel) stays inside the core and its centreline stays within the depth (each end up to 12 % short of the
    volume's faces, as :class:`Tube`). Each axial slice cuts it in an ellipse of semi-axes ``radius`` and
    ``radius / cos t``, the long one along the azimuth; consecutive sections move by ``tan t`` voxels.

    Args:
        shape: the volume's size ``(X, Y, Z)``.
        body: the body the tube lies in.
        radius: the tube's radius in voxels.
        tilt_range: ``(low, high)``, the range of the angle to z in degrees, ``0 <= low <= high < 90``.
        rng: the random generator the axis is drawn from.
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        body: BodyCylinder,
        radius: float,
        tilt_range: tuple[float, float],
        rng: np.random.Generator,
    ) -> None:
        nz = shape[2]
        self.radius = radius
        self.tilt = math.radians(rng.uniform(*tilt_range))
        self.azimuth = rng.uniform(0, 2 * math.pi)
        st = math.sin(self.tilt)
        self.direction = np.array([st * math.cos(self.azimuth), st * math.sin(self.azimuth), math.cos(self.tilt)])
        x, y = body.sample_core(rng, radius + 0.5)
        origin = np.array([x, y, rng.uniform(0.25, 0.75) * (nz - 1)])
        z_low = rng.uniform(0.0, 0.12) * (nz - 1)
        z_high = (1.0 - rng.uniform(0.0, 0.12)) * (nz - 1)
        # the centreline origin + s * direction: s within the depth ...
        dz = self.direction[2]
        s0, s1 = (z_low - origin[2]) / dz, (z_high - origin[2]) / dz
        # ... and within the core shrunk by the radius (a quadratic in s; empty when the origin is outside)
        ex, ey = body.ix - radius - 0.5, body.iy - radius - 0.5
        if ex > 0 and ey > 0:
            u = np.array([(origin[0] - body.cx) / ex, (origin[1] - body.cy) / ey])
            v = np.array([self.direction[0] / ex, self.direction[1] / ey])
            a, b, c = float(v @ v), 2.0 * float(u @ v), float(u @ u) - 1.0
            disc = b * b - 4 * a * c
            if a > 0 and disc >= 0:
                root = math.sqrt(disc)
                s0, s1 = max(s0, (-b - root) / (2 * a)), min(s1, (-b + root) / (2 * a))
            elif a > 0 or c > 0:
                s1 = s0 - 1.0  # the line misses the core, or the origin lies outside it
        else:
            s1 = s0 - 1.0
        self.length = max(s1 - s0, 0.0)
        self.start = origin + s0 * self.direction
        self.end = self.start + self.length * self.direction

    @property
    def depth(self) -> float:
        """The centreline's extent along z in voxels (0 when the drawn axis does not fit)."""
        return self.length * float(self.direction[2])

    def _to_segment(self, points: np.ndarray) -> np.ndarray:
        """Distances of ``points`` ``(N, 3)`` to the centreline segment, shape ``(N,)``."""
        w = points - self.start
        s = np.clip(w @ self.direction, 0.0, self.length)
        return np.linalg.norm(w - s[:, None] * self.direction, axis=1)

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance to the centreline segment (round caps) on a broadcastable ``(X, 1, 1), (1, Y, 1), (1, 1, Z)``
        grid."""
        wx, wy, wz = x - self.start[0], y - self.start[1], z - self.start[2]
        d = self.direction
        s = np.clip(wx * d[0] + wy * d[1] + wz * d[2], 0.0, self.length)
        return np.sqrt((wx - s * d[0]) ** 2 + (wy - s * d[1]) ** 2 + (wz - s * d[2]) ** 2)

    def samples(self, count: int = 64) -> np.ndarray:
        """``count`` evenly spaced points of the centreline, shape ``(count, 3)``."""
        return self.start + np.linspace(0.0, self.length, count)[:, None] * self.direction

    def gap_to_tube(self, other: ObliqueTube) -> float:
        """Smallest surface-to-surface gap to ``other`` in 3D, in voxels (centrelines sampled every <= 1 voxel)."""
        count = int(max(self.length, other.length)) + 2
        gap = min(other._to_segment(self.samples(count)).min(), self._to_segment(other.samples(count)).min())
        return float(gap) - self.radius - other.radius

    def gap_to_point(self, p: np.ndarray, radius: float) -> float:
        """Surface-to-surface gap to a ball of ``radius`` around ``p = (x, y, z)``, in voxels."""
        return float(self._to_segment(np.asarray(p, dtype=float)[None])[0]) - self.radius - radius


class Blob:
    """Roughly spherical blob: ``(dx / sx)^2 + (dy / sy)^2 + |dz / sz|^p <= 1`` with semi-axes ``radius * scale``.

    ``p = 2`` is an ellipsoid; ``p > 2`` flattens the poles a little, so that most axial cross-sections are close to
    the full disk (as for a tube) while the extent along z stays ``2 * radius * sz``. A nonzero ``azimuth`` turns
    the in-plane axes: ``sx`` then lies along ``(cos azimuth, sin azimuth, 0)``.

    Args:
        centre: ``(x, y, z)`` in voxels, shape ``(3,)``.
        radius: the nominal radius in voxels.
        scale: per-axis stretch of the radius, shape ``(3,)``.
        z_power: the exponent ``p`` of the z term. Defaults to 2 (an ellipsoid).
        azimuth: in-plane angle of the first semi-axis to x, radians. Defaults to 0 (axis-aligned).
    """

    def __init__(
        self, centre: np.ndarray, radius: float, scale: np.ndarray, z_power: float = 2.0, azimuth: float = 0.0
    ) -> None:
        self.centre, self.radius, self.scale, self.z_power = centre, radius, scale, z_power
        self.azimuth = azimuth

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Radial distance-like field, equal to ``radius`` on the surface, on a broadcastable grid."""
        c, s = self.centre, self.scale * self.radius
        dx, dy = x - c[0], y - c[1]
        if self.azimuth:
            cos, sin = math.cos(self.azimuth), math.sin(self.azimuth)
            dx, dy = cos * dx + sin * dy, cos * dy - sin * dx
        level = (dx / s[0]) ** 2 + (dy / s[1]) ** 2 + np.abs((z - c[2]) / s[2]) ** self.z_power
        return self.radius * np.sqrt(level)

    def gap_to_point(self, p: np.ndarray, radius: float) -> float:
        """Surface-to-surface gap (bounding spheres) to a ball of ``radius`` around ``p``, in voxels."""
        return float(np.linalg.norm(self.centre - p)) - self.radius * float(self.scale.max()) - radius
