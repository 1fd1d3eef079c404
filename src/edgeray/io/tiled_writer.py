"""Writing the edge's scans into Tiled: the process :mod:`edgeray.stream.tiled_publish` starts.

It runs in a process of its own (``spawn``), so Tiled's client (its imports, HTTP, retries) never holds the edge's
interpreter. It takes messages from the edge (dicts of JSON values and numpy arrays) and answers with others:

- in ``{"kind": "live", "scan_id", "metadata", "image": [Y, X] or None, "taken_unix_s"}``: a scan's container and
  its live image, whose sums lie in the shared memory (``numerator`` ``(Y, X)`` complex64, then ``coverage``
  float32); answered ``{"kind": "ack", "away": bool}`` once they are read (``away``: the server cannot be reached
  now);
- in ``{"kind": "ended", "scan_id", "summary"}``: the scan's products and summary, tried until ``retry_s`` after it
  came; answered ``{"kind": "report", "scan_id", "tiled": {...}}`` (what was published, what failed);
- in ``{"kind": "stop"}``: the pending scans are finished (or reported), then ``{"kind": "done"}``.

At start it answers ``{"kind": "ready", "error": None or why}``: a key the server refuses, or a node it does not
have, is an error; a server that cannot be reached is not (it is tried again, backing off up to ``BACKOFF_MAX_S``).
"""

from __future__ import annotations

import json
import queue
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeray.io.tiled import connect

METADATA_PERIOD_S = 2.0  # a scan's counts in Tiled are updated this often during the scan, s
LIVE_CHUNK_PX = 512  # the live arrays start this size (NaN) and grow by chunks of it as the mosaic does
BACKOFF_MAX_S = 5.0  # the longest wait between two tries to reach a server that cannot be reached, s
PRODUCT_ARRAYS = ("object", "probe", "positions_m")


@dataclass
class ScanState:
    """What has been published of one scan."""

    scan_id: str
    node: object | None = None  # the scan's container client, once made
    metadata: dict = field(default_factory=dict)  # the scan's own (geometry, model, run file, counts)
    metadata_at: float = -np.inf  # monotonic time its metadata was last written
    live_arrays: dict = field(default_factory=dict)  # "amplitude", "phase" -> their array clients
    live_shape: tuple | None = None
    published_at: list = field(default_factory=list)  # (snapshot taken, readable in Tiled) of each live image, s
    started_unix_s: float | None = None
    failures: int = 0
    last_error: str | None = None
    summary: dict | None = None
    ended_at: float | None = None  # monotonic time the summary came


