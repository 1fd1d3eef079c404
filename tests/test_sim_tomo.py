"""Physics of the tomography simulator: exact chord lengths, geometry convention, Beer-Lambert, noise."""

from __future__ import annotations

import numpy as np
import pytest

from edgeray.sim import Ellipsoid, TomoSimConfig, foam, project, rasterize, shepp_logan, simulate_tomo
from edgeray.sim.phantoms import pixel_coords, slice_z


@pytest.mark.parametrize("theta_deg", [0.0, 30.0, 90.0, 137.0])
def test_off_centre_sphere_matches_analytic_chord(theta_deg):
    """A sphere of radius R at (x0, y0) projects to 2 sqrt(R^2 - (s - s0)^2 - z^2), s0 = x0 cos t + y0 sin t."""
    size, n_slices = 96, 6
    x0, y0, radius = 0.3, -0.2, 0.25
    sphere = [Ellipsoid((x0, y0, 0.0), (radius, radius, radius), 0.4, 1.0)]
    theta = np.radians(theta_deg)
    sino = project(sphere, np.array([theta]), size, n_slices)[0]
    s = pixel_coords(size)[None, :]
    z = slice_z(size, n_slices)[:, None]
    s0 = x0 * np.cos(theta) + y0 * np.sin(theta)
    chord = 2 * np.sqrt(np.clip(radius**2 - (s - s0) ** 2 - z**2, 0, None)) * size / 2
    np.testing.assert_allclose(sino, chord, atol=1e-9)


def test_projection_matches_sum_of_rasterized_volume_along_rays():
    """theta = 0 integrates along +y (rows); theta = 90 deg along x (columns), both onto detector coordinate s."""
    size, n_slices = 128, 4
    shapes = shepp_logan()
    volume = rasterize(shapes, size, n_slices, supersample=4)
    sino = project(shapes, np.radians([0.0, 90.0]), size, n_slices)
    along_rows = volume.sum(axis=1)  # (slices, x): s = x at theta = 0
    along_cols = volume.sum(axis=2)  # (slices, y): s = y at theta = 90
    for measured, expected in ((sino[0], along_rows), (sino[1], along_cols)):
        assert np.abs(measured - expected).sum() / np.abs(expected).sum() < 0.01


def test_rotated_ellipse_projection_is_symmetric_under_180_degrees():
    shapes = shepp_logan()
    sino = project(shapes, np.radians([20.0, 200.0]), 64, 2)
    np.testing.assert_allclose(sino[0], sino[1][:, ::-1], atol=1e-9)


def test_beer_lambert_normalization_recovers_line_integrals():
    config = TomoSimConfig(size=64, slices=2, angles=30, photons=1e6, seed=1)
    scan = simulate_tomo(config)
    flat = scan.flats.mean(axis=0).astype(np.float64)
    dark = scan.darks.mean(axis=0).astype(np.float64)
    measured = -np.log((scan.projections - dark) / (flat - dark))
    shapes = shepp_logan()
    exact = project(shapes, np.radians(scan.theta_deg), 64, 2)
    exact *= config.max_attenuation / exact.max()
    assert np.abs(measured - exact).mean() < 0.01
    assert exact.max() == pytest.approx(config.max_attenuation)


def test_ground_truth_volume_is_on_the_projection_scale(small_tomo):
    """Summing the ground truth along a ray gives the line integral used for the counts (scale check)."""
    config = TomoSimConfig(size=64, slices=4, angles=90, seed=2)
    exact = project(shepp_logan(), np.radians([0.0]), 64, 4)[0]
    exact *= config.max_attenuation / project(shepp_logan(), np.radians(small_tomo.theta_deg), 64, 4).max()
    along_rows = small_tomo.ground_truth.sum(axis=1)
    assert np.abs(along_rows - exact).sum() / np.abs(exact).sum() < 0.03


def test_flat_counts_and_dark_level(small_tomo):
    config = TomoSimConfig()
    net = small_tomo.flats.astype(np.float64) - small_tomo.darks.mean()
    assert net.mean() == pytest.approx(config.photons, rel=0.05)
    assert small_tomo.darks.mean() == pytest.approx(config.dark_counts, rel=0.02)
    assert small_tomo.projections.dtype == np.uint16
    np.testing.assert_allclose(small_tomo.theta_deg, np.arange(90) * 2.0)


def test_rings_are_pixel_errors_the_flats_do_not_see():
    """Flat-field correction removes the beam profile but not the ring response: their ratio keeps it."""

    def mean_transmission(rings: bool, seed: int) -> np.ndarray:
        scan = simulate_tomo(TomoSimConfig(size=64, slices=2, angles=60, photons=1e6, seed=seed, rings=rings))
        dark = scan.darks.mean(axis=0)
        return ((scan.projections - dark) / (scan.flats.mean(axis=0) - dark)).mean(axis=0)

    clean = mean_transmission(False, 4)
    ringed_ratio = mean_transmission(True, 4) / clean
    clean_ratio = mean_transmission(False, 5) / clean
    assert ringed_ratio.std() > 0.008  # the 1% response spread and 8% bad pixels
    assert clean_ratio.std() < 0.002  # the flats fully correct a clean detector


def test_foam_voids_do_not_overlap():
    shapes = foam(np.random.default_rng(0), n_voids=60)
    voids = shapes[1:]
    centres = np.array([v.center for v in voids])
    radii = np.array([v.axes[0] for v in voids])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    assert (distances >= radii[:, None] + radii[None]).all()
    volume = rasterize(shapes, 64, 8)
    assert volume.min() >= -1e-6 and volume.max() <= 1 + 1e-6


def test_unknown_phantom():
    with pytest.raises(ValueError, match="unknown phantom"):
        simulate_tomo(TomoSimConfig(phantom="cat"))
