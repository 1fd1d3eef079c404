"""The edge's writer supervisor: starts the run-file writer process, tells it of scans and frames, restarts it.

The writer (:mod:`edgeray.stream.writer`) reads each scan's ring and appends to its run file. The supervisor
keeps the scans sent to it and not yet closed; its thread reads the writer's replies (a file closed, with its frame
count) and, when the process dies, says so and starts another that continues each open scan in a new part file
from its first unflushed frame (still in the ring).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edgeray.stream.scan import ScanRun
from edgeray.stream.writer import WriterProcess, part_path

log = logging.getLogger("edgeray.edge")

MAX_DEATHS_PER_SCAN = 3  # a writer that dies this often on one scan is not restarted for it again


class WriterSupervisor:
    """The run-file writer of the edge and what it has been told.

    Args:
        flush_s: longest a frame waits to be flushed, s.
        model_version: ``() -> str``, the serving model (an attribute of each run file).
        stopping, finished: the service's events: once stopping, a dead writer with no open scan is not restarted;
            once finished, the watch ends with the last close.
    """

    def __init__(self, flush_s: float, model_version: Callable[[], str], stopping: threading.Event,
                 finished: threading.Event):  # fmt: skip
        self.flush_s = flush_s
        self.model_version, self.stopping, self.finished = model_version, stopping, finished
        self.writer = WriterProcess(flush_s)
        self.writer.wait_ready()  # ready before the first frame can come: its start-up would delay the first ones
        self.lock = threading.Lock()  # the receiver sends, the watch restarts
        self.runs: deque = deque()  # scans sent to the writer and not yet closed, oldest first

    def open(self, run: ScanRun) -> None:
        """A new scan: its run file (``run.base_path``), from its first frame."""
        with self.lock:
            self.runs.append(run)
            self._send_start(run, run.base_path, 0)

    def frames(self, stop: int) -> None:
        """The open scan's ring holds frames up to ``stop``."""
        with self.lock:
            self.writer.send({"op": "frames", "stop": stop})

    def end(self, run: ScanRun) -> None:
        """Every frame of ``run`` is in its ring."""
        with self.lock:
            self.writer.send({"op": "end", "stop": run.stored, "attrs": {"complete": run.complete}})

    def _send_start(self, run: ScanRun, path: Path, first: int) -> None:
        start = run.start
        self.writer.send({"op": "start", "ring": run.ring.config(), "path": str(path), "first": first,
                          "start": {"scan_id": start.scan_id, "dtype": start.dtype, "shape": list(start.shape),
                                    "geometry": start.geometry},
                          "attrs": {"scan_id": start.scan_id, "edge_model": self.model_version()}})  # fmt: skip
        run.parts.append({"requested": str(path), "first": first})

    def watch(self) -> None:
        """The supervisor's thread: read the writer's replies (files closed, with their frame counts); restart the
        writer when it dies while scans are open or may come."""
        while True:
            if self.runs:
                reply = self.writer.wait_for("closed", 0.2)
                if reply is not None:
                    with self.lock:
                        run = self.runs.popleft()
                    run.parts[-1].update(path=reply["path"], written=reply["written"], closed=True)
                    if reply.get("error"):
                        self._give_up(run, f"the run file {reply['path']} could not be written: {reply['error']}")
                    run.busy_s["write"] += reply.get("busy_s", 0.0)
                    run.cpu_s["write"] += reply.get("cpu_s", 0.0)
                    run.closed.set()
                    continue
            else:
                time.sleep(0.1)
            self.writer.replies = [r for r in self.writer.replies if r["op"] != "started"]
            done = self.finished.is_set() or (self.stopping.is_set() and not self.runs)
            if not self.writer.alive() and not done:
                self._restart()
            elif self.finished.is_set() and not self.runs:
                return

    @staticmethod
    def _give_up(run: ScanRun, error: str) -> None:
        """``run`` gets no (more) run file: the error named on it, its ring's slots freed for the frames to come
        (there is nowhere to write them; the receiver must not wait for it)."""
        log.error("scan %s: %s", run.start.scan_id, error)
        run.writer_errors.append(error)
        run.errors.append(f"writer: {error}")
        run.ring.written = 2**62

    def _restart(self) -> None:
        code = self.writer.process.exitcode
        with self.lock:
            self.writer = WriterProcess(self.flush_s)
            for run in list(self.runs):
                run.writer_deaths += 1
                if run.writer_deaths > MAX_DEATHS_PER_SCAN:
                    self.runs.remove(run)
                    part = run.parts[-1]
                    part.update(written=run.ring.written - part["first"], closed=True, died=True)
                    self._give_up(run, f"the run-file writer died {run.writer_deaths} times on this scan (exit code "
                                       f"{code}); it is not written further")  # fmt: skip
                    run.closed.set()
                    continue
                first = run.ring.written
                part = run.parts[-1]
                part.update(written=first - part["first"], closed=True, died=True)
                error = (
                    f"the run-file writer died (exit code {code}) after {first} frames of scan "
                    f"{run.start.scan_id}; they are in {part['requested']}, the rest goes to a new part file"
                )
                log.error(error)
                run.writer_errors.append(error)
                self._send_start(run, part_path(run.base_path, len(run.parts) + 1), first)
                if run.published > first:
                    self.writer.send({"op": "frames", "stop": run.published})
                if run.end_sent:
                    self.writer.send({"op": "end", "stop": run.stored,
                                      "attrs": {"complete": run.complete}})  # fmt: skip

    def stop(self) -> None:
        self.writer.stop()
