"""The edge service: receive -> (write every frame) + (batch -> infer -> stitch) -> publish.

Three threads share the work so that receiving never waits for anything else:

- **receiver**: the ZeroMQ PULL socket; decodes and checks each message (bad ones are counted, logged, skipped)
  and hands frames to the writer and the inference queues (unbounded: memory, not frames, is what a stall costs);
- **writer**: appends every received frame to the scan's run file (:mod:`edgeray.stream.runfile`), flushing at
  least every ``flush_s``;
- **inference**: batches frames (up to ``max_batch``, or whatever arrived within ``max_wait_ms`` of the first),
  inverts them with the surrogate (ONNX Runtime on the CPU) and adds the patches to the scan's :class:`Mosaic`.

At the end of a scan the service writes, in ``out/``: ``<scan>.cxi`` (the raw frames), ``<scan>_product.h5`` (the
mosaic as a product), ``<scan>.png`` and ``<scan>.json`` (the summary: counts, rates, latency from arrival to
in-mosaic). The live view (:mod:`edgeray.stream.dashboard`) and the PUB socket read :meth:`EdgeService.snapshot`.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import zmq

from edgeray.io import CXIFile, Product, write_product
from edgeray.nn.checkpoint import SHIPPED, load_model
from edgeray.nn.infer import cpu_runtime, stitch_weights
from edgeray.nn.models import normalize_frames
from edgeray.nn.stitch import to_complex
from edgeray.stream.mosaic import Mosaic
from edgeray.stream.protocol import End, Frame, ProtocolError, Start, decode, geometry_of, object_pixel_size_m
from edgeray.stream.refine import LiveRefiner, RefineOptions
from edgeray.stream.runfile import RunFile
from edgeray.stream.security import server_socket_options

log = logging.getLogger("edgeray.edge")


def fixed_mmap_threshold(size_bytes: int = 128 * 1024) -> bool:
    """Keep glibc's mmap threshold fixed, so large buffers (frame batches) are mmapped and returned on free.

    By default glibc raises the threshold after each freed large block; the edge's threads then carve batches
    from their heaps, which fragment: the service's memory grew from 0.4 to 1.4 GB in 80 s at 2 kHz (measured),
    and stays flat with the threshold fixed. No-op (False) where the C library is not glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, size_bytes))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


@dataclass
class EdgeOptions:
    """Edge service settings.

    Attributes:
        listen: ZeroMQ endpoint the PULL socket binds (detectors connect to it).
        out: folder for run files, products, previews and summaries.
        model: surrogate folder (``None``: the shipped compact model).
        max_batch: largest inference batch, frames.
        max_wait_ms: longest a frame waits for its batch to fill, ms.
        flush_s: longest a received frame waits to be flushed to the run file, s.
        publish: PUB endpoint for the live mosaic and stats (``None``: off).
        scans: stop after this many scans have ended (``None``: run until stopped).
        curve_keys: folder of CurveZMQ keys (required to listen on anything but loopback).
        preview: write a PNG of each scan's mosaic.
        infer_threads: threads of the network's inference (the other stages need a core of their own).
        registry: a model registry (:class:`edgeray.nn.registry.Registry`) to follow: the edge runs its
            ``CURRENT`` version and swaps to a new one between batches once it has passed validation
            (``model`` is published as the first version if the registry is empty).
        registry_poll_s: how often ``CURRENT`` is checked, s.
        refine: live refinement of each scan's image in the spare CPU time (:mod:`edgeray.stream.refine`), or
            None; it needs the model's probe (an edge model) or ``refine_probe``.
        refine_probe: a probe file (product, CXI, .npy) for refinement instead of the model's.
    """

    listen: str = "tcp://127.0.0.1:5555"
    out: Path = Path("run")
    model: Path | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0
    flush_s: float = 0.2
    publish: str | None = "tcp://127.0.0.1:5556"
    scans: int | None = None
    curve_keys: Path | None = None
    preview: bool = True
    infer_threads: int = 1
    registry: Path | None = None
    registry_poll_s: float = 0.5
    refine: RefineOptions | None = None
    refine_probe: Path | None = None


