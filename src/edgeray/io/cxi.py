"""CXI files of raw ptychography data: a lazy, validating reader and an atomic writer.

Layout (see docs/formats.md): frames ``/entry_1/instrument_1/detector_1/data`` ``(N, H, W)`` (linked from
``/entry_1/data_1/data``), sample translations ``/entry_1/sample_1/geometry_1/translation`` ``(N, 3)`` in m
``[x, y, z]``, detector distance and pixel sizes, source energy (J). Simulated files also keep their
ground truth under ``/entry_1/sample_1/ground_truth``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from edgeray.io._h5util import (
    atomic_h5,
    check_count_dtype,
    compression_kwargs,
    count_problems,
    describe_filters,
    frames_per_chunk,
    read_scalar,
    require_dataset,
)
from edgeray.io.errors import EdgeRayFormatError
from edgeray.io.geometry import EV_J, PtychoGeometry, energy_eV_from_wavelength

FRAMES = "entry_1/instrument_1/detector_1/data"
FRAMES_LINK = "entry_1/data_1/data"
DETECTOR = "entry_1/instrument_1/detector_1"
SOURCE = "entry_1/instrument_1/source_1"
TRANSLATION = "entry_1/sample_1/geometry_1/translation"
GROUND_TRUTH = "entry_1/sample_1/ground_truth"


@dataclass
class GroundTruth:
    """What a simulated scan was made from.

    Attributes:
        object: ``(Y, X)`` complex64 transmission function of the sample.
        probe: ``(modes, H, W)`` complex64 illumination, scaled to the stored counts.
        positions_px: ``(N, 2)`` float64 probe-centre positions ``[y, x]`` in object pixels.
    """

    object: np.ndarray
    probe: np.ndarray
    positions_px: np.ndarray


@dataclass
class PtychoScan:
    """A ptychography scan held in memory.

    Attributes:
        frames: ``(N, H, W)`` detector counts, zero frequency at the centre (fftshifted), as stored.
        positions_m: ``(N, 2)`` float64 probe positions on the object ``[y, x]``, m (the negative of the
            sample translation).
        geometry: far-field geometry.
        mask: ``(H, W)`` bool, True where a detector pixel is bad, or None.
        probe: initial probe guess ``(modes, H, W)`` complex64 on the object grid, or None.
        ground_truth: what a simulation used, or None for measured data.
        attrs: free-form provenance (simulation parameters, source file).
    """

    frames: np.ndarray
    positions_m: np.ndarray
    geometry: PtychoGeometry
    mask: np.ndarray | None = None
    probe: np.ndarray | None = None
    ground_truth: GroundTruth | None = None
    attrs: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])


def _basis_to_axes(basis: np.ndarray, path: Path, notes: list[str]) -> tuple[bool, bool, bool, tuple]:
    """Interpret detector ``basis_vectors`` as (transpose, flip_rows, flip_cols, pixel_sizes_yx).

    CXI writes them as ``(2, 3)`` (one lab-frame ``[x, y, z]`` vector per detector axis, slow axis first);
    some writers store the transpose ``(3, 2)``. EdgeRay's convention is rows along +y, columns along +x.
    """
    if basis.shape == (3, 2):
        basis = basis.T
        notes.append("basis_vectors stored as (3, 2): read as its transpose (one column per detector axis)")
    if basis.shape != (2, 3):
        raise EdgeRayFormatError(path, "/" + DETECTOR + "/basis_vectors", f"shape {basis.shape}, expected (2, 3)")
    slow, fast = basis[0], basis[1]
    transpose = abs(slow[0]) > abs(slow[1])
    if transpose:
        slow, fast = fast, slow
    flip_rows, flip_cols = bool(slow[1] < 0), bool(fast[0] < 0)
    pixel = (float(np.linalg.norm(slow)), float(np.linalg.norm(fast)))
    return transpose, flip_rows, flip_cols, pixel


@dataclass
class FramesOnDisk:
    """A CXI file's frames, not read: ``indices`` (sorted global frame numbers; None: all) of ``path``.

    Attributes:
        path: the CXI file; cxi_options: keywords for :class:`~edgeray.io.CXIFile`; shape: ``(N, H, W)`` of the
            frames meant; dtype: as stored.
    """

    path: Path
    shape: tuple[int, int, int]
    dtype: np.dtype
    indices: np.ndarray | None = None
    cxi_options: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize

    def subset(self, indices: np.ndarray) -> FramesOnDisk:
        """These frames' ``indices`` (positions within them, increasing)."""
        chosen = np.asarray(indices) if self.indices is None else self.indices[np.asarray(indices)]
        return FramesOnDisk(self.path, (len(chosen), *self.shape[1:]), self.dtype, chosen, self.cxi_options)


