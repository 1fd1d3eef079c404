"""The SOLAR loader: executes a rank's plan with a fixed-size buffer and a background prefetch thread.

The plan (:mod:`edgeray.loader.plan`) says, step by step, which samples this rank processes, which are reads and
what the buffer keeps or drops. One thread executes it ahead of training (``prefetch`` steps): it updates the buffer
and assembles each batch from buffer hits and the step's reads, which another thread has issued ``reads_ahead`` steps
earlier (coalesced, several in flight), so reading overlaps assembling; training takes finished batches. Batches
are assembled in order by that one thread, so an eviction can never overtake a batch that still needs the sample.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeray.loader.plan import RankPlan, belady_hits, make_plans
from edgeray.loader.reader import TrainsetReader
from edgeray.loader.schedule import Schedule


@dataclass
class LoaderBatch:
    """One rank's share of a global batch.

    Attributes:
        inputs, amplitude, phase: ``(n, 1, H, W)`` float32 (inputs = ``sqrt(frames / scale)``) from a training set;
            None from other sample sets (``keys``), whose datasets are in ``arrays``.
        samples: ``(n,)`` sample ids.
        loss_scale: multiply the mean loss over this share by it: ``world_size * n / global_n``, so that after
            DDP averages the ranks' gradients the result is the gradient of the mean over the global batch,
            whatever the shares' sizes.
        epoch, step: which epoch and which step (in processing order).
    """

    inputs: torch.Tensor | None
    amplitude: torch.Tensor | None
    phase: torch.Tensor | None
    samples: np.ndarray
    loss_scale: float
    epoch: int
    step: int
    arrays: dict[str, torch.Tensor] = field(default_factory=dict)


def network_input(frames: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``sqrt(frames / scale)`` ``(n, H, W)`` float32 from counts ``(n, H, W)`` (any dtype; negatives count as 0) and
    ``scale`` ``(n,)``, in one new array."""
    out = frames.astype(np.float32)
    if frames.dtype.kind == "f":
        np.maximum(out, 0, out=out)
    out *= (1.0 / np.maximum(scale.astype(np.float32), 1e-12))[:, None, None]
    return np.sqrt(out, out=out)


