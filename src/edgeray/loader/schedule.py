"""The schedule: every epoch's shuffled order, computed once and identical on every rank, and its global batches.

A standard shuffled loader draws one permutation per epoch and cuts it into global batches of ``batch_size``
(the last one smaller unless ``drop_last``). The schedule keeps exactly those batches; what SOLAR may change is
the order in which the epochs are processed (:func:`order_epochs`), never which samples share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Schedule:
    """Global batches of every epoch.

    Attributes:
        n_samples, epochs, batch_size, seed: as a shuffled loader takes them (``batch_size`` is the global batch).
        drop_last: drop each epoch's last incomplete batch.
        permutations: ``(epochs, n_samples)`` int64, epoch ``e``'s order (``numpy.random.default_rng(seed)``).
        epoch_order: the order in which epochs are processed (default 0, 1, 2, ...).
    """

    n_samples: int
    epochs: int
    batch_size: int
    seed: int = 0
    drop_last: bool = False
    permutations: np.ndarray = field(init=False, repr=False)
    epoch_order: list[int] = field(init=False)

    def __post_init__(self) -> None:
        if self.n_samples <= 0 or self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError(f"n_samples, epochs and batch_size must be positive, got {self.n_samples}, "
                             f"{self.epochs}, {self.batch_size}")  # fmt: skip
        rng = np.random.default_rng(self.seed)
        self.permutations = np.stack([rng.permutation(self.n_samples) for _ in range(self.epochs)])
        self.epoch_order = list(range(self.epochs))

    @property
    def batches_per_epoch(self) -> int:
        full, rest = divmod(self.n_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def batch(self, epoch: int, index: int) -> np.ndarray:
        """Sample ids of global batch ``index`` of epoch ``epoch`` (as the reference loader has it)."""
        start = index * self.batch_size
        return self.permutations[epoch, start : start + self.batch_size]

    def steps(self) -> list[tuple[int, int]]:
        """``(epoch, batch index)`` of every training step, in processing order."""
        return [(epoch, b) for epoch in self.epoch_order for b in range(self.batches_per_epoch)]


def order_epochs(schedule: Schedule, window: int) -> list[int]:
    """Greedy epoch order that maximizes reuse across epoch boundaries: after each epoch, take next the remaining
    epoch whose first ``window`` samples overlap most with the current epoch's last ``window`` (what a buffer of
    that many samples still holds). Sets ``schedule.epoch_order`` and returns it; epoch 0 stays first."""
    window = max(1, min(window, schedule.n_samples))
    remaining = list(range(1, schedule.epochs))
    order = [0]
    while remaining:
        tail = np.zeros(schedule.n_samples, dtype=bool)
        tail[schedule.permutations[order[-1], -window:]] = True
        overlaps = [int(tail[schedule.permutations[e, :window]].sum()) for e in remaining]
        order.append(remaining.pop(int(np.argmax(overlaps))))
    schedule.epoch_order = order
    return order
