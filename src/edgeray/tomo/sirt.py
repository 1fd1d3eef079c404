"""SIRT and CGLS, with the linear-interpolation projector pair.

``x <- max(x + C A^T R (b - A x), 0)`` with ``R = 1 / (A 1)`` and ``C = 1 / (A^T 1)`` (row and column sums), the
form astra and tomopy use. Slow per iteration next to FBP, but better on sparse or noisy data.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from edgeray.tomo.fbp import _check, backproject
from edgeray.tomo.geometry import default_center
from edgeray.tomo.project import project


def sirt(
    sinograms: np.ndarray,
    theta_rad: np.ndarray,
    center: float | None = None,
    size: int | None = None,
    iterations: int = 100,
    nonnegative: bool = True,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """SIRT of ``sinograms (S, A, D)`` -> ``(S, size, size)`` float32 (``size`` default ``D``)."""
    sinograms, theta = _check(sinograms, theta_rad)
    n_slices, n_angles, n_columns = sinograms.shape
    size = size or n_columns
    center = default_center(n_columns) if center is None else float(center)
    b = torch.from_numpy(np.ascontiguousarray(sinograms, dtype=np.float32)).to(device)
    ones_image = torch.ones((1, size, size), device=device)
    row_sums = project(ones_image, theta, center, n_columns)
    column_sums = backproject(torch.ones((1, n_angles, n_columns), device=device), theta, center, size)
    inverse_rows = torch.where(row_sums > 1e-6, 1 / row_sums.clamp_min(1e-6), torch.zeros_like(row_sums))
    inverse_columns = torch.where(column_sums > 1e-6, 1 / column_sums.clamp_min(1e-6), torch.zeros_like(column_sums))
    x = torch.zeros((n_slices, size, size), device=device)
    for iteration in range(iterations):
        residual = (b - project(x, theta, center, n_columns)) * inverse_rows
        x = x + inverse_columns * backproject(residual, theta, center, size)
        if nonnegative:
            x = x.clamp_min(0)
        if progress:
            progress(iteration + 1)
    return x.cpu().numpy()


def cgls(
    sinograms: np.ndarray,
    theta_rad: np.ndarray,
    center: float | None = None,
    size: int | None = None,
    iterations: int = 30,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """CGLS: conjugate gradients on the normal equations ``A^T A x = A^T b`` (least squares, no constraint;
    stop early to regularize). Converges in far fewer iterations than SIRT. ``(S, A, D)`` -> ``(S, N, N)``."""
    sinograms, theta = _check(sinograms, theta_rad)
    n_slices, _, n_columns = sinograms.shape
    size = size or n_columns
    center = default_center(n_columns) if center is None else float(center)
    b = torch.from_numpy(np.ascontiguousarray(sinograms, dtype=np.float64)).to(device)
    x = torch.zeros((n_slices, size, size), dtype=torch.float64, device=device)
    residual = b.clone()
    gradient = backproject(residual, theta, center, size)
    direction = gradient.clone()
    norm = (gradient**2).sum(dim=(1, 2))
    for iteration in range(iterations):
        projected = project(direction, theta, center, n_columns)
        step = norm / (projected**2).sum(dim=(1, 2)).clamp_min(1e-300)
        x += step[:, None, None] * direction
        residual -= step[:, None, None] * projected
        gradient = backproject(residual, theta, center, size)
        new_norm = (gradient**2).sum(dim=(1, 2))
        direction = gradient + (new_norm / norm.clamp_min(1e-300))[:, None, None] * direction
        norm = new_norm
        if progress:
            progress(iteration + 1)
    return x.float().cpu().numpy()
