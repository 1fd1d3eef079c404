"""Wire protocol, version 1 (docs/formats.md): multipart ZeroMQ messages, a UTF-8 JSON header plus raw C-order bytes.

``start`` opens a scan (dtype, frame shape, geometry), ``frame`` carries one detector frame and the probe's
position on the object ``[y, x]`` in metres (tomography: the rotation angle ``theta_deg`` and Data Exchange's
``image_key``), ``end`` closes the scan. No pickle: a header is JSON, a frame is
bytes that :func:`decode` checks against ``dtype x shape`` before viewing them as an array (no copy).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from edgeray.io.geometry import PtychoGeometry

VERSION = 1
DTYPES = ("uint8", "uint16", "uint32", "float32")
GEOMETRY_KEYS = ("energy_eV", "detector_distance_m", "detector_pixel_size_m")
# what a start's geometry may say (SI units): wide enough for any beamline, narrow enough to catch a unit slip
GEOMETRY_RANGES = {
    "energy_eV": (10.0, 1e7),
    "detector_distance_m": (1e-4, 1e3),
    "detector_pixel_size_m": (1e-7, 1e-2),
    "object_pixel_size_m": (1e-13, 1e-3),
}
MAX_HEADER_BYTES = 65536  # a header is a few hundred bytes; a larger one is refused before it is parsed
MAX_SCAN_ID_BYTES = 128  # UTF-8 bytes: the scan id names files (``<id>_refined_part2.json`` must stay < 255 bytes)


class ProtocolError(ValueError):
    """A message that does not follow the protocol; the text says what is wrong."""


@dataclass
class Start:
    scan_id: str
    dtype: str
    shape: tuple[int, int]
    geometry: dict
    n_frames: int | None = None


@dataclass
class Frame:
    scan_id: str
    index: int
    position_m: tuple[float, float]
    data: np.ndarray  # (H, W), read-only view of the message bytes
    t_ns: int = 0
    theta_deg: float | None = None  # tomography: the rotation angle, degrees
    image_key: int = 0  # tomography (Data Exchange's image_key): 0 projection, 1 flat field, 2 dark field


@dataclass
class End:
    scan_id: str
    n_frames: int


def _header(kind: str, scan_id: str, **fields) -> bytes:
    return json.dumps({"v": VERSION, "type": kind, "scan_id": scan_id, **fields}).encode()


def encode_start(
    scan_id: str, dtype: str, shape: tuple[int, int], geometry: dict, n_frames: int | None = None
) -> list[bytes]:
    """The ``start`` message; ``geometry`` needs :data:`GEOMETRY_KEYS` (SI units, pixel size in m)."""
    return [
        _header(
            "start",
            scan_id,
            dtype=str(np.dtype(dtype)),
            shape=[int(s) for s in shape],
            geometry=geometry,
            n_frames=n_frames,
        )
    ]


def encode_frame(
    scan_id: str,
    index: int,
    frame: np.ndarray,
    position_m,
    t_ns: int = 0,
    theta_deg: float | None = None,
    image_key: int = 0,
) -> list:
    """The ``frame`` message: header and the frame's bytes (no copy when ``frame`` is C-contiguous).
    Tomography frames carry ``theta_deg`` and ``image_key`` (0 projection, 1 flat, 2 dark); their ``position_m``
    is ``[0, 0]``."""
    frame = np.ascontiguousarray(frame)
    extra = {} if theta_deg is None else {"theta_deg": float(theta_deg)}
    if image_key:
        extra["image_key"] = int(image_key)
    header = _header(
        "frame",
        scan_id,
        index=int(index),
        t_ns=int(t_ns),
        position_m=[float(position_m[0]), float(position_m[1])],
        dtype=str(frame.dtype),
        shape=list(frame.shape),
        **extra,
    )
    return [header, memoryview(frame).cast("B")]


def encode_end(scan_id: str, n_frames: int) -> list[bytes]:
    return [_header("end", scan_id, n_frames=int(n_frames))]


def _require(header: dict, key: str, kind: type | tuple[type, ...]):
    if key not in header:
        raise ProtocolError(f"{header.get('type')} message without '{key}'")
    value = header[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"'{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _shape(header: dict) -> tuple[int, int]:
    shape = _require(header, "shape", list)
    if len(shape) != 2 or not all(isinstance(s, int) and 0 < s <= 65536 for s in shape):
        raise ProtocolError(f"'shape' must be [H, W] of positive integers, got {shape!r}")
    return shape[0], shape[1]


def _dtype(header: dict) -> str:
    dtype = _require(header, "dtype", str)
    if dtype not in DTYPES:
        raise ProtocolError(f"dtype '{dtype}' is not one of {', '.join(DTYPES)}")
    return dtype


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _check_scan_id(scan_id: str) -> None:
    """A scan id names files: printable, no path separators, not hidden, at most :data:`MAX_SCAN_ID_BYTES`."""
    if not scan_id or any(c in scan_id for c in "/\\\0") or scan_id.startswith(".") or not scan_id.isprintable():
        raise ProtocolError(f"scan_id {scan_id[:80]!r} is not a usable name (printable, no '/', '\\', leading '.')")
    try:
        size = len(scan_id.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate
        raise ProtocolError(f"scan_id {scan_id[:80]!r} is not valid Unicode") from None
    if size > MAX_SCAN_ID_BYTES:
        raise ProtocolError(f"scan_id of {size} bytes is too long for a file name (at most {MAX_SCAN_ID_BYTES})")


def _check_geometry_value(key: str, value) -> None:
    """A geometry entry: a number in :data:`GEOMETRY_RANGES` (pixel sizes: one number, or ``[y, x]``)."""
    low, high = GEOMETRY_RANGES[key]
    pair = key.endswith("pixel_size_m") and isinstance(value, list)
    values = value if pair else [value]
    if pair and len(values) != 2:
        raise ProtocolError(f"geometry '{key}' must be a number or [y, x], got a list of {len(values)}")
    if not all(_is_number(v) for v in values):
        kind = "a positive number or [y, x]" if key.endswith("pixel_size_m") else "a positive number"
        raise ProtocolError(f"geometry '{key}' must be {kind}, got {str(value)[:80]!r}")
    if not all(low <= v <= high for v in values):
        raise ProtocolError(f"geometry '{key}' = {value!r} is outside {low:g} to {high:g} (SI units: m, eV)")


def decode(parts: list) -> Start | Frame | End:
    """Parse and check one multipart message (``bytes``, ``memoryview`` or ``zmq.Frame`` parts).

    Raises:
        ProtocolError: bad JSON, unknown version or type, missing or ill-typed fields, a byte count that
            disagrees with ``dtype x shape``, or the wrong number of parts.
    """
    if not parts:
        raise ProtocolError("empty message")
    raw = parts[0].bytes if hasattr(parts[0], "bytes") else bytes(parts[0])
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes (at most {MAX_HEADER_BYTES})")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ProtocolError(f"header is not JSON: {error}") from None
    except RecursionError:
        raise ProtocolError("header is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("header is not a JSON object")
    if header.get("v") != VERSION:
        raise ProtocolError(f"unknown protocol version {header.get('v')!r} (this edge speaks {VERSION})")
    kind = header.get("type")
    scan_id = _require(header, "scan_id", str)
    _check_scan_id(scan_id)
    expected_parts = 2 if kind == "frame" else 1
    if len(parts) != expected_parts:
        raise ProtocolError(f"{kind} message has {len(parts)} parts, expected {expected_parts}")
    if kind == "start":
        geometry = _require(header, "geometry", dict)
        for key in (*GEOMETRY_KEYS, "object_pixel_size_m"):
            if key in GEOMETRY_KEYS or geometry.get(key) is not None:
                _check_geometry_value(key, geometry.get(key))
        n_frames = header.get("n_frames")
        if n_frames is not None and (not isinstance(n_frames, int) or n_frames < 0):
            raise ProtocolError(f"'n_frames' must be a non-negative integer or null, got {n_frames!r}")
        return Start(scan_id, _dtype(header), _shape(header), geometry, n_frames)
    if kind == "frame":
        index = _require(header, "index", int)
        if not 0 <= index < 2**31:
            raise ProtocolError(f"frame index {index} is out of range (0 to 2**31 - 1)")
        position = _require(header, "position_m", list)
        if len(position) != 2 or not all(isinstance(v, int | float) and math.isfinite(v) for v in position):
            raise ProtocolError(f"'position_m' must be [y, x] finite numbers, got {position!r}")
        dtype, shape = _dtype(header), _shape(header)
        buffer = parts[1].buffer if hasattr(parts[1], "buffer") else memoryview(parts[1])
        expected = shape[0] * shape[1] * np.dtype(dtype).itemsize
        if buffer.nbytes != expected:
            raise ProtocolError(f"frame {index} has {buffer.nbytes} bytes, {dtype} x {shape} needs {expected}")
        data = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        theta = header.get("theta_deg")
        if theta is not None and (
            not isinstance(theta, int | float) or isinstance(theta, bool) or not math.isfinite(theta)
        ):
            raise ProtocolError(f"'theta_deg' must be a finite number, got {theta!r}")
        image_key = header.get("image_key", 0)
        if image_key not in (0, 1, 2) or isinstance(image_key, bool):
            raise ProtocolError(f"'image_key' must be 0 (projection), 1 (flat) or 2 (dark), got {image_key!r}")
        position_yx = (float(position[0]), float(position[1]))
        t_ns = header.get("t_ns") or 0
        if not isinstance(t_ns, int) or isinstance(t_ns, bool):
            raise ProtocolError(f"'t_ns' must be an integer (ns), got {t_ns!r}")
        return Frame(scan_id, index, position_yx, data, t_ns, None if theta is None else float(theta), image_key)
    if kind == "end":
        n_frames = _require(header, "n_frames", int)
        if n_frames < 0:
            raise ProtocolError(f"'n_frames' must be non-negative, got {n_frames}")
        return End(scan_id, n_frames)
    raise ProtocolError(f"unknown message type {kind!r}")


def geometry_of(start: Start) -> PtychoGeometry:
    """The scan geometry a ``start`` message describes (detector pixel size: one number, or ``[y, x]``)."""
    geometry = start.geometry
    pixel = geometry["detector_pixel_size_m"]
    pixel_yx = (float(pixel), float(pixel)) if isinstance(pixel, int | float) else (float(pixel[0]), float(pixel[1]))
    return PtychoGeometry(float(geometry["energy_eV"]), float(geometry["detector_distance_m"]), pixel_yx, start.shape)


def object_pixel_size_m(start: Start) -> tuple[float, float]:
    """Object pixel size ``(dy, dx)`` in m: the sender's ``object_pixel_size_m``, else ``lambda z / (n p)``."""
    given = start.geometry.get("object_pixel_size_m")
    if given is not None:
        values = [given, given] if isinstance(given, int | float) else list(given)
        return float(values[0]), float(values[1])
    return geometry_of(start).object_pixel_size_m