@dataclass
class ScanRun:
    """What the service knows of one scan; each field is written by one thread only."""

    start: Start
    started_wall: float
    started_perf_ns: int
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    expected: int | None = None
    ended: bool = False
    last_arrival_ns: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(4096, dtype=bool))  # by sender index
    written: int = 0
    inferred: int = 0
    run_path: Path | None = None
    writer_done: threading.Event = field(default_factory=threading.Event)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(4096, dtype=np.float32))  # first `inferred`
    mosaic: Mosaic | None = None
    count_sum: float = 0.0
    count_pixels: int = 0
    version_counts: dict = field(default_factory=dict)  # model version -> frames it inverted
    version_segments: list = field(default_factory=list)  # [first index, last index, model version]
    refiner: LiveRefiner | None = None


@dataclass
class FrameEvent:
    run: ScanRun
    frame: Frame
    arrival_ns: int  # perf_counter_ns at receipt
    wall_ns: int  # time_ns at receipt
    infer: bool


def model_version(model_dir: Path | None) -> str:
    """``<folder name>@<first 8 hex digits of the weights' SHA-256>``: which network inverted a frame."""
    directory = Path(model_dir) if model_dir is not None else SHIPPED
    digest = hashlib.sha256((directory / "model.safetensors").read_bytes()).hexdigest()[:8]
    return f"{directory.name}@{digest}"


