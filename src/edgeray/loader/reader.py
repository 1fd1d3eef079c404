"""Training-set reads: by byte offset where the layout allows (:mod:`edgeray.loader.direct`), else sorted, coalesced
hyperslabs through h5py; optionally with the page cache kept out of the way.

``uncached=True`` reads through a file object that tells the kernel to drop each range it has just read
(``posix_fadvise(DONTNEED)``): every read then comes from the device, as on a parallel file system whose data is far
larger than memory. Benchmarks use it for every loader alike.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import h5py
import numpy as np

from edgeray.loader.direct import DirectRows
from edgeray.nn.trainset import DATASETS


class DroppingFile(io.RawIOBase):
    """A read-only file whose every read is followed by dropping those pages from the page cache."""

    def __init__(self, path: str | Path):
        self.fd = os.open(path, os.O_RDONLY)
        self.position = 0
        self.bytes_read = 0
        self.read_calls = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        size = os.fstat(self.fd).st_size
        self.position = {0: offset, 1: self.position + offset, 2: size + offset}[whence]
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        n = os.preadv(self.fd, [view], self.position)
        if n:
            os.posix_fadvise(self.fd, self.position, n, os.POSIX_FADV_DONTNEED)
        self.position += n
        self.bytes_read += n
        self.read_calls += 1
        return n

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def drop_cache(path: str | Path) -> None:
    """Ask the kernel to forget ``path``'s cached pages (before a benchmark run)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


class TrainsetReader:
    """Reads samples of a training set by id; one instance per process (never shared across a fork).

    ``keys``: the per-sample datasets to read (default: a ptychography training set's, docs/formats.md); any
    ``(N, ...)`` datasets of one file work (e.g. a denoiser's patch pairs).

    Raises:
        ValueError: the file is not a training set (a dataset missing, shapes that disagree) or is truncated.
    """

    def __init__(
        self,
        path: str | Path,
        uncached: bool = False,
        direct: bool = True,
        in_flight: int = 0,
        keys: tuple[str, ...] | None = None,
    ):
        self.path = Path(path)
        self._raw = DroppingFile(self.path) if uncached else None
        try:
            self.h5 = h5py.File(self._raw if self._raw is not None else self.path, "r")
        except OSError as error:
            raise ValueError(f"{self.path}: cannot open as HDF5 ({error}); truncated or not a training set") from None
        self.keys = tuple(keys or DATASETS)
        missing = [key for key in self.keys if key not in self.h5]
        if missing:
            what = "a training set" if keys is None else "a sample set"
            raise ValueError(f"{self.path}: not {what}: missing {', '.join(missing)} (see docs/formats.md)")
        self.datasets = {key: self.h5[key] for key in self.keys}
        first = self.datasets[self.keys[0]]
        self.n_samples = first.shape[0]
        self.frame_shape = tuple(first.shape[1:])
        for key, ds in self.datasets.items():
            if keys is None and key in ("amplitude", "phase") and ds.shape != first.shape:
                raise ValueError(f"{self.path}: {key} is {ds.shape}, frames are {first.shape}")
            if keys is None and key == "scale" and ds.shape != (self.n_samples,):
                raise ValueError(f"{self.path}: scale is {ds.shape}, expected ({self.n_samples},)")
            if len(ds.shape) == 0 or ds.shape[0] != self.n_samples:
                raise ValueError(f"{self.path}: {key} is {ds.shape}, expected ({self.n_samples}, ...)")
        chunks = first.chunks
        self.rows_per_chunk = chunks[0] if chunks else 1
        self.read_calls = 0
        self.samples_read = 0
        self.sample_bytes = sum(int(np.prod(ds.shape[1:])) * ds.dtype.itemsize for ds in self.datasets.values())
        self._fd = None
        self.direct = None
        if direct:  # unfiltered layouts: reads by byte offset, several in flight (edgeray.loader.direct)
            self._fd = self._raw.fd if self._raw is not None else os.open(self.path, os.O_RDONLY)
            self.direct = DirectRows.for_datasets(self._fd, self.datasets, drop_pages=uncached, in_flight=in_flight)

    def ranges(self, ids: np.ndarray, max_gap: int | None = None) -> list[tuple[int, int]]:
        """Sorted ``ids`` merged into ``[start, stop)`` runs; ids closer than ``max_gap`` (default: a chunk's rows,
        which HDF5 reads whole anyway) share one run."""
        if len(ids) == 0:
            return []
        max_gap = self.rows_per_chunk if max_gap is None else max_gap
        ids = np.unique(ids)
        breaks = np.flatnonzero(np.diff(ids) > max_gap)
        starts = np.concatenate([[ids[0]], ids[breaks + 1]])
        stops = np.concatenate([ids[breaks], [ids[-1]]]) + 1
        return list(zip(starts.tolist(), stops.tolist(), strict=True))

    def read(self, ids: np.ndarray, max_gap: int | None = None) -> dict[str, np.ndarray]:
        """Samples ``ids`` (any order) as ``{dataset: (len(ids), ...)}``, read in coalesced sorted runs."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= self.n_samples):
            raise IndexError(f"{self.path}: sample ids must be in [0, {self.n_samples}), got {ids.min()}..{ids.max()}")
        if self.direct is not None:
            unique, back = np.unique(ids, return_inverse=True)
            try:
                rows = self.direct.read(unique)
            except OSError as error:
                raise ValueError(f"{self.path}: samples {unique[0]}..{unique[-1]} unreadable ({error})") from None
            self.read_calls = self.direct.read_calls
            self.samples_read += len(ids)
            identity = len(unique) == len(ids) and np.array_equal(back, np.arange(len(ids)))
            return rows if identity else {key: value[back] for key, value in rows.items()}
        out = {key: np.empty((len(ids), *ds.shape[1:]), dtype=ds.dtype) for key, ds in self.datasets.items()}
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        for start, stop in self.ranges(sorted_ids, max_gap):
            lo, hi = np.searchsorted(sorted_ids, [start, stop])
            wanted = sorted_ids[lo:hi] - start
            try:
                for key, ds in self.datasets.items():
                    out[key][order[lo:hi]] = ds[start:stop][wanted]
            except OSError as error:
                raise ValueError(f"{self.path}: samples {start}..{stop - 1} unreadable ({error}); truncated?") from None
            self.read_calls += 1
        self.samples_read += len(ids)
        return out

    @property
    def bytes_read(self) -> int | None:
        """Bytes the file system delivered (``uncached`` or direct readers)."""
        if self.direct is not None:
            return self.direct.bytes_read + (self._raw.bytes_read if self._raw is not None else 0)
        return self._raw.bytes_read if self._raw is not None else None

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        self.h5.close()
        if self._raw is not None:
            self._raw.close()
        elif self._fd is not None:
            os.close(self._fd)
