"""Metrics: alignment to round-off, SSIM/PSNR of identical images, FRC and its half-bit threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from edgeray.metrics import align, compare, frc, psnr, relative_error, ssim


def complex_image(seed: int, shape=(96, 96), amplitude_contrast=0.5, phase_scale=3.0) -> np.ndarray:
    rng = np.random.default_rng(seed)

    def field():
        return ndimage.gaussian_filter(rng.standard_normal(shape), 3, mode="wrap")

    amplitude = 1 + amplitude_contrast * field() / np.abs(field()).max()
    return amplitude * np.exp(1j * phase_scale * field() / np.abs(field()).max())


def fourier_shift(image, shift):
    return np.fft.ifft2(ndimage.fourier_shift(np.fft.fft2(image), shift))


def test_identical_images_score_perfectly():
    image = complex_image(0)
    scores = compare(image, image)
    assert scores["rel_error"] < 1e-12
    assert scores["ssim_amplitude"] == pytest.approx(1.0)
    assert scores["ssim_phase"] == pytest.approx(1.0)
    assert psnr(np.abs(image), np.abs(image)) == float("inf")
    assert relative_error(image, image) == 0.0
    assert ssim(np.abs(image), np.abs(image)) == pytest.approx(1.0)


@pytest.mark.parametrize("amplitude_contrast", [0.5, 0.0])  # 0.0: a pure phase object
def test_sub_pixel_shifted_phase_offset_copy_aligns_back(amplitude_contrast):
    reference = complex_image(1, amplitude_contrast=amplitude_contrast)
    moved = fourier_shift(reference, (2.37, -1.61)) * 0.8 * np.exp(1.3j)
    aligned, how = align(moved, reference)
    assert relative_error(aligned, reference) < 1e-3
    assert how.shift_px == pytest.approx((-2.37, 1.61), abs=1e-3)
    assert np.angle(how.scale) == pytest.approx(-1.3, abs=1e-3)
    assert abs(how.scale) == pytest.approx(1 / 0.8, rel=1e-3)


def test_phase_ramp_is_removed():
    reference = complex_image(2)
    y, x = np.indices(reference.shape) / reference.shape[0]
    moved = fourier_shift(reference, (-0.4, 3.2)) * np.exp(2j * np.pi * (0.7 * y - 1.2 * x) + 0.5j)
    aligned, how = align(moved, reference)
    assert relative_error(aligned, reference) < 1e-3
    assert how.ramp_cycles == pytest.approx((-0.7, 1.2), abs=1e-3)
    # Without ramp removal the same image stays far off: the test above is not trivially satisfied.
    unramped, _ = align(moved, reference, ramp=False)
    assert relative_error(unramped, reference) > 0.1


def test_misalignment_is_measured_without_align():
    reference = complex_image(3)
    moved = fourier_shift(reference, (0.5, 0.0))
    assert relative_error(moved, reference) > 0.05
    assert compare(moved, reference, align_first=False)["ssim_amplitude"] < 0.99


def test_frc_of_image_with_itself_is_one():
    image = complex_image(4)
    result = frc(image, image)
    np.testing.assert_allclose(result.frc[1:], 1.0, atol=1e-12)
    assert result.resolution_px == 2.0


def test_frc_half_bit_threshold_and_noise_resolution():
    rng = np.random.default_rng(5)
    image = ndimage.gaussian_filter(rng.standard_normal((128, 128)), 1.5, mode="wrap")
    result = frc(image, image)
    # The half-bit curve falls with ring size towards 0.2071 / 1.2071; ring 63 holds about 2 pi 63 pixels.
    assert result.threshold[1] > 0.5 > result.threshold[-1]
    f = np.fft.fftfreq(128)
    n_last = (np.round(np.hypot(f[:, None], f[None, :]) * 128) == 63).sum()
    root = np.sqrt(n_last)
    assert result.threshold[-1] == pytest.approx((0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root), rel=1e-6)
    assert result.threshold[-1] > 0.2071 / 1.2071
    noise = 0.3 * image.std()
    noisy_a = image + noise * rng.standard_normal(image.shape)
    noisy_b = image + noise * rng.standard_normal(image.shape)
    blurred = frc(noisy_a, noisy_b)
    # Smoothing at sigma 1.5 px leaves no signal above the noise near Nyquist: resolution coarser than 2 px.
    assert 2.5 < blurred.resolution_px < 20
    assert blurred.frc[1] > 0.9


def test_align_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        align(np.ones((4, 4)), np.ones((4, 5)))
