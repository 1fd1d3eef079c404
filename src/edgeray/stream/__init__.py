"""Live edge streaming: wire protocol, detector replay, the edge service (write, infer, stitch), live view.

Names are imported on first use (PEP 562), so that a helper process (the run-file writer) loads only the modules
it needs, not torch and the networks.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "Dashboard": "dashboard",
    "ReplayReport": "detector",
    "connect": "detector",
    "disconnect": "detector",
    "replay": "detector",
    "scan_geometry": "detector",
    "EdgeOptions": "edge",
    "EdgeService": "edge",
    "Mosaic": "mosaic",
    "End": "protocol",
    "Frame": "protocol",
    "ProtocolError": "protocol",
    "Start": "protocol",
    "decode": "protocol",
    "encode_end": "protocol",
    "encode_frame": "protocol",
    "encode_start": "protocol",
    "RunFile": "runfile",
    "make_keys": "security",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'edgeray.stream' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"edgeray.stream.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
