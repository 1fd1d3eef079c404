"""Sample rows read straight from the file's bytes: where HDF5 stores a dataset unfiltered (contiguous, or in chunks
that span whole samples), the byte offset of every sample is known once the chunk index is read, so a batch's
samples become a few large ``preadv`` calls (several in flight, on threads that release the GIL) instead of one
HDF5 selection per run and dataset.

Rows closer than ``max_gap_bytes`` in one stretch of consecutive chunks are read together, gap included (one
larger read beats two small ones); the rows then come out of each dataset's staging array by one row gather. Datasets
this cannot serve (compressed chunks, chunks that cut a sample, chunks never written) make
:meth:`DirectRows.for_datasets` answer None and the caller reads through h5py.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np


class DatasetBytes:
    """Where each sample of one ``(N, ...)`` dataset lies in the file: ``row_bytes`` per sample; per chunk its
    byte offset, first sample, and the stretch of file-consecutive chunks it belongs to."""

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
            n_chunks = -(-n // self.rows_per_chunk)
            offsets = np.full(n_chunks, -1, dtype=np.int64)

            def note(info) -> None:
                offsets[info.chunk_offset[0] // self.rows_per_chunk] = info.byte_offset

            dataset.id.chunk_iter(note)
            self.offsets = offsets
        chunk_bytes = self.rows_per_chunk * self.row_bytes
        follows = np.concatenate([[False], self.offsets[1:] == self.offsets[:-1] + chunk_bytes])
        self.stretch = np.cumsum(~follows)  # chunks with one stretch number lie end to end in the file

    @staticmethod
    def servable(dataset: h5py.Dataset) -> bool:
        """Unfiltered, and (if chunked) chunks spanning whole samples, every chunk written."""
        if dataset.chunks is None:
            return dataset.id.get_offset() is not None
        plist = dataset.id.get_create_plist()
        whole = tuple(dataset.chunks[1:]) == tuple(dataset.shape[1:])
        return plist.get_nfilters() == 0 and whole and dataset.id.get_num_chunks() == -(-dataset.shape[0] //
                                                                                        dataset.chunks[0])  # fmt: skip

    def positions(self, sorted_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Byte offsets of ``sorted_ids`` and their chunks' stretch numbers."""
        chunks = sorted_ids // self.rows_per_chunk
        return self.offsets[chunks] + (sorted_ids % self.rows_per_chunk) * self.row_bytes, self.stretch[chunks]


class DirectRows:
    """Reads rows of several datasets of one open file by offset (see the module's text).

    Args:
        fd: an open file descriptor of the HDF5 file.
        datasets: ``{key: DatasetBytes}``.
        drop_pages: after each read, tell the kernel to drop those pages (benchmarks: storage, not memory).
        in_flight: reads issued at once.
        max_gap_bytes: rows at most this far apart (same stretch) are read in one call.
    """

    def __init__(
        self,
        fd: int,
        datasets: dict[str, DatasetBytes],
        drop_pages: bool = False,
        in_flight: int = 8,
        max_gap_bytes: int = 32 << 10,
    ):
        self.fd, self.datasets, self.drop_pages = fd, datasets, drop_pages
        self.max_gap_bytes, self.in_flight = max_gap_bytes, in_flight
        self.pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="direct-read")
        self.bytes_read = 0
        self.read_calls = 0

    @classmethod
    def for_datasets(cls, fd: int, datasets: dict[str, h5py.Dataset], **options) -> DirectRows | None:
        """A reader for ``datasets`` if every one can be served by offset, else None."""
        if not all(DatasetBytes.servable(ds) for ds in datasets.values()):
            return None
        return cls(fd, {key: DatasetBytes(ds) for key, ds in datasets.items()}, **options)

    def _read(self, view: memoryview, offset: int) -> int:
        done = 0
        while done < len(view):  # preadv may return short counts
            n = os.preadv(self.fd, [view[done:]], offset + done)
            if n == 0:
                raise OSError(f"end of file at byte {offset + done}: the file is truncated")
            done += n
        if self.drop_pages:
            os.posix_fadvise(self.fd, offset, len(view), os.POSIX_FADV_DONTNEED)
        return done

    def read(self, sorted_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``sorted_ids`` (ascending, unique) of every dataset -> ``{key: (n, ...)}``."""
        jobs, gathers = [], {}
        for key, layout in self.datasets.items():
            starts, lengths, run_of_row, offsets = self._plan(layout, sorted_ids)
            rows_in_run = lengths // layout.row_bytes
            staging = np.empty((int(rows_in_run.sum()), *layout.row_shape), dtype=layout.dtype)
            raw = memoryview(staging.reshape(-1).view(np.uint8))
            first_row = np.concatenate([[0], np.cumsum(rows_in_run)[:-1]])
            for start, length, row in zip(starts.tolist(), lengths.tolist(), first_row.tolist(), strict=True):
                jobs.append((raw[row * layout.row_bytes : row * layout.row_bytes + length], start))
            # every row starts a whole number of rows into its read: its place in staging is a row index
            gathers[key] = (staging, first_row[run_of_row] + (offsets - starts[run_of_row]) // layout.row_bytes)
            self.bytes_read += int(lengths.sum())
        groups = [jobs[k :: self.in_flight] for k in range(min(self.in_flight, len(jobs)))]  # one task per thread
        for _ in self.pool.map(lambda group: [self._read(*job) for job in group], groups):
            pass
        self.read_calls += len(jobs)
        out = {}
        for key, (staging, rows) in gathers.items():
            contiguous = len(rows) == len(staging) and (len(rows) == 0 or rows[-1] == len(rows) - 1)
            out[key] = staging if contiguous else staging[rows]
        return out

    def _plan(self, layout: DatasetBytes, sorted_ids: np.ndarray):
        """Merged reads for one dataset: ``(starts, lengths, read of each row, each row's byte offset)``."""
        offsets, stretch = layout.positions(sorted_ids)
        gap = np.diff(offsets) - layout.row_bytes
        joins = (stretch[1:] == stretch[:-1]) & (gap >= 0) & (gap <= self.max_gap_bytes)
        first = np.concatenate([[True], ~joins])
        run_of_row = np.cumsum(first) - 1
        starts = offsets[first]
        last = np.concatenate([np.flatnonzero(first)[1:] - 1, [len(offsets) - 1]])
        return starts, offsets[last] + layout.row_bytes - starts, run_of_row, offsets

    def close(self) -> None:
        self.pool.shutdown(wait=True)
