"""The edge's live state: a snapshot of rates, latency, queues and counters, and the open scan's image, for the live
view (:mod:`edgeray.stream.dashboard`) and the PUB socket.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import zmq

from edgeray.stream.receiver import Receiver
from edgeray.stream.serving import ModelHolder
from edgeray.stream.stitcher import Stitcher

COPY_ROWS = 32  # rows of a mosaic copied per hold of the service's lock


class LiveState:
    """Reads the stages' state (never writes it).

    Args:
        receiver, stitcher: the stages whose counters it reads; summaries: the finisher's list of summaries.
        models: the serving model. lock: the service's lock over the mosaics.
        publisher: the PUB socket (None: no publishing); finished: ends the publishing.
    """

    def __init__(self, receiver: Receiver, stitcher: Stitcher, summaries: list, models: ModelHolder,
                 lock: threading.Lock, publisher: zmq.Socket | None, finished: threading.Event):  # fmt: skip
        self.receiver, self.stitcher, self.summaries, self.models = receiver, stitcher, summaries, models
        self.lock, self.publisher, self.finished = lock, publisher, finished

    def snapshot(self) -> dict:
        """Stats for the live view: rates, latency, queue depths, model, the open scan's counters."""
        window = list(self.receiver.rate_window)
        rate = 0.0
        if len(window) > 1 and window[-1][0] > window[0][0]:
            rate = (window[-1][1] - window[0][1]) / ((window[-1][0] - window[0][0]) / 1e9)
        if window and time.perf_counter_ns() - window[-1][0] > 1e9:
            rate = 0.0
        recent = np.array(self.stitcher.recent_latency_ms) if self.stitcher.recent_latency_ms else np.zeros(0)
        run = self.receiver.current
        return {
            "scan_id": run.start.scan_id if run else None,
            "scan_open": bool(run and not run.ended),
            "frames_received": run.received if run else 0,
            "frames_inferred": run.stitched if run else 0,
            "frames_written": run.written if run else 0,
            "frames_expected": (run.expected or run.start.n_frames) if run else None,
            "frames_invalid_total": self.receiver.invalid_total,
            "receive_rate_hz": rate,
            "latency_ms_p50": float(np.percentile(recent, 50)) if recent.size else None,
            "latency_ms_p99": float(np.percentile(recent, 99)) if recent.size else None,
            "infer_queue": (run.published - run.stitched_upto) if run else 0,  # not yet in the mosaic
            "write_queue": (run.published - run.ring.written) if run and not run.closed.is_set() else 0,
            "spill": len(run.spill) if run else 0,
            "model_version": self.models.get().version,
            "mosaic_patches": run.mosaic.n_patches if run and run.mosaic else 0,
            "view_version": (run.mosaic.n_patches if run and run.mosaic else 0)
            + (run.refiner.updates if run and run.refiner else 0),
            "refine_epochs": run.refiner.epochs if run and run.refiner else None,
            "refine_misfit": run.refiner.misfit if run and run.refiner else None,
            "scans_done": len(self.summaries),
            # a failed stage shows here: the open scan's failures and why it has no network image, the count of
            # ended scans whose summary names one
            "scan_errors": list(run.errors) if run else [],
            "network_image": run.no_network if run else None,
            "scans_failed": sum(1 for summary in list(self.summaries) if summary.get("errors")),
        }

    def publish(self, period_s: float = 0.2) -> None:
        """Every ``period_s``: stats (JSON) and, when it changed, the mosaic (complex64 bytes) on the PUB socket."""
        last_version = -1
        while not self.finished.wait(period_s):
            stats = self.snapshot()
            image = self.mosaic_image(1024) if stats["view_version"] != last_version else None
            header = {"v": 1, "type": "mosaic" if image is not None else "stats", **stats}
            if image is None:
                self.publisher.send_multipart([json.dumps(header).encode()])
                continue
            last_version = stats["view_version"]
            header.update(dtype="complex64", shape=list(image.shape))
            self.publisher.send_multipart([json.dumps(header).encode(), image.tobytes()])

    def mosaic_image(self, max_side: int | None = None) -> np.ndarray | None:
        """The open (or last) scan's image (refined where the live refinement reached), ``(Y, X)`` complex64 with
        NaN where no patch reached, or None before the first patch; every ``k``-th pixel when ``max_side`` asks
        for at most that many along each axis."""
        run = self.receiver.current
        if run is None or run.mosaic is None or not run.mosaic.n_patches:
            return None
        step = 1 if max_side is None else max(1, -(-max(run.mosaic.shape) // max_side))
        if run.refiner is not None:
            numerator, coverage, origin_m = self.mosaic_sums(run, 1)
            return run.refiner.image(numerator, coverage, origin_m)[::step, ::step]
        numerator, coverage, _ = self.mosaic_sums(run, step)  # only the pixels shown
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(coverage > 0, numerator / coverage, np.nan + 0j).astype(np.complex64)

    def mosaic_sums(self, run, step: int = 1, allocate=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Copies of ``run``'s mosaic sums (every ``step``-th pixel): ``numerator`` complex64 and ``coverage``
        float32 ``(Y, X)``, into the arrays ``allocate(shape)`` returns (default: new ones), and their grid's
        ``origin_m`` ``(2,)``. Copied ``COPY_ROWS``
        rows per hold of the service's lock, so the stitcher waits for one block at most, never for the whole copy
        (a patch added meanwhile may show in some rows only; a grid that grew meanwhile is copied again)."""
        if allocate is None:

            def allocate(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
                return np.empty(shape, np.complex64), np.empty(shape, np.float32)

        while True:
            with self.lock:  # a grown grid is new tensors and a new origin, made together under this lock
                numerator_t, coverage_t = run.mosaic.numerator, run.mosaic.coverage
                origin_m = None if run.mosaic.origin_m is None else run.mosaic.origin_m.copy()
            rows = numerator_t.shape[0]
            shape = (-(-rows // step), -(-numerator_t.shape[1] // step))
            numerator, coverage = allocate(shape)
            for first in range(0, rows, COPY_ROWS * step):
                block = slice(first, min(first + COPY_ROWS * step, rows), step)
                out = slice(first // step, first // step + len(range(*block.indices(rows))))
                with self.lock:
                    if run.mosaic.numerator is not numerator_t:  # the grid grew: copy the new one
                        break
                    numerator[out] = numerator_t[block, ::step].numpy()
                    coverage[out] = coverage_t[block, ::step].numpy()
            else:
                return numerator, coverage, origin_m
