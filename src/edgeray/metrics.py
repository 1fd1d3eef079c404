"""How every image is judged: alignment to a reference, relative error, SSIM, PSNR and FRC.

Ptychographic reconstructions are unique only up to a global complex factor, a sub-pixel translation and
a linear phase ramp; :func:`align` removes all three before any comparison. Complex images are compared
as a whole (relative error) and as amplitude and phase separately (SSIM, PSNR).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.optimize import minimize
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


@dataclass
class Alignment:
    """What :func:`align` removed from an image to match its reference.

    Attributes:
        shift_px: ``(y, x)`` sub-pixel translation applied, pixels.
        ramp_cycles: ``(y, x)`` linear phase ramp removed, cycles across the image.
        scale: complex global factor applied (its angle is the global phase offset).
    """

    shift_px: tuple[float, float]
    ramp_cycles: tuple[float, float]
    scale: complex


def _fourier_shift(image: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """``image`` translated by ``shift`` pixels (periodic, band-limited interpolation)."""
    return np.fft.ifftn(ndimage.fourier_shift(np.fft.fftn(image), shift))


def _ramp(shape: tuple[int, int], cycles: np.ndarray) -> np.ndarray:
    """``exp(2 pi i (cy * y / H + cx * x / W))`` on a ``shape`` grid."""
    y = np.arange(shape[0])[:, None] / shape[0]
    x = np.arange(shape[1])[None, :] / shape[1]
    return np.exp(2j * np.pi * (cycles[0] * y + cycles[1] * x))


def _dtft_peak(values: np.ndarray, coords: list[np.ndarray], tolerance: float) -> np.ndarray:
    """The ``q`` (y, x) maximizing ``|sum_u values[u] exp(2 pi i q . u / n)|``, u on the ``coords`` grid.

    The integer peak of a zero-padded inverse FFT (4x for images up to 256^2, 2x above, to bound memory and time)
    starts a quasi-Newton (BFGS) search on the continuous transform, with the analytic gradient.
    """
    shape = np.array(values.shape)
    pad = 4 if values.size <= 256 * 256 else 2
    padded = np.abs(np.fft.ifft2(values, s=tuple(pad * shape)))
    start = np.array(np.unravel_index(np.argmax(padded), padded.shape), dtype=np.float64) / pad
    start = (start + shape / 2) % shape - shape / 2  # to the signed range
    values = values / np.abs(values).sum()
    wy, wx = 2j * np.pi * coords[0] / shape[0], 2j * np.pi * coords[1] / shape[1]

    def cost(q: np.ndarray) -> tuple[float, np.ndarray]:
        ey, ex = np.exp(wy * q[0]), np.exp(wx * q[1])
        row = values @ ex
        total = ey @ row
        d_y = (wy * ey) @ row
        d_x = ey @ values @ (wx * ex)
        grad = -2 * np.real(np.conj(total) * np.array([d_y, d_x]))
        return -(abs(total) ** 2), grad

    result = minimize(cost, start, jac=True, method="BFGS", options={"gtol": 1e-14, "xrtol": tolerance})
    return result.x


def align(
    image: np.ndarray,
    reference: np.ndarray,
    *,
    tolerance: float = 1e-6,
    shift: bool = True,
    ramp: bool = True,
    weights: np.ndarray | None = None,
) -> tuple[np.ndarray, Alignment]:
    """Align ``image`` to ``reference``: linear phase ramp, sub-pixel shift, then global complex scale.

    A coarse ramp comes first, from the cross-correlation of the spectra's magnitudes (which a translation
    leaves unchanged and a real-space phase ramp translates); then, until they settle, the shift at the peak of the
    images' cross-correlation and the ramp at the peak of the Fourier transform of ``reference * conj(image)``
    (both peaks located on the continuous transform to ``tolerance``); last the scale in closed form as
    the least-squares factor ``<image, reference> / <image, image>``.

    Args:
        image, reference: ``(Y, X)`` complex (or real) arrays of equal shape.
        tolerance: precision of the shift (pixels) and ramp (cycles).
        shift, ramp: whether to estimate and remove each.
        weights: ``(Y, X)`` non-negative weights of the final least-squares scale (e.g. a mask of the
            well-measured region); None weighs all pixels alike.

    Returns:
        The aligned image (complex128) and the :class:`Alignment` applied.
    """
    image = np.asarray(image, dtype=np.complex128)
    reference = np.asarray(reference, dtype=np.complex128)
    if image.shape != reference.shape or image.ndim != 2:
        raise ValueError(f"align needs two 2-D images of one shape, got {image.shape} and {reference.shape}")
    original = image
    found_shift = np.zeros(2)
    found_ramp = np.zeros(2)
    signed = [np.fft.fftfreq(n) * n for n in image.shape]
    plain = [np.arange(n, dtype=np.float64) for n in image.shape]

    def transformed() -> np.ndarray:
        # Always one ramp, then one shift, of the original: a ramp applied after a (periodic) shift of a
        # ramped image would leave wrap-around ringing that later steps cannot remove.
        return _fourier_shift(original * _ramp(original.shape, found_ramp), found_shift)

    if ramp:
        # Coarse ramp: |spectrum| ignores translations, and a real-space phase ramp translates it.
        hann = np.outer(np.hanning(image.shape[0]), np.hanning(image.shape[1]))  # limits spectral leakage
        spec_ref, spec_img = np.abs(np.fft.fft2(reference * hann)), np.abs(np.fft.fft2(image * hann))
        found_ramp += _dtft_peak(np.fft.fft2(spec_ref) * np.conj(np.fft.fft2(spec_img)), signed, 1e-2)
    for _ in range(10 if ramp else 1):
        moved = 0.0
        if shift:
            image = original * _ramp(original.shape, found_ramp)
            total = _dtft_peak(np.fft.fft2(reference) * np.conj(np.fft.fft2(image)), signed, tolerance)
            moved = np.abs(total - found_shift).max()
            found_shift = total
        if ramp:
            step = -_dtft_peak(reference * np.conj(transformed()), plain, tolerance)
            found_ramp += step
            moved = max(moved, np.abs(step).max())
        if moved < 10 * tolerance:
            break
    image = transformed()
    w = np.ones(image.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    scale = np.vdot(w * image, reference) / max(np.vdot(w * image, image).real, 1e-300)
    image = image * scale
    return image, Alignment(tuple(found_shift), tuple(found_ramp), complex(scale))


def relative_error(image: np.ndarray, reference: np.ndarray, weights: np.ndarray | None = None) -> float:
    """``||image - reference|| / ||reference||``, optionally weighted (no alignment; see :func:`align`)."""
    image, reference = np.asarray(image), np.asarray(reference)
    w = np.ones(reference.shape) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(np.sqrt((w * np.abs(image - reference) ** 2).sum() / (w * np.abs(reference) ** 2).sum()))


def _data_range(reference: np.ndarray) -> float:
    span = float(np.ptp(reference))
    return span if span > 0 else 1.0


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    """Structural similarity of two real images, data range taken from the reference."""
    image, reference = np.asarray(image, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(structural_similarity(reference, image, data_range=_data_range(reference)))


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    """Peak signal-to-noise ratio (dB), data range taken from the reference; ``inf`` for identical images."""
    image, reference = np.asarray(image, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if np.array_equal(image, reference):
        return float("inf")
    return float(peak_signal_noise_ratio(reference, image, data_range=_data_range(reference)))


@dataclass
class FRCResult:
    """Fourier ring correlation.

    Attributes:
        frequency: ``(R,)`` ring spatial frequency, cycles per pixel (0 ... 0.5).
        frc: ``(R,)`` correlation per ring.
        threshold: ``(R,)`` half-bit threshold per ring.
        resolution_px: smallest resolved period, pixels (``1 / f`` at the first crossing; 2 at Nyquist).
    """

    frequency: np.ndarray
    frc: np.ndarray
    threshold: np.ndarray
    resolution_px: float


def frc(image_a: np.ndarray, image_b: np.ndarray, *, window: bool = True) -> FRCResult:
    """Fourier ring correlation of two images of one square-ish shape, with the half-bit threshold.

    ``window`` applies a Hann window first so the image edges add no false correlation. The threshold is
    van Heel & Schatz's half-bit curve ``(0.2071 + 1.9102 / sqrt(n)) / (1.2071 + 0.9102 / sqrt(n))``
    for ``n`` pixels in a ring.
    """
    a, b = np.asarray(image_a, dtype=np.complex128), np.asarray(image_b, dtype=np.complex128)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"frc needs two 2-D images of one shape, got {a.shape} and {b.shape}")
    if window:
        hann = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
        a, b = a * hann, b * hann
    fa, fb = np.fft.fftshift(np.fft.fft2(a)), np.fft.fftshift(np.fft.fft2(b))
    fy = np.fft.fftshift(np.fft.fftfreq(a.shape[0]))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(a.shape[1]))[None, :]
    n_rings = min(a.shape) // 2
    ring = np.round(np.hypot(fy, fx) * 2 * n_rings).astype(np.int64).ravel()
    keep = ring < n_rings
    ring = ring[keep]

    def ring_sum(values: np.ndarray) -> np.ndarray:
        flat = values.ravel()[keep]
        return np.bincount(ring, flat.real, n_rings) + 1j * np.bincount(ring, flat.imag, n_rings)

    cross = ring_sum(fa * np.conj(fb))
    power_a = ring_sum(np.abs(fa) ** 2).real
    power_b = ring_sum(np.abs(fb) ** 2).real
    correlation = np.abs(cross) / np.sqrt(np.maximum(power_a * power_b, 1e-300))
    n_pixels = np.bincount(ring, minlength=n_rings).astype(np.float64)
    root = np.sqrt(np.maximum(n_pixels, 1))
    threshold = (0.2071 + 1.9102 / root) / (1.2071 + 0.9102 / root)
    frequency = np.arange(n_rings) / (2 * n_rings)
    below = np.flatnonzero(correlation[1:] < threshold[1:]) + 1
    resolution = 1.0 / frequency[below[0]] if len(below) else 2.0
    return FRCResult(frequency, correlation, threshold, float(resolution))


def compare(
    image: np.ndarray, reference: np.ndarray, *, align_first: bool = True, weights: np.ndarray | None = None
) -> dict:
    """All metrics of a complex reconstruction against a reference, amplitude and phase separately.

    Returns a JSON-ready dict: ``rel_error``, ``ssim_amplitude``, ``ssim_phase``, ``psnr_amplitude``,
    ``psnr_phase``, ``frc_resolution_px`` and, when aligned, ``shift_px``, ``ramp_cycles``, ``phase_offset_rad``.
    ``weights`` (e.g. a mask of the well-measured region) weigh the complex scale and the relative error.
    """
    image, reference = np.asarray(image), np.asarray(reference)
    out: dict = {}
    if align_first:
        image, how = align(image, reference, weights=weights)
        out.update(
            shift_px=[float(v) for v in how.shift_px],
            ramp_cycles=[float(v) for v in how.ramp_cycles],
            phase_offset_rad=float(np.angle(how.scale)),
        )
    phase, phase_ref = np.angle(image), np.angle(reference)
    out.update(
        rel_error=relative_error(image, reference, weights),
        ssim_amplitude=ssim(np.abs(image), np.abs(reference)),
        ssim_phase=ssim(phase, phase_ref),
        psnr_amplitude=psnr(np.abs(image), np.abs(reference)),
        psnr_phase=psnr(phase, phase_ref),
        frc_resolution_px=frc(image, reference).resolution_px,
    )
    return out
