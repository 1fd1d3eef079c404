"""Filtered backprojection: the ramp filter family, then backprojection in one of two ways.

- :func:`gridrec` (the default): the backprojection of the filtered sinogram computed in Fourier space as one
  non-uniform FFT (``finufft``, type 1): every filtered spectrum sample ``(omega, theta)`` is a point of the image's
  2-D spectrum on a polar grid, and the image is their sum of plane waves, evaluated on the pixel grid to a
  tolerance of 1e-6. That is FBP with exact (band-limited) interpolation, in ``O(N^2 log N + A P)`` instead of the
  ``O(N^2 A)`` of pixel-driven backprojection. CPU only.
- :func:`fbp`: pixel-driven backprojection with linear interpolation (what astra's CPU FBP does), in torch, on CPU
  or CUDA, batched over slices and chunked over angles; its transpose is the projector of
  :mod:`edgeray.tomo.project`.

Both take sinograms ``(S, A, D)`` (slices, angles, detector columns) of line integrals in pixel units and return
slices ``(S, N, N)`` in attenuation per pixel (``N = D`` unless given).
"""

from __future__ import annotations

import numpy as np
import torch

from edgeray.tomo.geometry import angle_weights, default_center, pixel_coordinates

FILTERS = ("ramp", "shepp-logan", "cosine", "hann", "hamming", "parzen")


def padded_size(n_columns: int) -> int:
    """Zero-padded detector length for filtering: at least twice the width (no wrap-around), a power of two."""
    return int(2 ** np.ceil(np.log2(max(2 * n_columns, 64))))


