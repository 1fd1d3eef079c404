"""Physics of the ptychography simulator: Parseval, photon statistics, geometry, sub-pixel positions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edgeray.sim import (
    PtychoSimConfig,
    exit_waves,
    far_field,
    far_field_intensity,
    fermat_spiral,
    focused_probe,
    gaussian_probe,
    make_scan,
    place_in_object,
    random_object,
    shifted_probes,
    simulate_ptycho,
)


def smooth_field(shape, seed, sigma=2.0):
    rng = np.random.default_rng(seed)
    return random_object(shape, rng, feature_px=sigma)


def test_parseval_exit_wave_vs_intensity():
    obj = smooth_field((80, 80), 0)
    probe = focused_probe((32, 32), 12)[None] * 7.0
    positions = np.array([[30.2, 40.7], [45.5, 35.25], [40.0, 40.0]])
    waves = exit_waves(obj, probe, positions)
    intensity = far_field_intensity(waves)
    expected = 32 * 32 * (np.abs(waves) ** 2).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(intensity.sum(axis=(1, 2)), expected, rtol=1e-5)


def test_counts_follow_poisson_statistics_of_the_stored_ground_truth(small_scan, small_ptycho_config):
    """Stored counts are Poisson draws of |fftshift(fft2(probe * patch))|^2 computed from the ground truth."""
    truth = small_scan.ground_truth
    expected = far_field_intensity(exit_waves(truth.object, truth.probe, truth.positions_px))
    counts = small_scan.frames.astype(np.float64)
    # The mean total per frame is the requested photon count (exact before noise, Poisson after).
    assert expected.sum(axis=(1, 2)).mean() == pytest.approx(small_ptycho_config.photons, rel=1e-6)
    n = len(counts)
    tolerance = 5 * np.sqrt(small_ptycho_config.photons / n)
    assert abs(counts.sum(axis=(1, 2)).mean() - small_ptycho_config.photons) < tolerance
    # Pearson chi-square per bright pixel ~ 1 for Poisson data of exactly this mean.
    bright = expected > 20
    chi2 = ((counts - expected) ** 2 / expected)[bright].mean()
    assert chi2 == pytest.approx(1.0, abs=0.05)


def test_positions_inside_object_with_margin(small_scan):
    truth = small_scan.ground_truth
    half = np.array(small_scan.frames.shape[1:]) / 2
    low = truth.positions_px - half
    high = truth.positions_px + half
    assert (low >= 3).all()
    assert (high <= np.array(truth.object.shape) - 3).all()


def test_positions_in_metres_match_pixels(small_scan):
    truth = small_scan.ground_truth
    pixel = np.array(small_scan.geometry.object_pixel_size_m)
    back = small_scan.positions_m / pixel + np.array(truth.object.shape) / 2
    np.testing.assert_allclose(back, truth.positions_px, atol=1e-9)


def test_shifted_object_diffraction_is_the_analytic_phase_ramp():
    """F[psi(r - s)](q) = F[psi](q) exp(-2 pi i q.s) for a periodic, band-limited exit wave."""
    wave = smooth_field((48, 48), 1).astype(np.complex128)
    shift = np.array([2.3, -5.7])
    shifted = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(wave), shift))
    q = [np.fft.fftshift(np.fft.fftfreq(n)) for n in wave.shape]
    ramp = np.exp(-2j * np.pi * (q[0][:, None] * shift[0] + q[1][None, :] * shift[1]))
    np.testing.assert_allclose(far_field(shifted), far_field(wave) * ramp, atol=1e-8 * np.abs(far_field(wave)).max())
    np.testing.assert_allclose(np.abs(far_field(shifted)), np.abs(far_field(wave)), rtol=1e-9, atol=1e-9)


def test_phase_tilt_moves_the_pattern_along_matching_detector_axis():
    """Detector rows follow object y and columns object x: a tilt of k cycles along x moves the pattern k columns."""
    probe = gaussian_probe((64, 64), 8)[None]
    y, x = np.indices((64, 64))
    flat = far_field_intensity(probe)
    tilted_x = far_field_intensity(probe * np.exp(2j * np.pi * 5 * x / 64))
    tilted_y = far_field_intensity(probe * np.exp(-2j * np.pi * 3 * y / 64))
    np.testing.assert_allclose(tilted_x, np.roll(flat, 5, axis=1), rtol=1e-5, atol=1e-6 * flat.max())
    np.testing.assert_allclose(tilted_y, np.roll(flat, -3, axis=0), rtol=1e-5, atol=1e-6 * flat.max())
    # Zero frequency sits at the centre pixel (H/2, W/2) for a flat wave.
    centre = far_field_intensity(np.ones((1, 64, 64)))
    assert np.unravel_index(np.argmax(centre), centre.shape) == (32, 32)


def test_sub_pixel_position_equals_shifted_object():
    """Moving the probe by -d on the object gives the same intensities as moving the object by +d."""
    obj = smooth_field((96, 96), 2, sigma=3.0)
    probe = gaussian_probe((32, 32), 7)[None]
    d = np.array([0.37, -0.61])
    positions = np.array([[40.0, 50.0], [55.3, 41.8]])
    moved_obj = np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(obj), d)).astype(np.complex64)
    a = far_field_intensity(exit_waves(moved_obj, probe, positions))
    b = far_field_intensity(exit_waves(obj, probe, positions - d))
    assert np.abs(a - b).max() < 2e-3 * a.max()


def test_shifted_probes_integer_shift_is_a_roll():
    probe = focused_probe((32, 32), 10)[None]
    out = shifted_probes(probe, np.array([[2.0, -3.0]]))[0, 0]
    np.testing.assert_allclose(out, np.roll(probe[0], (2, -3), axis=(0, 1)), atol=1e-6)


def test_focused_probe_diameter():
    """The geometric beam of the defocused disc holds most of the energy inside the requested diameter."""
    probe = focused_probe((128, 128), 40)
    y, x = np.indices(probe.shape) - 64
    r = np.hypot(y, x)
    intensity = np.abs(probe) ** 2
    assert intensity.sum() == pytest.approx(1.0, rel=1e-5)
    assert intensity[r <= 22].sum() > 0.85
    assert intensity[r <= 12].sum() < 0.6


def test_gaussian_probe_fwhm():
    probe = gaussian_probe((65, 65), 10)
    line = np.abs(probe[32]) ** 2
    assert line[32 + 5] / line[32] == pytest.approx(0.5, rel=1e-3)


@pytest.mark.parametrize("kind", ["spiral", "raster", "concentric"])
def test_scan_spacing_matches_step(kind):
    offsets = make_scan(kind, 400, 6.0, jitter_px=0.0)
    distances = np.linalg.norm(offsets[:, None] - offsets[None], axis=-1)
    np.fill_diagonal(distances, np.inf)
    nearest = np.median(distances.min(axis=1))
    assert 0.7 * 6.0 < nearest <= 1.05 * 6.0
    assert len(offsets) == 400


def test_fermat_spiral_area_per_point():
    offsets = fermat_spiral(1000, 5.0)
    radius = np.linalg.norm(offsets, axis=1).max()
    assert np.pi * radius**2 / 1000 == pytest.approx(25.0, rel=0.01)


def test_place_in_object_bounds():
    offsets = make_scan("raster", 50, 5.0, jitter_px=1.0, rng=np.random.default_rng(0))
    positions, shape = place_in_object(offsets, (32, 32), margin_px=4)
    assert (positions - 16 >= 4 - 1e-9).all()
    assert (positions + 16 <= np.array(shape) - 4 + 1e-9).all()


def test_beamstop_and_saturation():
    config = PtychoSimConfig(frame_size=32, n_positions=20, step_px=4, photons=1e5, beamstop_px=3, saturation=500)
    scan = simulate_ptycho(config)
    assert scan.mask is not None and scan.mask[16, 16] and scan.mask.sum() == 29
    assert (scan.frames[:, scan.mask] == 0).all()
    assert scan.frames.max() == 500


def test_seeded_and_reproducible():
    config = PtychoSimConfig(frame_size=32, n_positions=10, step_px=4, object="random", seed=5)
    a, b = simulate_ptycho(config), simulate_ptycho(config)
    np.testing.assert_array_equal(a.frames, b.frames)
    c = simulate_ptycho(PtychoSimConfig(frame_size=32, n_positions=10, step_px=4, object="random", seed=6))
    assert not np.array_equal(a.frames, c.frames)


def test_bad_simulation_parameters():
    with pytest.raises(ValueError, match="unknown scan"):
        simulate_ptycho(PtychoSimConfig(scan="zigzag", n_positions=4))
    with pytest.raises(ValueError, match="neither a file nor"):
        simulate_ptycho(PtychoSimConfig(object="no-such-image", n_positions=4, frame_size=16))


def test_zone_plate_probe_has_a_dark_centre_in_the_far_field():
    config = PtychoSimConfig(frame_size=64, n_positions=4, step_px=4, probe="zoneplate", photons=1e6)
    scan = simulate_ptycho(config)
    far = far_field_intensity(scan.ground_truth.probe)
    ring = far[32, 32 + 12]  # inside the pupil, outside the central stop (30% of radius 16)
    assert far[32, 32] < 1e-6 * ring
