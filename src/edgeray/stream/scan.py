"""One scan's state at the edge, and the messages the edge's stages pass about it.

:class:`ScanRun` holds what the service knows of a scan; each field has one writer, the stage named beside it.
The stages talk through queues of the message classes below (in order, one queue per pair of stages), never of
tagged tuples.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from edgeray.stream.learn import LiveLearner
from edgeray.stream.mosaic import Mosaic
from edgeray.stream.protocol import Start
from edgeray.stream.refine import LiveRefiner
from edgeray.stream.ring import FrameRing

STAGES = ("receive", "infer", "stitch", "write")


@dataclass
class ScanRun:
    """What the service knows of one scan.

    Frames are numbered in arrival order (``k``-th frame stored: slot ``k % ring.capacity``); ``stored`` of them
    are in the ring, ``published`` of those announced to the writer and the inference, ``inferred_upto`` handled
    by the inference (inverted, or skipped as a repeat), ``stitched_upto`` by the stitcher; ``stitched`` frames are
    in the mosaic (their latencies the first ``stitched`` of ``latencies_ms``). Each field is written by one stage:
    the receiver (counts, ring, spill), the writer supervisor (``parts``, ``closed``, ``writer_errors``), the
    inference (``inferred_upto``, ``count_*``, ``version_*``, ``mosaic``, ``refiner``, ``learner`` when the scan
    starts), the stitcher (``stitched*``, ``latencies_ms``); ``busy_s`` and ``cpu_s`` hold one entry per stage,
    each written by its stage.
    """

    start: Start
    started_wall: float
    started_perf_ns: int
    ring: FrameRing
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    expected: int | None = None
    ended: bool = False
    end_sent: bool = False
    last_arrival_ns: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.zeros(4096, dtype=bool))  # by sender index
    stored: int = 0
    published: int = 0
    told_writer: int = 0  # frames announced to the writer
    told_writer_ns: int = 0
    inferred_upto: int = 0
    stitched_upto: int = 0  # ring frames the stitching has handled (in the mosaic, or skipped as repeats)
    stitched: int = 0
    spill: deque = field(default_factory=deque)
    spill_bytes: int = 0
    spill_peak_frames: int = 0
    dropped: int = 0
    shedding: bool = False  # the network fell so far behind that it gives up frames (the writer never does)
    not_inverted: int = 0  # frames the network gave up
    base_path: Path | None = None
    parts: list = field(default_factory=list)  # run files, in order, with the frames each holds
    writer_errors: list = field(default_factory=list)
    closed: threading.Event = field(default_factory=threading.Event)
    latencies_ms: np.ndarray = field(default_factory=lambda: np.zeros(4096, dtype=np.float32))  # first `stitched`
    mosaic: Mosaic | None = None
    count_sum: float = 0.0
    count_pixels: int = 0
    version_counts: dict = field(default_factory=dict)  # model version -> frames it inverted
    version_segments: list = field(default_factory=list)  # [first index, last index, model version]
    refiner: LiveRefiner | None = None
    learner: LiveLearner | None = None
    busy_s: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # wall seconds in each stage
    cpu_s: dict = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))  # CPU seconds of each stage's threads
    receive_cpu_mark: float = 0.0  # the receiving thread's CPU clock when the scan opened
    frame_dtype: np.dtype | None = None  # the start message's dtype (compared per frame: no string per frame)
    object_pixel_m: tuple[float, float] = (1.0, 1.0)  # receiver: the start's object pixel size (dy, dx), m
    anchor_m: tuple[float, float] | None = None  # receiver: the first frame's position, m
    no_network: str | None = None  # inference: why the network does not invert this scan's frames
    writer_deaths: int = 0  # writer supervisor: writer processes that died while this scan was open
    errors: list = field(default_factory=list)  # any stage: failures that cost the scan a product, named

    @property
    def complete(self) -> bool:
        """Ended by its end message with every frame it announced received."""
        return self.expected is not None and self.received - self.duplicates >= self.expected

    def fail(self, stage: str, error: BaseException) -> None:
        """Record that ``stage`` failed on this scan (the scan goes on to its end and an error summary)."""
        self.errors.append(f"{stage}: {type(error).__name__}: {error}")

    @property
    def written(self) -> int:
        """Frames safely in the run file(s): the closed parts' counts, or the ring's flushed counter."""
        closed = sum(part.get("written", 0) for part in self.parts if part.get("closed"))
        return closed if self.closed.is_set() else max(closed, self.ring.written if self.ring else 0)


def latency_profile(latencies_ms: np.ndarray, seconds: float) -> list[float]:
    """p99 latency (ms) of each second of a scan: the inverted frames, in order, in ``ceil(seconds)`` equal
    blocks; where in the scan the slow frames were (its start, a stall, the end)."""
    blocks = min(int(np.ceil(seconds)), len(latencies_ms))
    if blocks < 1:
        return []
    return [round(float(np.percentile(block, 99)), 1) for block in np.array_split(latencies_ms, blocks)]


@dataclass
class ScanStarted:
    """Receiver -> inference: a scan opened (its ring is ready)."""

    run: ScanRun


@dataclass
class ScanEnded:
    """Receiver -> inference -> stitcher -> finisher: every frame of the scan has been handed on."""

    run: ScanRun


@dataclass
class Stop:
    """The service stops: passed on by each stage after its own last work."""


@dataclass
class Inverted:
    """Inference -> stitcher: a batch of patches ``(N, 1, H, W)`` at ``positions_m`` ``(N, 2)``, their arrival times
    (ns), the counts for the refinement and learning (or None), and the ring frames handled up to ``upto``."""

    run: ScanRun
    amplitude: torch.Tensor
    phase: torch.Tensor
    positions_m: np.ndarray
    arrivals_ns: np.ndarray
    frames: np.ndarray | None
    upto: int


@dataclass
class Skipped:
    """Inference -> stitcher: ring frames up to ``upto`` were repeats only (nothing to stitch)."""

    run: ScanRun
    upto: int
