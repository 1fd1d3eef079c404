"""Phase synchronization of stitched patches as one compiled kernel (numba), for :func:`edgeray.nn.stitch.synchronize`.

The patches are first put back one after the other, each turned to what is in place; then each sweep turns them
one after the other (Gauss-Seidel), each by the phase that best matches the running sum without its own share, the
turn applied to the sum at once. A chain of patches (a raster's first row at a scan's start) agrees after a few
sweeps, where turning them all at once (Jacobi) moved the phase about one patch per sweep and used all 50 (67 ms
for the first batch of a raster scan, on the stream's path). The kernel releases the interpreter while it runs.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

NOTHING_IN_PLACE = 1e-4  # an overlap below this fraction of a patch's own power is taken as none


@njit(cache=True, nogil=True)
def synchronize_sweeps(
    flat_numerator: np.ndarray, index: np.ndarray, weighted: np.ndarray, max_sweeps: int, tolerance_rad: float
) -> int:
    """Turn the patches ``weighted`` ``(n, P)`` complex64 (their weighted values as added at flat ``index``
    ``(n, P)`` int64 of ``flat_numerator``) to agree with the rest; both change in place. Returns the sweeps made
    (until the largest turn of a sweep is below ``tolerance_rad``)."""
    n, size = weighted.shape
    # a start that is nearly there: the patches taken out, then put back one after the other, each turned to what
    # is in place (the rest of the mosaic and the patches put back before it); a chain agrees after this pass
    for k in range(n):
        for p in range(size):
            flat_numerator[index[k, p]] -= weighted[k, p]
    for k in range(n):
        dot = 0j
        own = 0.0
        for p in range(size):
            dot += np.conj(weighted[k, p]) * flat_numerator[index[k, p]]
            own += abs(weighted[k, p]) ** 2
        magnitude = abs(dot)
        # nothing in place (what is left where patches were taken out is float32 round-off): the patch stays as is
        turn = dot / magnitude if magnitude > NOTHING_IN_PLACE * own else 1.0 + 0j
        for p in range(size):
            weighted[k, p] = weighted[k, p] * turn
            flat_numerator[index[k, p]] += weighted[k, p]
    for sweep in range(max_sweeps):
        largest = 0.0
        for k in range(n):
            dot = 0j
            own = 0.0
            for p in range(size):
                value = weighted[k, p]
                dot += np.conj(value) * (flat_numerator[index[k, p]] - value)
                own += abs(value) ** 2
            magnitude = abs(dot)
            if magnitude <= NOTHING_IN_PLACE * own:  # alone: round-off is no phase to turn to
                continue
            turn = dot / magnitude
            largest = max(largest, abs(math.atan2(turn.imag, turn.real)))
            for p in range(size):
                value = weighted[k, p]
                turned = value * turn
                flat_numerator[index[k, p]] += turned - value
                weighted[k, p] = turned
        if largest < tolerance_rad:
            return sweep + 1
    return max_sweeps


def warm_up() -> None:
    """Compile the kernel (or load it from numba's cache) now, not on a scan's first batch."""
    synchronize_sweeps(np.zeros(4, np.complex64), np.zeros((1, 1), np.int64), np.ones((1, 1), np.complex64), 1, 1e-3)
