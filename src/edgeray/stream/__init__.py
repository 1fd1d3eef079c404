"""Live edge streaming: wire protocol, detector replay, the edge service (write, infer, stitch), live view."""

from edgeray.stream.dashboard import Dashboard
from edgeray.stream.detector import ReplayReport, connect, replay, scan_geometry
from edgeray.stream.edge import EdgeOptions, EdgeService
from edgeray.stream.mosaic import Mosaic
from edgeray.stream.protocol import (
    End,
    Frame,
    ProtocolError,
    Start,
    decode,
    encode_end,
    encode_frame,
    encode_start,
)
from edgeray.stream.runfile import RunFile
from edgeray.stream.security import make_keys

__all__ = [
    "Dashboard",
    "EdgeOptions",
    "EdgeService",
    "End",
    "Frame",
    "Mosaic",
    "ProtocolError",
    "ReplayReport",
    "RunFile",
    "Start",
    "connect",
    "decode",
    "encode_end",
    "encode_frame",
    "encode_start",
    "make_keys",
    "replay",
    "scan_geometry",
]