class SolarLoader:
    """Iterate a training set as rank ``rank`` of ``world_size``, with SOLAR's schedule, buffer and reads.

    Args:
        path: training-set HDF5 (docs/formats.md layout).
        batch_size: the global batch (all ranks together).
        epochs, seed: as a shuffled loader takes them; every rank must pass the same.
        rank, world_size: this process and how many share the work (default: torch.distributed's when a process
            group is initialized, as under ``torchrun``; else 0 and 1).
        buffer_bytes: this rank's buffer (whole samples: frames, amplitude, phase, scale).
        policy: ``solar`` (default), ``lru``, ``frequency`` or ``none`` (for comparison).
        imbalance: the most a rank's share may differ from the even split, samples (default 1/8 of it).
        prefetch: steps prepared ahead.
        reads_ahead: steps whose reads are issued before the current step is assembled (reads overlap assembly).
        uncached: read through :class:`~edgeray.loader.reader.DroppingFile` (benchmarks).
        indices: the file's samples to use (e.g. a training split; default all); ``samples`` in batches are
            file ids either way.
        keys: read these ``(N, ...)`` datasets of any sample set instead of a training set's (batches carry them
            in ``arrays``, as stored).
    """

    def __init__(
        self,
        path: str | Path,
        batch_size: int,
        epochs: int,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        buffer_bytes: int = 1 << 30,
        policy: str = "solar",
        imbalance: int | None = None,
        prefetch: int = 4,
        reads_ahead: int = 2,
        uncached: bool = False,
        drop_last: bool = False,
        indices: np.ndarray | None = None,
        keys: tuple[str, ...] | None = None,
    ):
        if rank is None or world_size is None:
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            rank = (torch.distributed.get_rank() if distributed else 0) if rank is None else rank
            world_size = (
                (torch.distributed.get_world_size() if distributed else 1) if world_size is None else world_size
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.path, self.rank, self.world_size, self.uncached = Path(path), rank, world_size, uncached
        self.keys = keys
        probe = TrainsetReader(self.path, direct=False, keys=keys)
        self.n_samples, self.frame_shape, sample_bytes = probe.n_samples, probe.frame_shape, probe.sample_bytes
        rows_per_chunk = probe.rows_per_chunk
        self.dtypes = {key: ds.dtype for key, ds in probe.datasets.items()}
        probe.close()
        self.indices = np.arange(self.n_samples) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(self.indices) == 0 or self.indices.min() < 0 or self.indices.max() >= self.n_samples:
            raise ValueError(f"{self.path}: indices must be a non-empty subset of 0..{self.n_samples - 1}")
        self.capacity = int(buffer_bytes // sample_bytes)
        self.schedule = Schedule(len(self.indices), epochs, batch_size, seed, drop_last)
        # chunk-aware planning needs schedule positions that are file rows: only when all samples are used
        chunk_rows = rows_per_chunk if indices is None else 1
        plans = make_plans(self.schedule, world_size, self.capacity, policy, imbalance, seed, chunk_rows)
        for plan in plans:  # schedule positions -> file sample ids
            plan.steps = [(self.indices[s], r, self.indices[k], self.indices[e]) for s, r, k, e in plan.steps]
        self.plan: RankPlan = plans[rank]
        self.global_sizes = [sum(len(p.steps[t][0]) for p in plans) for t in range(len(self.plan.steps))]
        self.prefetch, self.reads_ahead = prefetch, max(1, reads_ahead)
        self.policy = policy
        self.stats = {"hits": 0, "reads": 0, "read_calls": 0, "bytes_read": 0, "peak_buffered": 0}

    def __len__(self) -> int:
        return len(self.plan.steps)

    def belady_hit_rate(self) -> float:
        """Hit rate the optimal policy would reach on this rank's access sequence (for comparison)."""
        accesses = sum(len(step[0]) for step in self.plan.steps)
        return belady_hits(self.plan, self.capacity, self.n_samples) / max(accesses, 1)

    def _produce(self, out: queue.Queue, stop: threading.Event) -> None:
        reader = TrainsetReader(self.path, uncached=self.uncached, keys=self.keys)  # in this thread, this process
        ahead = ThreadPoolExecutor(max_workers=1, thread_name_prefix="solar-read")  # one reader: reads in step order
        try:
            slots = min(self.capacity, len(self.indices))
            buffer = {
                key: np.empty((slots, *reader.datasets[key].shape[1:]), dtype) for key, dtype in self.dtypes.items()
            }
            slot_of = np.full(self.n_samples, -1, dtype=np.int64)  # buffer slot of each file sample, -1: none
            free = np.arange(slots - 1, -1, -1, dtype=np.int64)  # a stack of free slots: free[:n_free]
            n_free, buffered = slots, 0
            steps = self.schedule.steps()
            pending: deque = deque()  # (samples to fetch, their read) of the next steps, oldest first

            def read_ahead(t: int) -> None:
                samples, reads, store, _ = self.plan.steps[t]
                fetch = np.unique(np.concatenate([samples[reads], store]))
                pending.append((fetch, ahead.submit(reader.read, fetch) if len(fetch) else None))

            for t in range(min(self.reads_ahead, len(self.plan.steps))):
                read_ahead(t)
            for t, (samples, reads, store, evict) in enumerate(self.plan.steps):
                if stop.is_set():
                    return
                fetch, reading = pending.popleft()
                if t + self.reads_ahead < len(self.plan.steps):
                    read_ahead(t + self.reads_ahead)  # in flight while this step is assembled
                fresh = reading.result() if reading is not None else None
                batch = {key: np.empty((len(samples), *reader.datasets[key].shape[1:]), dtype)
                         for key, dtype in self.dtypes.items()}  # fmt: skip
                hit_rows = np.flatnonzero(~reads)
                hit_slots = slot_of[samples[hit_rows]]
                read_rows = np.searchsorted(fetch, samples[reads])
                for key in batch:
                    if len(hit_rows):
                        batch[key][hit_rows] = buffer[key][hit_slots]
                    if fresh is not None:
                        batch[key][reads] = fresh[key][read_rows]
                if len(evict):  # buffer updates after the batch has its copies
                    free[n_free : n_free + len(evict)] = slot_of[evict]
                    n_free += len(evict)
                    slot_of[evict] = -1
                if len(store):
                    store_slots = free[n_free - len(store) : n_free].copy()
                    n_free -= len(store)
                    slot_of[store] = store_slots
                    store_rows = np.searchsorted(fetch, store)
                    for key in buffer:
                        buffer[key][store_slots] = fresh[key][store_rows]
                buffered += len(store) - len(evict)
                self.stats["peak_buffered"] = max(self.stats["peak_buffered"], buffered)
                self.stats["hits"] += len(hit_rows)
                self.stats["reads"] += int(reads.sum())
                loss_scale = self.world_size * len(samples) / max(self.global_sizes[t], 1)
                if self.keys is None:
                    inputs = torch.from_numpy(network_input(batch["frames"], batch["scale"]))[:, None]
                    labels = [torch.from_numpy(batch[key])[:, None] for key in ("amplitude", "phase")]
                    share = LoaderBatch(inputs, *labels, samples, loss_scale, steps[t][0], t)
                else:
                    arrays = {key: torch.from_numpy(value) for key, value in batch.items()}
                    share = LoaderBatch(None, None, None, samples, loss_scale, steps[t][0], t, arrays)
                while not stop.is_set():
                    try:
                        out.put(share, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            self.stats["read_calls"] = reader.read_calls
            self.stats["bytes_read"] = reader.bytes_read or reader.samples_read * reader.sample_bytes
        except BaseException as error:  # hand the failure to the consumer
            out.put(error)
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)
            reader.close()
            out.put(None)

    def __iter__(self) -> Iterator[LoaderBatch]:
        out: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        worker = threading.Thread(target=self._produce, args=(out, stop), name="solar-prefetch", daemon=True)
        worker.start()
        try:
            while True:
                item = out.get()
                if item is None:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            worker.join(10)
