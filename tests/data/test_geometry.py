"""Tests of the shapes and smooth fields the phantoms are built from (``monai_ext.data.geometry``)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monai_ext.data.geometry import (
    Blob,
    BodyCylinder,
    ObliqueTube,
    Tube,
    ellipsoid_sdf,
    partial_volume,
    smooth_field,
    voxel_grid,
)

SHAPE = (40, 36, 32)  # non-cubic, to catch axis mix-ups


def test_voxel_grid_is_broadcastable_along_x_y_z():
    x, y, z = voxel_grid(SHAPE)
    assert (x.shape, y.shape, z.shape) == ((40, 1, 1), (1, 36, 1), (1, 1, 32))
    assert x.dtype == np.float64 and (x + y + z).shape == SHAPE
    assert float(x[-1, 0, 0]) == 39.0 and float(z[0, 0, -1]) == 31.0


def test_ellipsoid_sdf_is_distance_along_the_axes_and_signed():
    x, y, z = voxel_grid(SHAPE)
    centre, semi = (20.0, 18.0, 16.0), (8.0, 5.0, 3.0)
    sdf = ellipsoid_sdf(x, y, z, centre, semi)
    assert sdf.shape == SHAPE
    assert sdf[20, 18, 16] < 0 and sdf[0, 0, 0] > 0
    # on each axis the first-order distance is exact: surface at 0, one voxel out at 1
    assert sdf[28, 18, 16] == pytest.approx(0.0, abs=1e-9) and sdf[29, 18, 16] == pytest.approx(1.0)
    assert sdf[20, 23, 16] == pytest.approx(0.0, abs=1e-9) and sdf[20, 18, 20] == pytest.approx(1.0)


def test_partial_volume_is_a_clipped_ramp_around_the_surface():
    np.testing.assert_allclose(partial_volume(np.array([-2.0, -0.5, 0.0, 0.25, 0.5, 3.0])), [1, 1, 0.5, 0.25, 0, 0])


def test_smooth_field_amplitude_and_determinism():
    x, y, z = voxel_grid(SHAPE)
    field = smooth_field(x, y, z, SHAPE, np.random.default_rng(0), waves=3, cycles=(0.3, 1.0), amplitude=(1.0, 2.0))
    again = smooth_field(x, y, z, SHAPE, np.random.default_rng(0), waves=3, cycles=(0.3, 1.0), amplitude=(1.0, 2.0))
    assert field.shape == SHAPE and np.array_equal(field, again)
    assert 0.5 < float(np.abs(field).max()) <= 6.0  # three waves of amplitude 1-2
    assert not smooth_field(x, y, z, SHAPE, np.random.default_rng(0), 0, (1, 2), (1, 2)).any()


def test_body_cylinder_core_inside_body_and_samples_in_core():
    rng = np.random.default_rng(3)
    body = BodyCylinder(SHAPE, rng)
    x, y, _ = voxel_grid(SHAPE)
    outer, core = body.fractions(x[..., 0], y[..., 0])
    assert outer.shape == core.shape == SHAPE[:2]
    assert np.all(core <= outer) and outer[20, 18] == 1.0 and outer[0, 0] == 0.0
    assert 0.0 < core.mean() < outer.mean() < 1.0
    points = np.array([body.sample_core(rng, 2.0) for _ in range(200)])
    assert body.inside_core(points[:, 0], points[:, 1], 2.0 - 1e-9).all()
    assert not body.inside_core(np.array(0.0), np.array(0.0), 0.0)
    assert not body.inside_core(np.array(body.cx), np.array(body.cy), 1000.0)  # no core left


def test_tube_runs_along_z_and_reports_gaps():
    rng = np.random.default_rng(1)
    body = BodyCylinder(SHAPE, rng)
    tube = Tube(SHAPE, body, 3.0, rng)
    x, y, z = voxel_grid(SHAPE)
    dist = tube.distance(x, y, z)
    inside = dist <= tube.radius
    assert dist.shape == SHAPE and inside.any()
    slices = np.nonzero(inside.any(axis=(0, 1)))[0]
    assert slices.size >= 0.7 * SHAPE[2]  # through most of the depth
    cx, cy, _, _ = tube.centre(np.array([16.0]))
    assert tube.distance(cx[:, None, None], cy[:, None, None], np.array([[[16.0]]])).max() == pytest.approx(0.0)
    other = Tube(SHAPE, body, 2.5, rng)
    assert tube.gap_to_tube(other) == pytest.approx(other.gap_to_tube(tube))
    # a ball of radius 1 on the centreline: overlapping by both radii (up to the centreline sampling step)
    assert tube.gap_to_point(np.array([cx[0], cy[0], 16.0]), 1.0) == pytest.approx(-4.0, abs=0.2)


def test_blob_surface_at_radius_and_flattened_poles():
    centre = np.array([20.0, 18.0, 16.0])
    ball = Blob(centre, 4.0, np.ones(3))
    x, y, z = voxel_grid(SHAPE)
    d = ball.distance(x, y, z)
    assert d[24, 18, 16] == pytest.approx(4.0) and d[20, 18, 20] == pytest.approx(4.0) and d[20, 18, 16] == 0.0
    flat = Blob(centre, 4.0, np.ones(3), z_power=3.0)
    # same extent along z, fuller cross-sections near the poles
    assert flat.distance(x, y, z)[20, 18, 20] == pytest.approx(4.0)
    assert (flat.distance(x, y, z) <= 4.0).sum() > (d <= 4.0).sum()
    assert ball.gap_to_point(centre + np.array([10.0, 0.0, 0.0]), 2.0) == pytest.approx(4.0)


def test_oblique_tube_angle_sections_and_gaps():
    shape = (64, 60, 48)
    rng = np.random.default_rng(2)
    body = BodyCylinder(shape, rng)
    tubes = [ObliqueTube(shape, body, 3.0, (15.0, 45.0), rng) for _ in range(40)]
    tilts = np.degrees([t.tilt for t in tubes])
    assert tilts.min() >= 15.0 and tilts.max() <= 45.0 and np.ptp(tilts) > 15.0
    tube = max(tubes, key=lambda t: t.depth)  # the one that crosses the most slices
    d = tube.direction
    assert np.linalg.norm(d) == pytest.approx(1.0) and math.degrees(math.acos(d[2])) == pytest.approx(
        math.degrees(tube.tilt)
    )
    assert tube.depth == pytest.approx(tube.end[2] - tube.start[2]) and tube.depth > 0.5 * shape[2]
    # the centreline stays in the core (radius to spare) and within the depth
    points = tube.samples(50)
    assert body.inside_core(points[:, 0], points[:, 1], tube.radius + 0.5 - 1e-6).all()
    assert points[:, 2].min() >= 0.0 and points[:, 2].max() <= shape[2] - 1
    # an axial slice cuts an ellipse: semi-axis r / cos(tilt) along the azimuth, r across it
    mid = (tube.start + tube.end) / 2
    along = np.array([math.cos(tube.azimuth), math.sin(tube.azimuth), 0.0])
    across = np.array([-along[1], along[0], 0.0])
    for offset, semi in ((along, tube.radius / math.cos(tube.tilt)), (across, tube.radius)):
        p = mid + semi * offset
        assert tube.distance(*(np.array([[[c]]]) for c in p)).item() == pytest.approx(tube.radius)
    # on the grid: the voxels within the radius in that slice, about the ellipse's area
    x, y, z = voxel_grid(shape)
    k = int(round(mid[2]))
    area = int((tube.distance(x, y, np.array([[[float(k)]]])) <= tube.radius).sum())
    assert area == pytest.approx(math.pi * tube.radius**2 / math.cos(tube.tilt), rel=0.1)
    # round caps beyond the ends, 3D gaps
    beyond = tube.end + 2.0 * d
    assert tube.gap_to_point(beyond, 1.0) == pytest.approx(2.0 - tube.radius - 1.0)
    assert tube.gap_to_point(mid, 1.0) == pytest.approx(-tube.radius - 1.0)
    other = next(t for t in tubes if t is not tube and t.length > 0)
    assert tube.gap_to_tube(other) == pytest.approx(other.gap_to_tube(tube), abs=0.1)
    assert tube.gap_to_tube(tube) == pytest.approx(-2 * tube.radius)


def test_oblique_tube_that_misses_the_core_has_no_length():
    shape = (40, 36, 32)
    body = BodyCylinder(shape, np.random.default_rng(0))
    # a radius wider than the core: nothing fits
    tube = ObliqueTube(shape, body, 100.0, (30.0, 30.0), np.random.default_rng(0))
    assert tube.length == 0.0 and tube.depth == 0.0


def test_blob_azimuth_turns_the_in_plane_axes():
    centre = np.array([20.0, 18.0, 16.0])
    scale = np.array([1.5, 1.0, 1.0])
    x, y, z = voxel_grid(SHAPE)
    turned = Blob(centre, 2.0, scale, azimuth=math.pi / 2)  # the long axis along y
    d = turned.distance(x, y, z)
    assert d[20, 21, 16] == pytest.approx(2.0) and d[22, 18, 16] == pytest.approx(2.0)
    assert d[20, 18, 16] == 0.0
    np.testing.assert_allclose(d, Blob(centre, 2.0, scale[[1, 0, 2]]).distance(x, y, z), atol=1e-12)
