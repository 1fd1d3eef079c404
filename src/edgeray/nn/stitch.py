"""Stitching predicted patches into one object on the scan's grid.

A network predicts each frame's object window on a grid centred on the probe (:mod:`edgeray.nn.physics`): its
pixel ``(i, j)`` is the object at ``p - (H/2, W/2) + (i, j)`` for a probe at ``p`` (object pixels). Patches are
moved by their sub-pixel remainder (bilinear) and added at their integer corner, weighted by where the probe
informs them. A frame fixes its patch only up to a constant phase, so each patch is first turned to agree with
what is already stitched where they overlap (``align_phase``).
"""

from __future__ import annotations

import numpy as np
import torch

from edgeray.ptycho.ops import patch_indices, split_positions


def centre_weights(frame_shape: tuple[int, int], floor: float = 1e-3) -> torch.Tensor:
    """``(H, W)`` stitching weights that favour patch centres (a separable Hann window, plus a small floor)."""
    wy = torch.hann_window(frame_shape[0] + 2, periodic=False, dtype=torch.float64)[1:-1]
    wx = torch.hann_window(frame_shape[1] + 2, periodic=False, dtype=torch.float64)[1:-1]
    return (wy[:, None] * wx[None, :] + floor).to(torch.float32)


def subpixel_shift(values: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    """``values`` ``(N, H, W)`` moved by ``fractions`` ``(N, 2)`` in ``[0, 1)`` pixels ``[y, x]`` (bilinear).

    Pixel ``(i, j)`` of the result is ``values`` at ``(i - fy, j - fx)``; what enters from outside is 0.
    Exact for values linear in ``y`` and ``x`` away from the first row and column.
    """
    fy = fractions[:, 0, None, None].to(torch.float32)
    fx = fractions[:, 1, None, None].to(torch.float32)
    zero_row = torch.zeros_like(values[:, :1])
    up = torch.cat([zero_row, values[:, :-1]], dim=1)  # values[i - 1, j]
    rows = (1 - fy) * values + fy * up
    zero_col = torch.zeros_like(rows[:, :, :1])
    left = torch.cat([zero_col, rows[:, :, :-1]], dim=2)  # rows[i, j - 1]
    return (1 - fx) * rows + fx * left


ALIGNMENTS = ("none", "phase")
ANCHORED, MAX_SWEEPS, TOLERANCE_RAD = 0.5, 50, 1e-3  # accumulate's defaults (and the live mosaic's)


def support(weights: torch.Tensor, fraction: float = 0.99) -> tuple[slice, slice]:
    """The smallest centred window of ``weights`` ``(H, W)`` that holds ``fraction`` of their sum (plus one pixel
    for the sub-pixel shift): stitching touches only those pixels."""
    height, width = weights.shape
    total = float(weights.sum())
    for half in range(1, max(height, width) // 2 + 1):
        rows = slice(max(height // 2 - half, 0), min(height // 2 + half, height))
        cols = slice(max(width // 2 - half, 0), min(width // 2 + half, width))
        if float(weights[rows, cols].sum()) >= fraction * total:
            break
    return (slice(max(rows.start - 1, 0), min(rows.stop + 1, height)),
            slice(max(cols.start - 1, 0), min(cols.stop + 1, width)))  # fmt: skip


def accumulate(
    numerator: torch.Tensor,
    coverage: torch.Tensor,
    patches: torch.Tensor,
    positions_px: torch.Tensor,
    weights: torch.Tensor,
    align: str = "phase",
    max_sweeps: int = MAX_SWEEPS,
    tolerance_rad: float = TOLERANCE_RAD,
    anchored: float = ANCHORED,
    fraction: float = 1.0,
    subpixel: bool = True,
    window: tuple[slice, slice] | None = None,
) -> None:
    """Add complex ``patches`` ``(N, H, W)`` of probes at ``positions_px`` ``(N, 2)`` ``[y, x]`` to a running sum.

    ``numerator`` ``(Y, X)`` complex64 holds ``sum(w * patch)`` and ``coverage`` ``(Y, X)`` float32 ``sum(w)``
    (both changed in place); ``weights`` ``(H, W)`` weigh a patch's pixels (only the centred window that holds
    ``fraction`` of their sum is touched: 0.99 of a focused probe's is 54 x 54 of 64 x 64).

    A frame fixes its patch only up to a constant phase: with ``align`` ``phase`` each patch is turned by the
    constant phase that best matches what is already there (``none``: plain averaging). Patches whose overlap with
    what is in place is less than ``anchored`` times their own weight (the first of a scan, or a batch that
    overlaps only itself) are then refined in sweeps against the sums with the whole batch in, each patch's own
    share left out (a power iteration of phase synchronization), until the largest change is below
    ``tolerance_rad``. ``subpixel`` False places patches at the nearest whole pixel (half the work; the
    live mosaic's choice, its image off by at most half a pixel locally). ``window``: the patch window to touch,
    when the caller has it (:func:`support` of ``weights`` and ``fraction``, computed once).
    """
    if align not in ALIGNMENTS:
        raise ValueError(f"align must be one of {ALIGNMENTS}, not {align!r}")
    rows, cols = window if window is not None else support(weights, fraction)
    frame_shape = tuple(patches.shape[-2:])
    n = len(patches)
    positions_px = positions_px.to(torch.float64)
    if not subpixel:
        positions_px = torch.floor(positions_px - torch.tensor(frame_shape) / 2 + 0.5) + torch.tensor(frame_shape) / 2
    corners, fractions = split_positions(positions_px, frame_shape)
    corners = corners + torch.tensor([rows.start, cols.start])
    size = (rows.stop - rows.start, cols.stop - cols.start)
    index = patch_indices(corners, size, numerator.shape[1]).reshape(n, -1)
    weights = weights[rows, cols].to(torch.float32).expand(n, -1, -1)
    values = patches[:, rows, cols].to(torch.complex64)
    if subpixel:
        weights, values = subpixel_shift(weights, fractions), subpixel_shift(values, fractions)
    weighted = (weights * values).reshape(n, -1)
    weights = weights.reshape(n, -1)
    flat_numerator, flat_coverage = numerator.view(-1), coverage.view(-1)
    loose = torch.ones(n, dtype=torch.bool)
    if align == "phase":
        overlap = torch.linalg.vecdot(weighted, flat_numerator.index_select(0, index.view(-1)).view(n, -1))
        weighted = weighted * torch.polar(torch.ones(n), torch.angle(overlap))[:, None]
        own = torch.linalg.vecdot(weighted, weighted).real
        loose = overlap.abs() < anchored * own  # too little in place to trust the turn alone
    flat_numerator.index_add_(0, index.view(-1), weighted.view(-1))
    flat_coverage.index_add_(0, index.view(-1), weights.reshape(-1))
    if align == "none" or n < 2 or not bool(loose.any()):
        return
    chosen = torch.nonzero(loose)[:, 0]
    synchronize(flat_numerator, index[chosen], weighted[chosen], max_sweeps, tolerance_rad)


def synchronize(
    flat_numerator: torch.Tensor, index: torch.Tensor, weighted: torch.Tensor, max_sweeps: int, tolerance_rad: float
) -> None:
    """Turn patches already added to ``flat_numerator`` (the running sum, flattened) to agree with the rest.

    ``index`` ``(n, P)`` are their flat object indices and ``weighted`` ``(n, P)`` complex their weighted values as
    added. In sweeps, each patch is turned by the phase that best matches the sum without its own share (a power
    iteration of phase synchronization), until the largest turn is below ``tolerance_rad``: on the CPU one patch
    after the other in a compiled kernel (:mod:`edgeray.nn.sync_kernel`), elsewhere all at once.
    """
    if flat_numerator.device.type == "cpu" and flat_numerator.dtype == torch.complex64:
        from edgeray.nn.sync_kernel import synchronize_sweeps

        values = weighted.to(torch.complex64).contiguous().numpy().copy()  # turned in the kernel
        synchronize_sweeps(flat_numerator.numpy(), index.contiguous().numpy(), values, max_sweeps, tolerance_rad)
        return
    n = len(weighted)
    for _ in range(max_sweeps):
        others = flat_numerator.index_select(0, index.reshape(-1)).view(n, -1) - weighted
        correction = torch.angle(torch.linalg.vecdot(weighted, others))
        turned = weighted * torch.polar(torch.ones_like(correction), correction)[:, None]
        flat_numerator.index_add_(0, index.reshape(-1), (turned - weighted).reshape(-1))
        weighted = turned
        if float(correction.abs().max()) < tolerance_rad:
            break


def mean_image(numerator: torch.Tensor, coverage: torch.Tensor, empty: complex = 1.0) -> torch.Tensor:
    """``numerator / coverage`` ``(Y, X)`` complex64, ``empty`` where nothing was added."""
    filled = coverage > 0
    obj = torch.where(filled, numerator / coverage.clamp_min(1e-30), torch.full_like(numerator, empty))
    return obj.to(torch.complex64)


def stitch(
    patches: torch.Tensor,
    positions_px: torch.Tensor,
    object_shape: tuple[int, int],
    weights: torch.Tensor | None = None,
    align: str = "phase",
    batch_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean of complex ``patches`` ``(N, H, W)`` placed at ``positions_px`` ``(N, 2)`` (probe centres).

    Patches are added in the given (scan) order, ``batch_size`` at a time, each aligned to what came before as
    ``align`` says (see :func:`accumulate`). Returns ``(object (Y, X) complex64, coverage (Y, X) float32)``; pixels no
    patch reaches are 1 (no sample) with coverage 0. Exact patches of one object give back that object wherever
    they reach (exactly for whole-pixel positions).
    """
    weights = centre_weights(tuple(patches.shape[-2:])) if weights is None else weights.cpu()
    numerator = torch.zeros(tuple(object_shape), dtype=torch.complex64)
    coverage = torch.zeros(tuple(object_shape), dtype=torch.float32)
    patches, positions_px = patches.cpu(), positions_px.cpu()
    for start in range(0, len(patches), batch_size):
        batch = slice(start, start + batch_size)
        accumulate(numerator, coverage, patches[batch], positions_px[batch], weights, align)
    return mean_image(numerator, coverage), coverage


def to_complex(amplitude: torch.Tensor, phase: torch.Tensor) -> torch.Tensor:
    """``amplitude * exp(i phase)`` as complex64, ``(N, 1, H, W)`` or ``(N, H, W)`` -> ``(N, H, W)``."""
    field = torch.polar(amplitude.float(), phase.float())
    return field.reshape(-1, *field.shape[-2:])


def as_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()
