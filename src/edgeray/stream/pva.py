"""EPICS PV Access transport (p4p), the edge's side: areaDetector NTNDArray frames in (the detector's side, serving
files as such a channel, is :mod:`edgeray.stream.pva_server`).

The edge keeps one receiver: :class:`PvaBridge` subscribes to an NTNDArray channel and hands each update to the
edge's ZeroMQ receiver as the stream protocol's messages (one thread, in order, the array's own buffer sent), so
counts, run file, latency and loss accounting are the ZeroMQ path's. What areaDetector does not send is made here:

- a scan starts at the first update and ends when ``n_frames`` updates have come (the frames' ``n_frames``
  attribute, or :attr:`PvaOptions.frames`), when none has come for :attr:`PvaOptions.idle_s`, or when the
  ``uniqueId`` counter starts again (a new acquisition);
- a frame's index is its ``uniqueId`` minus the scan's first; a gap in ``uniqueId`` is a frame the IOC numbered
  and this subscriber never got (counted, and the scan's end message says how many there were);
- positions ``[y, x]`` (m) come from the attributes ``position_y_m`` / ``position_x_m``, angles from ``theta_deg``
  and ``image_key``; else from a positions array (:attr:`PvaOptions.positions`) by frame index;
- geometry from the attributes ``energy_eV``, ``detector_distance_m``, ``detector_pixel_size_m`` (and
  ``object_pixel_size_m``), else :attr:`PvaOptions.geometry`.

Network: a channel is found through ``EPICS_PVA_ADDR_LIST`` (the environment, as EPICS tools do) or, given
``name_server`` ``HOST:PORT``, by asking that server directly over TCP (no UDP search).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from edgeray.stream.protocol import encode_end, encode_frame, encode_start

log = logging.getLogger(__name__)

QUEUE_SIZE = 8192  # updates each side of the connection may hold: ~4 s at 2 kHz before anything is squashed
POSITION_KEYS = ("position_y_m", "position_x_m")
GEOMETRY_KEYS = ("energy_eV", "detector_distance_m", "detector_pixel_size_m", "object_pixel_size_m")
_UNION_MEMBER = {"uint8": "ubyteValue", "uint16": "ushortValue", "uint32": "uintValue", "float32": "floatValue"}
_DTYPES = tuple(np.dtype(name) for name in _UNION_MEMBER)
ZERO_COPY_BYTES = 65536  # smaller frames are copied into the message: cheaper than tracking the array's buffer


def require_p4p():
    """The p4p package, or an error saying how to install it."""
    try:
        import p4p
    except ImportError as error:  # pragma: no cover - p4p is a dev dependency
        raise RuntimeError("EPICS PV Access needs p4p: pip install 'edgeray[pva]'") from error
    import p4p.client.thread
    import p4p.server
    import p4p.util

    return p4p


def client_conf(name_server: str | None = None) -> tuple[dict, bool]:
    """``(conf, useenv)`` for a p4p client: the process's EPICS environment, or only ``name_server`` (TCP)."""
    if name_server is None:
        return {}, True
    return {"EPICS_PVA_NAME_SERVERS": name_server, "EPICS_PVA_ADDR_LIST": "", "EPICS_PVA_AUTO_ADDR_LIST": "NO"}, False


def server_conf(interface: str = "127.0.0.1") -> dict:
    """A p4p server on ``interface`` only, any free TCP port, searches answered and beacons sent there only."""
    return {
        "EPICS_PVAS_INTF_ADDR_LIST": interface,
        "EPICS_PVAS_BEACON_ADDR_LIST": interface,
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_SERVER_PORT": "0",
        "EPICS_PVAS_BROADCAST_PORT": "0",
    }


# ------------------------------------------------------------------------------------------------ the edge side
@dataclass
class PvaOptions:
    """How :class:`PvaBridge` turns a channel's updates into scans.

    Attributes:
        channel: the NTNDArray PV (e.g. ``13SIM1:Pva1:Image``).
        name_server: ``HOST:PORT`` of the PVA server to ask directly, or None for the EPICS environment's search.
        mode: ``ptycho`` (positions needed) or ``tomo`` (angles: ``theta_deg``, ``image_key``).
        positions: ``(N, 2)`` float [y, x] m (ptycho) or ``(N,)`` degrees (tomo) by frame index, for frames whose
            attributes carry none.
        geometry: the start message's geometry where the frames' attributes carry none.
        frames: frames per scan where the frames carry no ``n_frames`` attribute (None: end by ``idle_s``).
        idle_s: a scan without an update for this long has ended, s.
        scan_prefix: scan names are ``<prefix>-<n>``.
    """

    channel: str
    name_server: str | None = None
    mode: str = "ptycho"
    positions: np.ndarray | None = None
    geometry: dict = field(default_factory=dict)
    frames: int | None = None
    idle_s: float = 1.0
    scan_prefix: str = "pva"


@dataclass
class _Scan:
    scan_id: str
    first_uid: int
    last_uid: int
    expected: int | None
    received: int = 0
    missing: int = 0
    last_update: float = 0.0
    transport_ms: list = field(default_factory=list)


