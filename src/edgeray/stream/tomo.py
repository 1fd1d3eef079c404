"""Streaming tomography over the stream protocol: a detector replay that sends a Data Exchange scan in an
interleaved angle order, and the edge service's tomography mode (``edgeray edge --mode tomo``).

Wire: ``start`` (geometry plus ``mode: tomo``), dark fields (``image_key`` 2), flat fields (1), then projections
(0) each with its ``theta_deg``, then ``end``. The edge writes every frame it receives to a Data Exchange run file
(flushed every 0.2 s), normalizes projections with the mean flat and dark, keeps the latest half turn in a
:class:`~edgeray.tomo.streaming.StreamingSlices` buffer, updates the slices every ``update_every`` projections and
passes each update through the enhancer (the shipped stream TomoGAN by default); the live view shows the middle
slice raw and enhanced. At the end of a scan: ``<scan>.h5`` (the raw run), ``<scan>_slices.h5`` (slices, raw and
enhanced), ``<scan>.png`` and ``<scan>.json`` (counts, update latencies).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import zmq

from edgeray.io import TomoScan
from edgeray.stream.detector import ReplayReport, wait_until
from edgeray.stream.pictures import Pictures, draw_slices
from edgeray.stream.protocol import End, Frame, ProtocolError, Start, decode, encode_end, encode_frame, encode_start
from edgeray.stream.security import bind_server_socket
from edgeray.tomo.streaming import StreamingSlices, acquisition_order

log = logging.getLogger(__name__)
TOMO_GEOMETRY = {"energy_eV": 25000.0, "detector_distance_m": 0.1, "detector_pixel_size_m": 1e-6}


def replay_tomo(scan: TomoScan, socket: zmq.Socket, rate_hz: float = 500.0, order: str = "golden",
                scan_id: str | None = None, rows: slice | None = None) -> ReplayReport:  # fmt: skip
    """Send ``scan`` (darks, flats, projections in ``order``) on ``socket``, projections at ``rate_hz``."""
    scan_id = scan_id or f"tomo-{uuid.uuid4().hex[:8]}"
    rows = rows or slice(None)
    projections = scan.projections[:, rows]
    darks = [] if scan.darks is None else scan.darks[:, rows]
    flats = [] if scan.flats is None else scan.flats[:, rows]
    sequence = acquisition_order(scan.theta_deg, order)
    n = len(darks) + len(flats) + len(sequence)
    geometry = {**TOMO_GEOMETRY, "mode": "tomo", "order": order, "n_projections": len(sequence)}
    socket.send_multipart(encode_start(scan_id, str(projections.dtype), projections.shape[1:], geometry, n))
    index = 0
    for key, fields in ((2, darks), (1, flats)):
        for image in fields:
            socket.send_multipart(encode_frame(scan_id, index, np.ascontiguousarray(image), (0, 0), image_key=key))
            index += 1
    period_ns = int(1e9 / rate_hz) if rate_hz > 0 else 0
    lateness_ns = np.zeros(len(sequence), dtype=np.int64)
    t0 = time.perf_counter_ns()
    for k, which in enumerate(sequence):
        lateness_ns[k] = wait_until(t0 + k * period_ns)
        frame = np.ascontiguousarray(projections[which])
        socket.send_multipart(encode_frame(scan_id, index, frame, (0, 0), time.time_ns(), float(scan.theta_deg[which])))
        index += 1
    seconds = (time.perf_counter_ns() - t0) / 1e9
    socket.send_multipart(encode_end(scan_id, n))
    return ReplayReport.from_lateness(scan_id, n, seconds, rate_hz, lateness_ns)


@dataclass
class TomoEdgeOptions:
    """The tomography edge: ``listen`` endpoint, ``out`` folder, ``update_every`` projections between updates,
    ``capacity`` projections in the buffer (default: the scan's ``n_projections`` over a half turn), ``enhancer``
    model directory (None: the shipped stream TomoGAN; ``"off"``: none), ``scans`` to take before stopping,
    ``curve_keys`` folder of CurveZMQ keys (required to listen on anything but loopback)."""

    listen: str = "tcp://127.0.0.1:5555"
    out: Path = Path("run")
    update_every: int = 16
    capacity: int | None = None
    center: float | None = None
    enhancer: str | Path | None = None
    scans: int | None = None
    curve_keys: Path | None = None


class _RunFile:
    """A Data Exchange run file written as frames arrive: ``/exchange/data``, ``data_white``, ``data_dark`` and
    ``theta`` (degrees, in arrival order), flushed by the caller. The datasets grow ``block`` frames at a time (not
    one resize per frame) and are cut to what arrived at :meth:`close`; ``counts`` says how many rows are valid."""

    def __init__(self, path: Path, shape: tuple[int, int], dtype: str, block: int = 256):
        self.path = path
        self.block = block
        self.counts = {"data": 0, "data_white": 0, "data_dark": 0}
        self.h5 = h5py.File(path, "w", libver="latest")
        self.h5.attrs["implements"] = "exchange"
        self.sets = {}
        for key in ("data", "data_white", "data_dark"):
            self.sets[key] = self.h5.create_dataset(
                f"exchange/{key}", shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=(1, *shape)
            )
        self.theta = self.h5.create_dataset("exchange/theta", shape=(0,), maxshape=(None,), dtype="f8", chunks=(1024,))
        self.theta.attrs["units"] = "degrees"

    def append(self, key: str, frame: np.ndarray, theta_deg: float | None) -> None:
        dataset, row = self.sets[key], self.counts[key]
        if row >= dataset.shape[0]:
            dataset.resize(row + self.block, axis=0)
            if key == "data":
                self.theta.resize(row + self.block, axis=0)
        dataset[row] = frame
        if key == "data":
            self.theta[row] = theta_deg
        self.counts[key] = row + 1

    def flush(self) -> None:
        """Write the counts of valid rows (``/exchange`` attributes ``<key>_frames``: rows past them are not frames
        yet) and flush, so that a reader sees a consistent file."""
        for key, count in self.counts.items():
            self.sets[key].parent.attrs[f"{key}_frames"] = count
        self.h5.flush()

    def close(self) -> dict:
        for key, dataset in self.sets.items():
            dataset.resize(self.counts[key], axis=0)
        self.theta.resize(self.counts["data"], axis=0)
        self.h5.close()
        return dict(self.counts)


class TomoEdgeService:
    """The edge in tomography mode: a receiving thread, a processing thread (write, normalize, update) and, as in
    ptychography mode, a finisher (each ended scan's slices, summary and picture, the picture drawn in a process of
    its own) so that no scan's end holds the next scan's frames."""

    def __init__(self, options: TomoEdgeOptions, context: zmq.Context | None = None):
        self.options = options
        self.out = Path(options.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.enhancer = self._enhancer(options.enhancer)
        self.context = context or zmq.Context.instance()
        self.socket, self.endpoint = bind_server_socket(self.context, zmq.PULL, options.listen, options.curve_keys)
        self.queue: queue.Queue = queue.Queue()
        self.to_finish: queue.Queue = queue.Queue()  # (run, complete) of ended scans, then None
        self.pictures = Pictures()
        self.stopping, self.finished = threading.Event(), threading.Event()
        self.lock = threading.Lock()
        self.summaries: list[dict] = []
        self.stream: StreamingSlices | None = None
        self.scan_id: str | None = None
        self.received = self.invalid = 0
        self.threads = [threading.Thread(target=self._receive, name="tomo-receive", daemon=True),
                        threading.Thread(target=self._process, name="tomo-process", daemon=True),
                        threading.Thread(target=self._finish_scans, name="tomo-finish", daemon=True)]  # fmt: skip

    @staticmethod
    def _enhancer(spec) -> Callable[[np.ndarray], np.ndarray] | None:
        if spec == "off":
            return None
        from edgeray.tomo.denoise import SHIPPED_STREAM_DENOISER, denoise_volume, load_denoiser

        model, _ = load_denoiser(SHIPPED_STREAM_DENOISER if spec is None else spec)
        return lambda slices: denoise_volume(slices, model)

    def start(self) -> TomoEdgeService:
        for thread in self.threads:
            thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.finished.wait(timeout)

    def join(self, timeout: float | None = None) -> None:
        for thread in self.threads:
            thread.join(timeout)
        self.pictures.close()
        self.socket.close(0)

    def _receive(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while not self.stopping.is_set():
            if not poller.poll(100):
                continue
            parts = self.socket.recv_multipart(copy=False)
            try:
                self.queue.put((decode(parts), time.perf_counter()))
            except ProtocolError as error:
                self.invalid += 1
                log.warning("invalid message: %s", error)
        self.queue.put((None, 0.0))

    def _process(self) -> None:
        run: dict | None = None
        while True:
            message, arrived = self.queue.get()
            if message is None:
                if run is not None:
                    self.to_finish.put((run, False))
                self.to_finish.put(None)
                return
            if isinstance(message, Start):
                if run is not None:
                    self.to_finish.put((run, False))
                run = self._open(message)
            elif isinstance(message, Frame) and run is not None and message.scan_id == run["start"].scan_id:
                self._frame(run, message, arrived)
            elif isinstance(message, End) and run is not None and message.scan_id == run["start"].scan_id:
                self.to_finish.put((run, run["received"] >= message.n_frames))
                run = None

    def _finish_scans(self) -> None:
        """The finisher thread: ended scans in order; the service's end after the last."""
        while (item := self.to_finish.get()) is not None:
            try:
                self._finish(*item)
            except Exception:  # one scan's end must not stop the next ones'
                log.exception("scan %s: its slices or summary could not be written", item[0]["start"].scan_id)
            if self.options.scans is not None and len(self.summaries) >= self.options.scans:
                self.stopping.set()
        self.finished.set()

    def _open(self, start: Start) -> dict:
        rows, columns = start.shape
        capacity = self.options.capacity or int(start.geometry.get("n_projections") or 180)
        stream = StreamingSlices(rows, columns, capacity, self.options.center, update_every=self.options.update_every,
                                 enhancer=self.enhancer)  # fmt: skip
        with self.lock:
            self.stream, self.scan_id = stream, start.scan_id
        path = self.out / f"{start.scan_id}.h5"
        return {"start": start, "stream": stream, "file": _RunFile(path, start.shape, start.dtype), "flats": [],
                "darks": [], "received": 0, "seen": set(), "duplicates": 0, "latency_ms": [], "last_flush": 0.0,
                "started": time.time()}  # fmt: skip

    def _frame(self, run: dict, frame: Frame, arrived: float) -> None:
        if frame.index in run["seen"]:
            run["duplicates"] += 1
            return
        run["seen"].add(frame.index)
        run["received"] += 1
        self.received += 1
        key = {0: "data", 1: "data_white", 2: "data_dark"}[frame.image_key]
        run["file"].append(key, frame.data, frame.theta_deg)
        if time.perf_counter() - run["last_flush"] > 0.2:
            run["file"].flush()
            run["last_flush"] = time.perf_counter()
        if frame.image_key == 1:
            run["flats"].append(np.asarray(frame.data, dtype=np.float32))
            return
        if frame.image_key == 2:
            run["darks"].append(np.asarray(frame.data, dtype=np.float32))
            return
        if frame.theta_deg is None:
            return  # a projection without its angle cannot be backprojected; it is kept in the run file
        line_integrals = self._normalize(run, np.asarray(frame.data, dtype=np.float32))
        with self.lock:
            updated = run["stream"].add(line_integrals, frame.theta_deg, frame.index)
        if updated:
            run["latency_ms"].append((time.perf_counter() - arrived) * 1e3)

    @staticmethod
    def _normalize(run: dict, projection: np.ndarray) -> np.ndarray:
        if "span" not in run:
            dark = np.mean(run["darks"], axis=0) if run["darks"] else np.zeros_like(projection)
            flat = np.mean(run["flats"], axis=0) if run["flats"] else None
            run["dark"] = dark
            run["span"] = None if flat is None else np.maximum(flat - dark, 1e-6)
        if run["span"] is None:  # no flats sent: the frames are taken as line integrals already
            return projection
        return -np.log(np.maximum((projection - run["dark"]) / run["span"], 1e-6))

    def _finish(self, run: dict, complete: bool) -> None:
        stream: StreamingSlices = run["stream"]
        with self.lock:
            stream.update()
        counts = run["file"].close()
        start = run["start"]
        slices_path = self.out / f"{start.scan_id}_slices.h5"
        with h5py.File(slices_path, "w") as h5:
            h5.attrs["implements"] = "exchange"
            h5.create_dataset("exchange/data", data=stream.slices)
            if stream.enhanced is not None:
                h5.create_dataset("exchange/data_enhanced", data=stream.enhanced)
        middle = stream.rows // 2
        panels = {"stream": stream.slices[middle]}
        if stream.enhanced is not None:
            panels["enhanced"] = stream.enhanced[middle]
        title = f"{start.scan_id}: {stream.n_in_buffer} projections in the buffer"
        self.pictures.draw(draw_slices, panels, str(self.out / f"{start.scan_id}.png"), title)
        seconds = [u["seconds"] * 1e3 for u in stream.updates]
        summary = {
            "scan_id": start.scan_id, "mode": "tomo", "complete": complete, "frames_expected": start.n_frames,
            "frames_received": run["received"], "frames_written": sum(counts.values()),
            "frames_duplicate": run["duplicates"], "projections_in_buffer": stream.n_in_buffer,
            "capacity": stream.capacity, "updates": len(stream.updates),
            "update_ms_p50": float(np.percentile(seconds, 50)) if seconds else None,
            "update_ms_p99": float(np.percentile(seconds, 99)) if seconds else None,
            "latency_ms_p99": float(np.percentile(run["latency_ms"], 99)) if run["latency_ms"] else None,
            "enhanced": stream.enhanced is not None,
            "files": {"raw": str(run["file"].path), "slices": str(slices_path)},
        }  # fmt: skip
        (self.out / f"{start.scan_id}.json").write_text(json.dumps(summary, indent=2))
        with self.lock:
            self.summaries.append(summary)

    def snapshot(self) -> dict:
        """Live figures for the view: counts and the number of updates so far."""
        with self.lock:
            stream = self.stream
            return {
                "scan_id": self.scan_id, "frames_received": self.received, "frames_invalid_total": self.invalid,
                "updates": len(stream.updates) if stream else 0,
                "projections_in_buffer": stream.n_in_buffer if stream else 0,
            }  # fmt: skip

    def view_images(self) -> dict[str, np.ndarray]:
        """The middle slice, raw and enhanced (when there is an enhancer), of the open scan."""
        with self.lock:
            if self.stream is None or not self.stream.updates:
                return {}
            middle = self.stream.rows // 2
            images = {"raw": self.stream.slices[middle].copy()}
            if self.stream.enhanced is not None:
                images["enhanced"] = self.stream.enhanced[middle].copy()
            return images