def ramp_response(size: int) -> np.ndarray:
    """The discrete ramp's frequency response ``(size,)`` (FFT order): the FFT of the band-limited spatial ramp
    kernel ``h(0) = 1/4, h(odd n) = -1 / (pi n)^2, h(even n) = 0`` (Kak & Slaney, eq. 61). Unlike ``|omega|``
    sampled on the FFT grid it keeps the right zero-frequency weight, so FBP has no DC offset (cupping)."""
    n = np.concatenate([np.arange(0, size // 2 + 1), np.arange(-(size - size // 2) + 1, 0)])
    kernel = np.zeros(size)
    kernel[0] = 0.25
    odd = n % 2 == 1
    kernel[odd] = -1.0 / (np.pi * n[odd]) ** 2
    return np.real(np.fft.fft(kernel))


def filter_response(size: int, name: str = "ramp", cutoff: float = 1.0) -> np.ndarray:
    """Filter response ``(size,)`` in FFT order for a ``size``-point padded detector row: the discrete ramp
    (:func:`ramp_response`) times a window of ``omega`` (cycles per pixel).

    ``cutoff`` (fraction of Nyquist, 0-1] zeroes higher frequencies. Windows: ``ramp`` (none), ``shepp-logan``
    (sinc), ``cosine``, ``hann``, ``hamming``, ``parzen``.
    """
    if name not in FILTERS:
        raise ValueError(f"unknown filter {name!r}; choose one of {', '.join(FILTERS)}")
    if not 0 < cutoff <= 1:
        raise ValueError(f"cutoff must be in (0, 1], got {cutoff}")
    omega = np.fft.fftfreq(size)
    x = np.abs(omega) / (0.5 * cutoff)  # 0..1 within the band
    if name == "ramp":
        window = np.ones_like(x)
    elif name == "shepp-logan":
        window = np.sinc(x / 2)
    elif name == "cosine":
        window = np.cos(np.pi * x / 2)
    elif name == "hann":
        window = 0.5 + 0.5 * np.cos(np.pi * x)
    elif name == "hamming":
        window = 0.54 + 0.46 * np.cos(np.pi * x)
    else:  # parzen
        window = np.where(x <= 0.5, 1 - 6 * x**2 * (1 - x), 2 * (1 - x) ** 3)
    return np.where(x <= 1, ramp_response(size) * window, 0.0)


def _check(sinograms: np.ndarray, theta_rad: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sinograms = np.asarray(sinograms)
    if sinograms.ndim == 2:
        sinograms = sinograms[None]
    if sinograms.ndim != 3:
        raise ValueError(f"sinograms must be (slices, angles, columns), got shape {sinograms.shape}")
    theta = np.asarray(theta_rad, dtype=np.float64).reshape(-1)
    if len(theta) != sinograms.shape[1]:
        raise ValueError(f"{len(theta)} angles for sinograms with {sinograms.shape[1]} rows (angles)")
    if not np.all(np.isfinite(sinograms)):
        raise ValueError("sinograms contain NaN or infinite values (check flats, darks and the minus-log)")
    return sinograms, theta


def filtered_spectra(sinograms: np.ndarray, center: float, filter_name: str, cutoff: float, spectral_size: int):
    """``(spectra (S, A, P) complex128, omega (P,))``: each row filtered (zero-padded to twice its length, so
    the convolution does not wrap), cropped back to the detector (where backprojection samples it), then
    transformed on ``P = spectral_size`` points with the phase referred to the rotation axis (cycles per pixel)."""
    n_columns = sinograms.shape[-1]
    size = padded_size(n_columns)
    response = filter_response(size, filter_name, cutoff).astype(sinograms.dtype)  # float32 in, complex64 out
    import scipy.fft

    half = scipy.fft.rfft(sinograms, n=size, axis=-1, workers=-1) * response[: size // 2 + 1]
    filtered = scipy.fft.irfft(half, n=size, axis=-1, workers=-1)
    spectra = scipy.fft.fft(filtered[..., :n_columns], n=spectral_size, axis=-1, workers=-1)
    omega = np.fft.fftfreq(spectral_size)
    spectra *= np.exp(2j * np.pi * omega * center).astype(spectra.dtype)[None, None]
    return spectra, omega


def gridrec(
    sinograms: np.ndarray,
    theta_rad: np.ndarray,
    center: float | None = None,
    size: int | None = None,
    filter_name: str = "shepp-logan",
    cutoff: float = 1.0,
    interpolation: str = "linear",
    bands: int = 1,
    kernel: str = "joseph",
    eps: float = 1e-4,
    spectral_size: int | None = None,
    threads: int | None = None,
    precision: str = "single",
) -> np.ndarray:
    """FBP by non-uniform FFT. ``sinograms (S, A, D)`` or ``(A, D)``, angles in radians, rotation axis at
    detector column ``center`` (default the middle) -> ``(S, size, size)`` float32 (``size`` default ``D``).

    ``interpolation``: ``linear`` gives what backprojection with linear interpolation gives: the filtered rows'
    periodic spectra times ``sinc^2`` of the triangle kernel, over the base band and ``bands`` images on each side
    (what linear interpolation aliases onto the pixels); ``exact`` keeps the base band only (band-limited
    interpolation: sharper, and noisier). ``kernel``: ``pixel`` (a triangle one detector pixel wide, as
    :func:`fbp`) or ``joseph`` (as wide as the ray's step across the image's minor axis, ``max(|cos|, |sin|)``:
    astra's ``linear`` projector; SSIM 0.998 against astra's FBP, measured). ``eps``: NUFFT tolerance.
    ``precision``: of the NUFFT, ``single`` (the default: 1.8x faster, within 6e-5 of ``double`` at ``eps`` 1e-4,
    measured) or ``double``.
    """
    if precision not in ("single", "double"):
        raise ValueError(f"precision must be 'single' or 'double', not {precision!r}")
    if kernel not in ("pixel", "joseph"):
        raise ValueError(f"kernel must be 'pixel' or 'joseph', not {kernel!r}")
    import finufft

    if interpolation not in ("linear", "exact"):
        raise ValueError(f"interpolation must be 'linear' or 'exact', not {interpolation!r}")
    sinograms, theta = _check(sinograms, theta_rad)
    n_slices, _n_angles, n_columns = sinograms.shape
    size = size or n_columns
    center = default_center(n_columns) if center is None else float(center)
    spectral_size = spectral_size or int(np.ceil((n_columns + 2) / 16) * 16)
    real, complex_ = (np.float32, np.complex64) if precision == "single" else (np.float64, np.complex128)
    spectra, omega = filtered_spectra(sinograms.astype(real), center, filter_name, cutoff, spectral_size)
    weights = angle_weights(theta)[:, None] / len(omega)  # d theta * d omega
    bands = np.arange(-bands, bands + 1) if interpolation == "linear" else np.zeros(1)
    # the interpolation kernel's width on the detector: 1 pixel for pixel-driven backprojection ("pixel"), the
    # ray's step across the minor axis for astra's ray-driven linear (Joseph) projector ("joseph")
    width = np.maximum(np.abs(np.cos(theta)), np.abs(np.sin(theta))) if kernel == "joseph" else np.ones_like(theta)
    # finufft's modes are integers -N/2..N/2-1; pixel centres sit at mode + offset (half a pixel for even N)
    offset = -(size - 1) / 2.0 + size // 2
    # every band's points and strengths written in place into one array each, in the NUFFT's precision (the
    # copies and float64 temporaries of building them band by band and joining cost as much as the NUFFT)
    n_points = len(omega)
    kx = np.empty((len(theta), len(bands) * n_points), dtype=real)
    ky = np.empty_like(kx)
    strengths = np.empty((n_slices, len(theta), len(bands) * n_points), dtype=complex_)
    for k, band in enumerate(bands):
        shifted = omega + band  # the spectrum of the sampled rows repeats with period 1 cycle per pixel
        # the centre phase exp(2 pi i omega c) belongs to each band's own frequency
        factor = weights * np.exp(2j * np.pi * band * center)
        if interpolation == "linear":
            factor = factor * np.sinc(shifted[None, :] * width[:, None]) ** 2
        band_x = 2 * np.pi * shifted[None, :] * np.cos(theta)[:, None]  # radians per pixel along x (columns)
        band_y = 2 * np.pi * shifted[None, :] * np.sin(theta)[:, None]
        columns = slice(k * n_points, (k + 1) * n_points)
        np.multiply(spectra, (factor * np.exp(1j * offset * (band_x + band_y))).astype(complex_)[None],
                    out=strengths[:, :, columns])  # fmt: skip
        kx[:, columns] = np.mod(band_x + np.pi, 2 * np.pi) - np.pi  # modes are integers: wrapping by 2 pi is nothing
        ky[:, columns] = np.mod(band_y + np.pi, 2 * np.pi) - np.pi
    kx, ky, strengths = kx.ravel(), ky.ravel(), strengths.reshape(n_slices, -1)
    options = {"eps": eps, "isign": 1, "modeord": 0}
    if threads:
        options["nthreads"] = threads
    image = finufft.nufft2d1(ky, kx, strengths, (size, size), **options)  # axis 0 = y (rows), axis 1 = x
    return np.ascontiguousarray(image.real.reshape(n_slices, size, size), dtype=np.float32)


def filter_sinograms(sinograms: torch.Tensor, filter_name: str = "shepp-logan", cutoff: float = 1.0) -> torch.Tensor:
    """Ramp-filtered sinograms ``(S, A, D)``, same dtype (a convolution along the detector, zero-padded)."""
    n_columns = sinograms.shape[-1]
    size = padded_size(n_columns)
    response = torch.from_numpy(filter_response(size, filter_name, cutoff)[: size // 2 + 1]).to(sinograms.device)
    spectra = torch.fft.rfft(sinograms.to(torch.float64), n=size, dim=-1) * response
    return torch.fft.irfft(spectra, n=size, dim=-1)[..., :n_columns].to(sinograms.dtype)


def _interpolation(theta: torch.Tensor, center: float, size: int, n_columns: int, first: int):
    """For angles ``theta`` (a chunk starting at angle ``first``): flat sinogram indices ``(2, a * size^2)`` of
    the two detector samples each pixel's ray falls between, and their weights ``(2, a, size^2)``."""
    device, dtype = theta.device, theta.dtype
    coords = torch.from_numpy(pixel_coordinates(size)).to(device, dtype)
    cos, sin = torch.cos(theta), torch.sin(theta)
    s = coords[None, :, None] * sin[:, None, None] + coords[None, None, :] * cos[:, None, None] + center
    left = torch.floor(s)
    frac = (s - left).reshape(len(theta), -1)
    left = left.to(torch.int64).reshape(len(theta), -1)
    base = torch.arange(first, first + len(theta), device=device)[:, None] * n_columns
    weights = torch.stack(
        [(1 - frac) * ((left >= 0) & (left < n_columns)), frac * ((left >= -1) & (left < n_columns - 1))]
    )
    indices = torch.stack([base + left.clamp(0, n_columns - 1), base + (left + 1).clamp(0, n_columns - 1)])
    return indices.reshape(2, -1), weights


def backproject(
    sinograms: torch.Tensor,
    theta_rad: np.ndarray,
    center: float,
    size: int,
    weights: np.ndarray | None = None,
    angles_per_chunk: int = 16,
) -> torch.Tensor:
    """Pixel-driven backprojection with linear interpolation: ``(S, A, D)`` -> ``(S, size, size)``.

    ``image[y, x] = sum_a w_a * interp(sino[a], x cos(theta_a) + y sin(theta_a) + center)``; samples that fall
    outside the detector add nothing. ``weights`` (default 1) multiply each angle. The exact transpose is
    :func:`edgeray.tomo.project.project`.
    """
    device, dtype = sinograms.device, sinograms.dtype
    n_slices, n_angles, n_columns = sinograms.shape
    theta = torch.from_numpy(np.asarray(theta_rad, dtype=np.float64)).to(device, dtype)
    w = torch.ones(n_angles, dtype=dtype) if weights is None else torch.as_tensor(np.asarray(weights), dtype=dtype)
    w = w.to(device)
    image = torch.zeros((n_slices, size * size), device=device, dtype=dtype)
    flat = sinograms.reshape(n_slices, n_angles * n_columns)
    for first in range(0, n_angles, angles_per_chunk):
        last = min(first + angles_per_chunk, n_angles)
        indices, interp = _interpolation(theta[first:last], center, size, n_columns, first)
        interp = (interp * w[first:last, None]).reshape(2, 1, -1)
        values = flat[:, indices[0]] * interp[0] + flat[:, indices[1]] * interp[1]
        image += values.reshape(n_slices, last - first, size * size).sum(dim=1)
    return image.reshape(n_slices, size, size)


def fbp(
    sinograms: np.ndarray,
    theta_rad: np.ndarray,
    center: float | None = None,
    size: int | None = None,
    filter_name: str = "shepp-logan",
    cutoff: float = 1.0,
    device: str = "cpu",
) -> np.ndarray:
    """FBP with linear-interpolation backprojection in torch (CPU or CUDA): ``(S, A, D)`` -> ``(S, N, N)``."""
    sinograms, theta = _check(sinograms, theta_rad)
    n_columns = sinograms.shape[-1]
    size = size or n_columns
    center = default_center(n_columns) if center is None else float(center)
    dtype = torch.float32
    data = torch.from_numpy(np.ascontiguousarray(sinograms, dtype=np.float32)).to(device, dtype)
    filtered = filter_sinograms(data, filter_name, cutoff)
    image = backproject(filtered, theta, center, size, angle_weights(theta))
    return image.cpu().numpy().astype(np.float32)
