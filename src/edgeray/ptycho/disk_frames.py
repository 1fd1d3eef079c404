"""Scans larger than memory: the engines' measured amplitudes read from the CXI file per mini-batch.

:class:`~edgeray.io.cxi.FramesOnDisk` stands for a scan's frames in a :class:`~edgeray.io.PtychoScan`
(``scan.frames``) without reading them; :func:`~edgeray.ptycho.problem.prepare` then gives the engines a
:class:`DiskAmplitudes` in place of the amplitude tensor. It answers ``index_select(0, index)`` as the tensor
would, reading those frames from the file (whole-frame ``preadv`` calls through
:class:`edgeray.loader.direct.DirectRows` where the frames are stored unfiltered, h5py otherwise). An engine
announces an epoch's batches (:meth:`DiskAmplitudes.expect`) and a thread reads them ahead, so reading overlaps
compute. Memory holds the object, the probe and ``read_ahead + 1`` batches; a distributed rank reads only its own
frames.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from edgeray.io.cxi import FramesOnDisk

#: above this fraction of the memory available, a scan's frames stay on disk (``frames_on_disk="auto"``)
MEMORY_FRACTION = 0.5
#: in memory, a scan takes about its counts plus this many float32 copies while it is read and prepared
FLOAT32_COPIES = 3


def available_memory_bytes() -> int:
    """Memory the kernel could give now (``MemAvailable``), bytes."""
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def keep_on_disk(frames: FramesOnDisk, mode: str = "auto") -> bool:
    """Whether to read ``frames`` per batch: ``always``, ``never``, or ``auto`` (reading and preparing them in memory
    would take more than :data:`MEMORY_FRACTION` of the memory available)."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"frames_on_disk must be auto, always or never, not {mode!r}")
    if mode != "auto":
        return mode == "always"
    in_memory = frames.nbytes + FLOAT32_COPIES * 4 * int(np.prod(frames.shape, dtype=np.int64))
    return in_memory > MEMORY_FRACTION * available_memory_bytes()


class DiskAmplitudes:
    """``(N, H, W)`` float32 measured amplitudes in the engines' layout (far field: ifftshifted and scaled by
    ``1 / (H W)`` before the square root, as :func:`~edgeray.ptycho.problem.prepare` does), read from the file.

    On creation one sequential pass over the frames checks them (NaN, inf, negative counts, all zero) and sums their
    power per pixel (for the cost's normalization and the probe guess): ``power_sum`` ``(H, W)`` float64.
    """

    def __init__(self, frames: FramesOnDisk, far_field: bool, device: torch.device, read_ahead: int = 2,
                 progress: Callable[[int, int], None] | None = None):  # fmt: skip
        from edgeray.io import CXIFile
        from edgeray.loader.direct import DirectRows

        self.frames, self.far_field, self.device, self.read_ahead = frames, far_field, torch.device(device), read_ahead
        self.cxi = CXIFile(frames.path, **frames.cxi_options)
        self.global_indices = frames.indices if frames.indices is not None else np.arange(self.cxi.n_frames)
        self.shape = (len(self.global_indices), *self.cxi.frame_shape)
        self.dtype = torch.float32
        self._fd = os.open(frames.path, os.O_RDONLY)
        self.direct = DirectRows.for_datasets(self._fd, {"frames": self.cxi._frames})  # None: compressed frames
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="frames-ahead")
        self.pending: deque[tuple[bytes, Future]] = deque()
        self.planned: deque[np.ndarray] = deque()
        self.bytes_read = 0
        self.read_ahead_hits = 0  # batches that were ready (or being read) when the engine asked for them
        self.power_sum, self.totals = self._first_pass(progress)

    def __len__(self) -> int:
        return self.shape[0]

    def _first_pass(self, progress) -> tuple[np.ndarray, np.ndarray]:
        from edgeray.io.errors import EdgeRayFormatError

        n = len(self)
        power = np.zeros(self.shape[1:], dtype=np.float64)
        totals = np.zeros(n, dtype=np.float64)
        step = max(1, (64 << 20) // max(1, int(np.prod(self.shape[1:])) * 4))  # about 64 MiB a block
        for start in range(0, n, step):
            local = np.arange(start, min(start + step, n))
            raw = self._raw_block(local)
            if not np.isfinite(raw).all() or (raw.dtype.kind in "if" and raw.min() < 0):
                raise EdgeRayFormatError(self.frames.path, self.cxi._frames.name,
                                         f"frames {start}..{local[-1]} hold NaN, inf or negative counts")  # fmt: skip
            amplitudes = self._amplitudes(raw)
            power += (amplitudes.astype(np.float64) ** 2).sum(axis=0)
            totals[local] = raw.reshape(len(local), -1).sum(axis=1, dtype=np.float64)
            if progress:
                progress(int(local[-1]) + 1, n)
        if n and (totals <= 0).all():
            raise ValueError("every frame is zero: no photons were recorded")
        return power, totals

    def _raw_block(self, local: np.ndarray) -> np.ndarray:
        wanted = self.global_indices[local]
        if self.direct is not None:
            raw = self.cxi._orient(self.direct.read(wanted)["frames"])
        else:
            raw = self.cxi.read_frame_subset(wanted, validate=False)
        self.bytes_read += raw.nbytes
        return raw

    def _amplitudes(self, raw: np.ndarray) -> np.ndarray:
        block = raw.astype(np.float32)
        if self.far_field:
            height, width = block.shape[-2:]
            block = np.fft.ifftshift(block, axes=(-2, -1)) / np.float32(height * width)
        return np.sqrt(np.maximum(block, 0.0, dtype=np.float32))

    def expect(self, batches: list[torch.Tensor]) -> None:
        """The batches an epoch will ask for, in order: read ahead of it (earlier plans are dropped)."""
        for _, future in self.pending:
            future.cancel()
        self.pending.clear()
        self.planned = deque(batch.cpu().numpy() for batch in batches)
        self._top_up()

    def _top_up(self) -> None:
        while self.planned and len(self.pending) < self.read_ahead:
            local = self.planned.popleft()
            self.pending.append((local.tobytes(), self.pool.submit(self._load, local)))

    def _load(self, local: np.ndarray) -> torch.Tensor:
        order = np.argsort(local, kind="stable")
        block = np.empty((len(local), *self.shape[1:]), dtype=np.float32)
        if len(local):
            block[order] = self._amplitudes(self._raw_block(local[order]))
        return torch.from_numpy(block)

    def index_select(self, dim: int, index: torch.Tensor) -> torch.Tensor:
        """Frames ``index`` ``(B,)`` ``(B, H, W)`` on the device: read ahead when announced, else now."""
        if dim != 0:
            raise ValueError("frames are selected along dimension 0")
        local = index.cpu().numpy()
        if self.pending and self.pending[0][0] == local.tobytes():
            block = self.pending.popleft()[1].result()
            self.read_ahead_hits += 1
            self._top_up()
        else:
            block = self._load(local)
        return block.to(self.device)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        if self.direct is not None:
            self.direct.close()
        os.close(self._fd)
        self.cxi.close()
