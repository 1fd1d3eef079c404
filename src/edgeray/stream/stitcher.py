"""The edge's stitcher: each inverted batch into its scan's :class:`~edgeray.stream.mosaic.Mosaic`, the frames to
the scan's live refinement and learning, each frame's latency from arrival to in-mosaic recorded.

It runs while the network works on the next batch (each of the two then keeps a core half busy at 2 kHz, not one
thread nine tenths: measured, the backlog of a stall drained in seconds instead of lasting the scan).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque

import numpy as np
import torch

from edgeray.stream.scan import Inverted, ScanEnded, Skipped, Stop

log = logging.getLogger("edgeray.edge")


class Stitcher:
    """The stitching stage; :meth:`run` is its thread.

    Args:
        to_stitch: in: :class:`Inverted`, :class:`Skipped`, :class:`ScanEnded`, :class:`Stop` from the inference.
        to_finish: out: :class:`ScanEnded`, then :class:`Stop`.
        lock: the service's lock over the mosaics (readers: the live view, the refinement, the finisher).
    """

    def __init__(self, to_stitch: queue.Queue, to_finish: queue.Queue, lock: threading.Lock):
        self.to_stitch, self.to_finish, self.lock = to_stitch, to_finish, lock
        self.recent_latency_ms: deque = deque(maxlen=4000)

    def run(self) -> None:
        """The stitching thread: inverted batches into their scan's mosaic, in order; a scan's end on to the
        finisher once its last batch is in (the finisher's work never holds the next scan's batches)."""
        torch.set_num_threads(1)  # one core for stitching: two threads cost the receiver more than they gain
        while True:
            message = self.to_stitch.get()
            if isinstance(message, Inverted) and message.run.no_network is None:
                try:
                    self.stitch_batch(message)
                except Exception as error:  # the scan's network image ends (named on it), not this thread
                    log.exception("scan %s: a batch could not be stitched", message.run.start.scan_id)
                    message.run.fail("stitcher", error)
                    message.run.no_network = f"its mosaic failed ({type(error).__name__}: {error})"
                    message.run.stitched_upto = message.upto
            elif isinstance(message, Inverted):  # in flight when the scan's network image ended
                message.run.stitched_upto = message.upto
            elif isinstance(message, Skipped):  # a batch of repeats only: nothing to stitch
                message.run.stitched_upto = message.upto
            elif isinstance(message, ScanEnded):
                self.to_finish.put(message)
            else:
                self.to_finish.put(Stop())
                return

    def stitch_batch(self, batch: Inverted) -> None:
        """A batch of patches into its scan's mosaic (and frames to its refinement and learning)."""
        run, frames, positions = batch.run, batch.frames, batch.positions_m
        began, cpu_began = time.perf_counter_ns(), time.thread_time()
        with self.lock:  # the learner's frames and the mosaic's patches stay in step (a new mosaic is made from them)
            run.mosaic.add_polar(batch.amplitude, batch.phase, positions)
            if run.learner is not None:
                run.learner.add(frames, positions)
        if run.refiner is not None:
            run.refiner.add(frames, positions)
        now = time.perf_counter_ns()
        run.busy_s["stitch"] += (now - began) / 1e9
        run.cpu_s["stitch"] += time.thread_time() - cpu_began
        latencies = (now - batch.arrivals_ns) / 1e6
        if run.stitched + len(latencies) > len(run.latencies_ms):
            extra = np.zeros(max(len(run.latencies_ms), len(latencies)), np.float32)
            run.latencies_ms = np.concatenate([run.latencies_ms, extra])
        run.latencies_ms[run.stitched : run.stitched + len(latencies)] = latencies
        self.recent_latency_ms.extend(latencies.tolist())
        run.stitched += len(latencies)
        run.stitched_upto = batch.upto
