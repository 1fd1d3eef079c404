"""Publishing the edge's scans to a Tiled server, where Bluesky facilities find their data.

Each scan becomes a container ``<scan_id>`` under the node ``uri`` names:

- metadata: the scan id, its geometry, the model's version, the frame counts (updated during the scan), ``state``
  (``scanning``, then ``done``), ``run_file`` (the raw frames stay in the CXI run file: its path, and ``host``), and
  at the end the scan's summary;
- ``live/amplitude``, ``live/phase``: the live image (float32 ``(Y, X)``, NaN where no frame reached; the refined
  image where the live refinement reached), rewritten at most every ``period_s`` while it changes;
- ``product/`` and ``refined/`` at the end: the arrays of ``<scan>_product.h5`` and ``<scan>_refined.h5``
  (``object``, ``probe``, ``positions_m``), equal to the files.

Publishing runs on a thread of its own and never holds a stage of the stream: it copies the live image under the
service's lock (as the live view does) and talks to the server outside it. A request that fails (server slow,
gone, restarting) is tried again at the next update; a scan's products are tried until ``retry_s`` after its end,
then reported. Either way the scan's summary gets a ``tiled`` entry saying what was published and what failed: the
run file and the products on disk are the truth, Tiled a view of them.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeray.io.tiled import api_key, connect

log = logging.getLogger("edgeray.edge")
METADATA_PERIOD_S = 2.0  # the scan's counts in Tiled are updated this often during the scan, s


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


@dataclass
class _ScanState:
    """What has been published of one scan."""

    scan_id: str
    node: object | None = None  # the scan's container client, once created
    live_version: int = -1  # the live view's version last published
    live_shape: tuple | None = None
    live_arrays: dict = field(default_factory=dict)  # "amplitude", "phase" -> their array clients
    published_at: list = field(default_factory=list)  # (snapshot taken, readable in Tiled) of each live image, s
    updates: int = 0  # live images published
    failures: int = 0  # requests that failed
    last_error: str | None = None
    ended_at: float | None = None  # monotonic time the scan's summary came
    summary: dict | None = None
    summary_path: Path | None = None
    metadata: dict = field(default_factory=dict)  # the scan's own (geometry, model, run file), from its start
    metadata_at: float = -np.inf  # monotonic time the container's metadata (counts) was last updated
    report: dict = field(default_factory=dict)


class TiledPublisher:
    """The publishing stage; :meth:`run` is its thread, :meth:`scan_done` is called by the finisher.

    Args:
        options: the :class:`TiledOptions`.
        finished: set when the service has ended; the thread then publishes what is pending and stops.
        key: the API key (None: ``TILED_API_KEY``).

    Raises:
        ValueError: the server refuses the key or has no such node (a server that cannot be reached is not an error
            here: publishing is tried again at each update).
    """

    def __init__(self, options: TiledOptions, finished: threading.Event, key: str | None = None):
        import stamina

        stamina.set_active(False)  # our retries, bounded and reported; never the client's own back-off
        self.options, self.finished = options, finished
        self.live = None  # the service's LiveState (the open scan's image and counts): attach()
        self.key = key if key is not None else api_key()
        self.done = threading.Event()
        self.pending: list[_ScanState] = []  # ended scans whose products are not yet published
        self.scans: dict[str, _ScanState] = {}
        self.lock = threading.Lock()
        self.root = None
        try:
            self.root = self._connect()
        except ValueError as error:
            if "cannot reach" not in str(error):
                raise
            log.warning("Tiled: %s; the edge runs on and tries again at each update", error)

    def _connect(self):
        return connect(self.options.uri, self.key, self.options.timeout_s)

    def attach(self, live) -> None:
        """Read the open scan's image and counts from ``live`` (the service's
        :class:`~edgeray.stream.live.LiveState`)."""
        self.live = live

    # -- called by the finisher -------------------------------------------------------------------------------
    def scan_done(self, summary: dict, summary_path: Path) -> None:
        """A scan's summary is written: publish its products and summary (and add ``tiled`` to it)."""
        with self.lock:
            state = self.scans.setdefault(summary["scan_id"], _ScanState(summary["scan_id"]))
            state.summary, state.summary_path, state.ended_at = summary, Path(summary_path), time.monotonic()
            self.pending.append(state)

    # -- the thread ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Every ``period_s``: the open scan's live image and counts, then the ended scans' products; after the
        service has finished, what is pending (within each scan's ``retry_s``)."""
        try:
            while True:
                began = time.monotonic()
                ending = self.finished.is_set()
                self._publish_live()
                self._publish_ended()
                if ending and not self.pending:
                    return
                time.sleep(max(0.0, self.options.period_s - (time.monotonic() - began)))
        finally:
            self.done.set()

    def _attempt(self, state: _ScanState, what: str, action) -> bool:
        """Run one publishing ``action``; on failure count and log it (once per scan and kind) and return False."""
        try:
            if self.root is None:
                self.root = self._connect()
            action()
            return True
        except Exception as error:  # any failure of the server or the network: the stream goes on regardless
            state.failures += 1
            state.node, state.live_shape, state.live_arrays = None, None, {}  # looked up again: the server may have
            # restarted
            message = f"{what}: {type(error).__name__}: {error}".splitlines()[0]
            if state.last_error is None:
                log.warning("Tiled, scan %s: %s (tried again at the next update)", state.scan_id, message)
            state.last_error = message
            return False

    def _container(self, state: _ScanState, metadata: dict):
        """The scan's container, created (or found, after a restart) with ``metadata``."""
        if state.node is None:
            if state.scan_id in self.root:
                state.node = self.root[state.scan_id]
                state.node.update_metadata(metadata)
            else:
                state.node = self.root.create_container(key=state.scan_id, metadata=metadata)
        return state.node

    def _publish_live(self) -> None:
        run = self.live.receiver.current
        if run is None:
            return
        scan_id = run.start.scan_id
        with self.lock:
            state = self.scans.setdefault(scan_id, _ScanState(scan_id))
        if state.summary is not None:  # ended: the products take over
            return
        snapshot = self.live.snapshot()
        version = snapshot["view_version"]
        taken = time.time()
        image = self.live.mosaic_image(self.options.max_side) if version != state.live_version else None
        counts = {k: snapshot[k] for k in ("frames_received", "frames_inferred", "frames_written", "frames_expected")}
        metadata = {**self._scan_metadata(run), **counts, "state": "scanning",
                    "live_frames": snapshot["mosaic_patches"], "live_unix_s": taken}  # fmt: skip
        state.metadata = metadata

        def publish() -> None:
            node = self._container(state, metadata)
            if image is not None:
                self._write_live(state, node, image)
            if time.monotonic() - state.metadata_at >= METADATA_PERIOD_S:  # each request costs the server ~30 ms
                node.update_metadata(metadata)
                state.metadata_at = time.monotonic()

        if self._attempt(state, "live image", publish) and image is not None:
            state.live_version = version
            state.updates += 1
            state.published_at.append((taken, time.time()))

    def _write_live(self, state: _ScanState, node, image: np.ndarray) -> None:
        """``live/amplitude`` and ``live/phase`` of ``image``: rewritten in place, made again when the mosaic grew."""
        values = {"amplitude": np.abs(image).astype(np.float32), "phase": np.angle(image).astype(np.float32)}
        if state.live_arrays and state.live_shape == image.shape:
            for key, array in values.items():
                state.live_arrays[key].write(array)
            return
        live = node["live"] if "live" in node else node.create_container(key="live")
        present = [key for key in values if key in live]
        if present:
            live.delete_contents(present, external_only=False)
        state.live_arrays = {key: live.write_array(array, key=key, dims=("y", "x")) for key, array in values.items()}
        state.live_shape = image.shape

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

    def _publish_ended(self) -> None:
        with self.lock:
            pending = list(self.pending)
        for state in pending:
            if self._attempt(state, "products", lambda state=state: self._write_products(state)):
                state.report = {"published": True}
            elif time.monotonic() - state.ended_at < self.options.retry_s:
                continue
            else:
                state.report = {"published": False}
                log.error("Tiled, scan %s: not published after %.0f s (%s); the run file and products on disk "
                          "hold everything", state.scan_id, self.options.retry_s, state.last_error)  # fmt: skip
            self._record(state)
            with self.lock:
                self.pending.remove(state)

    def _write_products(self, state: _ScanState) -> None:
        """The scan's container, product arrays and summary, then ``state: done``."""
        from edgeray.io import read_product

        summary, files = state.summary, state.summary.get("files", {})
        node = self._container(state, state.metadata or {"scan_id": state.scan_id, "producer": "edgeray edge"})
        names = ("object", "probe", "positions_m")
        for key in ("product", "refined"):
            if files.get(key) is None or (key in node and all(name in node[key] for name in names)):
                continue
            if key in node:  # left half-written by an attempt that failed
                node.delete_contents([key], recursive=True, external_only=False)
            product = read_product(files[key])
            arrays = dict(zip(names, (product.object, product.probe, product.positions_m), strict=True))
            metadata = {"file": str(Path(files[key]).resolve()), "energy_eV": product.energy_eV,
                        "object_pixel_size_m": list(product.object_pixel_size_m),
                        "object_center_m": list(product.object_center_m)}  # fmt: skip
            container = node.create_container(key=key, metadata=metadata)
            for name, values in arrays.items():
                container.write_array(np.ascontiguousarray(values), key=name)
        paths = files.get("raw_parts") or [files.get("raw")]
        node.update_metadata({
            "state": "done",
            "summary": json.loads(json.dumps(summary, default=str)),
            "run_file": str(Path(files["raw"]).resolve()) if files.get("raw") else None,
            "run_files": [str(Path(p).resolve()) for p in paths if p],
            "host": socket.gethostname(),
        })  # fmt: skip

    def _record(self, state: _ScanState) -> None:
        """Add the ``tiled`` entry to the scan's summary (in memory and its file)."""
        uri = state.node.uri if state.node is not None else f"{self.options.uri.rstrip('/')}/{state.scan_id}"
        state.summary["tiled"] = {"uri": re.sub(r"(?<!:)//+", "/", uri), **state.report,
                                  "live_updates": state.updates, "live_lag_s_max": _lag_max(state.published_at),
                                  "failed_requests": state.failures, "last_error": state.last_error}  # fmt: skip
        state.summary_path.write_text(json.dumps(state.summary, indent=2))


def _lag_max(published_at: list) -> float | None:
    """The longest the live image in Tiled was behind the edge, s: from each image's snapshot to the moment the next
    one was readable (the last image's own publishing time at the end), over ``(taken, readable)`` pairs."""
    if not published_at:
        return None
    times = np.asarray(published_at, dtype=np.float64)
    gaps = np.append(times[1:, 1] - times[:-1, 0], times[-1, 1] - times[-1, 0])
    return float(gaps.max())
