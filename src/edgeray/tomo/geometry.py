"""Parallel-beam geometry shared by the projector, the reconstructions and the simulator.

At angle ``theta``, detector column ``j`` (pixel units, rotation axis at column ``center``) sees the ray
``x cos(theta) + y sin(theta) = j - center``, with ``x`` along image columns and ``y`` along image rows, both
measured in pixels from the image centre ``((N - 1) / 2, (N - 1) / 2)``. This is ``edgeray.sim``'s convention.
"""

from __future__ import annotations

import numpy as np


def angle_weights(theta_rad: np.ndarray) -> np.ndarray:
    """Quadrature weights ``(A,)`` (radians) for angles over half a turn: half the gap to each neighbour,
    taken modulo pi, so any angle set (interleaved, sparse, unsorted, with repeats) is weighted fairly; the weights
    sum to pi. Uniform angles ``k pi / A`` get ``pi / A`` each."""
    theta = np.mod(np.asarray(theta_rad, dtype=np.float64), np.pi)
    if theta.size == 1:
        return np.array([np.pi])
    order = np.argsort(theta, kind="stable")
    sorted_theta = theta[order]
    gaps = np.diff(np.concatenate([sorted_theta, [sorted_theta[0] + np.pi]]))
    weights_sorted = 0.5 * (gaps + np.roll(gaps, 1))
    weights = np.empty_like(weights_sorted)
    weights[order] = weights_sorted
    return weights


def default_center(n_columns: int) -> float:
    """The detector's middle, ``(n_columns - 1) / 2``: where the rotation axis is when nothing says otherwise."""
    return (n_columns - 1) / 2.0


def pixel_coordinates(size: int) -> np.ndarray:
    """Pixel-centre coordinates ``(size,)`` measured from the image centre, pixels."""
    return np.arange(size) - (size - 1) / 2.0
