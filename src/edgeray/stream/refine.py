"""Live refinement at the edge: iterative mini-batch updates of the network's mosaic in the CPU time left over.

The network's image is quick but only as good as one frame allows; the frames received so far hold more. A
:class:`LiveRefiner` keeps the newest ``capacity`` frames (measured amplitudes, in the engines' layout) and their
positions on the mosaic's grid, and runs mini-batch updates of an iterative engine (LSQML or rPIE, the engines of
:mod:`edgeray.ptycho`) over them, newest first: frames no update has seen yet go first, then sweeps over all the
frames kept in random batches. Where no update has reached yet, the object is the mosaic's; so the refined image
starts as the network's and only gets better.

It never costs a frame: it runs in its own thread at the lowest CPU priority (``nice 19`` for that thread) on one
core, holds the Python interpreter only between tensor operations, and waits while frames queue up for inference
or writing. At the scan's end it keeps refining for ``tail_s`` seconds (on ``tail_threads`` cores), then hands
its product over.

Scale: the network's patch amplitude is relative to the scan's mean transmission, with a unit-power probe ``p``
(:mod:`edgeray.nn.physics`); detector counts are then ``|FFT(sqrt(scale) p x patch)|^2``, ``scale`` the mean
count per pixel, so the engines start from the probe ``sqrt(scale) p`` and the mosaic's object as it is.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeray.ptycho.engine import Batch, LowPassMomentum, State
from edgeray.ptycho.ops import Propagator, patch_indices, split_positions
from edgeray.ptycho.problem import Geometry, Problem
from edgeray.ptycho.reconstruct import ENGINE_TABLE, default_options
from edgeray.stream.mosaic import detail_sums
from edgeray.stream.refine_order import UpdateOrder
from edgeray.stream.spare_time import SpareTimeWorker, lower_thread_priority

log = logging.getLogger("edgeray.refine")

REFINE_ENGINES = ("lsqml", "rpie")
SEEDS = ("network", "network-detail", "flat")
HOLDOUT_EVERY = 16  # one stored frame in this many is never updated on: the misfit that picks the image written
HOLDOUT_MAX = 512  # held-out frames a misfit is measured on (evenly chosen among them)


@dataclass
class RefineOptions:
    """Live refinement settings.

    Attributes:
        engine: ``lsqml`` (default) or ``rpie``.
        batch_size: frames per update.
        capacity: newest frames kept for refinement (memory: ``capacity * H * W * 4`` bytes).
        tail_s: seconds of refinement after a scan's last frame.
        refine_probe_after: frame updates before the probe is refined too (the model's probe is the start).
        max_backlog: frames received and not yet in the mosaic above which refinement pauses.
        seed: what the object starts from where no update has been: ``network`` (the mosaic), ``network-detail``
            (the mosaic without its large-scale phase) or ``flat`` (ones).
        momentum, momentum_scale_px: low-pass momentum at each whole epoch once the scan has ended (the grid no
            longer grows): see :class:`~edgeray.ptycho.engine.LowPassMomentum`; 0 turns it off.
        start_after_s: seconds after the scan's start before the first update: the stream's stages settle first
            (in `edgeray demo` the first second held the scan's slowest frames while the refinement set up).
        patience_epochs: after the scan's end, the tail stops once this many whole epochs have passed without a
            better held-out misfit (the image is then as good as it gets; more CPU time would not change it).

    One frame in :data:`HOLDOUT_EVERY` is held out: never updated on, it measures each image by how well it
    explains frames it was not fitted to. The image written is the best so far by that measure, the network's
    mosaic included: the refined product is never worse than the network's by it.
    """

    engine: str = "lsqml"
    batch_size: int = 96
    capacity: int = 16384
    tail_s: float = 10.0
    refine_probe_after: int = 20000
    max_backlog: int = 64
    seed: str = "network-detail"
    momentum: float = 0.8
    momentum_scale_px: float = 8.0
    start_after_s: float = 1.0
    patience_epochs: int = 3


def _place(obj: np.ndarray, seeded: np.ndarray, origin_m: np.ndarray, grid_origin_m: np.ndarray,
           pixel_size_m: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """``obj`` and its ``seeded`` mask (on a grid at ``origin_m``) on another grid of ``shape`` at ``grid_origin_m``
    (the same pixels, shifted by whole pixels); unseeded where the object does not reach."""
    offset = np.round((np.asarray(origin_m) - np.asarray(grid_origin_m)) / np.asarray(pixel_size_m)).astype(int)
    placed, placed_seeded = np.ones(shape, obj.dtype), np.zeros(shape, bool)
    target = [slice(max(o, 0), min(o + n, s)) for o, n, s in zip(offset, obj.shape, shape, strict=True)]
    source = [slice(t.start - o, t.stop - o) for t, o in zip(target, offset, strict=True)]
    if all(t.stop > t.start for t in target):
        placed[target[0], target[1]] = obj[source[0], source[1]]
        placed_seeded[target[0], target[1]] = seeded[source[0], source[1]]
    return placed, placed_seeded


def beam_diameter_px(probe: torch.Tensor) -> float:
    """About the beam's diameter, pixels: twice the rms radius of ``probe``'s ``(H, W)`` intensity."""
    power = (probe.abs() ** 2).numpy()
    axis = np.arange(power.shape[0]) - power.shape[0] // 2
    return float(2 * np.sqrt((power * (axis[:, None] ** 2 + axis[None, :] ** 2)).sum() / power.sum()))


class LiveRefiner(SpareTimeWorker):
    """Refines one scan's object while it streams in (see the module docstring).

    Args:
        frame_shape: ``(H, W)``; probe: ``(H, W)`` complex unit-power probe (the network's);
        valid: ``(H, W)`` bool of good detector pixels or None; options: :class:`RefineOptions`;
        mosaic: ``() -> (numerator, coverage, origin_m, pixel_size_m)``, the network's mosaic (taken under the
            caller's lock); backlog: ``() -> int`` frames received and not yet in the mosaic (refinement pauses above
            ``options.max_backlog``);
        tail_threads: torch threads once the scan has ended (while it streams: one, so that the stages of the
            stream keep their cores).
    """

    def __init__(
        self,
        frame_shape: tuple[int, int],
        probe: torch.Tensor,
        options: RefineOptions,
        mosaic: Callable[[], tuple],
        backlog: Callable[[], int] = lambda: 0,
        valid: np.ndarray | None = None,
        tail_threads: int = 1,
    ):
        if options.seed not in SEEDS:
            raise ValueError(f"refinement seed must be one of {SEEDS}, not {options.seed!r}")
        if options.engine not in REFINE_ENGINES:
            raise ValueError(f"refinement engine must be one of {REFINE_ENGINES}, not {options.engine!r}")
        self.options, self.tail_threads, self.frame_shape = options, tail_threads, tuple(frame_shape)
        self.what, self.idle_s = "refinement", 0.01
        self.unit_probe, self.mosaic, self.backlog = probe.to(torch.complex64), mosaic, backlog
        height, width = self.frame_shape
        good = np.ones(self.frame_shape, np.float32) if valid is None else (~np.asarray(valid, bool)).astype(np.float32)
        self.valid = torch.from_numpy(np.fft.ifftshift(good))
        capacity = options.capacity
        self.amplitudes = torch.empty(capacity, height, width)  # pages are touched as frames arrive
        self.positions_m = np.zeros((capacity, 2))
        self.positions_px = torch.zeros(capacity, 2, dtype=torch.float64)  # on the grid, set as frames are updated
        self.stored = 0  # frames ever stored (the slot of frame k is k % capacity)
        self.pending: deque = deque()  # (counts (n, H, W), positions_m (n, 2), scale) from the inference thread
        self.count_sum, self.count_pixels = 0.0, 0
        self.order = UpdateOrder(options.capacity, options.batch_size)
        self.frame_updates = 0
        self.misfits: deque = deque(maxlen=64)  # (misfit, data norm) of recent batches
        self.history: list[tuple[int, float]] = []  # (epoch, misfit) as each whole epoch completes, for the product
        self.momentum = LowPassMomentum(options.momentum, options.momentum_scale_px)
        self.object: torch.Tensor | None = None
        self.seeded: torch.Tensor | None = None
        self.origin_m: np.ndarray | None = None
        self.pixel_size_m: np.ndarray | None = None
        self.engine = None
        self.probe: torch.Tensor | None = None
        self.lock = threading.Lock()  # guards object/seeded for readers (live view, product)
        self.ended = threading.Event()
        self.final_sums: tuple[torch.Tensor, torch.Tensor] | None = None  # the mosaic's, once it no longer changes
        self.stop = threading.Event()
        self.done = threading.Event()
        self.updates = 0
        self.last_frame_at: float | None = None
        self.cpu_at_last_frame: float | None = None
        self.seconds_after_last_frame = 0.0
        self.cpu_seconds_after_last_frame = 0.0  # the whole edge process's CPU time, all its threads
        self.seconds_busy = 0.0
        self.thread = threading.Thread(target=self._run, name="edge-refine", daemon=True)
        self._detail_cache: tuple | None = None
        self.beam_px = beam_diameter_px(self.unit_probe)
        self.holdout_history: list[tuple[float, float]] = []  # (epoch, held-out misfit) after the scan's end
        self.network_holdout: float | None = None  # the network's mosaic (with the start probe), same frames
        self.best: tuple[float, float, torch.Tensor, torch.Tensor] | None = None  # (misfit, epoch, object, probe)
        self.chosen = "refined"  # what the written image is: "refined" (the best epoch) or "network"
        self.stopped_early: str | None = None

    # -- feeding -----------------------------------------------------------------------------------------
    def add(self, counts: np.ndarray, positions_m: np.ndarray) -> None:
        """Hand over a batch of frames (``(n, H, W)`` counts, ``(n, 2)`` positions in m); returns at once."""
        self.pending.append((np.asarray(counts), np.asarray(positions_m, dtype=np.float64)))

    def end(self) -> None:
        """The scan's last frame has been handed over: refine for ``tail_s`` more seconds, then finish."""
        self.last_frame_at = time.perf_counter()
        self.cpu_at_last_frame = time.process_time()
        self.ended.set()

    def start(self) -> LiveRefiner:
        self.thread.start()
        return self

    # -- state for readers -------------------------------------------------------------------------------
    @property
    def epochs(self) -> float:
        """Frame updates so far, in passes over the frames kept."""
        return self.frame_updates / max(min(self.stored, self.options.capacity), 1)

    @property
    def misfit(self) -> float | None:
        """Normalized amplitude misfit of the recent batches (the engines' cost), or None before the first."""
        if not self.misfits:
            return None
        values = np.array(self.misfits)
        return float(values[:, 0].sum() / max(values[:, 1].sum(), 1e-30))

    def image(self, numerator: np.ndarray, coverage: np.ndarray, origin_m: np.ndarray | None = None) -> np.ndarray:
        """The live image on the mosaic's current grid: refined where updates reached, the network's elsewhere;
        NaN where neither did. ``numerator``, ``coverage``: the mosaic's sums (already copied); ``origin_m``: their
        grid's origin, which places the refined object when the mosaic's grid has changed since (a model swapped in
        at the scan's end makes the mosaic again, on a grid that may have grown)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mosaic = np.where(coverage > 0, numerator / coverage, np.nan + 0j)
        with self.lock:
            if self.object is None or self.chosen == "network":
                return mosaic.astype(np.complex64)
            refined = self.object.numpy().copy()
            seeded = self.seeded.numpy().copy()
            own_origin = None if self.origin_m is None else self.origin_m.copy()
        if refined.shape != mosaic.shape:
            if origin_m is None or own_origin is None:
                return mosaic.astype(np.complex64)
            refined, seeded = _place(refined, seeded, own_origin, origin_m, self.pixel_size_m, mosaic.shape)
        # the network's mosaic has its own constant phase: turn it to the refined object's
        both = seeded & np.isfinite(mosaic)
        turn = np.exp(1j * np.angle(np.vdot(mosaic[both], refined[both]))) if both.any() else 1.0
        return np.where(seeded, refined, mosaic * turn).astype(np.complex64)

    # -- the work ----------------------------------------------------------------------------------------
    def _take_pending(self) -> None:
        """Store the frames handed over: amplitudes in the engines' layout, in the ring of ``capacity`` slots."""
        height, width = self.frame_shape
        while self.pending:
            counts, positions = self.pending.popleft()
            self.count_sum += float(counts.sum(dtype=np.float64))
            self.count_pixels += counts.size
            amplitudes = np.sqrt(np.fft.ifftshift(counts.astype(np.float32), axes=(-2, -1)) / (height * width))
            first = self.stored
            for start in range(0, len(counts), self.options.capacity):
                chunk = slice(start, min(start + self.options.capacity, len(counts)))
                slots = (self.stored + np.arange(chunk.stop - chunk.start)) % self.options.capacity
                self.amplitudes[torch.from_numpy(slots)] = torch.from_numpy(amplitudes[chunk])
                self.positions_m[slots] = positions[chunk]
                self.stored += chunk.stop - chunk.start
            self.order.stored(first, self.stored)

    def _follow_grid(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Match the object to the mosaic's grid (grown by whole pixels); returns the mosaic's sums."""
        numerator, coverage, origin_m, pixel_size_m = self.mosaic()
        if origin_m is None:
            return None
        shape = tuple(coverage.shape)
        with self.lock:
            if self.object is None:
                self.object = torch.ones(shape, dtype=torch.complex64)
                self.seeded = torch.zeros(shape, dtype=torch.bool)
            elif tuple(self.object.shape) != shape or not np.allclose(origin_m, self.origin_m):
                before = np.round((self.origin_m - origin_m) / pixel_size_m).astype(int)
                grown = torch.ones(shape, dtype=torch.complex64)
                grown_seeded = torch.zeros(shape, dtype=torch.bool)
                old = self.object.shape
                rows = slice(int(before[0]), int(before[0]) + old[0])
                cols = slice(int(before[1]), int(before[1]) + old[1])
                grown[rows, cols], grown_seeded[rows, cols] = self.object, self.seeded
                self.object, self.seeded = grown, grown_seeded
            self.origin_m, self.pixel_size_m = np.asarray(origin_m), np.asarray(pixel_size_m)
        return numerator, coverage

    def _seed(self, corners: torch.Tensor, numerator: torch.Tensor, coverage: torch.Tensor) -> None:
        """Where a batch's windows reach pixels no update has touched, start from the network's mosaic."""
        index = patch_indices(corners, self.frame_shape, self.object.shape[1]).reshape(-1)
        fresh = index[~self.seeded.view(-1)[index]]  # repeats write the same value: no need to make them unique
        if not len(fresh):
            return
        if self.options.seed == "flat":
            values = torch.ones(len(fresh), dtype=torch.complex64)
        else:
            if self.options.seed == "network-detail":
                numerator = self._detail(numerator, coverage)
            covered = coverage.view(-1)[fresh] > 0
            values = torch.where(covered, numerator.view(-1)[fresh] / coverage.view(-1)[fresh].clamp_min(1e-30),
                                 torch.ones_like(numerator.view(-1)[fresh]))  # fmt: skip
        with self.lock:
            self.object.view(-1)[fresh] = values.to(torch.complex64)
            self.seeded.view(-1)[fresh] = True

    def _detail(self, numerator: torch.Tensor, coverage: torch.Tensor) -> torch.Tensor:
        """The mosaic's sums with their large-scale phase taken out (a Gaussian low-pass of the phase, as wide as
        the beam), refreshed at most every half second: what a frame fixes well (the detail) without what it fixes
        poorly (the phase across many beams), which iterative updates fix slowly once it is wrong."""
        now = time.perf_counter()
        cached = self._detail_cache
        if cached is not None and (cached[2] is numerator or (cached[0].shape == numerator.shape
                                                            and now - cached[1] < 0.5)):  # fmt: skip
            return cached[0]  # the same sums (the final mosaic), or a recent copy of a growing one
        detail = detail_sums(numerator, coverage, self.beam_px)
        self._detail_cache = (detail, now, numerator)
        return detail

    def start_probe(self) -> torch.Tensor:
        """The probe the refinement starts from, ``(1, H, W)``: the unit probe at the scan's mean count per pixel."""
        return (np.sqrt(self.count_sum / max(self.count_pixels, 1)) * self.unit_probe)[None]

    def _engine_for(self):
        """The engine over the refiner's buffers (views, no copies), made again only when the grid changed; its
        state is the refiner's object and probe."""
        shape = tuple(self.object.shape)
        if self.probe is None:
            self.probe = self.start_probe()
        if self.engine is None or self.engine.problem.object_shape != shape:
            problem = Problem(
                amplitudes=self.amplitudes,
                valid=self.valid,
                positions_px=self.positions_px,
                object_shape=shape,
                pixel_size_m=tuple(float(v) for v in self.pixel_size_m),
                propagator=Propagator(),
                origin_m=tuple(float(v) for v in self.origin_m),
                geometry=Geometry(),
                energy_eV=0.0,
                distance_m=0.0,
            )
            options = default_options(self.options.engine, batch_size=self.options.batch_size)
            state = State(self.object, self.probe, self.positions_px)
            self.engine = ENGINE_TABLE[self.options.engine][0](problem, state, options, check_positions=False)
        self.engine.state.object, self.engine.state.probe = self.object, self.probe
        self.engine.state.positions_px = self.positions_px
        return self.engine

    def step(self) -> bool:
        """One update (if there is anything to update); returns whether it did one."""
        self._take_pending()
        if self.final_sums is not None:  # after the scan's end the mosaic is final: no copy of it per update
            sums = self.final_sums
        else:
            ended = self.ended.is_set()  # read before the copy: frames stitched after it are in it
            sums = self._follow_grid()
            if ended and sums is not None:
                self.final_sums = sums
        chosen = self.order.next(self.stored)
        if sums is None or chosen is None:
            return False
        chosen = chosen[chosen % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]  # the held-out frames are never fitted
        if not len(chosen):
            return True
        numerator, coverage = sums
        slots = torch.from_numpy(chosen % self.options.capacity)
        positions_px = self.positions_px
        positions_px[slots] = torch.from_numpy((self.positions_m[slots.numpy()] - self.origin_m) / self.pixel_size_m)
        corners, _ = split_positions(positions_px[slots], self.frame_shape)
        limit = torch.tensor(self.object.shape) - torch.tensor(self.frame_shape)
        inside = ((corners >= 0) & (corners <= limit)).all(dim=1)
        if not bool(inside.all()):  # the mosaic has not grown over these frames yet: later
            slots, corners = slots[inside], corners[inside]
            if not len(slots):
                return False
        self._seed(corners, numerator, coverage)
        engine = self._engine_for()
        refine_probe = self.frame_updates >= self.options.refine_probe_after
        with self.lock:
            data = float((self.valid * self.amplitudes[slots] ** 2).sum())
            misfit = float(engine.update(slots, refine_probe))
            self.object = engine.state.object
            self.probe = engine.state.probe
        self.misfits.append((misfit, data))
        self.frame_updates += len(slots)
        self.updates += 1
        if int(self.epochs) > (self.history[-1][0] if self.history else 0):
            self.history.append((int(self.epochs), self.misfit))
            if self.final_sums is not None:  # the grid is final: the object's history means the same pixels
                self._judge()
                with self.lock:
                    self.object = self.momentum(self.object)
        return True

    # -- the image it keeps -----------------------------------------------------------------------------------
    def _holdout_index(self) -> torch.Tensor | None:
        """Slots of up to :data:`HOLDOUT_MAX` held-out frames kept and inside the grid (their positions set)."""
        oldest = max(0, self.stored - self.options.capacity)
        first = oldest + (HOLDOUT_EVERY - 1 - oldest) % HOLDOUT_EVERY
        held = np.arange(first, self.stored, HOLDOUT_EVERY)
        if len(held) > HOLDOUT_MAX:
            held = held[np.linspace(0, len(held) - 1, HOLDOUT_MAX).astype(int)]
        if not len(held):
            return None
        slots = torch.from_numpy(held % self.options.capacity)
        self.positions_px[slots] = torch.from_numpy(
            (self.positions_m[slots.numpy()] - self.origin_m) / self.pixel_size_m
        )
        corners, _ = split_positions(self.positions_px[slots], self.frame_shape)
        limit = torch.tensor(self.object.shape) - torch.tensor(self.frame_shape)
        slots = slots[((corners >= 0) & (corners <= limit)).all(dim=1)]
        return slots if len(slots) else None

    def holdout_misfit(self, obj: torch.Tensor, probe: torch.Tensor, slots: torch.Tensor) -> float:
        """Normalized amplitude misfit of ``obj`` and ``probe`` on the frames ``slots`` (the engine's model)."""
        engine = self.engine
        state = State(obj, probe, self.positions_px)
        batch = Batch(engine.problem, state, slots, torch.fft.fft2(probe))
        data = float((engine.valid * batch.amplitudes**2).sum())
        return float(batch.misfit(engine.valid)) / max(data, 1e-30)

    def _judge(self) -> None:
        """Measure the image on the held-out frames; keep it if it is the best so far (the network's mosaic, with
        the start probe, measured first); past ``patience_epochs`` without a better one, stop the tail."""
        if self.engine is None or self.final_sums is None:
            return
        slots = self._holdout_index()
        if slots is None:
            return
        with self.lock:
            obj, probe = self.object.clone(), self.probe.clone()
        if self.network_holdout is None:
            numerator, coverage = self.final_sums
            network = torch.where(coverage > 0, numerator / coverage.clamp_min(1e-30), torch.ones_like(numerator))
            self.network_holdout = self.holdout_misfit(network.to(torch.complex64), self.start_probe(), slots)
        misfit = self.holdout_misfit(obj, probe, slots)
        self.holdout_history.append((round(self.epochs, 2), misfit))
        if self.best is None or misfit < self.best[0]:
            self.best = (misfit, self.epochs, obj, probe)
        elif self.epochs - self.best[1] >= self.options.patience_epochs and self.ended.is_set():
            self.stopped_early = (f"held-out misfit best at epoch {self.best[1]:.1f}, no better in "
                                  f"{self.options.patience_epochs} epochs since")  # fmt: skip
            self.stop.set()

    def _settle(self) -> None:
        """At the end: the image written is the best one measured (the refinement's, or the network's mosaic)."""
        self._judge()
        if self.best is None:
            return
        with self.lock:
            if self.network_holdout is not None and self.network_holdout <= self.best[0]:
                self.chosen = "network"
                self.probe = self.start_probe()
            else:
                self.object, self.probe = self.best[2], self.best[3]

    def _run(self) -> None:
        lower_thread_priority()
        torch.set_num_threads(1)  # this thread's own setting (torch keeps one per thread)
        self.ended.wait(self.options.start_after_s)  # the stream settles first (a short scan may end before)
        try:
            self.work_in_spare_time()
            if self.cpu_at_last_frame is not None:
                self.cpu_seconds_after_last_frame = time.process_time() - self.cpu_at_last_frame
            self._take_pending()
            self._settle()
        finally:  # the finisher waits for this, whatever happened
            self.done.set()

    def worked(self, seconds: float) -> None:
        self.seconds_busy += seconds
        if self.ended.is_set():
            self.seconds_after_last_frame += seconds

    def summary(self) -> dict:
        """What the refinement did, for the scan's JSON summary."""
        return {
            "engine": self.options.engine,
            "frames_kept": min(self.stored, self.options.capacity),
            "frame_updates": self.frame_updates,
            "epochs": self.epochs,
            "batches": self.updates,
            "misfit": self.misfit,
            "seconds_busy": self.seconds_busy,
            "seconds_after_last_frame": self.seconds_after_last_frame,
            "cpu_seconds_after_last_frame": self.cpu_seconds_after_last_frame,
            "tail_s": self.options.tail_s,
            "chosen": self.chosen,  # the image written: "refined" (its best epoch) or "network" (no better)
            "best_epoch": None if self.best is None else round(self.best[1], 2),
            "holdout_misfit": None if self.best is None else self.best[0],
            "network_holdout_misfit": self.network_holdout,
            "holdout_history": self.holdout_history,
            "stopped_early": self.stopped_early,
        }
