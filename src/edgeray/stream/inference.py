"""The edge's inference: batches straight from the ring (up to ``max_batch``, or what arrived within
``max_wait_ms``) as raw counts into ONNX Runtime (normalization inside the graph); patches on to the stitcher.

When the network falls a whole ring behind (the receiver then sheds), it gives up the oldest frames it has not
reached: the live image misses them, the run file does not.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from edgeray.stream.scan import Inverted, ScanEnded, ScanRun, ScanStarted, Skipped, Stop
from edgeray.stream.serving import LoadedModel, ModelHolder

log = logging.getLogger("edgeray.edge")

SHED_MARGIN = 1024  # slots between the receiver and a network that has fallen a whole ring behind


class Inference:
    """The inference stage; :meth:`run` is its thread.

    Args:
        options: the service's :class:`~edgeray.stream.edge.EdgeOptions` (``max_batch``, ``max_wait_ms``,
            ``infer_workers``).
        models: the serving model.
        control: in: :class:`ScanStarted`, :class:`ScanEnded`, :class:`Stop` from the receiver.
        to_stitch: out: :class:`Inverted`, :class:`Skipped`, then the scan's end and the stop, in order.
        frames_ready: waited on for new frames.
        scan_started: ``(run, model)`` called when a scan starts, before its first batch (its mosaic and helpers).
        pool: threads for ``infer_workers`` > 1, or None.
    """

    def __init__(self, options, models: ModelHolder, control: queue.Queue, to_stitch: queue.Queue,
                 frames_ready: threading.Condition, scan_started: Callable[[ScanRun, LoadedModel], None],
                 pool=None):  # fmt: skip
        self.options, self.models = options, models
        self.control, self.to_stitch, self.frames_ready = control, to_stitch, frames_ready
        self.scan_started = scan_started
        self.infer_pool = pool

    def run(self) -> None:
        """The inference thread: batches of each scan in order; a scan's start and end as they come."""
        torch.set_num_threads(1)  # for this thread (torch keeps one setting per thread): the other stages need cores
        run: ScanRun | None = None
        while True:
            try:
                message = self.control.get_nowait()
            except queue.Empty:
                message = None
            if isinstance(message, ScanStarted):
                run = message.run
                self._start_scan(run)
            elif isinstance(message, ScanEnded):
                while self._next_batch_contained(message.run, drain=True):
                    pass
                self.to_stitch.put(message)
                continue
            elif isinstance(message, Stop):
                self.to_stitch.put(message)
                return
            if run is None or not self._next_batch_contained(run):
                with self.frames_ready:
                    self.frames_ready.wait(self._wait_s(run))

    def _start_scan(self, run: ScanRun) -> None:
        """A scan's mosaic and helpers, when the serving model inverts its frames; else why not, on the scan."""
        model = self.models.get()
        size = model.card["config"]["frame_size"]
        if tuple(run.start.shape) != (size, size):
            run.no_network = (f"its frames are {run.start.shape[0]}x{run.start.shape[1]} and the serving model "
                              f"{model.version} inverts {size}x{size} frames")  # fmt: skip
            log.warning("scan %s: no network image: %s (every frame is written)", run.start.scan_id, run.no_network)
            return
        try:
            self.scan_started(run, model)
        except Exception as error:  # the scan goes on, written; its summary names the failure
            log.exception("scan %s: its mosaic or helpers could not be made", run.start.scan_id)
            run.fail("inference", error)
            run.no_network = f"its mosaic could not be made ({type(error).__name__}: {error})"

    def _next_batch_contained(self, run: ScanRun, drain: bool = False) -> bool:
        """:meth:`_next_batch`, or, for a scan the network does not (or no longer) invert, its frames handed on as
        skipped; an error ends the scan's network image (named on the scan), never this thread."""
        if run.no_network is None:
            try:
                return self._next_batch(run, drain)
            except Exception as error:
                log.exception("scan %s: the network failed on a batch", run.start.scan_id)
                run.fail("inference", error)
                run.no_network = f"the network failed ({type(error).__name__}: {error})"
        if run.published <= run.inferred_upto:
            return False
        run.not_inverted += run.published - run.inferred_upto
        run.inferred_upto = run.published
        self.to_stitch.put(Skipped(run, run.inferred_upto))
        return True

    def _wait_s(self, run: ScanRun | None) -> float:
        """How long the inference may sleep: until the oldest waiting frame's batch is due, at most 50 ms."""
        if run is None or run.published <= run.inferred_upto:
            return 0.05
        oldest = int(run.ring.arrival_ns[run.inferred_upto % run.ring.capacity])
        due = oldest + self.options.max_wait_ms * 1e6 - time.perf_counter_ns()
        return min(max(due / 1e9, 0.0), 0.05)

    def _next_batch(self, run: ScanRun, drain: bool = False) -> bool:
        """Invert the next batch of ``run`` if one is due (full, or its oldest frame waited ``max_wait_ms``;
        ``drain``: whatever is there); returns whether it did."""
        ring = run.ring
        if run.shedding:  # the receiver may reuse slots the network has not reached: keep clear of them
            floor = run.stored - ring.capacity + min(SHED_MARGIN, ring.capacity // 2)
            if run.inferred_upto < floor:
                run.not_inverted += floor - run.inferred_upto
                run.inferred_upto = floor
        available = run.published - run.inferred_upto
        if available <= 0:
            return False
        slot = run.inferred_upto % ring.capacity
        due = ring.arrival_ns[slot] + self.options.max_wait_ms * 1e6 <= time.perf_counter_ns()
        if not (drain or due or available >= self.options.max_batch):
            return False
        batch = self.options.max_batch * self.options.infer_workers
        count = min(available, batch, ring.capacity - slot)  # contiguous in the ring
        self._infer_batch(run, slot, count, run.inferred_upto + count)
        run.inferred_upto += count  # the slots may now be reused (once written)
        return True

    def _infer_batch(self, run: ScanRun, slot: int, count: int, upto: int) -> None:
        ring = run.ring
        window = slice(slot, slot + count)
        keep = ring.infer[window]
        counts = ring.frames[window] if keep.all() else ring.frames[window][keep]
        if not len(counts):
            self.to_stitch.put(Skipped(run, upto))
            return
        positions = ring.positions_m[window][keep].copy()
        arrivals = ring.arrival_ns[window][keep].copy()
        indices = ring.index[window][keep]
        began, cpu_began = time.perf_counter(), time.thread_time()
        run.count_sum += float(counts.sum(dtype=np.float64))
        run.count_pixels += counts.size
        scale = run.count_sum / max(run.count_pixels, 1)  # running mean count per pixel of the scan
        model = self.models.for_dtype(run.start.dtype)
        amplitude, phase, workers_cpu_s = self.run_network(model.runtime, counts, scale)
        self.models.validation = (counts[-8:].copy(), scale)
        run.busy_s["infer"] += time.perf_counter() - began
        run.cpu_s["infer"] += time.thread_time() - cpu_began + workers_cpu_s
        version = model.version
        first, last = int(indices.min()), int(indices.max())
        if run.version_segments and run.version_segments[-1][2] == version:
            run.version_segments[-1][1] = max(run.version_segments[-1][1], last)
        else:
            run.version_segments.append([first, last, version])
        run.version_counts[version] = run.version_counts.get(version, 0) + len(counts)
        keep_frames = run.refiner is not None or run.learner is not None
        frames = counts.copy() if keep_frames else None  # a copy: the ring slots are reused
        self.to_stitch.put(Inverted(run, amplitude, phase, positions, arrivals, frames, upto))

    def run_network(self, runtime, counts: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
        """``runtime`` on ``counts`` (N, H, W): in one call, or split into ``infer_workers`` parts run at once
        (ONNX Runtime releases the GIL while it computes). Returns amplitude, phase and the CPU seconds the worker
        threads spent (0 for one call, which runs on the calling thread)."""
        parts = min(self.options.infer_workers, len(counts) // 8)
        if self.infer_pool is None or parts < 2:
            return (*runtime(counts, scale), 0.0)

        def part_call(part: np.ndarray):
            cpu_began = time.thread_time()
            result = runtime(part, scale)
            return result, time.thread_time() - cpu_began

        results = list(self.infer_pool.map(part_call, np.array_split(counts, parts)))
        amplitude = torch.cat([r[0][0] for r in results])
        phase = torch.cat([r[0][1] for r in results])
        return amplitude, phase, sum(r[1] for r in results)
