"""A ring of frames in shared memory: the receiver writes each frame once, the writer process and the inference
read it where it lies (no copies between processes, no pickle).

One block of shared memory per scan holds ``capacity`` slots: the frames ``(C, H, W)`` in the detector's dtype
and, per slot, the probe position ``(C, 2)`` float64 m, the sender's index and the arrival time (int64 ns since
the epoch and perf-counter ns), and whether the frame is to be inverted (a repeat is written, not inverted). Frame
``k`` of the scan (``k`` counts received frames) lives in slot ``k % C``. A header of int64 counters is shared
too: ``received`` (set by the receiver: frames ``< received`` are in place) and ``written`` (set by the writer
process after each flush: frames ``< written`` are safe in the run file). A slot is reused only once its frame is
written and inverted.
"""

from __future__ import annotations

import secrets
from multiprocessing import shared_memory

import numpy as np

COUNTERS = ("received", "written")


def _layout(capacity: int, shape: tuple[int, int], dtype: np.dtype) -> tuple[dict, int]:
    """Byte offsets of each array in the block, and the block's size."""
    fields = [
        ("counters", (len(COUNTERS),), np.int64),
        ("positions_m", (capacity, 2), np.float64),
        ("index", (capacity,), np.int64),
        ("wall_ns", (capacity,), np.int64),
        ("arrival_ns", (capacity,), np.int64),
        ("infer", (capacity,), np.bool_),
        ("frames", (capacity, *shape), dtype),
    ]
    offsets, offset = {}, 0
    for name, field_shape, field_dtype in fields:
        offset = -(-offset // 64) * 64  # each array starts on a cache line
        offsets[name] = (offset, field_shape, np.dtype(field_dtype))
        offset += int(np.prod(field_shape)) * np.dtype(field_dtype).itemsize
    return offsets, offset


class FrameRing:
    """The ring of one scan. ``create=True`` makes a new block (the receiver); else attach to ``name``.

    Attributes:
        frames, positions_m, index, wall_ns, arrival_ns, infer: the slot arrays (views of the shared block).
        capacity, shape, dtype, name: what the block holds and what others attach it by.
    """

    def __init__(self, capacity: int, shape: tuple[int, int], dtype: str, name: str | None = None, create: bool = True):
        if capacity < 1:
            raise ValueError(f"a frame ring needs at least one slot, not {capacity}")
        self.capacity, self.shape, self.dtype = int(capacity), tuple(int(v) for v in shape), np.dtype(dtype)
        offsets, size = _layout(self.capacity, self.shape, self.dtype)
        if create:
            name = name or f"edgeray-{secrets.token_hex(6)}"
            self._shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        else:
            # Python < 3.13 registers an attached block with the resource tracker too; the writer is spawned by
            # the creator and shares its tracker, where a name is held once, so that is harmless (taking it off
            # there would make the creator's unlink fail in the tracker)
            self._shm = shared_memory.SharedMemory(name=name, create=False)
        self.name = self._shm.name
        self.owner = create
        for field, (offset, field_shape, field_dtype) in offsets.items():
            array = np.ndarray(field_shape, dtype=field_dtype, buffer=self._shm.buf, offset=offset)
            setattr(self, field, array)
        if create:
            self.counters[:] = 0

    # -- counters --------------------------------------------------------------------------------------------
    @property
    def received(self) -> int:
        return int(self.counters[0])

    @received.setter
    def received(self, value: int) -> None:
        self.counters[0] = value

    @property
    def written(self) -> int:
        return int(self.counters[1])

    @written.setter
    def written(self, value: int) -> None:
        self.counters[1] = value

    # -- reading ---------------------------------------------------------------------------------------------
    def spans(self, first: int, stop: int) -> list[tuple[int, int, int]]:
        """The frames ``first .. stop - 1`` as ``(first frame, slot start, slot stop)`` runs (two where the ring
        wraps): read ``frames[slot start:slot stop]`` for each."""
        runs, frame = [], first
        while frame < stop:
            slot = frame % self.capacity
            count = min(stop - frame, self.capacity - slot)
            runs.append((frame, slot, slot + count))
            frame += count
        return runs

    def config(self) -> dict:
        """What another process needs to attach (JSON-ready)."""
        return {"name": self.name, "capacity": self.capacity, "shape": list(self.shape), "dtype": str(self.dtype)}

    @classmethod
    def attach(cls, config: dict) -> FrameRing:
        return cls(config["capacity"], tuple(config["shape"]), config["dtype"], config["name"], create=False)

    def close(self) -> None:
        """Drop this process's mapping; the creator also frees the block."""
        for field in ("counters", "positions_m", "index", "wall_ns", "arrival_ns", "infer", "frames"):
            self.__dict__.pop(field, None)
        try:
            self._shm.close()
        except BufferError:  # a view is still alive somewhere: the mapping goes with the process
            return
        if self.owner:
            try:
                self._shm.unlink()
            except FileNotFoundError:
                pass
