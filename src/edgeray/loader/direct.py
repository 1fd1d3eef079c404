"""Sample rows read straight from the file's bytes: where HDF5 stores a dataset unfiltered (contiguous, or in chunks
that span whole samples), the byte offset of every sample is known once the chunk index is read, so a batch's
samples become a few large ``preadv`` calls instead of one HDF5 selection per run and dataset. All reads of a call
are announced to the kernel before the first is made, so the device works on all of them at once while one thread
copies them out in order (or, ``in_flight=N``, N threads issue them).

The rows of all datasets are planned together, in file order: rows at most ``max_gap_bytes`` apart are read in one
call, gap included (one larger read beats two small ones), whichever dataset they belong to, so a file whose
datasets' chunks are written side by side (:func:`edgeray.nn.trainset.write_interleaved`) gives a whole sample in
one read. Each call scatters its bytes straight into the output arrays (the gaps into a scratch buffer): no staging
copy. Datasets of a few bytes a sample (e.g. ``scale``) are read whole once and served from memory. Datasets
this cannot serve (compressed chunks, chunks that cut a sample, chunks never written) make
:meth:`DirectRows.for_datasets` answer None and the caller reads through h5py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

IOV_MAX = 1024
"""Buffers one ``preadv`` call may take (Linux)."""


class DatasetBytes:
    """Where each sample of one ``(N, ...)`` dataset lies in the file: ``row_bytes`` per sample and each chunk's
    byte offset (``rows_per_chunk`` samples a chunk; a contiguous dataset is one chunk)."""

    def __init__(self, dataset: h5py.Dataset):
        self.name = dataset.name
        self.dtype = dataset.dtype
        self.row_shape = dataset.shape[1:]
        self.row_bytes = int(np.prod(self.row_shape, dtype=np.int64)) * dataset.dtype.itemsize
        n = dataset.shape[0]
        if dataset.chunks is None:
            self.rows_per_chunk = max(n, 1)
            self.offsets = np.array([dataset.id.get_offset()], dtype=np.int64)
        else:
            self.rows_per_chunk = dataset.chunks[0]
            offsets = np.full(-(-n // self.rows_per_chunk), -1, dtype=np.int64)

            def note(info) -> None:
                offsets[info.chunk_offset[0] // self.rows_per_chunk] = info.byte_offset

            dataset.id.chunk_iter(note)
            self.offsets = offsets

    @staticmethod
    def servable(dataset: h5py.Dataset) -> bool:
        """Unfiltered, and (if chunked) chunks spanning whole samples, every chunk written."""
        if dataset.chunks is None:
            return dataset.id.get_offset() is not None
        plist = dataset.id.get_create_plist()
        whole = tuple(dataset.chunks[1:]) == tuple(dataset.shape[1:])
        return plist.get_nfilters() == 0 and whole and dataset.id.get_num_chunks() == -(-dataset.shape[0] //
                                                                                        dataset.chunks[0])  # fmt: skip

    def positions(self, sorted_ids: np.ndarray) -> np.ndarray:
        """Byte offsets ``(n,)`` int64 of samples ``sorted_ids``."""
        chunks = sorted_ids // self.rows_per_chunk
        return self.offsets[chunks] + (sorted_ids % self.rows_per_chunk) * self.row_bytes


class DirectRows:
    """Reads rows of several datasets of one open file by offset (see the module's text).

    Args:
        fd: an open file descriptor of the HDF5 file.
        datasets: ``{key: DatasetBytes}`` read from the file.
        resident: ``{key: (N, ...) array}`` served from memory.
        drop_pages: after each read, tell the kernel to drop those pages (benchmarks: storage, not memory).
        in_flight: 0 (default): every read of a call announced to the kernel first (``posix_fadvise(WILLNEED)``:
            it fetches them all at once, queue depth the call's reads), then read in order by the calling thread; N:
            N threads issue the reads (where the file system ignores the announcement).
        max_gap_bytes: rows at most this far apart in the file are read in one call.
    """

    def __init__(
        self,
        fd: int,
        datasets: dict[str, DatasetBytes],
        resident: dict[str, np.ndarray] | None = None,
        drop_pages: bool = False,
        in_flight: int = 0,
        max_gap_bytes: int = 32 << 10,
    ):
        self.fd, self.datasets, self.resident, self.drop_pages = fd, datasets, resident or {}, drop_pages
        self.max_gap_bytes, self.in_flight = max_gap_bytes, in_flight
        self.scratch = memoryview(bytearray(max_gap_bytes))  # gaps land here (shared: its contents never matter)
        self.pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="direct-read") if in_flight else None
        self.bytes_read = 0
        self.read_calls = 0

    @classmethod
    def for_datasets(
        cls, fd: int, datasets: dict[str, h5py.Dataset], resident_bytes: int = 16 << 20, **options
    ) -> DirectRows | None:
        """A reader for ``datasets`` if every one can be served, else None; datasets of a few bytes per sample
        (at most 64, e.g. ``scale``) and ``resident_bytes`` in all are read whole now and kept in memory (read by
        sample, each would cost a disk access for a few bytes)."""
        nbytes = {key: ds.size * ds.dtype.itemsize for key, ds in datasets.items()}
        small = {key for key, ds in datasets.items() if nbytes[key] <= min(resident_bytes, 64 * len(ds))}
        if not all(DatasetBytes.servable(ds) for key, ds in datasets.items() if key not in small):
            return None
        resident = {key: datasets[key][...] for key in small}
        reader = cls(fd, {k: DatasetBytes(ds) for k, ds in datasets.items() if k not in small}, resident, **options)
        reader.bytes_read = sum(value.nbytes for value in resident.values())
        return reader

    def _read(self, views: list[memoryview], offset: int) -> None:
        total = sum(len(view) for view in views)
        done = 0
        while done < total:  # preadv may return short counts: go on from where it stopped
            n = os.preadv(self.fd, views, offset + done)
            if n == 0:
                raise OSError(f"end of file at byte {offset + done}: the file is truncated")
            done += n
            while views and n >= len(views[0]):
                n -= len(views[0])
                views = views[1:]
            if views and n:
                views = [views[0][n:], *views[1:]]
        if self.drop_pages:
            os.posix_fadvise(self.fd, offset, total, os.POSIX_FADV_DONTNEED)

    def read(self, sorted_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``sorted_ids`` (ascending, unique) of every dataset -> ``{key: (n, ...)}``."""
        n = len(sorted_ids)
        out = {key: value[sorted_ids] for key, value in self.resident.items()}
        keys = list(self.datasets)
        if n == 0 or not keys:
            return out | {k: np.empty((0, *d.row_shape), d.dtype) for k, d in self.datasets.items()}
        targets = []
        for key in keys:
            layout = self.datasets[key]
            out[key] = np.empty((n, *layout.row_shape), dtype=layout.dtype)
            targets.append(memoryview(out[key].reshape(-1).view(np.uint8)))
        # every wanted row of every dataset, in file order
        row_bytes = np.array([self.datasets[key].row_bytes for key in keys], dtype=np.int64)
        offsets = np.concatenate([self.datasets[key].positions(sorted_ids) for key in keys])
        order = np.argsort(offsets, kind="stable")
        offsets, dataset, row = offsets[order], order // n, order % n
        lengths = row_bytes[dataset]
        gap = np.concatenate([[-1], offsets[1:] - (offsets[:-1] + lengths[:-1])])
        joins = (gap >= 0) & (gap <= self.max_gap_bytes)
        # a row that goes on from the previous one in the file and in the same output array extends its buffer
        extends = joins & (gap == 0) & (dataset == np.roll(dataset, 1)) & (row == np.roll(row, 1) + 1)
        first = np.flatnonzero(~extends)  # each a buffer: a run of rows of one dataset, one after another
        count = np.diff(np.append(first, len(offsets)))
        jobs, views, start = [], [], 0
        buffers = (offsets[first], count, dataset[first], row[first], gap[first], joins[first])
        for at, k, d, r, g, j in zip(*(column.tolist() for column in buffers), strict=True):
            if not j or len(views) >= IOV_MAX - 1:
                if views:
                    jobs.append((views, start))
                views, start = [], at
            elif g:
                views.append(self.scratch[:g])
            size = int(row_bytes[d])
            views.append(targets[d][r * size : (r + k) * size])
        jobs.append((views, start))
        self.bytes_read += int(sum(sum(len(v) for v in views) for views, _ in jobs))
        self.read_calls += len(jobs)
        if self.in_flight == 0:  # the kernel reads them all at once; this thread then takes them in order
            for views, start in jobs:
                os.posix_fadvise(self.fd, start, sum(len(view) for view in views), os.POSIX_FADV_WILLNEED)
            for job in jobs:
                self._read(*job)
            return out
        groups = [jobs[k :: self.in_flight] for k in range(min(self.in_flight, len(jobs)))]  # one task per thread
        for _ in self.pool.map(lambda group: [self._read(*job) for job in group], groups):
            pass
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True)