class EdgeService:
    """The edge service; :meth:`start` its threads, :meth:`stop` (or ``options.scans``) to end, :meth:`join`."""

    def __init__(self, options: EdgeOptions, context: zmq.Context | None = None):
        self.options = options
        fixed_mmap_threshold()
        self.out = Path(options.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.context = context or zmq.Context.instance()
        self.registry = None
        self.rejected_versions: dict[str, str] = {}  # registry version -> why it was not swapped in
        self.swaps: list[dict] = []
        model_dir = options.model
        if options.registry is not None:
            from edgeray.nn.registry import Registry

            self.registry = Registry(options.registry)
            if self.registry.current() is None:
                self.registry.publish(options.model or SHIPPED, {"source": "initial model of the edge service"})
            self.registry_version = self.registry.current()
            model_dir = self.registry.path(self.registry_version)
        self.model, self.card, self.weights = self._load(model_dir)
        self.model_version = model_version(model_dir)
        self._validation_inputs: torch.Tensor | None = None
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
        self.write_queue: queue.Queue = queue.Queue()
        self.infer_queue: queue.Queue = queue.Queue()
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
            threading.Thread(target=self._write, name="edge-write", daemon=True),
            threading.Thread(target=self._infer, name="edge-infer", daemon=True),
        ]
        if self.publisher is not None:
            self.threads.append(threading.Thread(target=self._publish, name="edge-publish", daemon=True))
        if self.registry is not None:
            self.threads.append(threading.Thread(target=self._watch_registry, name="edge-registry", daemon=True))

    def _load(self, model_dir: Path | None):
        """A model ready for inference (ONNX Runtime on ``infer_threads`` threads), its card and its patches'
        stitching weights."""
        model, card = load_model(model_dir, "cpu")
        size = card["config"]["frame_size"]
        weights = stitch_weights(model, (size, size))
        self.model_probe = model.complex_probe() if hasattr(model, "complex_probe") else None
        threads = torch.get_num_threads()
        torch.set_num_threads(self.options.infer_threads)
        try:
            return cpu_runtime(model, card, model_dir, "auto"), card, weights
        finally:
            torch.set_num_threads(threads)

    def _validate(self, model, card: dict) -> None:
        """Raise ValueError unless ``model`` inverts a held-out batch (the last frames seen, or a synthetic one)
        into finite patches of the right shape and range."""
        size = card["config"]["frame_size"]
        inputs = self._validation_inputs
        if inputs is None or inputs.shape[-1] != size:
            inputs = torch.rand((8, 1, size, size), generator=torch.Generator().manual_seed(0)) * 2
        with torch.inference_mode():
            amplitude, phase = model(inputs)
        if tuple(amplitude.shape) != tuple(inputs.shape) or tuple(phase.shape) != tuple(inputs.shape):
            raise ValueError(f"outputs {tuple(amplitude.shape)} for inputs {tuple(inputs.shape)}")
        if not (torch.isfinite(amplitude).all() and torch.isfinite(phase).all()):
            raise ValueError("non-finite outputs on the validation batch")
        if amplitude.min() < 0:
            raise ValueError("negative amplitudes on the validation batch")
        if card["config"]["kind"] != "edge" and (amplitude.max() > 1 or phase.abs().max() > np.pi + 1e-4):
            raise ValueError("outputs outside the amplitude [0, 1] / phase [-pi, pi] ranges")

    def _watch_registry(self) -> None:
        """Swap to the registry's ``CURRENT`` version when it changes and passes validation; else keep the old."""
        while not self.finished.wait(self.options.registry_poll_s):
            version = self.registry.current()
            if version is None or version == self.registry_version or version in self.rejected_versions:
                continue
            started = time.perf_counter()
            try:
                model_dir = self.registry.path(version)
                if model_dir.resolve() == Path(self.registry.root / self.registry_version).resolve():
                    continue
                model, card, weights = self._load(model_dir)
                if card["config"]["frame_size"] != self.card["config"]["frame_size"]:
                    raise ValueError(f"frame size {card['config']['frame_size']}, the stream's model takes "
                                     f"{self.card['config']['frame_size']}")  # fmt: skip
                self._validate(model, card)
            except (ValueError, OSError, RuntimeError) as error:
                self.rejected_versions[version] = str(error)
                log.error("model %s rejected, %s stays: %s", version, self.model_version, error)
                continue
            previous = self.model_version
            with self.lock:  # the inference thread picks up model and version together, between batches
                self.model, self.card, self.model_version = model, card, model_version(model_dir)
                self.weights = weights
            self.registry_version = version
            self.swaps.append({"from": previous, "to": self.model_version, "registry_version": version,
                               "unix_s": time.time(), "load_s": time.perf_counter() - started})  # fmt: skip
            log.info("model swapped: %s -> %s (%.2f s to load and validate)", previous, self.model_version,
                     time.perf_counter() - started)  # fmt: skip

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
        log.info("scan %s: %s", run.start.scan_id, reason)
        self.write_queue.put(("end", run))
        self.infer_queue.put(("end", run))

    def _receive(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(50):
                continue
            while True:  # drain what is there before polling again
                try:
                    parts = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                self._handle(parts, time.perf_counter_ns(), time.time_ns())
        self._close_current(None, "stopped before its end message")
        self.write_queue.put(("stop", None))
        self.infer_queue.put(("stop", None))

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
            run = ScanRun(message, time.time(), arrival_ns)
            self.current = run
            log.info("scan %s started (%s frames of %s %s)", message.scan_id, message.n_frames, message.shape,
                     message.dtype)  # fmt: skip
            self.write_queue.put(("start", run))
            self.infer_queue.put(("start", run))
        elif isinstance(message, Frame):
            if run is None or run.start.scan_id != message.scan_id:
                self._reject(f"frame {message.index} of scan {message.scan_id} arrived before its start message")
            elif run.ended:
                self._reject(f"frame {message.index} of scan {message.scan_id} arrived after its end message")
            elif message.data.shape != run.start.shape or str(message.data.dtype) != run.start.dtype:
                self._reject(f"frame {message.index} is {message.data.dtype} {message.data.shape}, the scan's "
                             f"start said {run.start.dtype} {run.start.shape}")  # fmt: skip
            else:
                if message.index > 16 * (run.received + 65536):
                    self._reject(f"frame index {message.index} is implausibly far ahead ({run.received} received)")
                    return
                if message.index >= len(run.seen):  # grow by doubling: one byte per index, not a set entry
                    grown = np.zeros(max(2 * len(run.seen), message.index + 1), dtype=bool)
                    grown[: len(run.seen)] = run.seen
                    run.seen = grown
                first = not run.seen[message.index]
                run.seen[message.index] = True
                if not first:
                    run.duplicates += 1
                run.received += 1
                run.last_arrival_ns = arrival_ns
                event = FrameEvent(run, message, arrival_ns, wall_ns, first)
                self.write_queue.put(("frame", event))
                if first:
                    self.infer_queue.put(("frame", event))
        elif isinstance(message, End):
            if run is None or run.start.scan_id != message.scan_id or run.ended:
                self._reject(f"end of scan {message.scan_id}, which is not open")
            else:
                self._close_current(message.n_frames, f"ended, {run.received} frames received")

    # -- writer ----------------------------------------------------------------------------------------------
    def _write(self) -> None:
        run_file: RunFile | None = None
        pending: list[FrameEvent] = []
        last_flush = time.perf_counter()

        def commit() -> None:
            nonlocal last_flush
            if pending and run_file is not None:
                run_file.append(
                    np.stack([e.frame.data for e in pending]),
                    np.array([e.frame.position_m for e in pending]),
                    np.array([e.frame.index for e in pending]),
                    np.array([e.wall_ns for e in pending]),
                )
                pending.clear()
            if run_file is not None:
                run_file.flush()
                pending_run.written = run_file.n_written
            last_flush = time.perf_counter()

        pending_run: ScanRun | None = None
        while True:
            try:
                kind, item = self.write_queue.get(timeout=self.options.flush_s / 2)
            except queue.Empty:
                if pending:
                    commit()
                continue
            if kind == "frame":
                pending.append(item)
                if len(pending) >= 1024 or time.perf_counter() - last_flush >= self.options.flush_s:
                    commit()
            elif kind == "start":
                pending_run = item
                start = item.start
                run_file = RunFile(self.out / f"{start.scan_id}.cxi", geometry_of(start), start.dtype,
                                   {"scan_id": start.scan_id, "edge_model": self.model_version})  # fmt: skip
                item.run_path = run_file.path
            elif kind == "end":
                commit()
                if run_file is not None:
                    run_file.close({"frames_written": run_file.n_written, "complete": item.expected is not None})
                    item.written = run_file.n_written
                run_file, pending_run = None, None
                item.writer_done.set()
            elif kind == "stop":
                return

    # -- inference -------------------------------------------------------------------------------------------
    def _infer_batch(self, batch: list[FrameEvent]) -> None:
        run = batch[0].run
        counts = torch.from_numpy(np.stack([e.frame.data for e in batch]).astype(np.float32))
        run.count_sum += float(counts.sum())
        run.count_pixels += counts.numel()
        scale = run.count_sum / max(run.count_pixels, 1)  # running mean count per pixel of the scan
        with self.lock:
            model, version = self.model, self.model_version
        inputs = normalize_frames(counts, scale)
        with torch.inference_mode():
            amplitude, phase = model(inputs)
        self._validation_inputs = inputs[-8:]
        indices = [e.frame.index for e in batch]
        if run.version_segments and run.version_segments[-1][2] == version:
            run.version_segments[-1][1] = max(run.version_segments[-1][1], max(indices))
        else:
            run.version_segments.append([min(indices), max(indices), version])
        run.version_counts[version] = run.version_counts.get(version, 0) + len(batch)
        patches = to_complex(amplitude, phase)
        positions = np.array([e.frame.position_m for e in batch])
        with self.lock:
            run.mosaic.add(patches, positions)
        if run.refiner is not None:
            run.refiner.add(counts.numpy(), positions)
        now = time.perf_counter_ns()
        latencies = (now - np.array([e.arrival_ns for e in batch])) / 1e6
        if run.inferred + len(batch) > len(run.latencies_ms):
            run.latencies_ms = np.concatenate([run.latencies_ms, np.zeros_like(run.latencies_ms)])
        run.latencies_ms[run.inferred : run.inferred + len(batch)] = latencies
        self.recent_latency_ms.extend(latencies.tolist())
        run.inferred += len(batch)

    def _infer(self) -> None:
        pending: list[FrameEvent] = []
        max_wait_ns = int(self.options.max_wait_ms * 1e6)
        while True:
            if pending:
                left = (pending[0].arrival_ns + max_wait_ns - time.perf_counter_ns()) / 1e9
                timeout = max(left, 0.0)
            else:
                timeout = 0.1
            try:
                kind, item = self.infer_queue.get(timeout=timeout) if timeout > 0 else self.infer_queue.get_nowait()
            except queue.Empty:
                if pending:
                    self._infer_batch(pending)
                    pending = []
                continue
            if kind == "frame":
                pending.append(item)
                if len(pending) >= self.options.max_batch:
                    self._infer_batch(pending)
                    pending = []
                continue
            if pending:
                self._infer_batch(pending)
                pending = []
            if kind == "start":
                item.mosaic = Mosaic(item.start.shape, object_pixel_size_m(item.start), self.weights)
                item.refiner = self._make_refiner(item)
            elif kind == "end":
                self._finish(item)
            elif kind == "stop":
                for finisher in self.finishers:
                    finisher.join()
                self.finished.set()
                return

    def _make_refiner(self, run: ScanRun) -> LiveRefiner | None:
        """The scan's live refiner, when refinement is on and a probe is known (else a warning, and none)."""
        if self.options.refine is None:
            return None
        probe = self.model_probe
        if self.options.refine_probe is not None:
            from edgeray.sim.probes import probe_from_file

            probe = torch.from_numpy(probe_from_file(self.options.refine_probe, run.start.shape)[0])
        if probe is None or tuple(probe.shape) != tuple(run.start.shape):
            log.warning("scan %s: no refinement (the model carries no probe of %s; give --refine-probe)",
                        run.start.scan_id, run.start.shape)  # fmt: skip
            return None
        probe = probe / torch.linalg.vector_norm(probe)

        def mosaic():
            with self.lock:
                m = run.mosaic
                if m.origin_m is None:
                    return None, None, None, None
                return m.numerator.clone(), m.coverage.clone(), m.origin_m.copy(), m.pixel_size_m.copy()

        def backlog() -> int:
            return self.infer_queue.qsize() + self.write_queue.qsize()

        return LiveRefiner(run.start.shape, probe, self.options.refine, mosaic, backlog).start()

    def _record(self, summary: dict, path: Path) -> None:
        """Write a scan's summary and count it (the service stops after ``options.scans`` of them)."""
        path.write_text(json.dumps(summary, indent=2))
        with self.lock:
            self.summaries.append(summary)
        if self.options.scans is not None and len(self.summaries) >= self.options.scans:
            self.stopping.set()

    def _finish(self, run: ScanRun) -> None:
        """Write the product, preview and summary of an ended scan."""
        run.writer_done.wait(30)
        scan_id = run.start.scan_id
        seconds = max((run.last_arrival_ns - run.started_perf_ns) / 1e9, 1e-9)
        latencies = run.latencies_ms[: run.inferred].astype(np.float64)
        files = {"raw": str(run.run_path) if run.run_path else None}
        if run.mosaic is not None and run.mosaic.n_patches:
            files.update(self._write_product(run))
        summary = {
            "scan_id": scan_id,
            "complete": run.expected is not None and run.received - run.duplicates >= run.expected,
            "frames_expected": run.expected if run.expected is not None else run.start.n_frames,
            "frames_received": run.received,
            "frames_written": run.written,
            "frames_inferred": run.inferred,
            "frames_invalid": run.invalid,
            "frames_duplicate": run.duplicates,
            "seconds": seconds,
            "frames_per_s": run.received / seconds if run.received > 1 else 0.0,
            "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies.size else None,
            "latency_ms_max": float(latencies.max()) if latencies.size else None,
            "model_version": self.model_version,
            "model_versions": run.version_counts,
            "model_version_segments": run.version_segments,
            "model_swaps": [s for s in self.swaps if s["unix_s"] >= run.started_wall],
            "max_batch": self.options.max_batch,
            "max_wait_ms": self.options.max_wait_ms,
            "files": files,
        }
        path = self.out / f"{(run.run_path.stem if run.run_path else scan_id)}.json"
        log.info("scan %s: %d received, %d written, %d inferred, p99 latency %s ms -> %s", scan_id, run.received,
                 run.written, run.inferred, summary["latency_ms_p99"], path)  # fmt: skip
        if run.refiner is None:
            self._record(summary, path)
            return
        run.refiner.end()  # refinement goes on for its tail in its own thread; the next scan need not wait

        def finish_refinement() -> None:
            run.refiner.done.wait()
            summary["refinement"] = run.refiner.summary()
            if run.refiner.object is not None and run.mosaic.n_patches:
                files.update(self._write_product(run, refined=True))
            log.info("scan %s refined: %.1f epochs, misfit %s", scan_id, run.refiner.epochs, run.refiner.misfit)
            self._record(summary, path)

        finisher = threading.Thread(target=finish_refinement, name="edge-refine-finish", daemon=True)
        self.finishers.append(finisher)
        finisher.start()

    def _write_product(self, run: ScanRun, refined: bool = False) -> dict:
        """The network's mosaic (or, ``refined``, the live refinement's image and probe) as a product, with its
        preview; returns the files written."""
        stem = run.run_path.stem if run.run_path else run.start.scan_id
        with self.lock:
            obj, _ = run.mosaic.image()
            center = run.mosaic.center_m()
            numerator, coverage = run.mosaic.numerator.numpy().copy(), run.mosaic.coverage.numpy().copy()
        probe = np.zeros((1, *run.start.shape), dtype=np.complex64)
        engine, suffix = "nn-stream", "_product"
        if refined:
            image = run.refiner.image(numerator, coverage)
            obj = np.where(np.isfinite(image), image, 1.0).astype(np.complex64)
            probe = run.refiner.probe.numpy().astype(np.complex64)
            engine, suffix = f"nn-stream + live {run.refiner.options.engine}", "_refined"
        pixel = tuple(float(v) for v in run.mosaic.pixel_size_m)
        geometry = geometry_of(run.start)
        positions = np.array([], dtype=np.float64).reshape(0, 2)
        if run.run_path is not None:
            with CXIFile(run.run_path) as cxi:
                positions = cxi.positions_m
        product = Product(
            object=obj[None],
            probe=probe,
            positions_m=positions,
            object_pixel_size_m=pixel,
            probe_pixel_size_m=pixel,
            energy_eV=geometry.energy_eV,
            distance_m=geometry.distance_m,
            object_center_m=center,
            name=f"edgeray edge {self.model_version}",
            attrs={"engine": engine, "model": self.model_version, "scan_id": run.start.scan_id},
        )
        product_path = write_product(self.out / f"{stem}{suffix}.h5", product)
        key = "refined" if refined else "product"
        files = {key: str(product_path)}
        if self.options.preview:
            from edgeray.viz import save_preview

            png = self.out / (f"{stem}_refined.png" if refined else f"{stem}.png")
            files[f"{key}_preview" if refined else "preview"] = str(save_preview(product_path, png))
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
            "infer_queue": self.infer_queue.qsize(),
            "write_queue": self.write_queue.qsize(),
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
        last_patches = -1
        while not self.finished.wait(period_s):
            stats = self.snapshot()
            image = self.mosaic_image(1024) if stats["view_version"] != last_patches else None
            header = {"v": 1, "type": "mosaic" if image is not None else "stats", **stats}
            if image is None:
                self.publisher.send_multipart([json.dumps(header).encode()])
                continue
            last_patches = stats["view_version"]
            header.update(dtype="complex64", shape=list(image.shape))
            self.publisher.send_multipart([json.dumps(header).encode(), image.tobytes()])

    def mosaic_image(self, max_side: int | None = None) -> np.ndarray | None:
        """The open (or last) scan's mosaic, ``(Y, X)`` complex64 with NaN where no patch reached, or None before
        the first patch; every ``k``-th pixel when ``max_side`` asks for at most that many along each axis."""
        run = self.current
        if run is None or run.mosaic is None or not run.mosaic.n_patches:
            return None
        step = 1 if max_side is None else max(1, -(-max(run.mosaic.shape) // max_side))
        with self.lock:  # copy only the pixels shown, so inference waits as little as possible
            numerator = run.mosaic.numerator[::step, ::step].numpy().copy()
            coverage = run.mosaic.coverage[::step, ::step].numpy().copy()
        if run.refiner is not None and step == 1:
            return run.refiner.image(numerator, coverage)
        if run.refiner is not None:  # the refined image, sampled like the mosaic
            with self.lock:
                full_numerator, full_coverage = run.mosaic.numerator.numpy().copy(), run.mosaic.coverage.numpy().copy()
            return run.refiner.image(full_numerator, full_coverage)[::step, ::step]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(coverage > 0, numerator / coverage, np.nan + 0j).astype(np.complex64)
