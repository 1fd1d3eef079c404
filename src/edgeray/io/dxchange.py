"""Data Exchange HDF5 for tomography: raw projections (lazy reader, atomic writer) and reconstructions.

Raw layout: ``/exchange/data`` ``(n_angles, rows, cols)``, ``/exchange/data_white`` (flats),
``/exchange/data_dark`` (darks), ``/exchange/theta`` (degrees). Reconstructions: ``/exchange/data``
``(slices, Y, X)`` float32 with the parameters used as attributes. Simulated files keep their ground
truth at ``/ground_truth/volume``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import h5py
import numpy as np

from edgeray.io._h5util import (
    atomic_h5,
    check_count_dtype,
    compression_kwargs,
    count_problems,
    frames_per_chunk,
    require_dataset,
)
from edgeray.io.errors import EdgeRayFormatError

DATA, FLATS, DARKS, THETA = "exchange/data", "exchange/data_white", "exchange/data_dark", "exchange/theta"
GROUND_TRUTH = "ground_truth/volume"


@dataclass
class TomoScan:
    """A parallel-beam tomography scan held in memory.

    Attributes:
        projections: ``(n_angles, rows, cols)`` raw counts (or already normalized transmission).
        theta_deg: ``(n_angles,)`` rotation angles, degrees.
        flats: ``(n_flats, rows, cols)`` open-beam images, or None.
        darks: ``(n_darks, rows, cols)`` beam-off images, or None.
        ground_truth: ``(rows, cols, cols)`` float32 attenuation per pixel (slices, Y, X) of a simulation,
            or None; the line integral of one slice along a ray is ``-log`` of its transmission.
        attrs: provenance (simulation parameters).
    """

    projections: np.ndarray
    theta_deg: np.ndarray
    flats: np.ndarray | None = None
    darks: np.ndarray | None = None
    ground_truth: np.ndarray | None = None
    attrs: dict = field(default_factory=dict)


class LazyTomoFile:
    """What the raw tomography readers share: an open HDF5 file, reading it all (:meth:`load`), closing it.

    A subclass sets ``_h5`` and provides ``theta_deg``, ``read_projections``, ``flats``, ``darks``,
    ``ground_truth`` and ``attrs``.
    """

    _h5: h5py.File

    def _open(self, path: str | Path, *header_args) -> None:
        """Open ``path`` and read its header (``_read_header(*header_args)``); the file is closed if that fails."""
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except OSError as exc:
            raise EdgeRayFormatError(self.path, None, f"cannot open as HDF5 ({exc})") from exc
        try:
            self._read_header(*header_args)
        except BaseException:
            self._h5.close()
            raise

    def load(self) -> TomoScan:
        """Read everything into memory (validated)."""
        return TomoScan(
            projections=self.read_projections(),
            theta_deg=self.theta_deg,
            flats=self.flats(),
            darks=self.darks(),
            ground_truth=self.ground_truth(),
            attrs=self.attrs(),
        )

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class DataExchangeFile(LazyTomoFile):
    """Lazy reader of raw Data Exchange projections; reads projection or sinogram blocks on request.

    Raises:
        EdgeRayFormatError: naming file and dataset, for a missing dataset, wrong dimensionality, an
            unsupported dtype, a theta/projection count mismatch, flats or darks of another frame shape;
            NaN/inf or negative counts when blocks are read or scanned (:meth:`problems`).
    """

    def __init__(self, path: str | Path):
        self._open(path)

    def _read_header(self) -> None:
        h5, path = self._h5, self.path
        self.assumptions: list[str] = []
        self._data = require_dataset(h5, DATA, path, ndim=3)
        check_count_dtype(self._data, path)
        self.n_angles, rows, cols = self._data.shape
        self.frame_shape, self.dtype = (rows, cols), self._data.dtype
        theta_ds = require_dataset(h5, THETA, path, ndim=1)
        theta = np.asarray(theta_ds[()], dtype=np.float64)
        if len(theta) != self.n_angles:
            raise EdgeRayFormatError(path, theta_ds.name, f"{len(theta)} angles for {self.n_angles} projections")
        if not np.isfinite(theta).all():
            raise EdgeRayFormatError(path, theta_ds.name, "holds NaN or inf")
        units = theta_ds.attrs.get("units", b"degrees")
        units = units.decode() if isinstance(units, bytes) else str(units)
        if units.lower().startswith("rad"):
            theta = np.degrees(theta)
            self.assumptions.append("theta stored in radians (units attribute): converted to degrees")
        elif "units" not in theta_ds.attrs:
            self.assumptions.append("theta has no units attribute: read as degrees (Data Exchange default)")
        self.theta_deg = theta
        self._flats = self._optional_frames(FLATS)
        self._darks = self._optional_frames(DARKS)

    def _optional_frames(self, name: str) -> h5py.Dataset | None:
        if name not in self._h5:
            self.assumptions.append(f"no /{name}")
            return None
        ds = require_dataset(self._h5, name, self.path, ndim=3)
        check_count_dtype(ds, self.path)
        if ds.shape[1:] != self.frame_shape:
            raise EdgeRayFormatError(
                self.path, ds.name, f"frame shape {ds.shape[1:]} differs from data's {self.frame_shape}"
            )
        return ds

    def _checked(self, block: np.ndarray, dataset: h5py.Dataset, first: int, validate: bool) -> np.ndarray:
        if validate:
            problems = count_problems(block, first)
            if problems:
                raise EdgeRayFormatError(self.path, dataset.name, "; ".join(problems))
        return block

    def read_projections(self, start: int = 0, stop: int | None = None, *, validate: bool = True) -> np.ndarray:
        """Projections ``[start, stop)`` as stored, ``(n, rows, cols)``."""
        return self._checked(self._data[start:stop], self._data, start, validate)

    def read_sinograms(self, row_start: int, row_stop: int, *, validate: bool = True) -> np.ndarray:
        """Detector rows ``[row_start, row_stop)`` of every projection, ``(n_angles, n_rows, cols)``."""
        block = self._data[:, row_start:row_stop, :]
        if validate:
            problems = count_problems(np.moveaxis(block, 1, 0), row_start)
            if problems:
                msg = "; ".join(p.replace("frame", "detector row") for p in problems)
                raise EdgeRayFormatError(self.path, self._data.name, msg)
        return block

    @property
    def n_flats(self) -> int:
        return 0 if self._flats is None else self._flats.shape[0]

    @property
    def n_darks(self) -> int:
        return 0 if self._darks is None else self._darks.shape[0]

    @property
    def has_ground_truth(self) -> bool:
        return GROUND_TRUTH in self._h5

    def flats(self, rows: slice = slice(None)) -> np.ndarray | None:
        """Flat (white) fields ``(n, rows, cols)`` or None."""
        return None if self._flats is None else self._checked(self._flats[:, rows], self._flats, 0, True)

    def darks(self, rows: slice = slice(None)) -> np.ndarray | None:
        """Dark fields ``(n, rows, cols)`` or None."""
        return None if self._darks is None else self._checked(self._darks[:, rows], self._darks, 0, True)

    def problems(self, chunk: int | None = None) -> list[str]:
        """Scan all projections, flats and darks in chunks; list what is wrong (empty when all is well)."""
        chunk = chunk or frames_per_chunk(self.frame_shape, self.dtype.itemsize, 4 << 20)
        found = []
        for ds in (self._data, self._flats, self._darks):
            if ds is None:
                continue
            for start in range(0, ds.shape[0], chunk):
                found += [f"{ds.name}: {p}" for p in count_problems(ds[start : start + chunk], start)]
        return found

    def ground_truth(self) -> np.ndarray | None:
        """The simulated volume ``(slices, Y, X)`` float32, or None."""
        return None if GROUND_TRUTH not in self._h5 else np.asarray(self._h5[GROUND_TRUTH][()], dtype=np.float32)

    def attrs(self) -> dict:
        return dict(self._h5[GROUND_TRUTH].attrs) if GROUND_TRUTH in self._h5 else {}


def read_dxchange(path: str | Path) -> TomoScan:
    """Read a whole raw Data Exchange scan into memory."""
    with DataExchangeFile(path) as dx:
        return dx.load()


def write_dxchange(path: str | Path, scan: TomoScan, *, compression: str = "gzip") -> Path:
    """Write ``scan`` as raw Data Exchange, atomically; returns ``path``."""
    proj = np.asarray(scan.projections)
    if proj.ndim != 3:
        raise ValueError(f"projections must be (n_angles, rows, cols), got {proj.shape}")
    theta = np.asarray(scan.theta_deg, dtype=np.float64)
    if theta.shape != (proj.shape[0],):
        raise ValueError(f"theta_deg must be ({proj.shape[0]},), got {theta.shape}")
    comp = compression_kwargs(compression)
    with atomic_h5(path) as h5:
        h5.attrs["implements"] = "exchange"
        chunk = (min(len(proj), frames_per_chunk(proj.shape[1:], proj.dtype.itemsize)), *proj.shape[1:])
        h5.create_dataset(DATA, data=proj, chunks=chunk, **comp)
        h5[DATA].attrs["axes"] = "theta:y:x"
        for name, frames in ((FLATS, scan.flats), (DARKS, scan.darks)):
            if frames is not None:
                h5.create_dataset(name, data=np.asarray(frames), **comp)
        h5[THETA] = theta
        h5[THETA].attrs["units"] = "degrees"
        if scan.ground_truth is not None:
            h5.create_dataset(GROUND_TRUTH, data=np.asarray(scan.ground_truth, dtype=np.float32), **comp)
            h5[GROUND_TRUTH].attrs["description"] = "simulated attenuation per pixel (slices, Y, X); not measured"
            for key, value in scan.attrs.items():
                h5[GROUND_TRUTH].attrs[key] = value
    return Path(path)


def write_reconstruction(path: str | Path, volume: np.ndarray, params: dict | None = None) -> Path:
    """Write a reconstruction ``(slices, Y, X)`` float32 at ``/exchange/data``, parameters as attributes."""
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim == 2:
        volume = volume[None]
    if volume.ndim != 3:
        raise ValueError(f"volume must be (slices, Y, X), got {volume.shape}")
    with atomic_h5(path) as h5:
        h5.attrs["implements"] = "exchange"
        h5.create_dataset(DATA, data=volume, chunks=(1, *volume.shape[1:]), **compression_kwargs("gzip"))
        h5[DATA].attrs["axes"] = "slice:y:x"
        h5[DATA].attrs["kind"] = "reconstruction"
        for key, value in (params or {}).items():
            h5[DATA].attrs[key] = value
    return Path(path)


def read_reconstruction(path: str | Path) -> tuple[np.ndarray, dict]:
    """Read a reconstruction: ``(volume (slices, Y, X) float32, parameters)``."""
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise EdgeRayFormatError(path, None, f"cannot open as HDF5 ({exc})") from exc
    with h5:
        ds = require_dataset(h5, DATA, path, ndim=3)
        volume = np.asarray(ds[()], dtype=np.float32)
        if not np.isfinite(volume).all():
            raise EdgeRayFormatError(path, ds.name, "holds NaN or inf")
        return volume, {k: v for k, v in ds.attrs.items() if k not in ("axes", "kind")}
