"""Stitching predicted patches into one object on the scan's grid."""

from __future__ import annotations

import numpy as np
import torch

from edgeray.ptycho.ops import patch_indices, scatter_patches, split_positions


def centre_weights(frame_shape: tuple[int, int], floor: float = 1e-3) -> torch.Tensor:
    """``(H, W)`` stitching weights that favour patch centres (a separable Hann window, plus a small floor)."""
    wy = torch.hann_window(frame_shape[0] + 2, periodic=False, dtype=torch.float64)[1:-1]
    wx = torch.hann_window(frame_shape[1] + 2, periodic=False, dtype=torch.float64)[1:-1]
    return (wy[:, None] * wx[None, :] + floor).to(torch.float32)


def stitch(
    patches: torch.Tensor,
    positions_px: torch.Tensor,
    object_shape: tuple[int, int],
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of complex ``patches`` ``(N, H, W)`` placed at ``positions_px`` ``(N, 2)`` (probe centres).

    Returns ``(object (Y, X) complex64, coverage (Y, X) float32)``; pixels no patch reaches are 1 (no sample)
    with coverage 0. Exact patches of one object give back that object wherever they reach.
    """
    frame_shape = tuple(patches.shape[-2:])
    weights = centre_weights(frame_shape) if weights is None else weights
    weights = weights.to(patches.device)
    corners, _ = split_positions(positions_px, frame_shape)
    index = patch_indices(corners, frame_shape, object_shape[1])
    numerator = scatter_patches(patches * weights, index, object_shape)
    coverage = scatter_patches(weights.expand(len(patches), -1, -1).contiguous(), index, object_shape)
    obj = torch.where(coverage > 0, numerator / coverage.clamp_min(1e-30), torch.ones_like(numerator))
    return obj.to(torch.complex64), coverage


def to_complex(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``amplitude * exp(i phase)`` as complex64, ``(N, 1, H, W)`` or ``(N, H, W)`` -> ``(N, H, W)``."""
    field = torch.polar(amplitude.float(), phase.float())
    return field.reshape(-1, *field.shape[-2:])


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
