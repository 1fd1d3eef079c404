"""The detector side of EPICS PV Access (p4p): files served as an areaDetector NTNDArray channel, for tests, replays
and benchmarks (``edgeray detector replay --pva``), the way areaDetector's PVA plugin serves frames. The edge's side
is :mod:`edgeray.stream.pva`. :func:`serve` binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from edgeray.stream.detector import ReplayReport, _Cycled, wait_until
from edgeray.stream.pva import _UNION_MEMBER, require_p4p, server_conf


def ntndarray_type():
    """The NTNDArray structure areaDetector publishes (p4p's definition)."""
    from p4p.nt import NTNDArray

    return NTNDArray.buildType()


def _attribute(name: str, value) -> dict:
    """An NTAttribute; sequences go as float64 arrays (p4p would infer a list of numbers as strings)."""
    if isinstance(value, list | tuple | np.ndarray):
        value = np.asarray(value, dtype=np.float64)
    return {"name": name, "value": value}


def ntndarray_value(frame: np.ndarray, unique_id: int, attributes: dict, t_ns: int, kind=None):
    """One update: ``frame`` ``(H, W)`` with ``uniqueId``, time stamp ``t_ns`` (wall ns) and NDAttributes."""
    from p4p import Value

    height, width = frame.shape
    seconds, nanoseconds = divmod(t_ns, 1_000_000_000)
    stamp = {"secondsPastEpoch": seconds, "nanoseconds": nanoseconds}
    size = frame.nbytes
    return Value(kind or ntndarray_type(), {
        "value": (_UNION_MEMBER[frame.dtype.name], frame.reshape(-1)),
        "compressedSize": size,
        "uncompressedSize": size,
        "uniqueId": int(unique_id),
        "dimension": [{"size": width, "fullSize": width, "binning": 1},
                      {"size": height, "fullSize": height, "binning": 1}],
        "attribute": [_attribute("ColorMode", 0)] + [_attribute(k, v) for k, v in attributes.items()],
        "timeStamp": stamp,
        "dataTimeStamp": stamp,
    })  # fmt: skip


class _Subscribers:
    """Counts the channel's clients (p4p's SharedPV handler calls)."""

    def __init__(self):
        self.first = threading.Event()

    def onFirstConnect(self, pv) -> None:
        self.first.set()

    def onLastDisconnect(self, pv) -> None:
        pass


@dataclass
class PvaServer:
    """A running NTNDArray channel (:func:`serve`): where clients find it, and how to post to it."""

    channel: str
    address: str  # HOST:PORT of its TCP server (a client's name server)
    search_port: int  # its UDP search port (a client's EPICS_PVA_BROADCAST_PORT)
    pv: object
    server: object
    subscribers: _Subscribers
    kind: object

    def post(self, frame: np.ndarray, unique_id: int, attributes: dict, t_ns: int | None = None) -> None:
        self.pv.post(ntndarray_value(frame, unique_id, attributes, t_ns or time.time_ns(), self.kind))

    def close(self) -> None:
        self.pv.close()
        self.server.stop()


def serve(channel: str, frame_shape: tuple[int, int], dtype: str = "uint16", interface: str = "127.0.0.1") -> PvaServer:
    """Serve an NTNDArray channel on ``interface`` (default loopback only) until :meth:`PvaServer.close`."""
    p4p = require_p4p()
    from p4p.server.thread import SharedPV

    kind = ntndarray_type()
    subscribers = _Subscribers()
    pv = SharedPV(handler=subscribers, initial=ntndarray_value(np.zeros(frame_shape, dtype), 0, {}, 0, kind))
    server = p4p.server.Server(providers=[{channel: pv}], conf=server_conf(interface), useenv=False)
    conf = server.conf()
    address = f"{interface}:{conf['EPICS_PVAS_SERVER_PORT']}"
    return PvaServer(channel, address, int(conf["EPICS_PVAS_BROADCAST_PORT"]), pv, server, subscribers, kind)


def serve_frames(
    server: PvaServer,
    frames: Iterator[tuple[np.ndarray, dict]],
    n_frames: int,
    rate_hz: float = 2000.0,
    wait_s: float = 60.0,
    linger_s: float = 5.0,
    settle_s: float = 0.5,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Post ``frames`` (each ``(frame, attributes)``; ``uniqueId`` 1, 2, ...) at ``rate_hz`` (<= 0: at once) once a
    client has subscribed (up to ``wait_s``), then keep serving ``linger_s`` for what is still queued.

    A client's monitor starts a moment after its channel connects (p4p tells of the connection only); updates
    posted in between would reach it as one (the latest), so posting begins ``settle_s`` after the connection.
    """
    if not server.subscribers.first.wait(wait_s):
        raise TimeoutError(f"no client subscribed to {server.channel} within {wait_s:g} s")
    time.sleep(settle_s)
    period_ns = int(1e9 / rate_hz) if rate_hz > 0 else 0
    lateness_ns = np.zeros(n_frames, dtype=np.int64)
    t0 = time.perf_counter_ns()
    last_progress = t0
    sent = 0
    for i, (frame, attributes) in enumerate(frames):
        lateness_ns[i] = wait_until(t0 + i * period_ns)
        now = time.perf_counter_ns()
        server.post(frame, i + 1, attributes)
        sent += 1
        if progress and now - last_progress > 1e8:
            progress(sent)
            last_progress = now
    seconds = (time.perf_counter_ns() - t0) / 1e9
    time.sleep(linger_s)
    return ReplayReport.from_lateness(server.channel, sent, seconds, rate_hz, lateness_ns[:sent])


def ptycho_frames(scan, geometry: dict, cycles: int = 1) -> Iterator[tuple[np.ndarray, dict]]:
    """A ptychography scan as updates: each frame with its position and (on every frame) the geometry."""
    frames = _Cycled(scan.frames, cycles) if cycles > 1 else scan.frames
    n, total = len(scan.frames), len(frames)
    common = {**geometry, "n_frames": total}
    for block_start in range(0, total, 256):
        block = np.asarray(frames[block_start : block_start + 256])  # lazy files: one read per block
        for offset, frame in enumerate(block):
            y, x = scan.positions_m[(block_start + offset) % n]
            yield frame, {**common, "position_y_m": float(y), "position_x_m": float(x)}


def tomo_frames(scan, order: np.ndarray) -> Iterator[tuple[np.ndarray, dict]]:
    """A tomography scan as updates: darks, flats, then the projections in ``order`` (``theta_deg``, ``image_key``)."""
    total = len(order) + (0 if scan.darks is None else len(scan.darks)) + (0 if scan.flats is None else len(scan.flats))
    for key, fields in ((2, scan.darks), (1, scan.flats)):
        for frame in () if fields is None else fields:
            yield frame, {"theta_deg": 0.0, "image_key": key, "n_frames": total}
    for index in order:
        yield scan.projections[index], {"theta_deg": float(scan.theta_deg[index]), "image_key": 0, "n_frames": total}
