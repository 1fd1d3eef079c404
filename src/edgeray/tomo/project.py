"""The forward projector: the exact transpose of :func:`edgeray.tomo.fbp.backproject` (linear interpolation).

Used by SIRT and by tests; ``<project(x), y> == <x, backproject(y)>`` to rounding.
"""

from __future__ import annotations

import numpy as np
import torch

from edgeray.tomo.fbp import _interpolation


def project(
    images: torch.Tensor, theta_rad: np.ndarray, center: float, n_columns: int, angles_per_chunk: int = 16
) -> torch.Tensor:
    """Line integrals ``(S, A, n_columns)`` (pixel units) of ``images (S, N, N)`` at ``theta_rad`` (radians),
    rotation axis at detector column ``center``."""
    n_slices, size, _ = images.shape
    device, dtype = images.device, images.dtype
    theta = torch.from_numpy(np.asarray(theta_rad, dtype=np.float64)).to(device, dtype)
    n_angles = len(theta)
    flat_images = images.reshape(n_slices, 1, size * size)
    sinograms = torch.zeros((n_slices, n_angles * n_columns), device=device, dtype=dtype)
    for first in range(0, n_angles, angles_per_chunk):
        last = min(first + angles_per_chunk, n_angles)
        indices, interp = _interpolation(theta[first:last], center, size, n_columns, first)
        for side in range(2):
            contributions = (flat_images * interp[side][None]).reshape(n_slices, -1)
            sinograms.index_add_(1, indices[side], contributions)
    return sinograms.reshape(n_slices, n_angles, n_columns)