class TiledWriter:
    """Scans into the Tiled node ``uri`` (see the module's docstring); ``key``: the API key."""

    def __init__(self, uri: str, key: str | None, timeout_s: float, retry_s: float):
        self.uri, self.key, self.timeout_s, self.retry_s = uri, key, timeout_s, retry_s
        self.root = None
        self.reconnect_at, self.backoff_s = 0.0, 0.25
        self.scans: dict[str, ScanState] = {}
        self.pending: list[ScanState] = []

    def connect(self) -> None:
        """Reach the server; ValueError when it refuses the key or lacks the node, kept quiet when unreachable."""
        if not self._port_open():
            self._backoff()
            return
        try:
            self.root = connect(self.uri, self.key, self.timeout_s)
        except ValueError as error:
            if "cannot reach" not in str(error):
                raise
            self._backoff()

    def _port_open(self) -> bool:
        """Whether the server's port takes a connection: a cheap look before Tiled's client (~0.1 s of CPU a try)."""
        from urllib.parse import urlsplit

        address = urlsplit(self.uri)
        port = address.port or (443 if address.scheme == "https" else 80)
        try:
            socket.create_connection((address.hostname, port), timeout=min(self.timeout_s, 2.0)).close()
            return True
        except OSError:
            return False

    @property
    def away(self) -> bool:
        """Whether the server cannot be reached now."""
        return self.root is None

    def _backoff(self) -> None:
        self.reconnect_at = time.monotonic() + self.backoff_s
        self.backoff_s = min(2 * self.backoff_s, BACKOFF_MAX_S)

    def state(self, scan_id: str) -> ScanState:
        return self.scans.setdefault(scan_id, ScanState(scan_id))

    def attempt(self, state: ScanState, what: str, action) -> bool:
        """Run one publishing ``action``; False (the failure counted) when the server is away or it fails."""
        if self.root is None:
            if time.monotonic() < self.reconnect_at:
                return False
            try:
                self.connect()
            except ValueError as error:
                self._failed(state, what, error)
                return False
            if self.root is None:
                state.failures += 1
                state.last_error = f"{what}: cannot reach the Tiled server at {self.uri}"
                return False
        try:
            action()
            self.backoff_s = 0.25
            return True
        except Exception as error:  # any failure of the server or the network
            self._failed(state, what, error)
            return False

    def _failed(self, state: ScanState, what: str, error: Exception) -> None:
        state.failures += 1
        state.node, state.live_shape, state.live_arrays = None, None, {}  # looked up again: it may have restarted
        state.last_error = f"{what}: {type(error).__name__}: {error}".splitlines()[0]
        self.root = None
        self._backoff()

    # -- live ----------------------------------------------------------------------------------------------------
    def live(self, message: dict, shared: memoryview) -> None:
        """A scan's container (made at its first message), counts and live image (its sums in ``shared``)."""
        state = self.state(message["scan_id"])
        if state.summary is not None:  # ended: its products take over
            return
        state.metadata.update(message["metadata"])
        state.started_unix_s = message["metadata"].get("started_unix_s")
        image = None
        if message.get("image") is not None:
            rows, cols = message["image"]
            numerator = np.ndarray((rows, cols), np.complex64, buffer=shared)
            coverage = np.ndarray((rows, cols), np.float32, buffer=shared, offset=8 * rows * cols)
            with np.errstate(invalid="ignore", divide="ignore"):
                amplitude = np.where(coverage > 0, np.abs(numerator) / coverage, np.nan).astype(np.float32)
            phase = np.where(coverage > 0, np.angle(numerator), np.nan).astype(np.float32)
            image = (amplitude, phase)

        def publish() -> None:
            node = self.container(state)
            self.write_live(state, node, image)
            if time.monotonic() - state.metadata_at >= METADATA_PERIOD_S:  # a request costs the server ~30 ms
                node.update_metadata(state.metadata)
                state.metadata_at = time.monotonic()

        if self.attempt(state, "live image", publish) and image is not None:
            state.published_at.append((message["taken_unix_s"], time.time()))

    def container(self, state: ScanState):
        """The scan's container, made (or found, after a restart) with its metadata."""
        if state.node is None:
            if state.scan_id in self.root:
                state.node = self.root[state.scan_id]
                state.node.update_metadata(state.metadata)
            else:
                state.node = self.root.create_container(key=state.scan_id, metadata=state.metadata)
            state.metadata_at = time.monotonic()
        return state.node

    def write_live(self, state: ScanState, node, image: tuple | None) -> None:
        """``live/amplitude`` and ``live/phase`` of ``image`` (both ``(Y, X)`` float32; None: made empty, before a
        scan's first image). Whole chunks of ``LIVE_CHUNK_PX`` square (of their storage), NaN beyond the image; one
        request each per image: written in place, extended by chunks when the mosaic outgrew them (never shrunk)."""
        if image is None and state.live_arrays:
            return
        old = state.live_shape or (0, 0)
        rows, cols = image[0].shape if image is not None else (0, 0)
        chunks = -(-max(rows, old[0], 1) // LIVE_CHUNK_PX), -(-max(cols, old[1], 1) // LIVE_CHUNK_PX)
        shape = (chunks[0] * LIVE_CHUNK_PX, chunks[1] * LIVE_CHUNK_PX)  # whole chunks: few extensions a scan
        values = {key: np.full(shape, np.nan, dtype=np.float32) for key in ("amplitude", "phase")}
        if image is not None:
            values["amplitude"][:rows, :cols], values["phase"][:rows, :cols] = image
        if not state.live_arrays:
            live = node["live"] if "live" in node else node.create_container(key="live")
            for key, array in values.items():
                if key in live:  # made before the server (or this scan's publishing) restarted
                    state.live_arrays[key] = live[key]
                    state.live_arrays[key].patch(array, offset=(0, 0), extend=True)
                else:
                    state.live_arrays[key] = live.write_array(array, key=key, dims=("y", "x"))
        else:
            for key, array in values.items():
                state.live_arrays[key].patch(array, offset=(0, 0), extend=shape != old)
        state.live_shape = shape

    # -- ended scans ----------------------------------------------------------------------------------------------
    def ended(self, message: dict) -> None:
        state = self.state(message["scan_id"])
        state.summary, state.ended_at = message["summary"], time.monotonic()
        self.pending.append(state)

    def publish_ended(self) -> list[dict]:
        """Try each ended scan's products; the reports of those published, or out of time."""
        reports = []
        for state in list(self.pending):
            published = self.attempt(state, "products", lambda state=state: self.write_products(state))
            if not published and time.monotonic() - state.ended_at < self.retry_s:
                continue
            self.pending.remove(state)
            reports.append({"kind": "report", "scan_id": state.scan_id, "tiled": self.report(state, published)})
        return reports

    def write_products(self, state: ScanState) -> None:
        """The scan's container, product arrays (equal to the files) and summary, then ``state: done``."""
        from edgeray.io import read_product

        summary, files = state.summary, state.summary.get("files", {})
        if not state.metadata:
            state.metadata = {"scan_id": state.scan_id, "producer": "edgeray edge"}
        node = self.container(state)
        for key in ("product", "refined"):
            if files.get(key) is None or (key in node and all(name in node[key] for name in PRODUCT_ARRAYS)):
                continue
            if key in node:  # left half-written by an attempt that failed
                node.delete_contents([key], recursive=True, external_only=False)
            product = read_product(files[key])
            metadata = {"file": str(Path(files[key]).resolve()), "energy_eV": product.energy_eV,
                        "object_pixel_size_m": list(product.object_pixel_size_m),
                        "object_center_m": list(product.object_center_m)}  # fmt: skip
            container = node.create_container(key=key, metadata=metadata)
            for name, values in zip(PRODUCT_ARRAYS, (product.object, product.probe, product.positions_m), strict=True):
                container.write_array(np.ascontiguousarray(values), key=name)
        paths = files.get("raw_parts") or [files.get("raw")]
        node.update_metadata({
            "state": "done",
            "summary": summary,
            "run_file": str(Path(files["raw"]).resolve()) if files.get("raw") else None,
            "run_files": [str(Path(p).resolve()) for p in paths if p],
            "host": socket.gethostname(),
        })  # fmt: skip

    def report(self, state: ScanState, published: bool) -> dict:
        """The ``tiled`` entry of the scan's summary."""
        uri = state.node.uri if state.node is not None else f"{self.uri.rstrip('/')}/{state.scan_id}"
        first = None
        if state.published_at and state.started_unix_s:
            first = state.published_at[0][1] - state.started_unix_s
        return {"uri": re.sub(r"(?<!:)//+", "/", uri), "published": published,
                "live_updates": len(state.published_at), "live_lag_s_max": lag_max(state.published_at),
                "first_image_s": first, "failed_requests": state.failures,
                "last_error": state.last_error}  # fmt: skip


def lag_max(published_at: list) -> float | None:
    """The longest the live image in Tiled was behind the edge, s: from each image's snapshot to the moment the next
    one was readable (the last image's own publishing time at the end), over ``(taken, readable)`` pairs."""
    if not published_at:
        return None
    times = np.asarray(published_at, dtype=np.float64)
    gaps = np.append(times[1:, 1] - times[:-1, 0], times[-1, 1] - times[-1, 0])
    return float(gaps.max())


def serve(uri: str, key: str | None, timeout_s: float, retry_s: float, period_s: float, shared_name: str, inbox,
          outbox) -> None:  # fmt: skip
    """The writer process: messages from ``inbox`` (a multiprocessing queue), answers to ``outbox``; live images in
    the shared memory named ``shared_name``."""
    from multiprocessing import shared_memory

    import stamina

    shared = shared_memory.SharedMemory(name=shared_name)  # the edge's: it unlinks it
    stamina.set_active(False)  # our retries, bounded and reported; not the client's own back-off
    writer = TiledWriter(uri, key, timeout_s, retry_s)
    try:
        writer.connect()
        import tiled.client.array  # noqa: F401  (the first array's imports, ~1 s, before the first scan)
    except Exception as error:  # refused key, no such node, Tiled not installed: the edge says why and stops
        outbox.put({"kind": "ready", "error": str(error)})
        return
    outbox.put({"kind": "ready", "error": None})
    stopping = False
    while True:
        try:
            message = inbox.get(timeout=period_s)
        except queue.Empty:
            message = None
        if message is not None:
            if message["kind"] == "live":
                writer.live(message, shared.buf)
                outbox.put({"kind": "ack", "away": writer.away})
            elif message["kind"] == "ended":
                writer.ended(message)
            elif message["kind"] == "stop":
                stopping = True
        for report in writer.publish_ended():
            outbox.put(json.loads(json.dumps(report, default=str)))
        if stopping and not writer.pending:
            outbox.put({"kind": "done"})
            return
