"""A detector stand-in: send a scan's frames over ZeroMQ at a steady rate (replay of a file or a simulation).

Pacing sleeps to each frame's deadline ``t0 + i / rate`` (never a fixed sleep per frame, so errors do not add up);
the report gives the achieved rate and the jitter (send time minus deadline).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import zmq

from edgeray.io import PtychoScan
from edgeray.stream.protocol import encode_end, encode_frame, encode_start
from edgeray.stream.security import client_socket_options


@dataclass
class ReplayReport:
    scan_id: str
    frames_sent: int
    seconds: float
    rate_hz: float
    target_rate_hz: float
    jitter_us_p50: float
    jitter_us_p99: float
    jitter_us_max: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_lateness(
        cls, scan_id: str, frames_sent: int, seconds: float, target_rate_hz: float, lateness_ns: np.ndarray
    ) -> ReplayReport:
        """The report of a paced send: ``lateness_ns`` ``(n,)`` how late each paced frame left (its rate over
        ``seconds``), ``frames_sent`` all frames sent."""
        paced = len(lateness_ns)
        jitter_us = np.asarray(lateness_ns) / 1e3
        return cls(
            scan_id=scan_id,
            frames_sent=frames_sent,
            seconds=seconds,
            rate_hz=(paced - 1) / seconds if paced > 1 and seconds > 0 else 0.0,
            target_rate_hz=target_rate_hz,
            jitter_us_p50=float(np.percentile(jitter_us, 50)) if paced else 0.0,
            jitter_us_p99=float(np.percentile(jitter_us, 99)) if paced else 0.0,
            jitter_us_max=float(jitter_us.max()) if paced else 0.0,
        )


class _Cycled:
    """``frames`` repeated ``cycles`` times, sliced block by block (no copy of the whole)."""

    def __init__(self, frames, cycles: int):
        self.frames, self.n = frames, len(frames)
        self.dtype, self.shape = frames.dtype, (self.n * cycles, *frames.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, block: slice) -> np.ndarray:
        start, stop, _ = block.indices(len(self))
        parts = []
        while start < stop:  # at most one wrap per block of a cycle's length or less
            first = start % self.n
            take = min(stop - start, self.n - first)
            parts.append(np.asarray(self.frames[first : first + take]))
            start += take
        return np.concatenate(parts) if parts else np.zeros((0, *self.shape[1:]), self.dtype)


def scan_geometry(scan: PtychoScan) -> dict:
    """The ``geometry`` of a ``start`` message for ``scan`` (SI units)."""
    geometry = scan.geometry
    return {
        "energy_eV": geometry.energy_eV,
        "detector_distance_m": geometry.distance_m,
        "detector_pixel_size_m": list(geometry.detector_pixel_size_m),
        "object_pixel_size_m": list(geometry.object_pixel_size_m),
    }


def wait_until(deadline_ns: int) -> int:
    """Sleep until ``deadline_ns`` (``perf_counter_ns`` clock) unless it has passed; returns how late now is, ns."""
    now = time.perf_counter_ns()
    if deadline_ns > now:
        time.sleep((deadline_ns - now) / 1e9)
        now = time.perf_counter_ns()
    return now - deadline_ns


LINGER_MS = 30_000
"""How long :func:`disconnect` waits for queued frames to leave."""


def connect(endpoint: str, context: zmq.Context | None = None, curve_keys=None) -> zmq.Socket:
    """A PUSH socket connected to the edge (no send limit: frames queue in memory, never dropped). End with
    :func:`disconnect`, which waits for the queued frames to leave."""
    context = context or zmq.Context.instance()
    socket = context.socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.setsockopt(zmq.LINGER, LINGER_MS)
    client_socket_options(socket, endpoint, curve_keys)
    socket.connect(endpoint)
    return socket


def disconnect(socket: zmq.Socket) -> bool:
    """Close ``socket`` and terminate its context, waiting up to :data:`LINGER_MS` for queued messages to leave;
    returns False when that wait ran out (the edge was that far behind: the frames still queued, and the scan's
    end message, were dropped). The socket must be the last one open on its context (termination waits for all).

    A process that only closes the socket and exits loses whatever is still queued: ZeroMQ's I/O thread dies with
    it (measured: an exiting sender ahead of its receiver delivered 63 k of 200 k messages and no end message).
    """
    context = socket.context
    socket.close()
    began = time.perf_counter()
    context.term()
    return time.perf_counter() - began < 0.99 * LINGER_MS / 1e3


def replay(
    scan: PtychoScan,
    socket: zmq.Socket,
    rate_hz: float = 2000.0,
    scan_id: str | None = None,
    start_index: int = 0,
    send_end: bool = True,
    progress: Callable[[int], None] | None = None,
    cycles: int = 1,
    announce: bool = True,
) -> ReplayReport:
    """Send ``scan`` (start, frames ``start_index..N-1``, end) on ``socket`` at ``rate_hz`` frames per second.

    ``rate_hz <= 0`` sends as fast as possible. ``progress`` is called with the frames sent, about 10 times a
    second. Frames are read as stored (uint16 or uint32); the positions sent are the probe's on the object.
    ``cycles > 1`` sends the scan's frames that many times over as one longer scan (indices go on counting):
    a long, steady stream from a short simulation, for soak tests and benchmarks. ``announce=False`` leaves the
    frame count out of the start (a scan of unknown extent, as a fly scan's may be).
    """
    scan_id = scan_id or f"scan-{uuid.uuid4().hex[:8]}"
    frames = _Cycled(scan.frames, cycles) if cycles > 1 else scan.frames
    n = len(frames)
    socket.send_multipart(encode_start(scan_id, str(frames.dtype), frames.shape[1:], scan_geometry(scan),
                                       n if announce else None))  # fmt: skip
    positions = np.asarray(scan.positions_m, dtype=np.float64)
    positions = np.tile(positions, (cycles, 1)) if cycles > 1 else positions
    period_ns = int(1e9 / rate_hz) if rate_hz > 0 else 0
    lateness_ns = np.zeros(max(n - start_index, 0), dtype=np.int64)
    chunk = 256
    t0 = time.perf_counter_ns()
    last_progress = t0
    for block_start in range(start_index, n, chunk):
        block = np.asarray(frames[block_start : block_start + chunk])  # lazy files: one read per block
        for offset, frame in enumerate(block):
            i = block_start + offset
            lateness_ns[i - start_index] = wait_until(t0 + (i - start_index) * period_ns)
            socket.send_multipart(encode_frame(scan_id, i, frame, positions[i], time.time_ns()), copy=False)
        if progress and time.perf_counter_ns() - last_progress > 1e8:
            progress(min(block_start + chunk, n))
            last_progress = time.perf_counter_ns()
    seconds = (time.perf_counter_ns() - t0) / 1e9
    if send_end:
        socket.send_multipart(encode_end(scan_id, n))
    if progress:
        progress(n)
    return ReplayReport.from_lateness(scan_id, n - start_index, seconds, rate_hz, lateness_ns)
