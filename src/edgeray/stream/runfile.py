"""The run file: every received frame appended to a CXI file that is valid at every moment (HDF5 SWMR).

The layout is the CXI of docs/formats.md (the same keys :func:`edgeray.io.write_cxi` writes, so ``edgeray info``,
``edgeray ptycho reconstruct`` and :class:`edgeray.io.CXIFile` read it), with the frames and translations made
extendible, plus ``/entry_1/data_1/frame_index (N,)`` (the sender's index of each frame) and
``arrival_ns (N,)`` (when the edge received it, ns since the epoch). The file is in SWMR mode while the scan runs:
readers open it with ``h5py.File(path, "r", swmr=True)`` (``CXIFile`` does so when needed) and see every frame
up to the last flush.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from edgeray.io.cxi import DETECTOR, FRAMES, FRAMES_LINK, TRANSLATION, write_geometry
from edgeray.io.geometry import PtychoGeometry

INDEX = "entry_1/data_1/frame_index"
ARRIVAL = "entry_1/data_1/arrival_ns"


class RunFile:
    """An open run file; :meth:`append` blocks of frames, :meth:`flush` to publish them, :meth:`close` at the end.

    Args:
        path: the ``.cxi`` file to create (an existing file is kept: a numbered name is chosen instead).
        geometry: the scan's geometry.
        dtype: frame dtype as the detector sends it (stored unchanged).
        attrs: written on ``/entry_1`` (scan id, start time, sender).
    """

    def __init__(self, path: str | Path, geometry: PtychoGeometry, dtype: str, attrs: dict | None = None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        candidate, k = path, 1
        while candidate.exists():
            candidate = path.with_name(f"{path.stem}_{k}{path.suffix}")
            k += 1
        self.path = candidate
        self.n_written = 0
        height, width = geometry.frame_shape
        rows = max(1, min(512, (1 << 20) // (height * width * np.dtype(dtype).itemsize)))
        h5 = h5py.File(self.path, "w", libver="latest")
        h5["cxi_version"] = 150
        det = h5.create_group(DETECTOR)
        det.create_dataset("data", shape=(0, height, width), maxshape=(None, height, width), dtype=dtype,
                           chunks=(rows, height, width))  # fmt: skip
        det["data"].attrs["axes"] = "translation:y:x"
        h5.create_group("entry_1/data_1")
        h5[FRAMES_LINK] = h5py.SoftLink("/" + FRAMES)
        write_geometry(h5, geometry)
        h5.create_dataset(TRANSLATION, shape=(0, 3), maxshape=(None, 3), dtype=np.float64, chunks=(4096, 3))
        h5[TRANSLATION].attrs["units"] = "m"
        h5.create_dataset(INDEX, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        h5.create_dataset(ARRIVAL, shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        for key, value in (attrs or {}).items():
            h5["entry_1"].attrs[key] = value
        h5.swmr_mode = True
        self._h5 = h5

    def append(self, frames: np.ndarray, positions_m: np.ndarray, indices: np.ndarray, arrival_ns: np.ndarray) -> None:
        """Add ``frames (k, H, W)`` with probe positions ``(k, 2)`` ``[y, x]`` m, sender indices and arrival times."""
        k = len(frames)
        if k == 0:
            return
        start, stop = self.n_written, self.n_written + k
        h5 = self._h5
        translation = np.zeros((k, 3))
        translation[:, 0], translation[:, 1] = -positions_m[:, 1], -positions_m[:, 0]  # CXI: the sample's move
        for key, values in ((FRAMES, frames), (TRANSLATION, translation), (INDEX, indices), (ARRIVAL, arrival_ns)):
            dataset = h5[key]
            dataset.resize(stop, axis=0)
            dataset[start:stop] = values
        self.n_written = stop

    def flush(self) -> None:
        """Make every appended frame visible to SWMR readers (and durable against a crash of this process)."""
        self._h5.flush()

    def close(self, attrs: dict | None = None) -> None:
        if self._h5 is None:
            return
        self._h5.close()
        self._h5 = None
        if attrs:  # attributes cannot be added in SWMR mode: reopen the closed file for them
            with h5py.File(self.path, "r+") as h5:
                for key, value in attrs.items():
                    h5["entry_1"].attrs[key] = value
