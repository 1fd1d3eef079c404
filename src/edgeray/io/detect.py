"""Which EdgeRay format an HDF5 file holds, from its layout alone."""

from __future__ import annotations

from pathlib import Path

import h5py

from edgeray.io.errors import EdgeRayFormatError
from edgeray.io.nxtomo import nxtomo_entries
from edgeray.io.tomo_layouts import match_layout

KINDS = ("cxi", "product", "tomo-raw", "tomo-recon", "trainset")


def detect_kind(path: str | Path) -> str:
    """One of :data:`KINDS` for the file at ``path``.

    Raises:
        EdgeRayFormatError: the file is not HDF5 or matches none of EdgeRay's formats.
    """
    path = Path(path)
    if not path.exists():
        raise EdgeRayFormatError(path, None, "no such file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise EdgeRayFormatError(path, None, f"cannot open as HDF5 ({exc})") from exc
    with h5:
        if nxtomo_entries(h5) or match_layout(h5) is not None:
            return "tomo-raw"
        if "cxi_version" in h5 or "entry_1" in h5:
            return "cxi"
        if "object" in h5 and "probe" in h5:
            return "product"
        if "exchange/data" in h5:
            data = h5["exchange/data"]
            if "exchange/theta" in h5 or "exchange/data_white" in h5:
                return "tomo-raw"
            if data.attrs.get("kind") == "reconstruction" or data.ndim == 3:
                return "tomo-recon"
        if {"frames", "amplitude", "phase"} <= set(h5):
            return "trainset"
    raise EdgeRayFormatError(path, None, "not a CXI scan, ptychography product, Data Exchange file or training set")