class PvaBridge:
    """Subscribe to ``options.channel`` and send its updates as protocol messages to the edge at ``endpoint``.

    One thread does all of it: p4p delivers the updates through a work queue this class runs (one worker, so
    frames keep their order and the ZeroMQ socket has one user; no second hand-over), and a timer puts the idle
    check in the same queue. ``stats()`` and :attr:`scans` say what came and what did not.
    """

    def __init__(self, options: PvaOptions, endpoint: str, context: zmq.Context | None = None):
        if options.mode not in ("ptycho", "tomo"):
            raise ValueError(f"mode must be 'ptycho' or 'tomo', not {options.mode!r}")
        self.p4p = require_p4p()
        self.options = options
        self.socket = (context or zmq.Context.instance()).socket(zmq.PUSH)
        self.socket.setsockopt(zmq.SNDHWM, 0)  # the edge's receiver decides; nothing is dropped here
        self.socket.connect(endpoint)
        self.work = self.p4p.util.WorkQueue(maxsize=0)
        self.scan: _Scan | None = None
        self.scans: list[dict] = []
        self.updates = 0
        self.overruns = 0
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.connected = threading.Event()
        conf, useenv = client_conf(options.name_server)
        self.context = self.p4p.client.thread.Context("pva", conf=conf, useenv=useenv, nt=False, queue=self.work)
        self.threads = [threading.Thread(target=self.work.handle, name="edge-pva", daemon=True),
                        threading.Thread(target=self._tick, name="edge-pva-idle", daemon=True)]  # fmt: skip
        self.subscription = None

    def start(self) -> PvaBridge:
        for thread in self.threads:
            thread.start()
        request = f"record[queueSize={QUEUE_SIZE},pipeline=true]"
        self.subscription = self.context.monitor(self.options.channel, self._on_update, request=request,
                                                 notify_disconnect=True)  # fmt: skip
        return self

    def _tick(self) -> None:
        while not self.stopping.wait(0.1):
            self.work.push_wait(self._check_idle)

    def _on_update(self, value) -> None:
        """An update (or a connection event), on the bridge's own worker thread."""
        if isinstance(value, Exception):
            self._on_event(value)
            return
        try:
            self._frame(value)
        except (ValueError, KeyError, TypeError) as error:  # a malformed update: counted, never fatal
            self.errors.append(str(error))
            if len(self.errors) <= 20:
                log.warning("PVA update skipped: %s", error)

    def _on_event(self, event: Exception) -> None:
        name = type(event).__name__
        if name == "Disconnected":
            self.connected.clear()
            if self.scan is not None:
                log.warning("PVA channel %s disconnected during scan %s", self.options.channel, self.scan.scan_id)
        elif name == "Finished":
            self._end("channel finished")
        else:
            log.info("PVA %s: %s", name, event)

    def _check_idle(self) -> None:
        scan = self.scan
        if scan is not None and time.monotonic() - scan.last_update > self.options.idle_s:
            self._end(f"no update for {self.options.idle_s:g} s")

    def _frame(self, value) -> None:
        self.connected.set()
        now_ns = time.time_ns()
        self.updates += 1
        attributes = {a["name"]: a["value"] for a in value["attribute"]}
        uid = int(value["uniqueId"])
        if uid == 0:
            return  # the channel's value before its first frame (what a new subscriber is sent first)
        data = np.asarray(value["value"])
        dims = [int(d["size"]) for d in value["dimension"]]
        if len(dims) != 2 or data.size != dims[0] * dims[1]:
            raise ValueError(f"uniqueId {uid}: dimension {dims} for {data.size} values (a 2-D mono image expected)")
        frame = data.reshape(dims[1], dims[0])  # NTNDArray lists the fastest-varying dimension first
        if frame.dtype not in _DTYPES:
            raise ValueError(f"uniqueId {uid}: {frame.dtype} pixels (uint8, uint16, uint32 or float32 expected)")
        scan = self.scan
        if scan is not None and uid <= scan.last_uid:
            self._end(f"uniqueId went back to {uid}: a new acquisition")
            scan = None
        if scan is None:
            scan = self._begin(uid, frame, attributes)
        index = uid - scan.first_uid
        scan.missing += uid - scan.last_uid - 1 if scan.received else 0
        scan.last_uid, scan.received, scan.last_update = uid, scan.received + 1, time.monotonic()
        stamp = value["timeStamp"]
        sent_ns = int(stamp["secondsPastEpoch"]) * 1_000_000_000 + int(stamp["nanoseconds"])
        if sent_ns:
            scan.transport_ms.append((now_ns - sent_ns) / 1e6)
        if self.options.mode == "ptycho":
            position = self._position(attributes, index, uid)
            message = encode_frame(scan.scan_id, index, frame, position, sent_ns)
        else:
            theta = attributes.get("theta_deg")
            if theta is None:
                theta = self._position(attributes, index, uid)
            key = int(attributes.get("image_key", 0))
            message = encode_frame(scan.scan_id, index, frame, (0.0, 0.0), sent_ns, float(theta), key)
        self.socket.send_multipart(message, copy=frame.nbytes < ZERO_COPY_BYTES)
        if scan.expected is not None and index + 1 >= scan.expected:
            self._end(f"all {scan.expected} frames")

    def _position(self, attributes: dict, index: int, uid: int) -> tuple[float, float] | float:
        """The frame's ``(y, x)`` position, m (ptycho) or angle, degrees (tomo): attributes, else the file."""
        ptycho = self.options.mode == "ptycho"
        if ptycho and all(k in attributes for k in POSITION_KEYS):
            return (float(attributes["position_y_m"]), float(attributes["position_x_m"]))
        positions = self.options.positions
        if positions is None or index >= len(positions):
            what = "position_y_m/position_x_m" if ptycho else "theta_deg"
            raise ValueError(f"uniqueId {uid}: no {what} attribute and no positions file entry {index}")
        return (float(positions[index][0]), float(positions[index][1])) if ptycho else float(positions[index])

    def _begin(self, uid: int, frame: np.ndarray, attributes: dict) -> _Scan:
        geometry = dict(self.options.geometry)
        for key in GEOMETRY_KEYS:
            if key in attributes:
                value = attributes[key]
                geometry[key] = value.tolist() if isinstance(value, np.ndarray) else float(value)
        if self.options.mode == "ptycho":
            missing = [k for k in ("energy_eV", "detector_distance_m", "detector_pixel_size_m") if k not in geometry]
            if missing:
                raise ValueError(f"uniqueId {uid}: no {', '.join(missing)} (frame attributes or the edge's options)")
        expected = attributes.get("n_frames", self.options.frames)
        expected = None if expected is None else int(expected)
        scan_id = f"{self.options.scan_prefix}-{len(self.scans) + 1}"
        self.socket.send_multipart(encode_start(scan_id, frame.dtype.name, frame.shape, geometry, expected))
        self.scan = _Scan(scan_id, uid, uid - 1, expected, last_update=time.monotonic())
        log.info("PVA %s: scan %s started at uniqueId %d", self.options.channel, scan_id, uid)
        return self.scan

    def _end(self, reason: str) -> None:
        scan = self.scan
        if scan is None:
            return
        self.scan = None
        numbered = scan.last_uid - scan.first_uid + 1
        self.socket.send_multipart(encode_end(scan.scan_id, max(numbered, scan.expected or 0)))
        transport = np.asarray(scan.transport_ms)
        record = {
            "scan_id": scan.scan_id,
            "channel": self.options.channel,
            "ended": reason,
            "received": scan.received,
            "numbered": numbered,
            "missing_unique_ids": scan.missing,
            "transport_ms_p50": float(np.percentile(transport, 50)) if transport.size else None,
            "transport_ms_p99": float(np.percentile(transport, 99)) if transport.size else None,
        }
        self.scans.append(record)
        log.info("PVA scan %s ended (%s): %s", scan.scan_id, reason, json.dumps(record))

    def stats(self) -> dict:
        return {"channel": self.options.channel, "updates": self.updates, "errors": len(self.errors),
                "scans": list(self.scans)}  # fmt: skip

    def stop(self) -> None:
        """Stop: close the subscription, end the open scan after what was delivered, close everything."""
        if self.subscription is not None:
            self.subscription.close()
        self.stopping.set()
        self.threads[1].join(10)
        self.work.push_wait(lambda: self._end("bridge stopped"))
        self.work.interrupt()  # after everything already queued
        self.threads[0].join(10)
        try:
            self.context.close()
        except TypeError:  # p4p 4.3 closes its own workers, and has none when given a queue
            pass
        self.socket.close(linger=5000)


