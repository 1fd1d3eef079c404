"""Scan paths: where the probe visits the object, in object pixels."""

from __future__ import annotations

import numpy as np

SCANS = ("spiral", "raster", "concentric")


def raster_scan(
    n_positions: int, step_px: float, jitter_px: float = 0.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """A square raster of ``n_positions`` points ``step_px`` apart, each moved by uniform jitter.

    Jitter (``+-jitter_px``) breaks the periodicity that gives raster scans their grid artifacts.
    Returns ``(n, 2)`` float64 offsets ``[y, x]`` centred on 0, in pixels.
    """
    side = int(np.ceil(np.sqrt(n_positions)))
    iy, ix = np.divmod(np.arange(n_positions), side)
    offsets = np.stack([iy, ix], axis=1).astype(np.float64) * step_px
    if jitter_px:
        rng = rng or np.random.default_rng(0)
        offsets += rng.uniform(-jitter_px, jitter_px, size=offsets.shape)
    return offsets - offsets.mean(axis=0)


def fermat_spiral(n_positions: int, step_px: float) -> np.ndarray:
    """Fermat spiral (golden-angle) scan with mean nearest-neighbour distance about ``step_px``.

    Point ``k`` sits at radius ``c sqrt(k)``, angle ``k * 137.5 deg``; each point covers an area ``pi c^2``,
    so ``c = step / sqrt(pi)``. Returns ``(n, 2)`` float64 ``[y, x]`` in pixels.
    """
    k = np.arange(n_positions)
    c = step_px / np.sqrt(np.pi)
    radius = c * np.sqrt(k)
    angle = k * np.pi * (3 - np.sqrt(5))
    return np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)


def concentric_scan(n_positions: int, step_px: float) -> np.ndarray:
    """Rings ``step_px`` apart, ring ``r`` holding ``round(2 pi r)`` points; the first ``n_positions``.

    Returns ``(n, 2)`` float64 ``[y, x]`` in pixels.
    """
    counts = [1]
    while sum(counts) < n_positions:
        counts.append(round(2 * np.pi * len(counts)))
    ring = np.repeat(np.arange(len(counts)), counts)[:n_positions]
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    within = np.arange(n_positions) - first[ring]
    angle = 2 * np.pi * within / np.asarray(counts)[ring]
    radius = ring * step_px
    return np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1)


def make_scan(
    kind: str,
    n_positions: int,
    step_px: float,
    jitter_px: float = 0.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Offsets ``(n, 2)`` ``[y, x]`` (pixels, centred on 0) for a scan ``kind`` in :data:`SCANS`."""
    if n_positions < 1 or step_px <= 0:
        raise ValueError(f"need n_positions >= 1 and step_px > 0, got {n_positions}, {step_px}")
    if kind == "raster":
        return raster_scan(n_positions, step_px, jitter_px, rng)
    if kind == "spiral":
        return fermat_spiral(n_positions, step_px)
    if kind == "concentric":
        return concentric_scan(n_positions, step_px)
    raise ValueError(f"unknown scan {kind!r}; choose one of {', '.join(SCANS)}")


def place_in_object(
    offsets_px: np.ndarray, frame_shape: tuple[int, int], margin_px: int = 4
) -> tuple[np.ndarray, tuple[int, int]]:
    """Probe-centre positions in object pixels and the object shape that holds every frame with margin.

    A frame at position ``p`` covers object pixels ``p - H/2 ... p + H/2 - 1`` (and likewise in x).

    Returns:
        ``positions_px``: ``(n, 2)`` float64 ``[y, x]``; ``object_shape``: ``(Y, X)``.
    """
    half = np.asarray(frame_shape) / 2
    low = offsets_px.min(axis=0) - half - margin_px
    high = offsets_px.max(axis=0) + half + margin_px
    shape = tuple(int(s) for s in np.ceil(high - low) + 1)
    # Centre the scan's bounding box in the object.
    positions = offsets_px - (offsets_px.min(axis=0) + offsets_px.max(axis=0)) / 2 + np.asarray(shape) / 2
    return positions, shape
