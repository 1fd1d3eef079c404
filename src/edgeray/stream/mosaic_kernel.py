"""The live mosaic's inner loop as one compiled kernel (numba): align each patch's constant phase and add it.

:func:`edgeray.nn.stitch.accumulate` does the same with about ten tensor operations, each a pass over the batch's
windows (gathers, products, scatter-adds): at 2 kHz that was 0.3-0.4 of a core. Here each patch is read twice
(its overlap with what is in place, then its weighted addition) without temporaries. The results equal
``accumulate``'s (``align`` ``phase`` or ``none``, whole-pixel placement) to float32 rounding; the rare patches
that overlap too little to be turned alone are handed back for ``accumulate``'s synchronization sweeps.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def add_patches(
    numerator: np.ndarray,
    coverage: np.ndarray,
    values: np.ndarray,
    corners: np.ndarray,
    weights: np.ndarray,
    align_phase: bool,
    anchored: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Add complex ``values`` ``(N, h, w)`` with ``weights`` ``(h, w)`` at top-left ``corners`` ``(N, 2)`` int64.

    ``numerator`` ``(Y, X)`` complex64 (``sum(w * value)``) and ``coverage`` ``(Y, X)`` float32 (``sum(w)``) change
    in place. With ``align_phase`` each patch is first turned by the constant phase that best matches the
    numerator as it was before this batch. Returns ``(turns (N,) complex64, loose (N,) bool)``: the unit turn of
    each patch and whether its overlap was below ``anchored`` times its own weight (too little to trust).
    """
    n, height, width = values.shape
    turns = np.ones(n, dtype=np.complex64)
    loose = np.zeros(n, dtype=np.bool_)
    if align_phase:
        for k in range(n):
            row, col = corners[k, 0], corners[k, 1]
            overlap = 0j
            own = 0.0
            for i in range(height):
                for j in range(width):
                    weighted = weights[i, j] * values[k, i, j]
                    overlap += np.conj(weighted) * numerator[row + i, col + j]
                    own += weighted.real * weighted.real + weighted.imag * weighted.imag
            size = abs(overlap)
            if size > 0:
                turns[k] = overlap / size
            loose[k] = size < anchored * own
    for k in range(n):
        row, col = corners[k, 0], corners[k, 1]
        turn = turns[k]
        for i in range(height):
            for j in range(width):
                numerator[row + i, col + j] += weights[i, j] * values[k, i, j] * turn
                coverage[row + i, col + j] += weights[i, j]
    return turns, loose


def warm_up() -> None:
    """Compile the kernel (or load it from numba's cache) now, not on a scan's first batch (~1-3 s)."""
    from edgeray.nn.sync_kernel import warm_up as warm_up_synchronization

    add_patches(np.zeros((2, 2), np.complex64), np.zeros((2, 2), np.float32), np.zeros((1, 1, 1), np.complex64),
                np.zeros((1, 2), np.int64), np.ones((1, 1), np.float32), True, 0.5)  # fmt: skip
    warm_up_synchronization()