class CXIFile:
    """Lazy reader of a CXI ptychography file; frames are read in chunks, never all at once unless asked.

    Args:
        path: the ``.cxi`` (HDF5) file.
        translation: ``"sample"`` (default, the CXI definition: the stored translation moves the sample, so the
            probe position on the object is its negative) or ``"probe"`` (the file stores probe positions).
        follow_basis: orient frames by the file's ``basis_vectors`` (default) or take them as stored.

    Attributes:
        geometry: the scan's geometry. positions_m: ``(N, 2)`` ``[y, x]`` m. mask: ``(H, W)`` bool or None.
        probe: the file's probe guess or None. n_frames, frame_shape, dtype: the frames'.
        assumptions: what the reader had to decide, in words.

    Raises:
        EdgeRayFormatError: naming the file and dataset, for a missing dataset, a frames/positions count
            mismatch, wrong dimensionality, an unsupported dtype; NaN/inf or negative counts are found as
            the frames are read (:meth:`read_frames`) or scanned (:meth:`problems`).
    """

    def __init__(self, path: str | Path, *, translation: str = "sample", follow_basis: bool = True):
        if translation not in ("sample", "probe"):
            raise ValueError(f"translation must be 'sample' or 'probe', not {translation!r}")
        self.path = Path(path)
        self._options = {"translation": translation, "follow_basis": follow_basis}
        try:
            # SWMR reading is harmless for any file and consistent for a run file the edge is still writing
            self._h5 = h5py.File(self.path, "r", swmr=True)
        except OSError as exc:
            raise EdgeRayFormatError(self.path, None, f"cannot open as HDF5 ({exc})") from exc
        try:
            self._read_header(translation, follow_basis)
        except BaseException:
            self._h5.close()
            raise

    def _read_header(self, translation: str, follow_basis: bool) -> None:
        h5, path = self._h5, self.path
        self.assumptions: list[str] = []
        self._frames = require_dataset(h5, FRAMES if FRAMES in h5 else FRAMES_LINK, path, ndim=3)
        check_count_dtype(self._frames, path)
        n, height, width = self._frames.shape
        self.n_frames, self.frame_shape, self.dtype = n, (height, width), self._frames.dtype

        self._transpose = self._flip_rows = self._flip_cols = False
        pixel_from_basis = None
        if f"{DETECTOR}/basis_vectors" in h5:
            basis = np.asarray(h5[f"{DETECTOR}/basis_vectors"][()], dtype=float)
            t, fr, fc, pixel_from_basis = _basis_to_axes(basis, path, self.assumptions)
            if follow_basis and (t or fr or fc):
                self._transpose, self._flip_rows, self._flip_cols = t, fr, fc
                what = [w for w, on in (("transposed", t), ("rows flipped", fr), ("columns flipped", fc)) if on]
                self.assumptions.append(
                    "basis_vectors put detector rows/columns against EdgeRay's +y/+x: frames and mask are "
                    f"{', '.join(what)} on read (--ignore-basis keeps them as stored)"
                )
            elif t or fr or fc:
                self.assumptions.append("basis_vectors differ from +y/+x but are ignored as asked")
        else:
            self.assumptions.append("no basis_vectors: detector rows taken along +y, columns along +x")
        if self._transpose:
            self.frame_shape = (width, height)

        distance = read_scalar(h5, f"{DETECTOR}/distance")
        if distance is None:
            raise EdgeRayFormatError(path, f"/{DETECTOR}/distance", "missing dataset")
        px = read_scalar(h5, f"{DETECTOR}/x_pixel_size")
        py = read_scalar(h5, f"{DETECTOR}/y_pixel_size")
        if px is None or py is None:
            if pixel_from_basis is None:
                raise EdgeRayFormatError(path, f"/{DETECTOR}/x_pixel_size", "missing dataset (and no basis_vectors)")
            py, px = pixel_from_basis
            self.assumptions.append("pixel sizes taken from basis_vectors")
        energy_j = read_scalar(h5, f"{SOURCE}/energy")
        if energy_j is not None:
            energy_eV = energy_j / EV_J
        else:
            wavelength = read_scalar(h5, f"{SOURCE}/wavelength")
            if wavelength is None:
                raise EdgeRayFormatError(path, f"/{SOURCE}/energy", "missing dataset (and no wavelength)")
            energy_eV = energy_eV_from_wavelength(wavelength)
            self.assumptions.append("energy derived from source wavelength")
        for name, value in (("distance", distance), ("x_pixel_size", px), ("y_pixel_size", py)):
            if not np.isfinite(value) or value <= 0:
                raise EdgeRayFormatError(path, f"/{DETECTOR}/{name}", f"must be a positive length in m, got {value}")
        if not np.isfinite(energy_eV) or energy_eV <= 0:
            raise EdgeRayFormatError(path, f"/{SOURCE}/energy", f"must be positive, got {energy_j} J")
        self.geometry = PtychoGeometry(float(energy_eV), float(distance), (float(py), float(px)), self.frame_shape)
        self.assumptions.append(
            "far-field propagation assumed (CXI does not say): object pixel "
            f"{self.geometry.object_pixel_size_m[0] * 1e9:.3g} x {self.geometry.object_pixel_size_m[1] * 1e9:.3g} nm"
        )

        self.positions_m = self._read_positions(translation)
        self.mask = None
        if f"{DETECTOR}/mask" in h5:
            mask = require_dataset(h5, f"{DETECTOR}/mask", path, ndim=2)
            if mask.shape != (height, width):
                raise EdgeRayFormatError(path, mask.name, f"shape {mask.shape} differs from frames' {(height, width)}")
            self.mask = self._orient(np.asarray(mask[()]) != 0)
        self.probe = None
        if f"{SOURCE}/illumination" in h5:
            probe = require_dataset(h5, f"{SOURCE}/illumination", path, ndim=(2, 3))[()]
            self.probe = np.asarray(probe, dtype=np.complex64).reshape((-1, *probe.shape[-2:]))

    def _read_positions(self, translation: str) -> np.ndarray:
        h5, path = self._h5, self.path
        ds = require_dataset(h5, TRANSLATION, path, ndim=2)
        t = np.asarray(ds[()], dtype=np.float64)
        if t.shape[1] not in (2, 3) and t.shape[0] in (2, 3):
            t = t.T
            self.assumptions.append(f"translation stored as {ds.shape}: read as its transpose (N, {t.shape[1]})")
        if t.shape[1] not in (2, 3):
            raise EdgeRayFormatError(path, ds.name, f"shape {ds.shape}, expected (N, 3) [x, y, z] in m")
        if t.shape[0] != self.n_frames:
            raise EdgeRayFormatError(path, ds.name, f"{t.shape[0]} positions for {self.n_frames} frames in /{FRAMES}")
        if not np.isfinite(t).all():
            raise EdgeRayFormatError(path, ds.name, "holds NaN or inf")
        yx = t[:, [1, 0]]
        if translation == "sample":
            self.assumptions.append("translation is the sample's (CXI definition): probe positions = -translation")
            return -yx
        self.assumptions.append("translation read as probe positions (not negated), as asked")
        return yx

    def _orient(self, block: np.ndarray) -> np.ndarray:
        """Apply the basis-vector orientation to ``(..., H, W)`` arrays."""
        if self._transpose:
            block = np.swapaxes(block, -1, -2)
        if self._flip_rows:
            block = block[..., ::-1, :]
        if self._flip_cols:
            block = block[..., ::-1]
        return np.ascontiguousarray(block)

    @property
    def chunk_frames(self) -> int:
        """Frames per read that match the file's HDF5 chunking (about 1 MiB or more)."""
        stored = self._frames.chunks[0] if self._frames.chunks else 1
        want = frames_per_chunk(self.frame_shape, self.dtype.itemsize, 4 << 20)
        return max(stored, (want // stored) * stored)

    def read_frames(self, start: int = 0, stop: int | None = None, *, validate: bool = True) -> np.ndarray:
        """Frames ``[start, stop)`` as stored dtype, oriented, ``(n, H, W)``.

        Raises:
            EdgeRayFormatError: when ``validate`` and the block holds NaN/inf or negative counts.
        """
        stop = self.n_frames if stop is None else min(stop, self.n_frames)
        block = self._orient(self._read(np.s_[start:stop], f"frames {start} to {stop - 1}"))
        if validate:
            problems = count_problems(block, start)
            if problems:
                raise EdgeRayFormatError(self.path, self._frames.name, "; ".join(problems))
        return block

    @property
    def frames_dataset(self) -> str:
        """The frames' dataset name in the file."""
        return self._frames.name

    def _read(self, selection, what: str) -> np.ndarray:
        """``frames[selection]``; a chunk HDF5 cannot decode (damaged, truncated, a missing filter) is an
        :class:`EdgeRayFormatError` naming the file, the dataset and the frames."""
        try:
            return self._frames[selection]
        except OSError as error:
            raise EdgeRayFormatError(
                self.path,
                self._frames.name,
                f"{what} cannot be read ({error}): a damaged "
                "or truncated chunk, or a compression filter this machine lacks",
            ) from None

    def _require_frames(self) -> None:
        if self.n_frames == 0:
            raise EdgeRayFormatError(self.path, self._frames.name, "holds no frames: nothing to reconstruct")

    def read_frame_subset(self, indices: np.ndarray, *, validate: bool = True) -> np.ndarray:
        """Frames at ``indices`` (increasing, no repeats) as stored dtype, oriented, ``(n, H, W)``: one rank's
        share of a scan, read without the rest (HDF5 reads the chunks that hold them)."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (np.any(np.diff(indices) <= 0) or indices[0] < 0 or indices[-1] >= self.n_frames):
            raise ValueError(f"{self.path}: frame indices must increase within 0..{self.n_frames - 1}")
        where = f"{indices.size} frames from {indices[0]}" if indices.size else "no frames"
        block = self._orient(self._read(indices if indices.size else np.s_[:0], where))
        if validate:
            problems = count_problems(block, 0)
            if problems:
                raise EdgeRayFormatError(self.path, self._frames.name, "; ".join(problems))
        return block

    def iter_frames(self, chunk: int | None = None, *, validate: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(first_index, frames)`` blocks of ``chunk`` frames (default :attr:`chunk_frames`)."""
        chunk = chunk or self.chunk_frames
        for start in range(0, self.n_frames, chunk):
            yield start, self.read_frames(start, start + chunk, validate=validate)

    def problems(self, chunk: int | None = None) -> list[str]:
        """Scan every frame (in chunks) and list what is wrong with the counts; empty when all is well."""
        found = []
        for start, block in self.iter_frames(chunk, validate=False):
            found += count_problems(block, start)
        return found

    @property
    def has_ground_truth(self) -> bool:
        """Whether the file keeps a simulation's ground truth."""
        return GROUND_TRUTH in self._h5

    def ground_truth(self) -> GroundTruth | None:
        """The simulation's ground truth, or None when the file has none."""
        if GROUND_TRUTH not in self._h5:
            return None
        g = self._h5[GROUND_TRUTH]
        return GroundTruth(
            object=np.asarray(g["object"][()], dtype=np.complex64),
            probe=np.asarray(g["probe"][()], dtype=np.complex64),
            positions_px=np.asarray(g["positions_px"][()], dtype=np.float64),
        )

    def attrs(self) -> dict:
        """Provenance attributes stored by EdgeRay (simulation parameters), as a dict."""
        if GROUND_TRUTH in self._h5:
            return dict(self._h5[GROUND_TRUTH].attrs)
        return {}

    def compression(self) -> str:
        """The frames' HDF5 filters, in words ('none' when uncompressed)."""
        return describe_filters(self._frames)

    def load(self) -> PtychoScan:
        """Read the whole scan into memory (validating every frame)."""
        self._require_frames()
        frames = np.concatenate([block for _, block in self.iter_frames()])
        return PtychoScan(
            frames=frames,
            positions_m=self.positions_m,
            geometry=self.geometry,
            mask=self.mask,
            probe=self.probe,
            ground_truth=self.ground_truth(),
            attrs=self.attrs(),
        )

    def frames_on_disk(self) -> FramesOnDisk:
        """The frames as they lie in the file, none read."""
        return FramesOnDisk(self.path, (self.n_frames, *self.frame_shape), self._frames.dtype,
                            cxi_options=dict(self._options))  # fmt: skip

    def lazy(self) -> PtychoScan:
        """The scan with its frames left in the file (:meth:`frames_on_disk`): the engines then read them per
        mini-batch (scans larger than memory)."""
        self._require_frames()
        return PtychoScan(frames=self.frames_on_disk(), positions_m=self.positions_m, geometry=self.geometry,
                          mask=self.mask, probe=self.probe, ground_truth=self.ground_truth(),
                          attrs=self.attrs())  # fmt: skip

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> CXIFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_cxi(path: str | Path, **options) -> PtychoScan:
    """Read a whole CXI scan into memory; ``options`` as for :class:`CXIFile`."""
    with CXIFile(path, **options) as cxi:
        return cxi.load()


def write_geometry(h5: h5py.File, geometry: PtychoGeometry) -> None:
    """The detector's distance, pixel sizes and basis vectors, and the source's energy (J) and wavelength (m),
    at their CXI places (groups created when missing)."""
    det = h5.require_group(DETECTOR)
    det["distance"] = geometry.distance_m
    det["y_pixel_size"], det["x_pixel_size"] = geometry.detector_pixel_size_m
    py, px = geometry.detector_pixel_size_m
    det["basis_vectors"] = np.array([[0.0, py, 0.0], [px, 0.0, 0.0]])
    det["basis_vectors"].attrs["note"] = "one [x, y, z] vector (m) per detector axis, slow axis first"
    source = h5.require_group(SOURCE)
    source["energy"] = geometry.energy_eV * EV_J
    source["wavelength"] = geometry.wavelength_m


def write_cxi(path: str | Path, scan: PtychoScan, *, compression: str = "gzip") -> Path:
    """Write ``scan`` as a CXI file, atomically (temporary name, then rename).

    Args:
        path: output file; parent folders are created.
        scan: frames, positions and geometry; its mask, probe guess and ground truth are written when set.
        compression: ``none``, ``gzip``, ``lz4`` or ``bitshuffle`` (bitshuffle + LZ4, as Eiger detectors write).

    Returns:
        The path written.
    """
    frames = np.asarray(scan.frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (N, H, W), got shape {frames.shape}")
    n = frames.shape[0]
    positions = np.asarray(scan.positions_m, dtype=np.float64)
    if positions.shape != (n, 2):
        raise ValueError(f"positions_m must be ({n}, 2) [y, x], got {positions.shape}")
    geom = scan.geometry
    with atomic_h5(path) as h5:
        h5["cxi_version"] = 150
        chunk = (min(n, frames_per_chunk(frames.shape[1:], frames.dtype.itemsize)), *frames.shape[1:])
        det = h5.create_group(DETECTOR)
        det.create_dataset("data", data=frames, chunks=chunk, **compression_kwargs(compression))
        det["data"].attrs["axes"] = "translation:y:x"
        h5.create_group("entry_1/data_1")
        h5[FRAMES_LINK] = h5py.SoftLink("/" + FRAMES)
        write_geometry(h5, geom)
        if scan.mask is not None:
            det["mask"] = np.asarray(scan.mask, dtype=np.uint32)
        if scan.probe is not None:
            h5[SOURCE]["illumination"] = np.asarray(scan.probe, dtype=np.complex64)
        translation = np.zeros((n, 3))
        translation[:, 0], translation[:, 1] = -positions[:, 1], -positions[:, 0]
        h5[TRANSLATION] = translation
        h5[TRANSLATION].attrs["units"] = "m"
        if scan.ground_truth is not None:
            gt = h5.create_group(GROUND_TRUTH)
            gt.attrs["description"] = "what the simulator used; not measured"
            gt["object"] = np.asarray(scan.ground_truth.object, dtype=np.complex64)
            gt["probe"] = np.asarray(scan.ground_truth.probe, dtype=np.complex64)
            gt["positions_px"] = np.asarray(scan.ground_truth.positions_px, dtype=np.float64)
            gt["object"].attrs["pixel_size_m"] = list(geom.object_pixel_size_m)
            for key, value in scan.attrs.items():
                gt.attrs[key] = value
    return Path(path)
