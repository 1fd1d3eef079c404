"""The run-file writer in its own process, so HDF5 work never holds the receiver's or the inference's interpreter.

The receiver puts frames in a :class:`~edgeray.stream.ring.FrameRing` (shared memory) and tells the writer how
far the ring is filled; the writer appends those frames to the scan's run file (:class:`RunFile`, one SWMR file,
valid at every moment) and, after each flush, sets the ring's ``written`` counter: frames below it are safe and
their slots may be reused. Control messages are JSON over a pipe (no pickle):

- on its start, once its imports are done -> ``{"op": "ready"}``;
- ``{"op": "start", "ring": {...}, "path": ..., "start": {scan_id, dtype, shape, geometry}, "attrs": {...}}``
  -> ``{"op": "started", "path": ...}``, or ``{"op": "closed", "written": 0, "path": ..., "error": ...}`` when the
  file cannot be made (that scan's later messages are ignored);
- ``{"op": "frames", "stop": N}``: frames ``< N`` are in the ring;
- ``{"op": "end", "stop": N, "attrs": {...}}`` -> ``{"op": "closed", "written": n, "path": ...}``;
- ``{"op": "stop"}``: the process ends.

Frames are appended in blocks (``block`` frames, or whatever is there every ``flush_s``), as before in a thread.
If the writer dies, every frame up to its last flush is in the file; the service sees the process gone, reports
it and starts another writer on a new part file from the first unwritten frame, which the ring still holds.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from multiprocessing.connection import Connection
from pathlib import Path

from edgeray.stream.protocol import Start, geometry_of
from edgeray.stream.ring import FrameRing
from edgeray.stream.runfile import RunFile

log = logging.getLogger("edgeray.writer")


def _send(connection: Connection, message: dict) -> None:
    connection.send_bytes(json.dumps(message).encode())


def _receive(connection: Connection, timeout: float) -> dict | None:
    if not connection.poll(timeout):
        return None
    return json.loads(connection.recv_bytes())


class _Scan:
    """What the writer holds for the open scan."""

    def __init__(self, message: dict):
        start = message["start"]
        self.ring = FrameRing.attach(message["ring"])
        self.file = RunFile(
            message["path"],
            geometry_of(Start(start["scan_id"], start["dtype"], tuple(start["shape"]), start["geometry"])),
            start["dtype"],
            message.get("attrs") or {},
        )
        self.written = int(message.get("first", 0))  # the ring's frame number of the file's first frame
        self.target = self.written
        self.flushed_at = time.perf_counter()
        self.busy_s = 0.0
        self.cpu_s = 0.0  # this process's CPU seconds in writes and flushes

    def write(self, upto: int) -> None:
        """Append the ring's frames ``written .. upto - 1``."""
        began, cpu_began = time.perf_counter(), time.process_time()
        ring = self.ring
        for first, start, stop in ring.spans(self.written, upto):
            self.file.append(ring.frames[start:stop], ring.positions_m[start:stop], ring.index[start:stop],
                             ring.wall_ns[start:stop])  # fmt: skip
            self.written = first + stop - start
        self.busy_s += time.perf_counter() - began
        self.cpu_s += time.process_time() - cpu_began

    def flush(self) -> None:
        began, cpu_began = time.perf_counter(), time.process_time()
        self.file.flush()
        self.ring.written = self.written  # only now may the slots be reused
        self.flushed_at = time.perf_counter()
        self.busy_s += self.flushed_at - began
        self.cpu_s += time.process_time() - cpu_began


def writer_main(connection: Connection, flush_s: float = 0.2, block: int = 1024) -> None:
    """The writer process: say it is ready, then follow the control messages until ``stop`` (or the pipe
    closes)."""
    scan: _Scan | None = None
    _send(connection, {"op": "ready"})
    while True:
        try:
            message = _receive(connection, flush_s / 2)
        except (EOFError, OSError):  # the service is gone
            message = {"op": "stop"}
        if message is None:
            if scan is not None and scan.target > scan.written:
                scan.write(scan.target)
                scan.flush()
            continue
        op = message["op"]
        if op == "start":
            try:
                scan = _Scan(message)
            except Exception as error:  # this scan has no run file; the writer (and the next scan) go on
                log.exception("the run file %s could not be made", message.get("path"))
                _send(connection, {"op": "closed", "written": 0, "path": str(message.get("path")),
                                   "error": f"{type(error).__name__}: {error}"})  # fmt: skip
                scan = None
                continue
            _send(connection, {"op": "started", "path": str(scan.file.path)})
        elif op == "frames" and scan is not None:
            scan.target = max(scan.target, int(message["stop"]))
            due = time.perf_counter() - scan.flushed_at >= flush_s
            if scan.target - scan.written >= block or due:
                scan.write(scan.target)
                scan.flush()
        elif op == "end" and scan is not None:
            scan.write(max(scan.target, int(message["stop"])))
            scan.flush()
            scan.file.close(message.get("attrs") or {})
            _send(connection, {"op": "closed", "written": scan.file.n_written, "path": str(scan.file.path),
                               "busy_s": scan.busy_s, "cpu_s": scan.cpu_s})  # fmt: skip
            scan.ring.close()
            scan = None
        elif op == "stop":
            if scan is not None:  # the service stopped mid-scan: keep what arrived
                scan.write(scan.target)
                scan.flush()
                scan.file.close({"complete": False})
                scan.ring.close()
            return


class WriterProcess:
    """The service's handle on a writer process: start it, send it work, read its replies, see it die.

    Args:
        flush_s: longest a received frame waits before it is flushed to the run file.
    """

    def __init__(self, flush_s: float = 0.2):
        context = multiprocessing.get_context("spawn")  # no fork of a process with threads and sockets
        self.connection, child = context.Pipe()
        self.process = context.Process(target=writer_main, args=(child, flush_s), name="edgeray-writer", daemon=True)
        self.process.start()
        child.close()
        self.replies: list[dict] = []

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Return once the process has started and imported what it needs (about half a second of CPU, which
        would otherwise compete with a scan's first frames); RuntimeError if it does not within ``timeout`` s."""
        if self.wait_for("ready", timeout) is None:
            raise RuntimeError(
                f"the run-file writer process did not start within {timeout:g} s (exit code {self.process.exitcode})"
            )

    def alive(self) -> bool:
        return self.process.is_alive()

    def send(self, message: dict) -> bool:
        """Send a control message; False when the writer is gone."""
        try:
            _send(self.connection, message)
            return True
        except (BrokenPipeError, OSError):
            return False

    def wait_for(self, op: str, timeout: float) -> dict | None:
        """The writer's next reply of kind ``op`` (None after ``timeout`` s or if it died)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for reply in self.replies:
                if reply["op"] == op:
                    self.replies.remove(reply)
                    return reply
            try:
                reply = _receive(self.connection, 0.05)
            except (EOFError, OSError):
                return None
            if reply is not None:
                self.replies.append(reply)
            elif not self.alive():
                return None
        return None

    def stop(self, timeout: float = 30.0) -> None:
        self.send({"op": "stop"})
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
        self.connection.close()


def part_path(path: Path, part: int) -> Path:
    """``scan.cxi`` -> ``scan_part2.cxi``: where a new writer continues after one died."""
    return path.with_name(f"{path.stem}_part{part}{path.suffix}")
