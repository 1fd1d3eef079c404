"""NeXus NXtomo raw tomography (as Diamond's and tomoscan's writers lay it out): a lazy reader with the interface of
:class:`~edgeray.io.dxchange.DataExchangeFile`, and :func:`open_tomo` / :func:`read_tomo` for either format.

Layout read (one ``NXentry`` per scan; ``entry`` picks one, default the first):

- frames: ``ENTRY/instrument/detector/data`` or ``ENTRY/data/data`` (Diamond: ``ENTRY/tomo_entry/...``),
  ``(n_frames, rows, cols)`` unless the ``NXdata`` group's ``axes`` attribute says otherwise (the frame axis is
  the one named ``rotation_angle``, ``image_key`` or ``frame``; an ``x`` axis before ``y`` means columns first);
- ``image_key`` ``(n_frames,)`` beside the data (detector or NXdata group): 0 projection, 1 flat, 2 dark, 3 invalid;
  absent: every frame is a projection;
- ``rotation_angle`` ``(n_frames,)`` in ``ENTRY/sample`` or the NXdata group; degrees unless ``units`` says radians.

Facility files often keep frames, keys and angles at beamline-specific paths (as httomo's loader settings name
them: ``data_path``, ``image_key_path``, rotation angles): :class:`TomoPaths` says where, and then any HDF5 file is
read that way, external links (data in a sibling file) included. A file that is neither Data Exchange nor NXtomo,
with no paths given, is refused with the file's candidates listed (:func:`candidates`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np

from edgeray.io._h5util import check_count_dtype, count_problems, frames_per_chunk
from edgeray.io.dxchange import DataExchangeFile, LazyTomoFile, TomoScan
from edgeray.io.errors import EdgeRayFormatError
from edgeray.io.tomo_layouts import LAYOUTS, layout, match_layout

PROJECTION, FLAT, DARK, INVALID = 0, 1, 2, 3


@dataclass(frozen=True)
class TomoPaths:
    """Where a raw tomography file keeps its datasets (HDF5 paths, e.g. ``/entry/imaging/data``), where Data
    Exchange and NXtomo's own places do not apply.

    Attributes:
        data_path: the frames ``(n_frames, rows, cols)``.
        image_key_path: ``(n_frames,)`` integers, 0 projection, 1 flat, 2 dark, 3 invalid (None: all projections).
        angles_path: rotation angles, degrees unless the dataset's ``units`` says radians, one per frame or one per
            projection.
        layout: a named layout of :data:`~edgeray.io.tomo_layouts.LAYOUTS` (``diamond-diad``...) giving the paths
            not given here; ``dxchange`` or ``nxtomo``: that format's reader.
    """

    data_path: str | None = None
    image_key_path: str | None = None
    angles_path: str | None = None
    layout: str | None = None

    def given(self) -> bool:
        return any(value is not None for value in (self.data_path, self.image_key_path, self.angles_path, self.layout))

    def on(self, h5: h5py.File) -> TomoPaths:
        """These paths with the ones the layout gives filled in (for this file's angle dataset)."""
        if self.layout is None:
            return self
        named = layout(self.layout)
        return TomoPaths(self.data_path or named.data_path, self.image_key_path or named.image_key_path,
                         self.angles_path or named.angles_path(h5) or (named.angles_paths or (None,))[0])  # fmt: skip


def candidates(h5: h5py.File) -> str:
    """The file's 3-D datasets (candidates for the frames) and 1-D integer and float datasets (for image keys and
    angles), with their shapes: what a user can pass as :class:`TomoPaths`."""
    three, keys, floats = [], [], []

    def visit(name: str, link) -> None:
        try:
            item = h5.get(name)  # soft and external links followed (data kept in a sibling file)
        except (KeyError, OSError):  # a dangling link
            return
        if not isinstance(item, h5py.Dataset):
            return
        if item.ndim == 3:
            three.append(f"/{name} {item.shape}")
        elif item.ndim == 1 and item.shape[0] > 1 and item.dtype.kind in "iu":
            keys.append(f"/{name} ({item.shape[0]},)")
        elif item.ndim == 1 and item.shape[0] > 1 and item.dtype.kind == "f":
            floats.append(f"/{name} ({item.shape[0]},)")

    h5.visititems_links(visit)
    parts = [f"3-D datasets (frames?): {', '.join(three) or 'none'}",
             f"1-D integer datasets (image keys?): {', '.join(keys) or 'none'}",
             f"1-D float datasets (angles?): {', '.join(floats) or 'none'}"]  # fmt: skip
    return (
        "; ".join(parts) + ". Give them with --data-path, --image-key-path and --angles-path, or name a "
        f"--layout ({', '.join(LAYOUTS)})"
    )


FRAME_AXIS_NAMES = ("rotation_angle", "image_key", "frame", "frames", "nframes")


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nxtomo_entries(h5: h5py.File) -> list[str]:
    """Names of the file's top-level groups that hold an NXtomo scan, sorted."""
    found = []
    for name, group in h5.items():
        if not isinstance(group, h5py.Group):
            continue
        nx_class = _text(group.attrs.get("NX_class", ""))
        definition = (
            _text(group["definition"][()]) if "definition" in group else _text(group.attrs.get("definition", ""))
        )
        looks_like = any(f"{base}instrument/detector/image_key" in group for base in ("", "tomo_entry/"))
        if definition == "NXtomo" or (nx_class == "NXentry" and looks_like) or "tomo_entry" in group:
            found.append(name)
    return sorted(found)


def is_nxtomo(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file holding at least one NXtomo entry."""
    try:
        with h5py.File(path, "r") as h5:
            return bool(nxtomo_entries(h5))
    except OSError:
        return False


class NXtomoFile(LazyTomoFile):
    """Lazy reader of an NXtomo scan; reads projection or sinogram blocks on request.

    The same attributes and methods as :class:`~edgeray.io.dxchange.DataExchangeFile` (``n_angles``, ``frame_shape``,
    ``dtype``, ``theta_deg``, ``assumptions``, ``read_projections``, ``read_sinograms``, ``flats``, ``darks``, ...).

    Raises:
        EdgeRayFormatError: naming file and dataset, for no NXtomo entry (or not the one asked for), missing frames
            or angles, an image_key or angle count other than the frame count, unknown image keys, no projection.
    """

    def __init__(self, path: str | Path, entry: str | None = None, paths: TomoPaths | None = None):
        self._open(path, entry, paths or TomoPaths())

    def _find(self, base: h5py.Group, *names: str) -> h5py.Dataset | None:
        for name in names:
            if name in base and isinstance(base[name], h5py.Dataset):
                return base[name]
        return None

    def _given(self, name: str | None, what: str) -> h5py.Dataset | None:
        """The dataset at the explicit path ``name`` (None: not given); refused, with the candidates, if absent."""
        if name is None:
            return None
        item = self._h5.get(name)
        if not isinstance(item, h5py.Dataset):
            raise EdgeRayFormatError(self.path, name, f"no such dataset ({what}); {candidates(self._h5)}")
        return item

    def _read_header(self, entry: str | None, paths: TomoPaths) -> None:
        h5, path = self._h5, self.path
        self.assumptions: list[str] = []
        self.layout = "nxtomo"
        if paths.given():
            self.entry, self.layout = None, paths.layout or "paths given"
            if paths.layout is not None:
                self.assumptions.append(f"layout {paths.layout}: {layout(paths.layout).description}")
            paths = paths.on(h5)
            data = self._given(paths.data_path, "frames")
            if data is None:
                raise EdgeRayFormatError(path, None, "an image key or angles path without --data-path")
            self._header_from(data, self._given(paths.image_key_path, "image keys"),
                              self._given(paths.angles_path, "angles"), (0, 1, 2))  # fmt: skip
            self.assumptions.append(f"datasets at the paths given: {data.name}")
            return
        entries = nxtomo_entries(h5)
        if not entries:
            raise EdgeRayFormatError(path, None, "no NXtomo entry (an NXentry with definition NXtomo); "
                                     + candidates(h5))  # fmt: skip
        if entry is None:
            entry = entries[0]
            if len(entries) > 1:
                self.assumptions.append(f"{len(entries)} NXtomo entries ({', '.join(entries)}): read {entry}")
        elif entry not in entries:
            raise EdgeRayFormatError(path, f"/{entry}", f"no such NXtomo entry; the file has {', '.join(entries)}")
        self.entry = entry
        group = h5[entry]["tomo_entry"] if "tomo_entry" in h5[entry] else h5[entry]
        data = self._find(group, "instrument/detector/data", "data/data")
        if data is None:
            raise EdgeRayFormatError(path, f"{group.name}/instrument/detector/data",
                                     f"missing dataset (frames); {candidates(h5)}")  # fmt: skip
        key_set = self._find(group, "instrument/detector/image_key", "data/image_key")
        angle_set = self._find(group, "sample/rotation_angle", "data/rotation_angle")
        if angle_set is None:
            raise EdgeRayFormatError(path, f"{group.name}/sample/rotation_angle", "missing dataset (angles)")
        self._header_from(data, key_set, angle_set, self._axis_order(group, data))

    def _header_from(self, data: h5py.Dataset, key_set: h5py.Dataset | None, angle_set: h5py.Dataset | None,
                     axes: tuple[int, int, int]) -> None:  # fmt: skip
        """Frames, keys and angles from these datasets (``axes``: the stored positions of frame, row, column)."""
        path = self.path
        if data.ndim != 3:
            raise EdgeRayFormatError(path, data.name, f"has {data.ndim} dimensions {data.shape}, expected 3")
        check_count_dtype(data, path)
        self._data = data
        self._axes = axes
        self.sources = {"frames": data.name, "image_keys": key_set.name if key_set is not None else None,
                        "angles": angle_set.name if angle_set is not None else None}  # fmt: skip
        n_frames = data.shape[self._axes[0]]
        self.frame_shape = (data.shape[self._axes[1]], data.shape[self._axes[2]])
        self.dtype = data.dtype

        if key_set is None:
            keys = np.zeros(n_frames, dtype=np.int64)
            self.assumptions.append("no image_key: every frame read as a projection")
        else:
            keys = np.asarray(key_set[()], dtype=np.int64)
            if keys.shape != (n_frames,):
                raise EdgeRayFormatError(path, key_set.name, f"{keys.size} keys for {n_frames} frames")
            unknown = sorted(set(np.unique(keys).tolist()) - {PROJECTION, FLAT, DARK, INVALID})
            if unknown:
                raise EdgeRayFormatError(path, key_set.name, f"unknown image keys {unknown} (0, 1, 2, 3 expected)")
        if angle_set is None:
            raise EdgeRayFormatError(path, None, "no angles: give --angles-path")
        angles = np.asarray(angle_set[()], dtype=np.float64).reshape(-1)
        n_projections = int(np.count_nonzero(keys == PROJECTION))
        if len(angles) == n_projections and n_projections != n_frames:  # one angle per projection: spread them out
            per_frame = np.full(n_frames, np.nan)
            per_frame[keys == PROJECTION] = angles
            angles = per_frame
        elif len(angles) != n_frames:
            raise EdgeRayFormatError(path, angle_set.name, f"{len(angles)} angles for {n_frames} frames "
                                     f"({n_projections} projections)")  # fmt: skip
        units = _text(angle_set.attrs.get("units", "degree")).lower()
        if units.startswith("rad"):
            angles = np.degrees(angles)
            self.assumptions.append("rotation_angle in radians (units attribute): converted to degrees")
        elif "units" not in angle_set.attrs:
            self.assumptions.append("rotation_angle has no units attribute: read as degrees (NXtomo)")

        self._projection_frames = np.flatnonzero(keys == PROJECTION)
        self._flat_frames = np.flatnonzero(keys == FLAT)
        self._dark_frames = np.flatnonzero(keys == DARK)
        if len(self._projection_frames) == 0:
            raise EdgeRayFormatError(path, data.name, "no projection (image_key 0) among the frames")
        theta = angles[self._projection_frames]
        if not np.isfinite(theta).all():
            raise EdgeRayFormatError(path, angle_set.name, "holds NaN or inf")
        self.theta_deg = theta
        self.n_angles = len(self._projection_frames)
        if np.count_nonzero(keys == INVALID):
            self.assumptions.append(f"{np.count_nonzero(keys == INVALID)} frames with image_key 3 (invalid) skipped")

    def _axis_order(self, group: h5py.Group, data: h5py.Dataset) -> tuple[int, int, int]:
        """Stored positions of the (frame, row, column) axes, from the NXdata group's ``axes`` attribute."""
        axes_attr = None
        for holder in (group.get("data"), data):
            if holder is not None and "axes" in holder.attrs:
                axes_attr = holder.attrs["axes"]
                break
        if axes_attr is None:
            return (0, 1, 2)
        names = [_text(a).strip().lower() for a in np.atleast_1d(axes_attr)]
        if len(names) == 1 and ":" in names[0]:  # the old "rotation_angle:y:x" spelling
            names = names[0].split(":")
        if len(names) != 3:
            raise EdgeRayFormatError(self.path, f"{data.name} @axes", f"{names}: three axis names expected")
        frame = next((k for k, name in enumerate(names) if name in FRAME_AXIS_NAMES), 0)
        others = [k for k in range(3) if k != frame]
        if names[others[0]] == "x" and names[others[1]] == "y":
            others.reverse()  # stored columns first: rows are the y axis
        if (frame, *others) != (0, 1, 2):
            self.assumptions.append(f"axes {names}: frames along axis {frame}, rows along axis {others[0]}")
        return (frame, others[0], others[1])

    def _read(self, frames: np.ndarray | slice, rows: slice = slice(None)) -> np.ndarray:
        """Frames (file indices, increasing) and detector rows, as ``(n, rows, cols)``."""
        if isinstance(frames, np.ndarray) and len(frames) and np.all(np.diff(frames) == 1):
            frames = slice(int(frames[0]), int(frames[-1]) + 1)  # a contiguous run: one hyperslab
        index = [slice(None)] * 3
        index[self._axes[0]], index[self._axes[1]] = frames, rows
        if isinstance(frames, np.ndarray) and len(frames) == 0:
            return np.zeros((0, *self.frame_shape), dtype=self.dtype)
        return np.transpose(self._data[tuple(index)], self._axes)

    def _checked(self, block: np.ndarray, first: int, validate: bool, what: str = "frame") -> np.ndarray:
        if validate:
            problems = count_problems(block, first)
            if problems:
                raise EdgeRayFormatError(
                    self.path, self._data.name, "; ".join(p.replace("frame", what) for p in problems)
                )
        return block

    def read_projections(self, start: int = 0, stop: int | None = None, *, validate: bool = True) -> np.ndarray:
        """Projections ``[start, stop)`` (counting projections only), ``(n, rows, cols)``."""
        return self._checked(self._read(self._projection_frames[start:stop]), start, validate, "projection")

    def read_sinograms(self, row_start: int, row_stop: int, *, validate: bool = True) -> np.ndarray:
        """Detector rows ``[row_start, row_stop)`` of every projection, ``(n_angles, n_rows, cols)``."""
        block = self._read(self._projection_frames, slice(row_start, row_stop))
        if validate:
            self._checked(np.moveaxis(block, 1, 0), row_start, True, "detector row")
        return block

    @property
    def n_flats(self) -> int:
        return len(self._flat_frames)

    @property
    def n_darks(self) -> int:
        return len(self._dark_frames)

    @property
    def has_ground_truth(self) -> bool:
        return False

    def flats(self, rows: slice = slice(None)) -> np.ndarray | None:
        """Flat fields (image_key 1, wherever they were taken) ``(n, rows, cols)`` or None."""
        return self._checked(self._read(self._flat_frames, rows), 0, True, "flat") if self.n_flats else None

    def darks(self, rows: slice = slice(None)) -> np.ndarray | None:
        """Dark fields (image_key 2) ``(n, rows, cols)`` or None."""
        return self._checked(self._read(self._dark_frames, rows), 0, True, "dark") if self.n_darks else None

    def problems(self, chunk: int | None = None) -> list[str]:
        """Scan every frame in chunks; list what is wrong (empty when all is well)."""
        chunk = chunk or frames_per_chunk(self.frame_shape, self.dtype.itemsize, 4 << 20)
        found = []
        for label, frames in (("projection", self._projection_frames), ("flat", self._flat_frames),
                              ("dark", self._dark_frames)):  # fmt: skip
            for start in range(0, len(frames), chunk):
                block = self._read(frames[start : start + chunk])
                found += [f"{self._data.name}: {p.replace('frame', label)}" for p in count_problems(block, start)]
        return found

    def ground_truth(self) -> np.ndarray | None:
        return None

    def attrs(self) -> dict:
        return {"nxtomo_entry": self.entry}


def open_tomo(
    path: str | Path, entry: str | None = None, paths: TomoPaths | None = None
) -> DataExchangeFile | NXtomoFile:
    """A lazy reader of a raw tomography file: at ``paths`` (or their layout) when given, else Data Exchange or
    NXtomo (``entry`` picks an NXtomo entry), else the first known layout the file matches
    (:func:`~edgeray.io.tomo_layouts.match_layout`). A file of none of them is refused with its candidate datasets
    listed."""
    path, paths = Path(path), paths or TomoPaths()
    if not path.is_file():
        raise EdgeRayFormatError(path, None, "no such file")
    if paths.layout is not None:
        layout(paths.layout)  # an unknown name is refused here, with the known ones
    if paths.layout == "dxchange":
        return DataExchangeFile(path)
    if paths.layout == "nxtomo":
        return NXtomoFile(path, entry, replace(paths, layout=None))
    if paths.given() or entry is not None or is_nxtomo(path):
        return NXtomoFile(path, entry, paths)
    try:
        return DataExchangeFile(path)
    except EdgeRayFormatError as error:
        if error.dataset != "/exchange/data" or "missing" not in str(error):
            raise
        with h5py.File(path, "r") as h5:
            matched, listed = match_layout(h5), candidates(h5)
        if matched is not None:
            return NXtomoFile(path, None, TomoPaths(layout=matched.name))
        raise EdgeRayFormatError(path, "/exchange/data", f"missing dataset: neither Data Exchange nor NXtomo; "
                                 f"{listed}") from error  # fmt: skip


def read_tomo(path: str | Path, entry: str | None = None, paths: TomoPaths | None = None) -> TomoScan:
    """Read a whole raw tomography scan (Data Exchange, NXtomo, or at ``paths``) into memory."""
    with open_tomo(path, entry, paths) as scan:
        return scan.load()
