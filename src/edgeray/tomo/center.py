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
    return ((n_columns - 1) - shift[1]) / 2.0


def find_center_sharpness(
    sinogram: np.ndarray, theta_rad: np.ndarray, search_px: float = 20.0, step_px: float = 0.25
) -> float:
    """Centre column that makes the reconstruction of one sinogram ``(A, C)`` sharpest (least total variation
    per unit of signal, the usual image-quality criterion), searched over ``+-search_px`` about the middle,
    coarse (1 px) then fine (``step_px``)."""
    from edgeray.tomo.fbp import gridrec

    n_columns = sinogram.shape[-1]
    middle = (n_columns - 1) / 2.0

    def score(centers: np.ndarray) -> np.ndarray:
        images = np.concatenate([gridrec(sinogram[None], theta_rad, center=c) for c in centers])
        radius = n_columns / 2 - search_px
        yy, xx = np.indices(images.shape[1:]) - (n_columns - 1) / 2
        disk = yy**2 + xx**2 <= radius**2
        images = images * disk
        variation = np.abs(np.diff(images, axis=1)).sum(axis=(1, 2)) + np.abs(np.diff(images, axis=2)).sum(axis=(1, 2))
        return variation / np.maximum(np.abs(images).sum(axis=(1, 2)), 1e-12)

    coarse = middle + np.arange(-search_px, search_px + 1)
    best = coarse[np.argmin(score(coarse))]
    fine = best + np.arange(-1, 1 + step_px / 2, step_px)
    return float(fine[np.argmin(score(fine))])