def load_positions(path: str | Path, mode: str = "ptycho") -> tuple[np.ndarray, dict]:
    """Positions for frames without position attributes: ``(N, 2)`` [y, x] m (ptycho) or ``(N,)`` degrees (tomo)
    by frame index, from ``.npy`` / ``.txt`` / ``.csv``, or a CXI file (its positions and geometry). Returns
    ``(positions, geometry)`` (geometry empty unless the file has one)."""
    path = Path(path)
    if path.suffix in (".npy", ".txt", ".csv"):
        values = np.load(path, allow_pickle=False) if path.suffix == ".npy" else np.loadtxt(path, delimiter=",")
        values = np.asarray(values, dtype=np.float64)
        want = 2 if mode == "ptycho" else 1
        if (values.ndim != want) or (mode == "ptycho" and values.shape[1] != 2):
            shape = "(N, 2) [y, x] m" if mode == "ptycho" else "(N,) degrees"
            raise ValueError(f"{path}: positions of shape {values.shape}; {mode} needs {shape}")
        return values, {}
    if mode != "ptycho":
        raise ValueError(f"{path}: tomography angles come from .npy/.txt/.csv files (or the frames' theta_deg)")
    from edgeray.io import CXIFile
    from edgeray.stream.detector import scan_geometry

    with CXIFile(path) as cxi:
        return cxi.positions_m, scan_geometry(cxi)
