"""From detector counts to line integrals: flat/dark correction, minus-log, zingers, stripes (rings), Paganin.

Arrays are projections ``(A, R, C)`` (angles, detector rows, columns) or sinograms ``(S, A, C)``; every function
says which. Counts may be any integer or float dtype; results are float32.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def normalize(
    projections: np.ndarray, flats: np.ndarray | None, darks: np.ndarray | None, floor: float = 1e-6
) -> np.ndarray:
    """Transmission ``(data - dark) / (flat - dark)`` ``(A, R, C)`` float32 from the mean flat and mean dark.

    Raises:
        ValueError: flats or darks missing, of another frame shape, or a flat no brighter than the dark.
    """
    if flats is None or len(flats) == 0:
        raise ValueError("no flat fields (/exchange/data_white): cannot normalize; give flats or skip with --no-flat")
    if darks is None or len(darks) == 0:
        raise ValueError("no dark fields (/exchange/data_dark): cannot normalize; give darks or skip with --no-flat")
    frame = projections.shape[1:]
    for name, fields in (("flats", flats), ("darks", darks)):
        if fields.shape[1:] != frame:
            raise ValueError(f"{name} are {fields.shape[1:]} pixels, projections {frame}")
    dark = darks.astype(np.float32).mean(axis=0)
    span = flats.astype(np.float32).mean(axis=0) - dark
    if np.mean(span <= 0) > 0.5:
        raise ValueError("the flat fields are no brighter than the darks over most pixels: flats and darks swapped?")
    span = np.maximum(span, floor)
    return np.maximum((projections.astype(np.float32) - dark) / span, floor)


def minus_log(transmission: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Line integrals ``-log(max(t, floor))``, float32 (zero or negative transmission clamps, never NaN)."""
    return -np.log(np.maximum(transmission, floor)).astype(np.float32)


def remove_outliers(projections: np.ndarray, threshold: float = 0.1, size: int = 3) -> np.ndarray:
    """Zingers: pixels differing from their ``size x size`` median (within each projection) by more than
    ``threshold`` (relative to the median) are replaced by it. ``(A, R, C)`` -> same."""
    median = ndimage.median_filter(projections, size=(1, size, size), mode="nearest")
    bad = np.abs(projections - median) > threshold * np.abs(median)
    return np.where(bad, median, projections).astype(np.float32)


def remove_stripes(sinograms: np.ndarray, size: int = 21) -> np.ndarray:
    """Ring artifacts' cause, stripes in sinograms, removed by sorting (Vo et al. 2018, algorithm 3): each
    detector column is sorted along the angles, the sorted image is median-filtered across columns (``size``),
    then unsorted. ``(S, A, C)`` -> same. Full stripes (bad pixels) and partial ones are both reduced."""
    order = np.argsort(sinograms, axis=1, kind="stable")
    sorted_values = np.take_along_axis(sinograms, order, axis=1)
    smoothed = ndimage.median_filter(sorted_values, size=(1, 1, size), mode="reflect")
    result = np.empty_like(sinograms, dtype=np.float32)
    np.put_along_axis(result, order, smoothed, axis=1)
    return result


def paganin(
    transmission: np.ndarray, pixel_size_m: float, distance_m: float, energy_eV: float, delta_over_beta: float
) -> np.ndarray:
    """Paganin (2002) single-material phase retrieval of transmission projections ``(A, R, C)``: the projected
    thickness term ``-log(IFFT(FFT(t) / (1 + pi lambda z (delta / beta) |k|^2)))``, in the same units as
    ``minus_log``'s output (use it instead of ``minus_log``)."""
    wavelength = 1.239841984e-6 / energy_eV
    rows, cols = transmission.shape[1:]
    ky = np.fft.fftfreq(rows, d=pixel_size_m)[:, None]
    kx = np.fft.fftfreq(cols, d=pixel_size_m)[None, :]
    denominator = 1 + np.pi * wavelength * distance_m * delta_over_beta * (kx**2 + ky**2)
    filtered = np.fft.ifft2(np.fft.fft2(transmission, axes=(1, 2)) / denominator, axes=(1, 2)).real
    return minus_log(filtered)
