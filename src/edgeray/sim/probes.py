"""Illumination (probe) models on the object-plane grid of a far-field geometry."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np


def _freq_radius_sq(shape: tuple[int, int]) -> np.ndarray:
    """``|k|^2`` in frequency pixels on the (unshifted) FFT grid of ``shape``."""
    ky = np.fft.fftfreq(shape[0]) * shape[0]
    kx = np.fft.fftfreq(shape[1]) * shape[1]
    return ky[:, None] ** 2 + kx[None, :] ** 2


def focused_probe(
    shape: tuple[int, int],
    diameter_px: float,
    aperture_radius_px: float | None = None,
    central_stop: float = 0.0,
) -> np.ndarray:
    """A defocused beam from a circular focusing optic (a Fresnel zone plate when ``central_stop`` > 0).

    The optic's pupil is a disc (annulus) of ``aperture_radius_px`` detector pixels in the far field; a
    quadratic phase defocuses it so the geometric beam at the sample is ``diameter_px`` object pixels wide
    (the defocus distance is ``diameter / (2 * NA)``, the same for any wavelength once expressed in pixels).

    Args:
        shape: ``(H, W)`` probe array, object pixels.
        diameter_px: geometric beam diameter at the sample, object pixels.
        aperture_radius_px: pupil radius in detector pixels (default ``min(H, W) / 4``).
        central_stop: inner radius of the pupil as a fraction of the outer (0: full disc).

    Returns:
        ``(H, W)`` complex64 probe with unit total intensity, centred in the array.
    """
    n = min(shape)
    radius = aperture_radius_px or n / 4
    k2 = _freq_radius_sq(shape)
    pupil = (k2 <= radius**2) & (k2 >= (central_stop * radius) ** 2)
    # Quadratic defocus phase: a pupil point at radius k lands at k * diameter / (2 * radius) pixels.
    phase = np.pi * diameter_px * k2 / (2 * radius * n)
    probe = np.fft.fftshift(np.fft.ifft2(pupil * np.exp(-1j * phase)))
    return (probe / np.linalg.norm(probe)).astype(np.complex64)


def gaussian_probe(shape: tuple[int, int], fwhm_px: float, curvature_rad: float = 0.0) -> np.ndarray:
    """A Gaussian beam of ``fwhm_px`` (object pixels) with an optional quadratic phase.

    ``curvature_rad`` is the phase at the half-maximum radius (0: flat wavefront).
    Returns ``(H, W)`` complex64 with unit total intensity, centred.
    """
    y = np.arange(shape[0]) - shape[0] // 2
    x = np.arange(shape[1]) - shape[1] // 2
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    half = fwhm_px / 2
    amplitude = np.exp(-np.log(2) * r2 / (2 * half**2))  # intensity halves at r = fwhm / 2
    probe = amplitude * np.exp(1j * curvature_rad * r2 / half**2)
    return (probe / np.linalg.norm(probe)).astype(np.complex64)


def probe_from_file(path: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Load a probe ``(modes, H, W)`` complex64 from ``.npy`` or HDF5 (CXI illumination or product probe).

    Raises:
        ValueError: the file holds no probe, or its frame shape differs from ``shape``.
    """
    path = Path(path)
    if path.suffix == ".npy":
        probe = np.load(path, allow_pickle=False)
    else:
        with h5py.File(path, "r") as h5:
            for name in ("entry_1/instrument_1/source_1/illumination", "probe"):
                if name in h5:
                    probe = h5[name][()]
                    break
            else:
                raise ValueError(f"{path}: no probe (looked for /entry_1/instrument_1/source_1/illumination, /probe)")
    probe = np.asarray(probe, dtype=np.complex64)
    probe = probe.reshape((-1, *probe.shape[-2:]))
    if shape is not None and probe.shape[-2:] != tuple(shape):
        raise ValueError(f"{path}: probe frame shape {probe.shape[-2:]} differs from {tuple(shape)}")
    return probe
