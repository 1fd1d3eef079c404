"""Rotation centre: where on the detector the rotation axis projects.

Two projections half a turn apart are mirror images about the axis: ``p(theta + pi, j) = p(theta, 2 c - j)``.
:func:`find_center_pair` registers one against the other mirrored (phase correlation, sub-pixel); without such
a pair :func:`find_center_sharpness` reconstructs one slice at trial centres and keeps the sharpest.
"""

from __future__ import annotations

import numpy as np
from skimage.registration import phase_cross_correlation


def opposite_pair(theta_rad: np.ndarray, tolerance_rad: float = np.radians(0.5)) -> tuple[int, int] | None:
    """Indices ``(i, j)`` of two projections ``pi`` apart (within ``tolerance_rad``), or None."""
    theta = np.asarray(theta_rad, dtype=np.float64)
    gaps = np.abs(np.abs(theta[None, :] - theta[:, None]) - np.pi)
    i, j = np.unravel_index(np.argmin(gaps), gaps.shape)
    return (int(min(i, j)), int(max(i, j))) if gaps[i, j] <= tolerance_rad else None


def find_center_pair(first: np.ndarray, opposite: np.ndarray, upsample: int = 40) -> float:
    """Centre column from two line-integral projections ``(R, C)`` (or sinogram rows ``(C,)``) half a turn apart.

    With the second mirrored, the two are the same image shifted by ``2 c - (C - 1)``; the shift comes from phase
    correlation refined to ``1 / upsample`` pixel (edges tapered to keep the correlation from locking to them).
    """
    a = np.atleast_2d(np.asarray(first, dtype=np.float64))
    b = np.atleast_2d(np.asarray(opposite, dtype=np.float64))[:, ::-1]
    taper = np.hanning(a.shape[1] + 2)[1:-1][None, :]
    a = (a - a.mean()) * taper
    b = (b - b.mean()) * taper
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=upsample, normalization=None)
    n_columns = a.shape[1]
    return ((n_columns - 1) + shift[1]) / 2.0


def slice_entropy(image: np.ndarray, value_range: tuple[float, float], bins: int = 128) -> float:
    """Entropy (nats) of the histogram of ``image`` over ``value_range``: low for a slice of few clean materials,
    higher when a wrong centre smears arcs and streaks across it (Donath et al. 2006)."""
    counts, _ = np.histogram(image, bins=bins, range=value_range)
    p = counts[counts > 0] / max(counts.sum(), 1)
    return float(-(p * np.log(p)).sum())


def find_center_entropy(sinogram: np.ndarray, theta_rad: np.ndarray, search_fraction: float = 0.25) -> float:
    """Centre column whose reconstruction of one sinogram ``(A, C)`` has the least histogram entropy inside the
    reconstruction circle; searched over ``+- search_fraction x C`` about the middle on a detector binned to
    about 256 columns (1-binned-pixel steps), then refined at full resolution in half and eighth pixels."""
    from edgeray.tomo.fbp import gridrec

    sinogram = np.asarray(sinogram, dtype=np.float64)
    n_columns = sinogram.shape[-1]

    def best(binning: int, centers: np.ndarray) -> float:
        usable = n_columns // binning * binning
        binned = sinogram[:, :usable].reshape(len(sinogram), -1, binning).mean(axis=2)
        size = binned.shape[-1]
        yy, xx = np.indices((size, size)) - (size - 1) / 2
        disk = yy**2 + xx**2 <= (0.45 * size) ** 2
        # a binned column k covers full columns k b .. k b + b - 1: its centre is at k b + (b - 1) / 2
        images = [gridrec(binned[None], theta_rad, center=(c - (binning - 1) / 2) / binning)[0][disk] for c in centers]
        low, high = np.percentile(images[len(images) // 2], [0.5, 99.5])
        span = high - low
        scores = [slice_entropy(image, (low - span, high + span)) for image in images]
        return float(centers[int(np.argmin(scores))])

    middle = (n_columns - 1) / 2.0
    reach = search_fraction * n_columns
    binning = max(1, min(4, n_columns // 256))  # keep the coarse images >= 128 px wide
    coarse = best(binning, middle + np.arange(-reach, reach + 1, float(binning)))
    medium = best(1, coarse + np.arange(-binning, binning + 0.5, 0.5))
    return best(1, medium + np.arange(-0.5, 0.55, 0.125))
