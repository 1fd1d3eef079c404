"""The edge service: receive -> (write every frame) + (batch -> infer -> stitch -> refine) -> publish.

The stages share no interpreter lock where it matters:

- **receiver** (a thread): the ZeroMQ PULL socket, drained in bursts; each message is checked (bad ones are
  counted, logged, skipped) and each frame copied once, into the scan's :class:`~edgeray.stream.ring.FrameRing` in
  shared memory (with its position, index and arrival time). When the ring is full (a stage has stalled), frames
  wait in a spill bounded by ``spill_bytes``, reported in the summary; nothing is dropped unless it overflows.
- **writer** (a process, :mod:`edgeray.stream.writer`): reads the ring and appends to the scan's run file (one
  SWMR CXI file, valid at every moment), so HDF5 never holds the receiver or the network. If it dies, the service
  says so and a new writer continues in ``<scan>_part2.cxi`` from the first unflushed frame, which the ring holds.
- **inference** (a thread): takes batches straight from the ring (up to ``max_batch``, or what arrived within
  ``max_wait_ms``) as raw counts into ONNX Runtime (normalization inside the graph) and hands the patches on.
- **stitching** (a thread): adds the patches into the scan's :class:`Mosaic` and the frames to the live
  refinement (:mod:`edgeray.stream.refine`) and the continual learning (:mod:`edgeray.stream.learn`) when on,
  while the network works on the next batch (each stage of the two then keeps a core half busy at 2 kHz, not
  one thread nine tenths: measured, the backlog of a stall drained in seconds instead of lasting the scan).

At the end of a scan the service writes, in ``out/``: ``<scan>.cxi`` (the raw frames), ``<scan>_product.h5`` (the
mosaic as a product), ``<scan>.png`` and ``<scan>.json`` (the summary: counts, rates, latency from arrival to
in-mosaic, each stage's busy fraction and the highest rate the edge could have kept). The live view
(:mod:`edgeray.stream.dashboard`) and the PUB socket read :meth:`EdgeService.snapshot`.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zmq

from edgeray.io import CXIFile, Product, write_product
from edgeray.nn.checkpoint import save_model
from edgeray.stream import mosaic_kernel
from edgeray.stream.learn import LearnOptions, LiveLearner
from edgeray.stream.models import ModelHolder
from edgeray.stream.mosaic import Mosaic
from edgeray.stream.protocol import End, Frame, ProtocolError, Start, decode, geometry_of, object_pixel_size_m
from edgeray.stream.refine import LiveRefiner, RefineOptions
from edgeray.stream.ring import FrameRing
from edgeray.stream.security import server_socket_options
from edgeray.stream.writer import WriterProcess, part_path

log = logging.getLogger("edgeray.edge")

STAGES = ("receive", "infer", "stitch", "write")
PUBLISH_EVERY_S = 0.002  # the receiver tells the writer and the inference about new frames this often (s)
PUBLISH_FRAMES = 64  # or once this many frames are new
WRITER_EVERY_S = 0.02  # the writer, which flushes every flush_s, hears of new frames this often (a pipe message
# every 2 ms was a seventh of the receiver's time, measured)
SHED_MARGIN = 1024  # slots between the receiver and a network that has fallen a whole ring behind
STITCH_QUEUE_BATCHES = 64  # inverted batches waiting for the mosaic before the network waits too


@dataclass
class EdgeOptions:
    """Edge service settings.

    Attributes:
        listen: ZeroMQ endpoint the PULL socket binds (detectors connect to it).
        out: folder for run files, products, previews and summaries.
        model: surrogate folder (``None``: the shipped edge model).
        max_batch: largest inference batch, frames.
        max_wait_ms: longest a frame waits for its batch to fill, ms.
        flush_s: longest a received frame waits to be flushed to the run file, s.
        publish: PUB endpoint for the live mosaic and stats (``None``: off).
        scans: stop after this many scans have ended (``None``: run until stopped).
        curve_keys: folder of CurveZMQ keys (required to listen on anything but loopback).
        preview: write a PNG of each scan's mosaic.
        infer_threads: threads of the network's inference (the other stages need a core of their own).
        infer_workers: batches of this many parts run through the network at once (concurrent ONNX Runtime
            calls of ``infer_threads`` threads each), for machines with cores to spare; a batch then holds up to
            ``infer_workers * max_batch`` frames.
        registry: a model registry (:class:`edgeray.nn.registry.Registry`) to follow: the edge runs its
            ``CURRENT`` version and swaps to a new one between batches once it has passed validation
            (``model`` is published as the first version if the registry is empty).
        registry_poll_s: how often ``CURRENT`` is checked, s.
        refine: live refinement of each scan's image in the spare CPU time (:mod:`edgeray.stream.refine`), or
            None; it needs the model's probe (an edge model) or ``refine_probe``.
        refine_probe: a probe file (product, CXI, .npy) for refinement instead of the model's.
        learn: continual learning of each scan's sample (:mod:`edgeray.stream.learn`), or None: a better model is
            swapped in during the scan (written to ``out/learned/``) and the mosaic made again with it; with
            ``refine`` on, the refinement's object serves as labels.
        ring_frames: frames the shared-memory ring of a scan holds (a stall of writer or network up to that long
            costs nothing).
        spill_bytes: memory for frames beyond a full ring, bytes; past it frames are dropped and counted.
    """

    listen: str = "tcp://127.0.0.1:5555"
    out: Path = Path("run")
    model: Path | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0  # 20 saves ~0.1 core at 2 kHz, at +15 ms p50 (docs/benchmarks.md, batch wait)
    flush_s: float = 0.2
    publish: str | None = "tcp://127.0.0.1:5556"
    scans: int | None = None
    curve_keys: Path | None = None
    preview: bool = True
    infer_threads: int = 1
    infer_workers: int = 1
    registry: Path | None = None
    registry_poll_s: float = 0.5
    refine: RefineOptions | None = None
    refine_probe: Path | None = None
    learn: LearnOptions | None = None
    ring_frames: int = 8192
    spill_bytes: int = 256 << 20


@dataclass
class ScanRun:
    """What the service knows of one scan.

    Frames are numbered in arrival order (``k``-th frame stored: slot ``k % ring.capacity``); ``stored`` of them
    are in the ring, ``published`` of those announced to the writer and the inference, ``inferred_upto`` handled
    by the inference (inverted, or skipped as a repeat). Each field is written by one thread only.
    """

    start: Start
    started_wall: float
    started_perf_ns: int
    ring: FrameRing
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    expected: int | None = None
    ended: bool = False
    end_sent: bool = False
    last_arrival_ns: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(4096, dtype=bool))  # by sender index
    stored: int = 0
    published: int = 0
    told_writer: int = 0  # frames announced to the writer
    told_writer_ns: int = 0
    inferred_upto: int = 0
    stitched_upto: int = 0  # ring frames the stitching has handled (in the mosaic, or skipped as repeats)
    inferred: int = 0
    spill: deque = field(default_factory=deque)
    spill_bytes: int = 0
    spill_peak_frames: int = 0
    dropped: int = 0
    shedding: bool = False  # the network fell so far behind that it gives up frames (the writer never does)
    not_inverted: int = 0  # frames the network gave up
    base_path: Path | None = None
    parts: list = field(default_factory=list)  # run files, in order, with the frames each holds
    writer_errors: list = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(4096, dtype=np.float32))  # first `inferred`
    mosaic: Mosaic | None = None
    count_sum: float = 0.0
    count_pixels: int = 0
    version_counts: dict = field(default_factory=dict)  # model version -> frames it inverted
    version_segments: list = field(default_factory=list)  # [first index, last index, model version]
    refiner: LiveRefiner | None = None
    learner: LiveLearner | None = None
    busy_s: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # wall seconds in each stage
    cpu_s: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # CPU seconds of each stage's threads
    receive_cpu_mark: float = 0.0  # the receiving thread's CPU clock when the scan opened
    frame_dtype: np.dtype | None = None  # the start message's dtype (compared per frame: no string per frame)

    @property
    def written(self) -> int:
        """Frames safely in the run file(s): the closed parts' counts, or the ring's flushed counter."""
        closed = sum(part.get("written", 0) for part in self.parts if part.get("closed"))
        return closed if self.closed.is_set() else max(closed, self.ring.written if self.ring else 0)


def latency_profile(latencies_ms: np.ndarray, seconds: float) -> list[float]:
    """p99 latency (ms) of each second of a scan: the inverted frames, in order, in ``ceil(seconds)`` equal
    blocks; where in the scan the slow frames were (its start, a stall, the end)."""
    blocks = min(int(np.ceil(seconds)), len(latencies_ms))
    if blocks < 1:
        return []
    return [round(float(np.percentile(block, 99)), 1) for block in np.array_split(latencies_ms, blocks)]


class EdgeService:
    """The edge service; :meth:`start` its threads, :meth:`stop` (or ``options.scans``) to end, :meth:`join`."""

    def __init__(self, options: EdgeOptions, context: zmq.Context | None = None):
        if options.infer_workers < 1:
            raise ValueError(f"infer_workers must be >= 1, not {options.infer_workers}")
        self.options = options
        self.torch_threads = torch.get_num_threads()  # the process's; the stream's threads each use one
        self.out = Path(options.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.context = context or zmq.Context.instance()
        self.models = ModelHolder(options.model, options.registry, "uint16", options.infer_threads,
                                  options.registry_poll_s)  # fmt: skip
        mosaic_kernel.warm_up()  # compiled before the first frame can arrive, not on the first batch
        if options.learn is not None and self.models.get().kind == "edge":
            from edgeray.nn.checkpoint import load_model
            from edgeray.stream.learn import warm_up

            warm_up(load_model(self.models.get().model_dir, "cpu")[0])
        self.socket = self.context.socket(zmq.PULL)
        self.socket.setsockopt(zmq.RCVHWM, 0)  # never drop: the queue in front of us is memory
        self.socket.setsockopt(zmq.LINGER, 0)
        server_socket_options(self.socket, options.listen, options.curve_keys)
        self.socket.bind(options.listen)
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.publisher = None
        if options.publish:
            self.publisher = self.context.socket(zmq.PUB)
            self.publisher.setsockopt(zmq.SNDHWM, 4)
            self.publisher.setsockopt(zmq.LINGER, 0)
            server_socket_options(self.publisher, options.publish, options.curve_keys)
            self.publisher.bind(options.publish)
        self.infer_pool = None
        if options.infer_workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            self.infer_pool = ThreadPoolExecutor(options.infer_workers, thread_name_prefix="edge-infer-worker")
        self.pictures = None
        if options.preview:  # PNGs are drawn in a process of their own: drawing holds the interpreter for long
            self.pictures = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
            self.pictures.submit(_load_pictures).result()  # started (and matplotlib loaded) before any frame
        self.writer = WriterProcess(options.flush_s)
        self.writer.wait_ready()  # ready before the first frame can come: its start-up would delay the first ones
        self.writer_lock = threading.Lock()  # the receiver sends, the monitor restarts
        self.runs_in_writer: deque = deque()  # scans sent to the writer and not yet closed, oldest first
        self.control: queue.Queue = queue.Queue()  # start / end / stop, in order, for the inference
        self.to_stitch: queue.Queue = queue.Queue(STITCH_QUEUE_BATCHES)  # batches, end, stop: in order
        self.to_finish: queue.Queue = queue.Queue()  # ended scans, then None
        self.frames_ready = threading.Condition()
        self.stopping = threading.Event()
        self.finished = threading.Event()
        self.lock = threading.Lock()  # guards the current mosaic and the summaries list
        self.current: ScanRun | None = None
        self.summaries: list[dict] = []
        self.invalid_total = 0
        self.received_total = 0
        self.rate_window: deque = deque(maxlen=64)  # (perf_counter_ns, received_total)
        self.finishers: list[threading.Thread] = []  # scans whose refinement is still running
        self.recent_latency_ms: deque = deque(maxlen=4000)
        self.threads = [
            threading.Thread(target=self._receive, name="edge-receive", daemon=True),
            threading.Thread(target=self._infer, name="edge-infer", daemon=True),
            threading.Thread(target=self._stitch, name="edge-stitch", daemon=True),
            threading.Thread(target=self._finish_scans, name="edge-finish", daemon=True),
            threading.Thread(target=self._watch_writer, name="edge-writer-monitor", daemon=True),
        ]
        if self.publisher is not None:
            self.threads.append(threading.Thread(target=self._publish, name="edge-publish", daemon=True))
        if self.models.registry is not None:
            self.threads.append(threading.Thread(target=self.models.watch, args=(self.finished,),
                                                 name="edge-registry", daemon=True))  # fmt: skip

    # -- the model, for callers that knew it as attributes -----------------------------------------------------
    @property
    def model_version(self) -> str:
        return self.models.get().version

    @property
    def swaps(self) -> list[dict]:
        return self.models.swaps

    @property
    def rejected_versions(self) -> dict[str, str]:
        return self.models.rejected

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> EdgeService:
        for thread in self.threads:
            thread.start()
        log.info("edge listening on %s, model %s", self.endpoint, self.model_version)
        return self

    def stop(self) -> None:
        """Stop receiving; the open scan (if any) is closed as incomplete, with every received frame written."""
        self.stopping.set()

    def join(self, timeout: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout)
        if self.infer_pool is not None:
            self.infer_pool.shutdown(wait=True)
        if self.pictures is not None:
            self.pictures.shutdown(wait=True)
        self.writer.stop()
        self.socket.close(0)
        if self.publisher is not None:
            self.publisher.close(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the service has finished (``options.scans`` reached or stopped); True if it has."""
        return self.finished.wait(timeout)

    # -- receiver --------------------------------------------------------------------------------------------
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

    def _receive(self) -> None:
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
                self._handle(parts, time.perf_counter_ns(), time.time_ns())
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
        self.control.put(("stop", None))
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
            else:
                self._accept(run, message, arrival_ns, wall_ns)
        elif isinstance(message, End):
            if run is None or run.start.scan_id != message.scan_id or run.ended:
                self._reject(f"end of scan {message.scan_id}, which is not open")
            else:
                self._close_current(message.n_frames, f"ended, {run.received} frames received")

    def _open(self, start: Start, arrival_ns: int) -> None:
        """A new scan: its ring, its run file (through the writer), its mosaic and refiner (through the inference)."""
        ring = FrameRing(self.options.ring_frames, start.shape, start.dtype)
        run = ScanRun(start, time.time(), arrival_ns, ring)
        run.receive_cpu_mark, run.frame_dtype = time.thread_time(), np.dtype(start.dtype)
        run.base_path = self.out / f"{start.scan_id}.cxi"
        self.current = run
        log.info("scan %s started (%s frames of %s %s)", start.scan_id, start.n_frames, start.shape, start.dtype)
        with self.writer_lock:
            self.runs_in_writer.append(run)
            self._send_start(run, run.base_path, 0)
        self.control.put(("start", run))

    def _send_start(self, run: ScanRun, path: Path, first: int) -> None:
        start = run.start
        self.writer.send({"op": "start", "ring": run.ring.config(), "path": str(path), "first": first,
                          "start": {"scan_id": start.scan_id, "dtype": start.dtype, "shape": list(start.shape),
                                    "geometry": start.geometry},
                          "attrs": {"scan_id": start.scan_id, "edge_model": self.model_version}})  # fmt: skip
        run.parts.append({"requested": str(path), "first": first})

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
        if run.published > run.told_writer and now_ns - run.told_writer_ns >= WRITER_EVERY_S * 1e9:
            run.told_writer, run.told_writer_ns = run.published, now_ns
            with self.writer_lock:
                self.writer.send({"op": "frames", "stop": run.published})
        if run.ended and not run.spill and not run.end_sent:
            run.end_sent = True
            with self.writer_lock:
                self.writer.send({"op": "end", "stop": run.stored, "attrs": {"complete": run.expected is not None}})
            self.control.put(("end", run))
            with self.frames_ready:
                self.frames_ready.notify_all()

    # -- writer ----------------------------------------------------------------------------------------------
    def _watch_writer(self) -> None:
        """Read the writer's replies (files closed, with their frame counts); when the writer process dies, say
        so, and start another that continues the open scans in new part files from their first unflushed frame
        (still in the ring)."""
        while True:
            if self.runs_in_writer:
                reply = self.writer.wait_for("closed", 0.2)
                if reply is not None:
                    with self.writer_lock:
                        run = self.runs_in_writer.popleft()
                    run.parts[-1].update(path=reply["path"], written=reply["written"], closed=True)
                    run.busy_s["write"] += reply.get("busy_s", 0.0)
                    run.cpu_s["write"] += reply.get("cpu_s", 0.0)
                    run.closed.set()
                    continue
            else:
                time.sleep(0.1)
            self.writer.replies = [r for r in self.writer.replies if r["op"] != "started"]
            done = self.finished.is_set() or (self.stopping.is_set() and not self.runs_in_writer)
            if not self.writer.alive() and not done:
                self._restart_writer()
            elif self.finished.is_set() and not self.runs_in_writer:
                return

    def _restart_writer(self) -> None:
        code = self.writer.process.exitcode
        with self.writer_lock:
            self.writer = WriterProcess(self.options.flush_s)
            for run in self.runs_in_writer:
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
                                      "attrs": {"complete": run.expected is not None}})  # fmt: skip

    # -- inference -------------------------------------------------------------------------------------------
    def _infer(self) -> None:
        torch.set_num_threads(1)  # for this thread (torch keeps one setting per thread): the other stages need cores
        run: ScanRun | None = None
        while True:
            try:
                kind, item = self.control.get_nowait()
            except queue.Empty:
                kind, item = None, None
            if kind == "start":
                run = item
                model = self.models.get()
                run.mosaic = Mosaic(run.start.shape, object_pixel_size_m(run.start), model.weights)
                run.refiner = self._make_refiner(run, model.probe)
                run.learner = self._make_learner(run, model)
            elif kind == "end":
                while self._next_batch(item, drain=True):
                    pass
                self.to_stitch.put(("end", item))
                continue
            elif kind == "stop":
                self.to_stitch.put(("stop", None))
                return
            if run is None or not self._next_batch(run):
                with self.frames_ready:
                    self.frames_ready.wait(self._wait_s(run))

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
            self.to_stitch.put(("upto", (run, upto)))
            return
        positions = ring.positions_m[window][keep].copy()
        arrivals = ring.arrival_ns[window][keep].copy()
        indices = ring.index[window][keep]
        began, cpu_began = time.perf_counter(), time.thread_time()
        run.count_sum += float(counts.sum(dtype=np.float64))
        run.count_pixels += counts.size
        scale = run.count_sum / max(run.count_pixels, 1)  # running mean count per pixel of the scan
        model = self.models.for_dtype(run.start.dtype)
        amplitude, phase, workers_cpu_s = self._run_network(model.runtime, counts, scale)
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
        self.to_stitch.put(("batch", (run, amplitude, phase, positions, arrivals, frames, upto)))

    def _stitch(self) -> None:
        """The stitching thread: inverted batches into their scan's mosaic (and refiner), in order; a scan's end
        once its last batch is in; the service's end once every scan's refinement is done."""
        torch.set_num_threads(1)  # one core for stitching: two threads cost the receiver more than they gain
        while True:
            kind, item = self.to_stitch.get()
            if kind == "batch":
                self._stitch_batch(*item)
            elif kind == "upto":  # a batch of repeats only: nothing to stitch
                item[0].stitched_upto = item[1]
            elif kind == "end":  # the scan's summary, products and pictures: on the finisher's thread, so the
                self.to_finish.put(item)  # next scan's first batches never wait for them
            else:
                self.to_finish.put(None)
                return

    def _finish_scans(self) -> None:
        """The finisher thread: ended scans' summaries, products and pictures, in order; the service's end once
        every scan's refinement and learning are done."""
        while (run := self.to_finish.get()) is not None:
            try:
                self._finish(run)
            except Exception:  # a scan that cannot be summarized must not stop the next ones being
                log.exception("scan %s: its summary or products could not be written", run.start.scan_id)
        for finisher in self.finishers:
            finisher.join()
        self.finished.set()

    def _stitch_batch(self, run: ScanRun, amplitude: torch.Tensor, phase: torch.Tensor, positions: np.ndarray,
                      arrivals: np.ndarray, frames: np.ndarray | None, upto: int) -> None:  # fmt: skip
        began, cpu_began = time.perf_counter_ns(), time.thread_time()
        with self.lock:  # the learner's frames and the mosaic's patches stay in step (a new mosaic is made from them)
            run.mosaic.add_polar(amplitude, phase, positions)
            if run.learner is not None:
                run.learner.add(frames, positions)
        if run.refiner is not None:
            run.refiner.add(frames, positions)
        now = time.perf_counter_ns()
        run.busy_s["stitch"] += (now - began) / 1e9
        run.cpu_s["stitch"] += time.thread_time() - cpu_began
        latencies = (now - arrivals) / 1e6
        if run.inferred + len(latencies) > len(run.latencies_ms):
            extra = np.zeros(max(len(run.latencies_ms), len(latencies)), np.float32)
            run.latencies_ms = np.concatenate([run.latencies_ms, extra])
        run.latencies_ms[run.inferred : run.inferred + len(latencies)] = latencies
        self.recent_latency_ms.extend(latencies.tolist())
        run.inferred += len(latencies)
        run.stitched_upto = upto

    def _run_network(self, runtime, counts: np.ndarray, scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
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

    def _make_refiner(self, run: ScanRun, model_probe: torch.Tensor | None) -> LiveRefiner | None:
        """The scan's live refiner, when refinement is on and a probe is known (else a warning, and none)."""
        if self.options.refine is None:
            return None
        probe = model_probe
        if self.options.refine_probe is not None:
            from edgeray.sim.probes import probe_from_file

            probe = torch.from_numpy(probe_from_file(self.options.refine_probe, run.start.shape)[0])
        if probe is None or tuple(probe.shape) != tuple(run.start.shape):
            log.warning("scan %s: no refinement (the model carries no probe of %s; give --refine-probe)",
                        run.start.scan_id, run.start.shape)  # fmt: skip
            return None
        probe = probe / torch.linalg.vector_norm(probe)

        def mosaic():
            # The lock only for the references: the refinement runs at the lowest priority, and holding the lock
            # through a copy of the whole mosaic it could be descheduled with it, stalling the stitching. A grown
            # mosaic is a new pair of tensors, so these stay consistent with this origin; a patch added while
            # they are copied may be in one and not yet in the other, which only touches the refinement's seed.
            with self.lock:
                m = run.mosaic
                if m.origin_m is None:
                    return None, None, None, None
                numerator, coverage, origin_m, pixel_size_m = m.numerator, m.coverage, m.origin_m, m.pixel_size_m
            return numerator.clone(), coverage.clone(), origin_m.copy(), pixel_size_m.copy()

        def backlog() -> int:  # frames not yet in the mosaic; the writer's only once it lags by half the ring
            unwritten = run.published - run.ring.written
            return (run.published - run.stitched_upto) + (unwritten if unwritten > run.ring.capacity // 2 else 0)

        return LiveRefiner(run.start.shape, probe, self.options.refine, mosaic, backlog,
                           tail_threads=self.torch_threads).start()  # fmt: skip

    def _make_learner(self, run: ScanRun, model) -> LiveLearner | None:
        """The scan's continual learner, when learning is on and the model is an edge model of the scan's frames
        (else a warning, and none)."""
        if self.options.learn is None:
            return None
        from edgeray.nn.checkpoint import load_model

        size = model.card["config"]["frame_size"]
        if model.kind != "edge" or tuple(run.start.shape) != (size, size):
            log.warning("scan %s: no learning (it needs an edge model of %s frames, the model is a %s of %d)",
                        run.start.scan_id, run.start.shape, model.kind, size)  # fmt: skip
            return None
        base_card = model.card
        learner: LiveLearner | None = None

        def labels(positions_m: np.ndarray) -> torch.Tensor | None:
            refiner, needed = run.refiner, self.options.learn.label_epochs
            if refiner is None or not needed or refiner.epochs < needed:
                return None
            from edgeray.nn.trainset import object_patches, relative_to_transmission

            with refiner.lock:
                if refiner.object is None:
                    return None
                positions_px = (positions_m - refiner.origin_m) / refiner.pixel_size_m
                patches = object_patches(refiner.object.numpy(), positions_px, run.start.shape)
                probe = None if refiner.probe is None else refiner.probe[0].numpy()
            # the refinement's amplitude scale drifts once it refines its probe: labels are relative to the mean
            # transmission, as the network's patches are
            return torch.from_numpy(relative_to_transmission(patches, probe))

        def swap(candidate, record: dict) -> bool:
            directory = self.out / "learned" / f"{run.start.scan_id}-{learner.swaps + 1}"
            card = {k: v for k, v in base_card.items() if k not in ("history", "evaluation")}
            card["learned_at_edge"] = {"scan_id": run.start.scan_id, "from": model.version, **record}
            save_model(directory, candidate, card)
            try:
                loaded = self.models.install(directory, {"source": "learned at the edge", "scan_id": run.start.scan_id,
                                                         "step": record["step"]})  # fmt: skip
            except (ValueError, OSError, RuntimeError) as error:
                log.error("scan %s: the learned model %s was refused: %s", run.start.scan_id, directory, error)
                return False
            if learner.complete:
                began = time.perf_counter()
                self._reinvert(run, loaded)
                record["reinvert_s"] = time.perf_counter() - began
            return True

        def backlog() -> int:
            return run.published - run.stitched_upto

        def network():  # loaded in the learner's own thread: the stream's start does not wait for it
            return load_model(model.model_dir, "cpu")[0]

        # after the scan's end the cores are shared with the refinement, when it runs (threads of the two beyond
        # the cores slow both)
        threads = max(1, self.torch_threads // 2) if run.refiner is not None else self.torch_threads
        learner = LiveLearner(network, run.start.shape, run.start.dtype, self.options.learn, swap, labels, backlog,
                              tail_threads=threads)  # fmt: skip
        return learner.start()

    def _reinvert(self, run: ScanRun, model) -> None:
        """Make the scan's mosaic again from every frame so far with ``model`` (a swapped-in one): most frames
        outside the lock, the last few under it, so the stitching waits only for those."""
        learner = run.learner
        mosaic = Mosaic(run.start.shape, object_pixel_size_m(run.start), model.weights)
        with self.lock:  # on the old mosaic's grid, which the live refinement's object follows
            old = run.mosaic
            mosaic.origin_m = None if old.origin_m is None else old.origin_m.copy()
            mosaic.numerator, mosaic.coverage = torch.zeros_like(old.numerator), torch.zeros_like(old.coverage)
        done = 0
        while True:
            with self.lock:
                stop = learner.stored
                if stop - done <= self.options.max_batch:
                    self._add_inverted(mosaic, model, learner, done, stop)
                    run.mosaic = mosaic
                    return
            self._add_inverted(mosaic, model, learner, done, stop)
            done = stop

    @staticmethod
    def _add_inverted(mosaic: Mosaic, model, learner: LiveLearner, first: int, stop: int, batch: int = 512) -> None:
        for start in range(first, stop, batch):
            counts, positions = learner.kept_at(np.arange(start, min(start + batch, stop)))
            amplitude, phase = model.runtime(counts, learner.scale)
            mosaic.add_polar(amplitude, phase, positions)

    # -- the end of a scan -----------------------------------------------------------------------------------
    def _record(self, summary: dict, path: Path) -> None:
        """Write a scan's summary and count it (the service stops after ``options.scans`` of them)."""
        path.write_text(json.dumps(summary, indent=2))
        with self.lock:
            self.summaries.append(summary)
        if self.options.scans is not None and len(self.summaries) >= self.options.scans:
            self.stopping.set()

    def _finish(self, run: ScanRun) -> None:
        """Write the product, preview and summary of an ended scan."""
        if not run.closed.wait(60):
            run.writer_errors.append("the run-file writer did not close the file within 60 s")
        scan_id = run.start.scan_id
        seconds = max((run.last_arrival_ns - run.started_perf_ns) / 1e9, 1e-9)
        latencies = run.latencies_ms[: run.inferred].astype(np.float64)
        paths = [part.get("path", part["requested"]) for part in run.parts]
        files = {"raw": paths[0] if paths else None}
        if len(paths) > 1:
            files["raw_parts"] = paths
        if run.mosaic is not None and run.mosaic.n_patches:
            files.update(self._write_product(run))
        rate = run.received / seconds if run.received > 1 else 0.0
        busy = {stage: value / seconds for stage, value in run.busy_s.items()}
        cpu = {stage: value / seconds for stage, value in run.cpu_s.items()}
        cores = os.cpu_count() or 1
        # the highest rate the stream's own CPU time allows: no stage above one core, all of them within the
        # machine's cores (wall busy time would count waiting for a core as work, on a loaded machine)
        load = max(max(cpu.values()), sum(cpu.values()) / cores)
        summary = {
            "scan_id": scan_id,
            "complete": run.expected is not None and run.received - run.duplicates >= run.expected,
            "frames_expected": run.expected if run.expected is not None else run.start.n_frames,
            "frames_received": run.received,
            "frames_written": run.written,
            "frames_inferred": run.inferred,
            "frames_invalid": run.invalid,
            "frames_duplicate": run.duplicates,
            "frames_dropped": run.dropped,
            "frames_not_inverted": run.not_inverted,
            "spill_peak_frames": run.spill_peak_frames,
            "writer_errors": run.writer_errors,
            "seconds": seconds,
            "frames_per_s": rate,
            "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies.size else None,
            "latency_ms_max": float(latencies.max()) if latencies.size else None,
            "latency_ms_p99_per_s": latency_profile(latencies, seconds),
            "stage_busy_fraction": busy,
            "stage_cpu_fraction": cpu,
            "stream_cpu_cores": sum(cpu.values()),
            "max_rate_hz": rate / max(load, 1e-9) if rate else None,
            "model_version": self.model_version,
            "model_versions": run.version_counts,
            "model_version_segments": run.version_segments,
            "model_swaps": [s for s in self.swaps if s["unix_s"] >= run.started_wall],
            "max_batch": self.options.max_batch,
            "max_wait_ms": self.options.max_wait_ms,
            "files": files,
        }
        path = self.out / f"{Path(paths[0]).stem if paths else scan_id}.json"
        log.info("scan %s: %d received, %d written, %d inferred, p99 latency %s ms, stream CPU %.2f cores -> could "
                 "have kept %s frames/s -> %s", scan_id, run.received, run.written, run.inferred,
                 summary["latency_ms_p99"], sum(cpu.values()), summary["max_rate_hz"], path)  # fmt: skip
        if run.refiner is None and run.learner is None:
            self._record(summary, path)
            run.ring.close()
            return
        for helper in (run.refiner, run.learner):  # they go on for their tails in their own threads; the next
            if helper is not None:  # scan need not wait
                helper.end()

        def finish_helpers() -> None:
            if run.learner is not None:
                run.learner.done.wait()
                summary["learning"] = run.learner.summary()
                if run.learner.swaps:
                    summary["model_version"] = self.model_version
                    summary["model_swaps"] = [s for s in self.swaps if s["unix_s"] >= run.started_wall]
                    if run.learner.complete and run.mosaic.n_patches:  # the mosaic was made again: its product too
                        files.update(self._write_product(run))
                log.info("scan %s learned: %d steps, %d swaps", scan_id, run.learner.steps, run.learner.swaps)
            if run.refiner is not None:
                run.refiner.done.wait()
                summary["refinement"] = run.refiner.summary()
                if run.refiner.object is not None and run.mosaic.n_patches:
                    files.update(self._write_product(run, refined=True))
                log.info("scan %s refined: %.1f epochs, misfit %s", scan_id, run.refiner.epochs, run.refiner.misfit)
            self._record(summary, path)
            run.ring.close()

        finisher = threading.Thread(target=finish_helpers, name="edge-scan-finish", daemon=True)
        self.finishers.append(finisher)
        finisher.start()

    def _write_product(self, run: ScanRun, refined: bool = False) -> dict:
        """The network's mosaic (or, ``refined``, the live refinement's image and probe) as a product, with its
        preview; returns the files written."""
        paths = [part.get("path", part["requested"]) for part in run.parts]
        stem = Path(paths[0]).stem if paths else run.start.scan_id
        with self.lock:
            obj, _ = run.mosaic.image()
            center = run.mosaic.center_m()
            numerator, coverage = run.mosaic.numerator.numpy().copy(), run.mosaic.coverage.numpy().copy()
        probe = np.zeros((1, *run.start.shape), dtype=np.complex64)
        engine, suffix = "nn-stream", "_product"
        history = np.zeros((0, 2))
        if refined:
            image = run.refiner.image(numerator, coverage)
            obj = np.where(np.isfinite(image), image, 1.0).astype(np.complex64)
            probe = run.refiner.probe.numpy().astype(np.complex64)
            engine, suffix = f"nn-stream + live {run.refiner.options.engine}", "_refined"
            history = np.asarray(run.refiner.history, dtype=np.float64).reshape(-1, 2)  # (epoch, misfit)
        pixel = tuple(float(v) for v in run.mosaic.pixel_size_m)
        geometry = geometry_of(run.start)
        positions = [np.zeros((0, 2))]
        for path in paths:
            with CXIFile(path) as cxi:
                positions.append(cxi.positions_m)
        product = Product(
            object=obj[None],
            probe=probe,
            positions_m=np.concatenate(positions),
            object_pixel_size_m=pixel,
            probe_pixel_size_m=pixel,
            energy_eV=geometry.energy_eV,
            distance_m=geometry.distance_m,
            object_center_m=center,
            name=f"edgeray edge {self.model_version}",
            loss_values=history[:, 1],
            loss_epochs=history[:, 0],
            attrs={"engine": engine, "model": self.model_version, "scan_id": run.start.scan_id},
        )
        product_path = write_product(self.out / f"{stem}{suffix}.h5", product)
        key = "refined" if refined else "product"
        files = {key: str(product_path)}
        if self.options.preview:
            png = self.out / (f"{stem}_refined.png" if refined else f"{stem}.png")
            drawn = self.pictures.submit(_draw_preview, str(product_path), str(png)).result()
            files[f"{key}_preview" if refined else "preview"] = drawn
        return files

    # -- live state ------------------------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """Stats for the live view: rates, latency, queue depths, model, the open scan's counters."""
        window = list(self.rate_window)
        rate = 0.0
        if len(window) > 1 and window[-1][0] > window[0][0]:
            rate = (window[-1][1] - window[0][1]) / ((window[-1][0] - window[0][0]) / 1e9)
        if window and time.perf_counter_ns() - window[-1][0] > 1e9:
            rate = 0.0
        recent = np.array(self.recent_latency_ms) if self.recent_latency_ms else np.zeros(0)
        run = self.current
        return {
            "scan_id": run.start.scan_id if run else None,
            "scan_open": bool(run and not run.ended),
            "frames_received": run.received if run else 0,
            "frames_inferred": run.inferred if run else 0,
            "frames_written": run.written if run else 0,
            "frames_expected": (run.expected or run.start.n_frames) if run else None,
            "frames_invalid_total": self.invalid_total,
            "receive_rate_hz": rate,
            "latency_ms_p50": float(np.percentile(recent, 50)) if recent.size else None,
            "latency_ms_p99": float(np.percentile(recent, 99)) if recent.size else None,
            "infer_queue": (run.published - run.stitched_upto) if run else 0,  # not yet in the mosaic
            "write_queue": (run.published - run.ring.written) if run and not run.closed.is_set() else 0,
            "spill": len(run.spill) if run else 0,
            "model_version": self.model_version,
            "mosaic_patches": run.mosaic.n_patches if run and run.mosaic else 0,
            "view_version": (run.mosaic.n_patches if run and run.mosaic else 0)
            + (run.refiner.updates if run and run.refiner else 0),
            "refine_epochs": run.refiner.epochs if run and run.refiner else None,
            "refine_misfit": run.refiner.misfit if run and run.refiner else None,
            "scans_done": len(self.summaries),
        }

    def _publish(self, period_s: float = 0.2) -> None:
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
        run = self.current
        if run is None or run.mosaic is None or not run.mosaic.n_patches:
            return None
        step = 1 if max_side is None else max(1, -(-max(run.mosaic.shape) // max_side))
        if run.refiner is not None:
            with self.lock:
                numerator, coverage = run.mosaic.numerator.numpy().copy(), run.mosaic.coverage.numpy().copy()
            return run.refiner.image(numerator, coverage)[::step, ::step]
        with self.lock:  # copy only the pixels shown, so inference waits as little as possible
            numerator = run.mosaic.numerator[::step, ::step].numpy().copy()
            coverage = run.mosaic.coverage[::step, ::step].numpy().copy()
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(coverage > 0, numerator / coverage, np.nan + 0j).astype(np.complex64)


def _load_pictures() -> None:
    """Import what drawing a preview needs (run in the pictures process when it starts)."""
    import edgeray.viz  # noqa: F401


def _draw_preview(product_path: str, png: str) -> str:
    """A product's PNG preview (in the pictures process); returns its path."""
    from edgeray.viz import save_preview

    return str(save_preview(product_path, png))
