"""Plans: which rank processes which sample of each global batch, and what each rank's buffer keeps or reads.

A plan is computed from the schedule alone (no data), identically on every rank, for one of four policies:

- ``solar``: epochs reordered for reuse across boundaries; each sample given to a rank that already buffers it,
  within ``imbalance`` samples of the even split; Belady's eviction (the buffered sample whose next use on that
  rank is farthest goes first; exact, since the assignment is fixed first and then each rank knows its future);
  and chunk-aware reads: HDF5 reads a chunk (``rows_per_chunk`` samples) whole to deliver any of its samples, so a
  miss keeps the chunk's other samples that will be needed sooner than what the buffer holds;
- ``lru``: the standard loader's even split (rank ``r`` takes ``batch[r::R]``), least-recently-used eviction;
- ``frequency``: NoPFS-style: the even split, and each rank keeps the samples it will read most often, loaded on
  first use and never evicted;
- ``none``: no buffer: every access is a read.

A rank's plan is a list of steps ``(samples, reads, store, evict)``: its samples of the global batch (in order),
which of them are not buffered (``reads``, bool), the sample ids to keep in the buffer after the step's reads
(``store``; for SOLAR these may include chunk neighbours outside the batch) and the ids to drop first (``evict``).
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field

import numpy as np

from edgeray.loader.schedule import Schedule, order_epochs

POLICIES = ("solar", "lru", "frequency", "none")
NEVER = np.iinfo(np.int64).max
EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class RankPlan:
    """One rank's part (see the module docstring for ``steps``) and its counts: ``hits`` (accesses served by the
    buffer), ``reads`` (accesses that were not), ``chunk_reads`` (chunks the storage delivers), ``peak_buffered``."""

    rank: int
    steps: list = field(default_factory=list)
    hits: int = 0
    reads: int = 0
    chunk_reads: int = 0
    peak_buffered: int = 0


class BeladyBuffer:
    """A buffer of ``capacity`` samples that keeps the ones needed soonest (next use given by the caller)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.next_use: dict[int, int] = {}
        self._heap: list[tuple[int, int]] = []  # (-next use, sample); stale entries skipped

    def __contains__(self, sample: int) -> bool:
        return sample in self.next_use

    def __len__(self) -> int:
        return len(self.next_use)

    def touch(self, sample: int, use: int) -> None:
        """A buffered sample was used; ``use`` is its next use."""
        self.next_use[sample] = use
        heapq.heappush(self._heap, (-use, sample))

    def _farthest(self) -> tuple[int, int] | None:
        while self._heap and self.next_use.get(self._heap[0][1]) != -self._heap[0][0]:
            heapq.heappop(self._heap)
        return (-self._heap[0][0], self._heap[0][1]) if self._heap else None

    def offer(self, candidates: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        """Keep what is worth keeping of ``candidates`` ``[(next use, sample)]`` (not buffered): each goes in if
        there is room or if it is needed sooner than the farthest buffered sample, which then goes out.
        Returns ``(stored, evicted)``."""
        stored, evicted = [], []
        for use, sample in sorted(candidates):
            if use == NEVER or self.capacity == 0:
                break
            if len(self.next_use) >= self.capacity:
                farthest = self._farthest()
                if farthest is None or farthest[0] <= use:
                    break  # sorted: every later candidate is needed later still
                heapq.heappop(self._heap)
                del self.next_use[farthest[1]]
                evicted.append(farthest[1])
            self.touch(sample, use)
            stored.append(sample)
        return stored, evicted


def chunk_members(samples: np.ndarray, rows_per_chunk: int, n_samples: int) -> tuple[np.ndarray, int]:
    """All sample ids in the chunks that hold ``samples``, and how many chunks that is."""
    if rows_per_chunk <= 1 or len(samples) == 0:
        return np.unique(samples), len(np.unique(samples))
    chunks = np.unique(samples // rows_per_chunk)
    members = (chunks[:, None] * rows_per_chunk + np.arange(rows_per_chunk)[None, :]).ravel()
    return members[members < n_samples], len(chunks)


def even_split(batch: np.ndarray, world_size: int) -> list[np.ndarray]:
    """The standard distributed split: rank ``r`` takes ``batch[r::world_size]``."""
    return [batch[r::world_size] for r in range(world_size)]


def balanced_split(
    batch: np.ndarray, holder: np.ndarray, world_size: int, imbalance: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Give each sample to the rank that buffers it, keeping every rank within ``imbalance`` of the even share.

    ``holder[sample]`` is the rank that buffers it before this step, or -1. A rank takes its held samples up to
    ``share + imbalance``; the rest, and the samples nobody holds, go to the ranks furthest below their share; if a
    rank would still fall more than ``imbalance`` below, samples move to it from the largest shares.
    """
    n = len(batch)
    base = np.full(world_size, n // world_size)
    base[: n % world_size] += 1
    high, low = base + imbalance, np.maximum(base - imbalance, 0)
    owners = holder[batch]
    assigned: list[list[int]] = []
    free_parts = [batch[owners < 0]]
    for r in range(world_size):
        mine = batch[owners == r]
        assigned.append(mine[: high[r]].tolist())
        free_parts.append(mine[high[r] :])
    free = np.concatenate(free_parts)
    rng.shuffle(free)
    sizes = np.array([len(a) for a in assigned])
    room = high - sizes
    # fill the deficits below the even share first, then the room above it, rank by rank
    take = np.minimum(np.maximum(base - sizes, 0), room)
    extra = len(free) - take.sum()
    if extra < 0:  # fewer free samples than deficits: the most deficient ranks first
        take = np.zeros(world_size, dtype=np.int64)
        for _ in range(len(free)):
            r = int(np.argmin(sizes + take - base))
            take[r] += 1
    else:
        spare = room - take
        while extra > 0:
            r = int(np.argmax(spare))
            step = min(extra, max(int(spare[r]) // 2, 1))
            take[r] += step
            spare[r] -= step
            extra -= step
    cursor = 0
    for r in range(world_size):
        assigned[r].extend(free[cursor : cursor + take[r]].tolist())
        cursor += int(take[r])
    for r in range(world_size):  # no rank left too small: move samples from the largest
        while len(assigned[r]) < low[r]:
            donor = max(range(world_size), key=lambda q: len(assigned[q]) - base[q])
            assigned[r].append(assigned[donor].pop())
    return [np.asarray(a, dtype=np.int64) for a in assigned]


def _rank_uses(sequence: list[np.ndarray]) -> dict[int, np.ndarray]:
    """For one rank's access sequence: each sample's steps of use, sorted."""
    if not sequence:
        return {}
    flat = np.concatenate(sequence)
    steps = np.repeat(np.arange(len(sequence)), [len(s) for s in sequence])
    order = np.lexsort((steps, flat))
    flat, steps = flat[order], steps[order]
    bounds = np.flatnonzero(np.diff(flat)) + 1
    return {int(s[0]): u for s, u in zip(np.split(flat, bounds), np.split(steps, bounds), strict=True)}


def _solar_rank(sequence: list[np.ndarray], capacity: int, n_samples: int, rows_per_chunk: int) -> RankPlan:
    """Belady with chunk-aware reads on one rank's own access sequence."""
    uses = _rank_uses(sequence)

    def next_use(sample: int, step: int) -> int:
        steps = uses.get(sample)
        if steps is None:
            return NEVER
        i = bisect_right(steps, step)
        return int(steps[i]) if i < len(steps) else NEVER

    buffer = BeladyBuffer(capacity)
    plan = RankPlan(0)
    for t, samples in enumerate(sequence):
        is_read = np.array([s not in buffer for s in samples.tolist()], dtype=bool)
        for sample in samples[~is_read].tolist():
            buffer.touch(sample, next_use(sample, t))
        misses = samples[is_read]
        members, n_chunks = chunk_members(misses, rows_per_chunk, n_samples)
        candidates = [(next_use(s, t), s) for s in members.tolist() if s not in buffer]
        stored, evicted = buffer.offer(candidates)
        plan.steps.append((samples, is_read, np.asarray(stored, np.int64), np.asarray(evicted, np.int64)))
        plan.hits += int((~is_read).sum())
        plan.reads += int(is_read.sum())
        plan.chunk_reads += n_chunks
        plan.peak_buffered = max(plan.peak_buffered, len(buffer))
    return plan


def _lru_rank(sequence: list[np.ndarray], capacity: int, rows_per_chunk: int, n_samples: int) -> RankPlan:
    buffered: OrderedDict[int, None] = OrderedDict()
    plan = RankPlan(0)
    for samples in sequence:
        is_read = np.zeros(len(samples), dtype=bool)
        stored, evicted = [], []
        for j, sample in enumerate(samples.tolist()):
            if sample in buffered:
                buffered.move_to_end(sample)
                continue
            is_read[j] = True
            if capacity == 0:
                continue
            if len(buffered) >= capacity:
                evicted.append(buffered.popitem(last=False)[0])
            buffered[sample] = None
            stored.append(sample)
        plan.steps.append((samples, is_read, np.asarray(stored, np.int64), np.asarray(evicted, np.int64)))
        plan.hits += int((~is_read).sum())
        plan.reads += int(is_read.sum())
        plan.chunk_reads += chunk_members(samples[is_read], rows_per_chunk, n_samples)[1]
        plan.peak_buffered = max(plan.peak_buffered, len(buffered))
    return plan


def _frequency_rank(sequence: list[np.ndarray], capacity: int, n_samples: int, rows_per_chunk: int) -> RankPlan:
    counts = np.bincount(np.concatenate(sequence), minlength=n_samples) if sequence else np.zeros(n_samples)
    keep = set(np.argsort(-counts, kind="stable")[:capacity].tolist()) if capacity else set()
    buffered: set[int] = set()
    plan = RankPlan(0)
    for samples in sequence:
        is_read = np.array([s not in buffered for s in samples.tolist()], dtype=bool)
        stored = [s for s in samples[is_read].tolist() if s in keep]
        buffered.update(stored)
        plan.steps.append((samples, is_read, np.asarray(stored, np.int64), EMPTY))
        plan.hits += int((~is_read).sum())
        plan.reads += int(is_read.sum())
        plan.chunk_reads += chunk_members(samples[is_read], rows_per_chunk, n_samples)[1]
        plan.peak_buffered = len(buffered)
    return plan


def _assign(schedule: Schedule, world_size: int, capacity: int, imbalance: int, rows_per_chunk: int, rng):
    """SOLAR's assignment: each global batch split by :func:`balanced_split` against an estimate of every rank's
    buffer (Belady by the sample's next use anywhere, chunk-aware), so that held samples stay where they are."""
    n = schedule.n_samples
    holder = np.full(n, -1, dtype=np.int64)  # the rank that last stored each sample
    position = np.empty((schedule.epochs, n), dtype=np.int64)
    for epoch in range(schedule.epochs):
        position[epoch, schedule.permutations[epoch]] = np.arange(n) // schedule.batch_size
    order, bpe = schedule.epoch_order, schedule.batches_per_epoch
    buffers = [BeladyBuffer(capacity) for _ in range(world_size)]
    sequences: list[list[np.ndarray]] = [[] for _ in range(world_size)]
    for k, epoch in enumerate(order):
        following = order[k + 1] if k + 1 < len(order) else None
        for b in range(bpe):

            def next_global(ids: np.ndarray, epoch=epoch, following=following, k=k, b=b) -> np.ndarray:
                here = position[epoch, ids]
                later = NEVER if following is None else (k + 1) * bpe + position[following, ids]
                return np.where(here > b, k * bpe + here, later)

            split = balanced_split(schedule.batch(epoch, b), holder, world_size, imbalance, rng)
            for r, samples in enumerate(split):
                sequences[r].append(samples)
                buffer = buffers[r]
                held = np.array([s in buffer for s in samples.tolist()], dtype=bool)
                for sample, use in zip(samples[held].tolist(), next_global(samples[held]).tolist(), strict=True):
                    buffer.touch(sample, use)
                members, _ = chunk_members(samples[~held], rows_per_chunk, n)
                members = np.array([s for s in members.tolist() if s not in buffer], dtype=np.int64)
                stored, evicted = buffer.offer(list(zip(next_global(members).tolist(), members.tolist(), strict=True)))
                for sample in evicted:
                    if holder[sample] == r:
                        holder[sample] = -1
                holder[np.asarray(stored, dtype=np.int64)] = r
    return sequences


def make_plans(
    schedule: Schedule,
    world_size: int,
    capacity: int,
    policy: str = "solar",
    imbalance: int | None = None,
    seed: int = 0,
    rows_per_chunk: int = 1,
) -> list[RankPlan]:
    """Every rank's plan for ``schedule`` with ``capacity`` samples of buffer per rank.

    ``imbalance``: how many samples a rank's share of a global batch may differ from the even split (SOLAR;
    default 1/8 of the even share, at least 1). ``rows_per_chunk``: samples per HDF5 chunk of the file (SOLAR
    reads whole chunks and keeps the useful neighbours; every policy's ``chunk_reads`` counts chunks).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
    if world_size <= 0 or capacity < 0:
        raise ValueError(f"world_size must be positive and capacity non-negative, got {world_size}, {capacity}")
    if policy == "solar":
        order_epochs(schedule, capacity * world_size)
    else:
        schedule.epoch_order = list(range(schedule.epochs))
    imbalance = max(1, schedule.batch_size // world_size // 8) if imbalance is None else imbalance
    rng = np.random.default_rng(seed)
    if policy == "solar" and world_size > 1:
        sequences = _assign(schedule, world_size, capacity, imbalance, rows_per_chunk, rng)
    else:
        sequences = [[] for _ in range(world_size)]
        for epoch, b in schedule.steps():
            for r, samples in enumerate(even_split(schedule.batch(epoch, b), world_size)):
                sequences[r].append(samples)
    plans = []
    for r in range(world_size):
        if policy == "solar":
            plan = _solar_rank(sequences[r], capacity, schedule.n_samples, rows_per_chunk)
        elif policy == "lru":
            plan = _lru_rank(sequences[r], capacity, rows_per_chunk, schedule.n_samples)
        elif policy == "frequency":
            plan = _frequency_rank(sequences[r], capacity, schedule.n_samples, rows_per_chunk)
        else:
            plan = _lru_rank(sequences[r], 0, rows_per_chunk, schedule.n_samples)
        plan.rank = r
        plans.append(plan)
    return plans


def belady_hits(plan: RankPlan, capacity: int, n_samples: int) -> int:
    """Hits of the optimal policy (sample by sample, no chunk neighbours) on this rank's own access sequence."""
    return _solar_rank([step[0] for step in plan.steps], capacity, n_samples, 1).hits
