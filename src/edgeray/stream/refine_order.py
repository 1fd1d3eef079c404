"""Which frames the live refinement updates next: those no update has seen yet, newest first; then sweeps over
every frame kept, in a new random order each sweep (as the engines draw their batches)."""

from __future__ import annotations

import numpy as np


class UpdateOrder:
    """The order of a :class:`~edgeray.stream.refine.LiveRefiner`'s updates over its kept frames.

    Frames are numbered as stored (frame ``k`` in slot ``k % capacity``); the newest ``capacity`` are kept.

    Args:
        capacity: frames kept; batch_size: frames per update; seed: the sweeps' orders.
    """

    def __init__(self, capacity: int, batch_size: int, seed: int = 0):
        self.capacity, self.batch_size = capacity, batch_size
        self.unseen: list[list[int]] = []  # [first, stop) runs of stored frames no update has seen, oldest first
        self.sweep: np.ndarray | None = None  # this sweep's order of the frames kept (stored numbers)
        self.sweep_next = 0
        self.rng = np.random.default_rng(seed)

    def stored(self, first: int, stop: int) -> None:
        """Frames ``[first, stop)`` were just stored (not yet seen by an update)."""
        if self.unseen and self.unseen[-1][1] == first:
            self.unseen[-1][1] = stop
        else:
            self.unseen.append([first, stop])

    def next(self, stored: int) -> np.ndarray | None:
        """Stored numbers of the next update's frames (``stored``: frames stored so far), or None before any."""
        newest = stored - 1
        oldest = max(0, stored - self.capacity)
        if newest < 0:
            return None
        size = self.batch_size
        self.unseen = [[max(a, oldest), b] for a, b in self.unseen if b > oldest]  # overwritten frames are gone
        if self.unseen:
            run = self.unseen[-1]
            first = max(run[0], run[1] - size)
            chosen = np.arange(run[1] - 1, first - 1, -1)
            run[1] = first
            if run[1] <= run[0]:
                self.unseen.pop()
            return chosen
        if self.sweep is None or self.sweep_next >= len(self.sweep):
            self.sweep = oldest + self.rng.permutation(newest + 1 - oldest)
            self.sweep_next = 0
        chosen = self.sweep[self.sweep_next : self.sweep_next + size]
        self.sweep_next += size
        return chosen[chosen >= oldest]
