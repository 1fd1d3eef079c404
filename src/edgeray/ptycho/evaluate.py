"""Scoring a reconstruction against a simulation's ground truth, where the scan lit the object well."""

from __future__ import annotations

import numpy as np

from edgeray.io import GroundTruth, Product
from edgeray.metrics import compare
from edgeray.sim.ptycho import frame_windows


def illumination_mask(truth: GroundTruth, fraction: float = 0.3) -> np.ndarray:
    """Where the scan lit the ground-truth object well: summed probe intensity >= ``fraction`` of its maximum.

    Returns ``(Y, X)`` bool on the ground truth's grid (positions rounded to whole pixels).
    """
    power = (np.abs(truth.probe) ** 2).sum(axis=0)
    rows, cols = frame_windows(truth.positions_px, power.shape)
    flat = (rows * truth.object.shape[1] + cols).reshape(-1)
    weights = np.broadcast_to(power, (len(rows), *power.shape)).reshape(-1)
    lit = np.bincount(flat, weights, minlength=truth.object.size).reshape(truth.object.shape)
    return lit >= fraction * lit.max()


def scanned_region_pair(
    obj: np.ndarray,
    truth: GroundTruth,
    positions_m: np.ndarray,
    pixel_size_m: tuple[float, float],
    object_center_m: tuple[float, float],
    mask: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(reconstruction, reference, mask)`` cropped to where the scan lit the ground truth well.

    ``obj`` ``(Y, X)`` lies on a grid whose centre is at ``object_center_m``; it is offset from the ground truth's
    grid by a whole number of pixels, found from the positions. ``mask`` (default :func:`illumination_mask`) may be
    passed in when scoring many reconstructions of one scan.
    """
    pixel = np.asarray(pixel_size_m)
    origin = np.asarray(object_center_m) - np.asarray(obj.shape[-2:]) / 2 * pixel
    ours = (positions_m - origin) / pixel  # probe centres in our object pixels
    offset = np.round((ours - truth.positions_px).mean(axis=0)).astype(int)
    mask = illumination_mask(truth) if mask is None else mask
    rows, cols = np.nonzero(mask)
    low = np.maximum(np.array([rows.min(), cols.min()]), -offset)
    high = np.minimum(np.array([rows.max(), cols.max()]) + 1, np.asarray(obj.shape[-2:]) - offset)
    reference = truth.object[low[0] : high[0], low[1] : high[1]]
    recon = obj[low[0] + offset[0] : high[0] + offset[0], low[1] + offset[1] : high[1] + offset[1]]
    return recon, reference, mask[low[0] : high[0], low[1] : high[1]]


def compare_on_scanned_region(product: Product, truth: GroundTruth, positions_m: np.ndarray) -> dict:
    """Metrics of ``product``'s object against ``truth`` where the scan lit the object well.

    Both objects are cropped by :func:`scanned_region_pair`, aligned (sub-pixel shift, phase ramp, complex
    scale, weighted by the mask) and compared with :func:`edgeray.metrics.compare`; the relative error counts
    only masked pixels.
    """
    recon, reference, mask = scanned_region_pair(
        product.object[0], truth, positions_m, product.object_pixel_size_m, product.object_center_m
    )
    return compare(recon, reference, weights=mask)
