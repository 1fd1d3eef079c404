"""Publishing the edge's scans to a Tiled server, where Bluesky facilities find their data.

Each scan becomes a container ``<scan_id>`` under the node ``uri`` names:

- metadata: the scan id, its geometry, the model's version, the frame counts (updated every 2 s during the scan),
  ``state`` (``scanning``, then ``done``), ``run_file`` (the raw frames stay in the CXI run file: its path, and
  ``host``), and at the end the scan's summary;
- ``live/amplitude``, ``live/phase``: the live image (float32 ``(Y, X)``, at least 512 square, NaN where no frame
  reached; the refined image where the live refinement reached), rewritten at most every ``period_s`` while it
  changes;
- ``product/`` and ``refined/`` at the end: the arrays of ``<scan>_product.h5`` and ``<scan>_refined.h5``
  (``object``, ``probe``, ``positions_m``), equal to the files.

Tiled's client runs in a process of its own (:mod:`edgeray.io.tiled_writer`): nothing it does (imports, HTTP,
waiting for a slow server) holds the edge's interpreter. The edge's side is one thread that copies the live image
under the service's lock (a block of rows at a time, as the live view does) into shared memory and hands it over,
one image at a time: while the writer is busy, newer images replace older ones. The writer makes amplitude and
phase of it. A request that fails (server slow, gone, restarting) is tried again at the next update; a scan's
products are tried until ``retry_s`` after its end, then reported. Either way the scan's summary gets a ``tiled``
entry saying what was published and what failed: the run file and the products on disk are the truth, Tiled a view
of them.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import queue
import socket
import threading
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path

import numpy as np

from edgeray.io.tiled import api_key

log = logging.getLogger("edgeray.edge")
AWAY_PERIOD_S = 2.0  # while the server cannot be reached, the live image is handed over this often, s
NEW_SCAN_POLL_S = 0.02  # how often the publisher looks for a new scan between updates, s
START_TIMEOUT_S = 120.0  # the longest the writer process may take to start and reach the server, s


@dataclass
class TiledOptions:
    """Where and how often the edge publishes to Tiled.

    Attributes:
        uri: the Tiled node scans are written under (``http://HOST:PORT/api/v1/metadata/PATH``); the API key comes
            from ``TILED_API_KEY``.
        period_s: the live image is rewritten at most this often, s.
        max_side: the live image's pixels along each axis at most (every k-th pixel of larger mosaics).
        retry_s: how long after a scan's end its products are tried before the failure is reported, s.
        timeout_s: the longest one request may take, s.
    """

    uri: str
    period_s: float = 0.5
    max_side: int = 2048
    retry_s: float = 30.0
    timeout_s: float = 10.0


class TiledPublisher:
    """The publishing stage: the writer process, and :meth:`run`, the edge's thread that feeds it.

    Args:
        options: the :class:`TiledOptions`.
        finished: set when the service has ended; the thread then waits for the writer to publish (or report) every
            ended scan, and stops.
        key: the API key (None: ``TILED_API_KEY``).

    Raises:
        ValueError: the server refuses the key or has no such node, or Tiled's client is not installed (a server
            that cannot be reached is not an error here: it is tried again at each update).
    """

    def __init__(self, options: TiledOptions, finished: threading.Event, key: str | None = None):
        from edgeray.io.tiled_writer import serve

        self.options, self.finished = options, finished
        self.live = None  # the service's LiveState: attach()
        self.done = threading.Event()
        self.ended: dict[str, tuple[dict, Path]] = {}  # scan id -> (its summary, the summary's file)
        self.sent_live: set[str] = set()  # scans the writer has heard of
        context = multiprocessing.get_context("spawn")
        self.inbox, self.outbox = context.Queue(), context.Queue()
        # the live image's hand-over: sums (complex64 + float32) of up to max_side^2 pixels
        self.shared = shared_memory.SharedMemory(create=True, size=12 * options.max_side**2)
        arguments = (options.uri, key if key is not None else api_key(), options.timeout_s, options.retry_s,
                     options.period_s, self.shared.name, self.inbox, self.outbox)  # fmt: skip
        self.process = context.Process(target=serve, args=arguments, name="edge-tiled-writer", daemon=True)
        self.process.start()
        try:
            ready = self.outbox.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            self.process.kill()
            self._release()
            raise ValueError(f"{options.uri}: the Tiled writer did not start within {START_TIMEOUT_S:g} s") from None
        if ready["error"] is not None:
            self.process.join(10)
            self._release()
            raise ValueError(ready["error"])

    def attach(self, live) -> None:
        """Read the open scan's image and counts from ``live`` (the service's
        :class:`~edgeray.stream.live.LiveState`)."""
        self.live = live

    # -- called by the finisher -------------------------------------------------------------------------------
    def scan_done(self, summary: dict, summary_path: Path) -> None:
        """A scan's summary is written: the writer publishes its products and summary; its report goes into the
        summary (``tiled``) and its file."""
        self.ended[summary["scan_id"]] = (summary, Path(summary_path))
        self.inbox.put({"kind": "ended", "scan_id": summary["scan_id"],
                        "summary": json.loads(json.dumps(summary, default=str))})  # fmt: skip

    # -- the thread ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Every ``period_s`` (at once for a new scan) the open scan's live image to the writer, when it has taken
        the last one; the writer's reports into the summaries; after the service has finished, the writer's end."""
        busy, stop_sent, next_send = False, False, 0.0
        try:
            while True:
                began = time.monotonic()
                for answer in self._answers():
                    if answer["kind"] == "ack":
                        busy = False
                        next_send = began + (AWAY_PERIOD_S if answer["away"] else 0.0)
                    elif answer["kind"] == "report":
                        self._record(answer["scan_id"], answer["tiled"])
                    elif answer["kind"] == "done":
                        return
                if not self.process.is_alive():
                    self._writer_died()
                    return
                if self.finished.is_set():
                    if not stop_sent:
                        self.inbox.put({"kind": "stop"})
                        stop_sent = True
                elif not busy and began >= next_send:
                    busy = self._send_live()
                self._wait(began + self.options.period_s, wake_on_new_scan=not busy)
        finally:
            self.done.set()

    def close(self) -> None:
        """End the writer process (after :meth:`run` has ended, it has ended by itself) and free the shared memory."""
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        self._release()

    def _release(self) -> None:
        if self.shared is not None:
            self.shared.close()
            self.shared.unlink()
            self.shared = None

    def _answers(self) -> list[dict]:
        answers = []
        while True:
            try:
                answers.append(self.outbox.get_nowait())
            except queue.Empty:
                return answers

    def _wait(self, until: float, wake_on_new_scan: bool) -> None:
        """Sleep until the monotonic time ``until``, or (``wake_on_new_scan``) until a new scan opens: its container
        is made at once."""
        while (left := until - time.monotonic()) > 0:
            run = self.live.receiver.current
            new = run is not None and run.start.scan_id not in self.sent_live
            if wake_on_new_scan and new and not self.finished.is_set():
                return
            time.sleep(min(left, NEW_SCAN_POLL_S))

    def _send_live(self) -> bool:
        """The open scan's counts and live image to the writer; whether they were sent. The image goes through
        shared memory, copied there straight from the mosaic (no pickling, no second copy in this process); the
        writer reads it before it answers, and nothing is written there again before it has."""
        run = self.live.receiver.current
        if run is None or run.start.scan_id in self.ended:
            return False
        snapshot = self.live.snapshot()
        taken = time.time()
        image = self._share_image(run) if run.mosaic is not None and run.mosaic.n_patches else None
        counts = {k: snapshot[k] for k in ("frames_received", "frames_inferred", "frames_written", "frames_expected")}
        metadata = {**self._scan_metadata(run), **counts, "state": "scanning"}
        self.inbox.put({"kind": "live", "scan_id": run.start.scan_id, "metadata": metadata, "image": image,
                        "taken_unix_s": taken})  # fmt: skip
        self.sent_live.add(run.start.scan_id)
        return True

    def _share_image(self, run) -> list[int]:
        """Copy ``run``'s live image into the shared memory: the mosaic's sums (every k-th pixel of one longer than
        ``max_side``), or the refined image as sums of coverage 1; returns its shape ``[Y, X]``."""
        side = self.options.max_side

        def allocate(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            pixels = shape[0] * shape[1]
            numerator = np.ndarray(shape, np.complex64, buffer=self.shared.buf)
            return numerator, np.ndarray(shape, np.float32, buffer=self.shared.buf, offset=8 * pixels)

        if run.refiner is not None:
            image = self.live.mosaic_image(side)
            numerator, coverage = allocate(image.shape)
            finite = np.isfinite(image)
            np.copyto(numerator, np.where(finite, image, 0))
            np.copyto(coverage, finite)
            return list(image.shape)
        step = max(1, -(-max(run.mosaic.shape) // side))
        numerator, _, _ = self.live.mosaic_sums(run, step, allocate)
        return list(numerator.shape)

    def _scan_metadata(self, run) -> dict:
        from edgeray.stream.protocol import geometry_of

        geometry = geometry_of(run.start)
        paths = [part.get("path", part["requested"]) for part in run.parts]
        return {
            "scan_id": run.start.scan_id,
            "producer": "edgeray edge",
            "model_version": self.live.models.get().version,
            "frame_shape": list(run.start.shape),
            "energy_eV": geometry.energy_eV,
            "distance_m": geometry.distance_m,
            "detector_pixel_size_m": list(geometry.detector_pixel_size_m),
            "run_file": str(Path(paths[0]).resolve()) if paths else None,
            "host": socket.gethostname(),
            "started_unix_s": run.started_wall,
        }

    def _record(self, scan_id: str, report: dict) -> None:
        """Add the writer's report as ``tiled`` to the scan's summary (in memory and its file)."""
        summary, path = self.ended[scan_id]
        summary["tiled"] = report
        path.write_text(json.dumps(summary, indent=2))
        if report["published"]:
            log.info("Tiled, scan %s: published at %s", scan_id, report["uri"])
        else:
            log.error("Tiled, scan %s: not published within %.0f s (%s); the run file and products on disk hold "
                      "everything", scan_id, self.options.retry_s, report["last_error"])  # fmt: skip

    def _writer_died(self) -> None:
        """The writer process ended unasked: every ended scan not yet reported says so."""
        code = self.process.exitcode
        for scan_id, (summary, _) in self.ended.items():
            if "tiled" not in summary:
                self._record(scan_id, {"uri": None, "published": False, "live_updates": None,
                                       "failed_requests": None,
                                       "last_error": f"the Tiled writer process ended with code {code}"})  # fmt: skip
