"""The edge's receiver: the ZeroMQ PULL socket, each message checked, each frame copied once into its scan's ring.

Messages are drained in bursts; bad ones are counted, logged and skipped. Valid frames go into the scan's
:class:`~edgeray.stream.ring.FrameRing` in shared memory (with position, index and arrival time); when the ring is
full (a stage has stalled) they wait in a spill bounded by ``spill_bytes``, reported in the summary: nothing is
dropped unless it overflows. New frames are announced to the writer and the inference every ``PUBLISH_EVERY_S``
(or every ``PUBLISH_FRAMES`` frames), not per frame.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np
import zmq

from edgeray.stream.protocol import End, Frame, ProtocolError, Start, decode, object_pixel_size_m
from edgeray.stream.ring import FrameRing
from edgeray.stream.scan import ScanEnded, ScanRun, ScanStarted, Stop
from edgeray.stream.supervisor import WriterSupervisor

log = logging.getLogger("edgeray.edge")

PUBLISH_EVERY_S = 0.002  # the receiver tells the writer and the inference about new frames this often (s)
PUBLISH_FRAMES = 64  # or once this many frames are new
WRITER_EVERY_S = 0.02  # the writer, which flushes every flush_s, hears of new frames this often (a pipe message
# every 2 ms was a seventh of the receiver's time, measured)
MIN_RING_FRAMES = 64  # a ring shrunk to the memory ceiling keeps at least this many slots, or its scan is refused


def ring_frames_within(start: Start, ring_frames: int, memory_bytes: int, spill_bytes: int) -> int:
    """Slots of ``start``'s ring within ``memory_bytes`` (the spill's ``spill_bytes`` counted): ``ring_frames``, or
    fewer for large frames; ValueError (naming sizes) when not even :data:`MIN_RING_FRAMES` fit."""
    frame_bytes = start.shape[0] * start.shape[1] * np.dtype(start.dtype).itemsize
    fitting = (memory_bytes - spill_bytes) // frame_bytes
    if fitting < MIN_RING_FRAMES:
        raise ValueError(
            f"scan {start.scan_id}: frames of {start.dtype} {list(start.shape)} ({frame_bytes / 2**20:.1f} MiB each) "
            f"need {MIN_RING_FRAMES * frame_bytes / 2**30:.1f} GiB for a ring of {MIN_RING_FRAMES}; the edge may use "
            f"{memory_bytes / 2**30:.1f} GiB a scan (--memory-gb)"
        )
    return int(min(ring_frames, fitting))


class Receiver:
    """The receiving stage; :meth:`run` is its thread.

    Args:
        socket: the bound PULL socket.
        options: the service's :class:`~edgeray.stream.edge.EdgeOptions` (``out``, ``ring_frames``,
            ``spill_bytes``).
        writer: the writer supervisor (told of scans and frames).
        control: the inference's queue (:class:`ScanStarted`, :class:`ScanEnded`, :class:`Stop`, in order).
        frames_ready: notified when frames are announced.
        stopping: set when the service stops.
    """

    def __init__(self, socket: zmq.Socket, options, writer: WriterSupervisor, control: queue.Queue,
                 frames_ready: threading.Condition, stopping: threading.Event):  # fmt: skip
        self.socket, self.options, self.writer = socket, options, writer
        self.control, self.frames_ready, self.stopping = control, frames_ready, stopping
        self.current: ScanRun | None = None
        self.invalid_total = 0
        self.received_total = 0
        self.rate_window: deque = deque(maxlen=64)  # (perf_counter_ns, received_total)

    def _reject(self, reason: str) -> None:
        self.invalid_total += 1
        if self.current is not None and not self.current.ended:
            self.current.invalid += 1
        if self.invalid_total <= 20 or self.invalid_total % 1000 == 0:
            log.warning("skipped message #%d: %s", self.invalid_total, reason)

    def _close_current(self, expected: int | None, reason: str) -> None:
        run = self.current
        if run is None or run.ended:
            return
        run.ended, run.expected = True, expected
        # the receiving thread's CPU while the scan was open (its clock read twice a scan: a system call here)
        run.cpu_s["receive"] = time.thread_time() - run.receive_cpu_mark
        log.info("scan %s: %s", run.start.scan_id, reason)
        self._publish_frames(run)

    def run(self) -> None:
        """The receiving thread, until the service stops."""
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        published_at = 0.0
        while not self.stopping.is_set():
            run = self.current
            waiting = run is not None and run.stored > run.published
            ready = poller.poll(PUBLISH_EVERY_S * 1e3 if waiting else 20)
            began = time.perf_counter()
            while ready:  # drain what is there (in bursts) before polling again
                try:
                    parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                try:
                    self._handle(parts, time.perf_counter_ns(), time.time_ns())
                except Exception as error:  # a message no check foresaw: refused, never the receiver's end
                    log.exception("a message could not be handled")
                    self._reject(f"the message could not be handled ({type(error).__name__}: {error})")
                run = self.current
                if run is not None and (run.stored - run.published >= PUBLISH_FRAMES or run.spill):
                    break  # a flood: hand these over (and free slots) before taking more
            run = self.current
            if run is not None:
                # announce new frames to the writer and the inference every PUBLISH_EVERY_S (or every
                # PUBLISH_FRAMES frames), not per burst: at 2 kHz a burst is often one frame
                if (began - published_at >= PUBLISH_EVERY_S or run.stored - run.published >= PUBLISH_FRAMES
                        or run.ended or not ready):  # fmt: skip
                    self._publish_frames(run)
                    published_at = began
                run.busy_s["receive"] += time.perf_counter() - began
        self._close_current(None, "stopped before its end message")
        run = self.current
        while run is not None and not run.end_sent:  # frames still waiting for ring slots go in first
            time.sleep(0.005)
            self._publish_frames(run)
        self.control.put(Stop())
        with self.frames_ready:
            self.frames_ready.notify_all()

    def _handle(self, parts: list, arrival_ns: int, wall_ns: int) -> None:
        self.received_total += 1
        self.rate_window.append((arrival_ns, self.received_total))
        try:
            message = decode(parts)
        except ProtocolError as error:
            self._reject(str(error))
            return
        run = self.current
        if isinstance(message, Start):
            if run is not None and run.start.scan_id == message.scan_id:
                if (message.dtype, message.shape) != (run.start.dtype, run.start.shape):
                    self._reject(f"scan {message.scan_id} restarted with another dtype or frame shape")
                    return
                if not run.ended:
                    log.info("scan %s: sender restarted; continuing the same run", message.scan_id)
                    return
            self._close_current(None, "a new scan started before its end message")
            self._open(message, arrival_ns)
        elif isinstance(message, Frame):
            if run is None or run.start.scan_id != message.scan_id:
                self._reject(f"frame {message.index} of scan {message.scan_id} arrived before its start message")
            elif run.ended:
                self._reject(f"frame {message.index} of scan {message.scan_id} arrived after its end message")
            elif message.data.shape != run.start.shape or message.data.dtype != run.frame_dtype:
                self._reject(f"frame {message.index} is {message.data.dtype} {message.data.shape}, the scan's "
                             f"start said {run.start.dtype} {run.start.shape}")  # fmt: skip
            elif message.index > 16 * (run.received + 65536):
                self._reject(f"frame index {message.index} is implausibly far ahead ({run.received} received)")
            elif (reason := self._implausible(run, message)) is not None:
                self._reject(reason)
            else:
                self._accept(run, message, arrival_ns, wall_ns)
        elif isinstance(message, End):
            if run is None or run.start.scan_id != message.scan_id or run.ended:
                self._reject(f"end of scan {message.scan_id}, which is not open")
            else:
                self._close_current(message.n_frames, f"ended, {run.received} frames received")

    def _implausible(self, run: ScanRun, message: Frame) -> str | None:
        """Why a well-formed frame cannot be used (non-finite counts, a position the object cannot hold), or None."""
        if run.frame_dtype.kind == "f" and not np.isfinite(message.data).all():
            return f"frame {message.index} of scan {message.scan_id} has non-finite counts (NaN or inf)"
        if run.anchor_m is None:
            run.anchor_m = message.position_m
            return None
        offset_px = max(abs(message.position_m[0] - run.anchor_m[0]) / run.object_pixel_m[0],
                        abs(message.position_m[1] - run.anchor_m[1]) / run.object_pixel_m[1])  # fmt: skip
        if offset_px > self.options.max_object_px:
            return (f"frame {message.index} of scan {message.scan_id}: position_m {list(message.position_m)} lies "
                    f"{offset_px:.3g} object pixels from the scan's first position {list(run.anchor_m)}, beyond the "
                    f"{self.options.max_object_px} px an object may span (positions must be in metres)")  # fmt: skip
        return None

    def _open(self, start: Start, arrival_ns: int) -> None:
        """A new scan: its ring, its run file (through the writer), its mosaic and refiner (through the inference).
        A scan whose ring would not fit the memory ceiling is refused (its frames are then refused as strays)."""
        try:
            slots = ring_frames_within(start, self.options.ring_frames, self.options.memory_bytes,
                                       self.options.spill_bytes)  # fmt: skip
        except ValueError as error:  # its frames are refused as strays; the scan before is left to finish
            self._reject(str(error))
            return
        if slots < self.options.ring_frames:
            log.warning("scan %s: its ring holds %d frames (not %d), within the memory ceiling of %.1f GiB",
                        start.scan_id, slots, self.options.ring_frames, self.options.memory_bytes / 2**30)  # fmt: skip
        ring = FrameRing(slots, start.shape, start.dtype)
        run = ScanRun(start, time.time(), arrival_ns, ring)
        run.receive_cpu_mark, run.frame_dtype = time.thread_time(), np.dtype(start.dtype)
        run.object_pixel_m = object_pixel_size_m(start)
        run.base_path = Path(self.options.out) / f"{start.scan_id}.cxi"
        self.current = run
        log.info("scan %s started (%s frames of %s %s)", start.scan_id, start.n_frames, start.shape, start.dtype)
        self.writer.open(run)
        self.control.put(ScanStarted(run))

    def _accept(self, run: ScanRun, message: Frame, arrival_ns: int, wall_ns: int) -> None:
        """A valid frame: mark it seen, then into the ring (or the spill while the ring is full)."""
        if message.index >= len(run.seen):  # grow by doubling: one byte per index, not a set entry
            grown = np.zeros(max(2 * len(run.seen), message.index + 1), dtype=bool)
            grown[: len(run.seen)] = run.seen
            run.seen = grown
        first = not run.seen[message.index]
        run.seen[message.index] = True
        run.duplicates += not first
        run.received += 1
        run.last_arrival_ns = arrival_ns
        item = (message.data, message.position_m, message.index, wall_ns, arrival_ns, first)
        if not run.spill and self._slot_free(run):
            self._store(run, item)
            return
        if run.spill_bytes + message.data.nbytes > self.options.spill_bytes:
            run.dropped += 1
            if run.dropped == 1 or run.dropped % 1000 == 0:
                log.error("scan %s: %d frames dropped: the ring (%d frames) and the spill (%d MB) are full",
                          run.start.scan_id, run.dropped, run.ring.capacity,
                          self.options.spill_bytes >> 20)  # fmt: skip
            return
        run.spill.append(item)  # the message's own buffer: no copy until a slot is free
        run.spill_bytes += message.data.nbytes
        run.spill_peak_frames = max(run.spill_peak_frames, len(run.spill))

    def _slot_free(self, run: ScanRun) -> bool:
        """The next slot's frame is written and handled by the inference (or never held one). Once the spill is
        half full while the writer keeps up, the network is what holds the ring: from then on it gives up the
        oldest frames it has not reached (the live image misses them, the run file does not)."""
        if run.stored - min(run.ring.written, run.inferred_upto) < run.ring.capacity:
            return True
        if run.spill_bytes >= self.options.spill_bytes // 2 and run.stored - run.ring.written < run.ring.capacity:
            if not run.shedding:
                log.warning("scan %s: the network is %d frames behind; it skips frames so that none is lost",
                            run.start.scan_id, run.stored - run.inferred_upto)  # fmt: skip
            run.shedding = True
            return True
        return False

    @staticmethod
    def _store(run: ScanRun, item: tuple) -> None:
        data, position, index, wall_ns, arrival_ns, infer = item
        ring, slot = run.ring, run.stored % run.ring.capacity
        ring.frames[slot] = data
        ring.positions_m[slot] = position
        ring.index[slot], ring.wall_ns[slot], ring.arrival_ns[slot], ring.infer[slot] = (
            index,
            wall_ns,
            arrival_ns,
            infer,
        )
        run.stored += 1

    def _publish_frames(self, run: ScanRun) -> None:
        """Move spilled frames into freed slots, then tell the writer and the inference how far the ring is filled
        (once per burst, not per frame); after the scan's end, tell them it ended once every frame is in."""
        while run.spill and self._slot_free(run):
            item = run.spill.popleft()
            run.spill_bytes -= item[0].nbytes
            self._store(run, item)
        if run.stored > run.published:
            run.ring.received = run.stored
            run.published = run.stored
            with self.frames_ready:
                self.frames_ready.notify_all()
        now_ns = time.perf_counter_ns()
        due = now_ns - run.told_writer_ns >= WRITER_EVERY_S * 1e9
        if run.published > run.told_writer and due and not run.end_sent:  # the end message carries its own count
            run.told_writer, run.told_writer_ns = run.published, now_ns
            self.writer.frames(run.published)
        if run.ended and not run.spill and not run.end_sent:
            run.end_sent = True
            self.writer.end(run)
            self.control.put(ScanEnded(run))
            with self.frames_ready:
                self.frames_ready.notify_all()
