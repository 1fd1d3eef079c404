"""Plans: which rank processes which sample of each global batch, and what each rank's buffer keeps or reads.

A plan is computed from the schedule alone (no data), identically on every rank, for one of four policies:

- ``solar``: epochs reordered for reuse across boundaries; each sample given to a rank that already buffers it,
  within ``imbalance`` samples of the even split; eviction of the sample whose next use on that rank is farthest
  (Belady, exact: the assignment is fixed first, then each rank's own future is known);
- ``lru``: the standard loader's even split (rank ``r`` takes ``batch[r::R]``), least-recently-used eviction;
- ``frequency``: NoPFS-style: the even split, and each rank keeps the samples it will read most often, loaded on
  first use and never evicted;
- ``none``: no buffer: every access is a read.

``simulate`` returns the counts; :class:`RankPlan` carries what a rank's loader executes.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

import numpy as np

from edgeray.loader.schedule import Schedule, order_epochs

POLICIES = ("solar", "lru", "frequency", "none")
NEVER = np.iinfo(np.int64).max


@dataclass
class RankPlan:
    """One rank's part: per step, its samples (in batch order), which are reads, and buffer instructions.

    ``steps[t] = (samples, reads, store, evict)``: ``samples (n_t,)`` ids; ``reads (n_t,)`` bool (not in the
    buffer); ``store (n_t,)`` bool (keep this read in the buffer); ``evict (n_t,)`` id to drop first, or -1.
    """

    rank: int
    steps: list = field(default_factory=list)
    hits: int = 0
    reads: int = 0
    peak_buffered: int = 0


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


def _belady(sequence: list[np.ndarray], capacity: int, n_samples: int) -> tuple[list, int, int, int]:
    """Optimal caching of one rank's access ``sequence`` (one array of ids per step) with ``capacity`` slots:
    a read is kept only if it will be used again sooner than the farthest-used buffered sample, which it
    then replaces. Returns ``(steps, hits, reads, peak)`` with the per-step instructions of :class:`RankPlan`."""
    flat = np.concatenate(sequence) if sequence else np.zeros(0, np.int64)
    step_of = np.repeat(np.arange(len(sequence)), [len(s) for s in sequence])
    next_use = np.full(len(flat), NEVER, dtype=np.int64)
    last_seen = np.full(n_samples, NEVER, dtype=np.int64)
    for i in range(len(flat) - 1, -1, -1):  # the step at which each access's sample is next needed
        next_use[i] = last_seen[flat[i]]
        last_seen[flat[i]] = step_of[i]
    buffered: dict[int, int] = {}  # sample -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, sample), stale entries skipped
    steps, hits, reads, peak, position = [], 0, 0, 0, 0
    for samples in sequence:
        k = len(samples)
        is_read = np.zeros(k, dtype=bool)
        store = np.zeros(k, dtype=bool)
        evict = np.full(k, -1, dtype=np.int64)
        for j, sample in enumerate(samples.tolist()):
            use = int(next_use[position + j])
            if sample in buffered:  # a sample never needed again stays until it is the first to go
                hits += 1
                buffered[sample] = use
                heapq.heappush(heap, (-use, sample))
                continue
            reads += 1
            is_read[j] = True
            if use == NEVER or capacity == 0:
                continue
            if len(buffered) < capacity:
                buffered[sample] = use
                heapq.heappush(heap, (-use, sample))
                store[j] = True
                continue
            while heap and buffered.get(heap[0][1]) != -heap[0][0]:
                heapq.heappop(heap)
            if heap and -heap[0][0] > use:  # the farthest buffered use is later than this one: swap
                _, victim = heapq.heappop(heap)
                del buffered[victim]
                buffered[sample] = use
                heapq.heappush(heap, (-use, sample))
                store[j], evict[j] = True, victim
        peak = max(peak, len(buffered))
        position += k
        steps.append((samples, is_read, store, evict))
    return steps, hits, reads, peak


def _lru(sequence: list[np.ndarray], capacity: int) -> tuple[list, int, int, int]:
    from collections import OrderedDict

    buffered: OrderedDict[int, None] = OrderedDict()
    steps, hits, reads, peak = [], 0, 0, 0
    for samples in sequence:
        k = len(samples)
        is_read, store, evict = np.zeros(k, bool), np.zeros(k, bool), np.full(k, -1, np.int64)
        for j, sample in enumerate(samples.tolist()):
            if sample in buffered:
                hits += 1
                buffered.move_to_end(sample)
                continue
            reads += 1
            is_read[j] = True
            if capacity == 0:
                continue
            if len(buffered) >= capacity:
                evict[j] = buffered.popitem(last=False)[0]
            buffered[sample] = None
            store[j] = True
        peak = max(peak, len(buffered))
        steps.append((samples, is_read, store, evict))
    return steps, hits, reads, peak


def _frequency(sequence: list[np.ndarray], capacity: int, n_samples: int) -> tuple[list, int, int, int]:
    counts = np.bincount(np.concatenate(sequence), minlength=n_samples) if sequence else np.zeros(n_samples)
    keep = set(np.argsort(-counts, kind="stable")[:capacity].tolist()) if capacity else set()
    buffered: set[int] = set()
    steps, hits, reads = [], 0, 0
    for samples in sequence:
        k = len(samples)
        is_read, store = np.zeros(k, bool), np.zeros(k, bool)
        for j, sample in enumerate(samples.tolist()):
            if sample in buffered:
                hits += 1
                continue
            reads += 1
            is_read[j] = True
            if sample in keep:
                buffered.add(sample)
                store[j] = True
        steps.append((samples, is_read, store, np.full(k, -1, np.int64)))
    return steps, hits, reads, len(buffered)


def make_plans(
    schedule: Schedule,
    world_size: int,
    capacity: int,
    policy: str = "solar",
    imbalance: int | None = None,
    seed: int = 0,
) -> list[RankPlan]:
    """Every rank's plan for ``schedule`` with ``capacity`` samples of buffer per rank.

    ``imbalance``: how many samples a rank's share of a global batch may differ from the even split (SOLAR;
    default 1/8 of the even share, at least 1).
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
    sequences: list[list[np.ndarray]] = [[] for _ in range(world_size)]
    if policy == "solar" and world_size > 1:
        # assignment with a running Belady-by-global-next-use estimate of each rank's buffer
        holder = np.full(schedule.n_samples, -1, dtype=np.int64)  # the rank that last stored each sample
        counts = np.zeros(world_size, dtype=np.int64)
        order = {e: k for k, e in enumerate(schedule.epoch_order)}
        position = np.empty((schedule.epochs, schedule.n_samples), dtype=np.int64)
        for epoch in range(schedule.epochs):
            position[epoch, schedule.permutations[epoch]] = np.arange(schedule.n_samples) // schedule.batch_size
        bpe = schedule.batches_per_epoch
        heaps: list[list] = [[] for _ in range(world_size)]
        uses: list[dict] = [{} for _ in range(world_size)]  # sample -> next use, for the ones each rank holds
        for epoch, b in schedule.steps():
            k = order[epoch]
            following = schedule.epoch_order[k + 1] if k + 1 < schedule.epochs else None
            split = balanced_split(schedule.batch(epoch, b), holder, world_size, imbalance, rng)
            for r, samples in enumerate(split):
                sequences[r].append(samples)
                nexts = (np.full(len(samples), NEVER) if following is None
                         else (k + 1) * bpe + position[following, samples])  # fmt: skip
                held, heap = uses[r], heaps[r]
                for sample, nxt in zip(samples.tolist(), nexts.tolist(), strict=True):
                    if sample not in held and counts[r] >= capacity:
                        while heap and held.get(heap[0][1]) != -heap[0][0]:
                            heapq.heappop(heap)  # stale entry
                        if not heap or -heap[0][0] <= nxt:
                            continue  # everything buffered is needed sooner: do not keep this one
                        _, victim = heapq.heappop(heap)
                        del held[victim]
                        counts[r] -= 1
                        if holder[victim] == r:
                            holder[victim] = -1
                    if sample not in held:
                        counts[r] += 1
                    held[sample] = nxt
                    holder[sample] = r
                    heapq.heappush(heap, (-nxt, sample))
    else:
        for epoch, b in schedule.steps():
            for r, samples in enumerate(even_split(schedule.batch(epoch, b), world_size)):
                sequences[r].append(samples)
    plans = []
    for r in range(world_size):
        if policy == "solar":
            steps, hits, reads, peak = _belady(sequences[r], capacity, schedule.n_samples)
        elif policy == "lru":
            steps, hits, reads, peak = _lru(sequences[r], capacity)
        elif policy == "frequency":
            steps, hits, reads, peak = _frequency(sequences[r], capacity, schedule.n_samples)
        else:
            steps, hits, reads, peak = _lru(sequences[r], 0)
        plans.append(RankPlan(r, steps, hits, reads, peak))
    return plans


def belady_hits(plan: RankPlan, capacity: int, n_samples: int) -> int:
    """Hits the optimal policy would make on this rank's own access sequence with the same buffer."""
    return _belady([step[0] for step in plan.steps], capacity, n_samples)[1]
