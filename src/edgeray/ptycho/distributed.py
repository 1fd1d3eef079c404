"""Reconstruction across ranks: PtyGer's hybrid parallelization of ML-CG on ``torch.distributed`` (and the
mini-batch engines, LSQML and (r/e)PIE, on the same tiles).

The scan positions are split into compact tiles of balanced frame counts (recursive bisection along the longer
side). Each rank reads only its tile's frames from the CXI file and holds only the part of the object its frames
touch (its tile plus a halo one probe wide). Per ML-CG iteration:

- gradient: each rank differentiates the likelihood of its own frames; the object gradient and illumination are
  completed by a **halo exchange** (each rank sends its partial sums on the overlap with each neighbour's region
  and adds theirs), the probe gradient and probe weight are **all-reduced**;
- direction: inner products are summed over each object pixel once (the lowest rank holding it owns it) and
  all-reduced; the line search's costs are all-reduced scalars.

So every rank's copy of an object pixel stays equal, and the result equals the one-process engine's up to the
order of float32 sums. gloo on CPU, NCCL on CUDA; the same code runs with one rank. A communication log per
epoch (bytes and seconds per kind of exchange, seconds of compute) goes into the summary.

LSQML and (r/e)PIE update the object and probe once per mini-batch: every rank draws the one-process engine's
random batches (same seed) and takes its own frames of each; the batch's object-shaped sums (illumination,
update directions) are completed by the same halo exchange, its probe-shaped sums and per-batch maxima by
all-reduce. So they too equal their one-process runs up to float32 round-off, at the price of a halo exchange
per batch rather than per epoch.

What needs the whole object is done on the whole object: the low-pass momentum after each epoch (LSQML's default)
assembles it with one all-reduce and takes the same step on every rank; a batch's intensity floor is the mean over
every rank's part of it. Options that cannot keep the one-process answer are refused before any rank starts
(:func:`refuse_undistributed`): position correction, and LSQML with Poisson noise.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from edgeray.io import CXIFile, PtychoScan
from edgeray.ptycho.disk_frames import keep_on_disk
from edgeray.ptycho.engine import EngineOptions, State
from edgeray.ptycho.lsqml import LSQMLEngine, LSQMLOptions
from edgeray.ptycho.mlcg import MLCGEngine
from edgeray.ptycho.ops import split_positions
from edgeray.ptycho.pie import PIEEngine
from edgeray.ptycho.problem import Problem, add_probe_modes, initial_probe, object_grid, power_sum, prepare
from edgeray.ptycho.reconstruct import ENGINE_TABLE, engine_of, to_product


@dataclass
class Tile:
    """One rank's share: ``frames`` (sorted global frame indices) and ``box`` ``(y0, y1, x0, x1)``, the object
    pixels those frames touch (the tile and its halo), in global object pixels."""

    rank: int
    frames: np.ndarray
    box: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        return self.box[1] - self.box[0], self.box[3] - self.box[2]


def _bisect(indices: np.ndarray, positions_px: np.ndarray, n_parts: int) -> list[np.ndarray]:
    if n_parts == 1:
        return [np.sort(indices)]
    points = positions_px[indices]
    axis = int(np.argmax(points.max(axis=0) - points.min(axis=0)))
    order = indices[np.argsort(points[:, axis], kind="stable")]
    left = n_parts // 2
    cut = round(len(order) * left / n_parts)
    return _bisect(order[:cut], positions_px, left) + _bisect(order[cut:], positions_px, n_parts - left)


def partition(positions_px: np.ndarray, frame_shape: tuple[int, int], n_ranks: int) -> list[Tile]:
    """Split frames at ``positions_px`` ``(N, 2)`` ``[y, x]`` (object pixels) into ``n_ranks`` compact tiles of
    balanced counts (they differ by at most one frame per bisection level); each tile's box covers its frames."""
    positions_px = np.asarray(positions_px, dtype=np.float64)
    if n_ranks < 1 or n_ranks > len(positions_px):
        raise ValueError(f"{n_ranks} ranks for {len(positions_px)} frames: need 1 <= ranks <= frames")
    corners, _ = split_positions(torch.from_numpy(positions_px), frame_shape)
    corners = corners.numpy()
    tiles = []
    for rank, frames in enumerate(_bisect(np.arange(len(positions_px)), positions_px, n_ranks)):
        low = corners[frames].min(axis=0)
        high = corners[frames].max(axis=0) + np.asarray(frame_shape)
        tiles.append(Tile(rank, frames, (int(low[0]), int(high[0]), int(low[1]), int(high[1]))))
    return tiles


def _overlap(a: Tile, b: Tile) -> tuple[slice, slice, slice, slice] | None:
    """The overlap of two boxes as slices into ``a``'s and ``b``'s local arrays, or None."""
    y0, y1 = max(a.box[0], b.box[0]), min(a.box[1], b.box[1])
    x0, x1 = max(a.box[2], b.box[2]), min(a.box[3], b.box[3])
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0 - a.box[0], y1 - a.box[0]), slice(x0 - a.box[2], x1 - a.box[2]),
            slice(y0 - b.box[0], y1 - b.box[0]), slice(x0 - b.box[2], x1 - b.box[2]))  # fmt: skip


def ownership(tiles: list[Tile], rank: int) -> torch.Tensor:
    """``(Y, X)`` bool over ``rank``'s box: True where no lower rank's box holds the pixel (each pixel once)."""
    mine = tiles[rank]
    owned = torch.ones(mine.shape, dtype=torch.bool)
    for other in tiles[:rank]:
        overlap = _overlap(mine, other)
        if overlap is not None:
            owned[overlap[0], overlap[1]] = False
    return owned


@dataclass
class CommLog:
    """Bytes and seconds per kind of exchange, and seconds of compute, per epoch."""

    epochs: list[dict] = field(default_factory=list)
    current: dict = field(default_factory=dict)

    def add(self, kind: str, n_bytes: int, seconds: float) -> None:
        entry = self.current.setdefault(kind, {"bytes": 0, "seconds": 0.0, "calls": 0})
        entry["bytes"] += int(n_bytes)
        entry["seconds"] += seconds
        entry["calls"] += 1

    def close_epoch(self, seconds: float) -> None:
        communication = sum(entry["seconds"] for entry in self.current.values())
        self.epochs.append({"seconds": seconds, "compute_s": seconds - communication,
                            "communication_s": communication, **self.current})  # fmt: skip
        self.current = {}


class DistributedEngine:
    """What makes an engine distributed: mixed in before an engine class, it implements the engine's reduction
    hooks (:meth:`~edgeray.ptycho.engine.Engine.sum_object` and the others) across the process group, and gives
    the mini-batch engines the one-process engine's batches, each rank taking its own frames of every batch.
    Construct with ``(problem, state, options, tiles, rank, exchange)``; ``problem`` holds this rank's frames."""

    dense_sums = True  # sums completed across ranks on whole-object arrays (halo exchange)

    def __init__(self, problem: Problem, state: State, options, tiles: list[Tile], rank: int,
                 exchange: str = "halo", object_shape: tuple[int, int] | None = None):  # fmt: skip
        if exchange not in ("halo", "allreduce"):
            raise ValueError(f"exchange must be 'halo' or 'allreduce', not {exchange!r}")
        refuse_undistributed(options)
        self.tiles, self.rank, self.exchange = tiles, rank, exchange
        # the global object grid (object_shape: default, the boxes' extent) and where some rank holds it
        self.object_shape = object_shape or (max(t.box[1] for t in tiles), max(t.box[3] for t in tiles))
        self.held = torch.zeros(self.object_shape, dtype=torch.bool)
        for tile in tiles:
            self.held[tile.box[0] : tile.box[1], tile.box[2] : tile.box[3]] = True
        self.whole: torch.Tensor | None = None  # the whole object after the last momentum step (every rank)
        self.log = CommLog()
        self.neighbours = [(t, o) for t in tiles if t.rank != rank and (o := _overlap(tiles[rank], t)) is not None]
        super().__init__(problem, state, options)
        self.owned = ownership(tiles, rank).to(problem.device)
        self._data_norm = self.combine_costs([self.data_norm])[0]
        n_frames = sum(len(t.frames) for t in tiles)
        local = torch.full((n_frames,), -1, dtype=torch.long)
        local[torch.from_numpy(tiles[rank].frames)] = torch.arange(len(tiles[rank].frames))
        self.local_index = local.to(problem.device)  # global frame -> this rank's frame, -1 for the others'

    def _timed(self, kind: str, n_bytes: int, work) -> None:
        start = time.perf_counter()
        work()
        self.log.add(kind, n_bytes, time.perf_counter() - start)

    def batches(self) -> list[torch.Tensor]:
        """The one-process engine's batches (same seed: same random partition of every frame of the scan),
        each reduced to this rank's frames (possibly none)."""
        order = torch.from_numpy(self.rng.permutation(len(self.local_index))).to(self.problem.device)
        size = max(1, min(self.options.batch_size, len(self.local_index)))
        local = [self.local_index[batch] for batch in torch.split(order, size)]
        return self.announced([torch.sort(batch[batch >= 0]).values for batch in local])

    def combine_costs(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.problem.device)
        self._timed("all_reduce_scalars", tensor.numel() * 8, lambda: dist.all_reduce(tensor))
        return [float(v) for v in tensor.cpu()]

    def sum_probe(self, partial: torch.Tensor) -> torch.Tensor:
        self._timed("all_reduce_probe", partial.numel() * partial.element_size(), lambda: dist.all_reduce(partial))
        return partial

    def sum_object(self, partial: torch.Tensor) -> torch.Tensor:
        if self.exchange == "halo":
            self._halo_exchange(partial)
        else:  # the plain scheme, for comparison: every rank holds and all-reduces the whole object
            n_bytes = partial.numel() * partial.element_size()
            self._timed("all_reduce_object", n_bytes, lambda: dist.all_reduce(partial))
        return partial

    def _halo_exchange(self, local: torch.Tensor) -> None:
        """Add the neighbours' partial sums on each overlap to ``local`` (in place)."""
        if not self.neighbours:
            return
        start = time.perf_counter()
        outgoing = {t.rank: local[o[0], o[1]].contiguous() for t, o in self.neighbours}  # before any addition
        incoming = {t.rank: torch.empty_like(outgoing[t.rank]) for t, _ in self.neighbours}
        requests = [dist.irecv(incoming[t.rank], src=t.rank) for t, _ in self.neighbours]
        requests += [dist.isend(outgoing[t.rank], dst=t.rank) for t, _ in self.neighbours]
        for request in requests:
            request.wait()
        for tile, overlap in self.neighbours:
            local[overlap[0], overlap[1]] += incoming[tile.rank]
        n_bytes = sum(v.numel() * v.element_size() for v in outgoing.values())
        self.log.add("halo_exchange", n_bytes, time.perf_counter() - start)

    def global_max(self, value: torch.Tensor) -> torch.Tensor:
        mine = value.max() if value.numel() else torch.tensor(-torch.inf, dtype=value.dtype, device=value.device)
        result = mine.reshape(1).clone()
        self._timed("all_reduce_max", result.element_size(), lambda: dist.all_reduce(result, op=dist.ReduceOp.MAX))
        return result[0]

    def epoch(self) -> float:
        start = time.perf_counter()
        misfit = super().epoch()
        self.log.close_epoch(time.perf_counter() - start)
        return misfit

    def intensity_floor(self, batch) -> float:
        total, count = self.combine_costs([float(batch.intensity.double().sum()), float(batch.intensity.numel())])
        return 1e-6 * total / max(count, 1.0) + 1e-30

    def momentum_step(self, local: torch.Tensor) -> torch.Tensor:
        """The one-process momentum on the whole object: the ranks' owned pixels assembled by one all-reduce (the
        pixels no rank holds, which only the momentum moves, kept on every rank), the step taken identically on
        every rank, this rank's box cut out again."""
        if self.momentum.beta == 0:
            return local
        y0, y1, x0, x1 = self.tiles[self.rank].box
        canvas = torch.zeros(self.object_shape, dtype=local.dtype, device=local.device)
        canvas[y0:y1, x0:x1] = torch.where(self.owned, local, torch.zeros_like(local))
        n_bytes = canvas.numel() * canvas.element_size()
        self._timed("all_reduce_momentum", n_bytes, lambda: dist.all_reduce(canvas))
        outside = self.whole if self.whole is not None else torch.ones_like(canvas)  # the start object: ones
        self.whole = self.momentum(torch.where(self.held.to(local.device), canvas, outside))
        return self.whole[y0:y1, x0:x1].clone()


class DistributedMLCG(DistributedEngine, MLCGEngine):
    """ML-CG on one rank's tile: PtyGer's scheme (gradient halo exchange, all-reduced line-search costs)."""

    def dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        object_part = float(((a[0].conj() * b[0]).real * self.owned).sum())
        probe_part = float((a[1].conj() * b[1]).real.sum())  # the probe is the same on every rank
        return self.combine_costs([object_part])[0] + probe_part


class DistributedLSQML(DistributedEngine, LSQMLEngine):
    """LSQML mini-batches across ranks: each global batch's sums completed by halo exchange and all-reduce."""


class DistributedPIE(DistributedEngine, PIEEngine):
    """(r/e)PIE mini-batches across ranks, likewise."""


DISTRIBUTED = {LSQMLEngine: DistributedLSQML, PIEEngine: DistributedPIE, MLCGEngine: DistributedMLCG}


def refuse_undistributed(options: EngineOptions) -> None:
    """Refuse, before any work, the options a distributed run cannot give the one-process answer for."""
    if isinstance(options, LSQMLOptions) and options.noise == "poisson":
        raise ValueError("LSQML with Poisson noise is not run across ranks: it amplifies round-off about 100x per "
                         "epoch (in one process, float32 and float64 differ by 5e-2 after 5 epochs), so no other "
                         "order of summation gives its answer. Use Gaussian noise, or ML-CG (--engine mlcg) with "
                         "Poisson noise, which keeps its answer on any number of ranks")  # fmt: skip
    if options.position_correction:
        raise ValueError("position correction is not distributed yet (a frame's shift needs the whole object's "
                         "gradient on every rank): run it in one process (no --nproc, no --distributed)")  # fmt: skip


def engine_class(engine: str) -> type:
    """The distributed class of ``engine`` (any of :data:`~edgeray.ptycho.reconstruct.ENGINES`)."""
    if engine not in ENGINE_TABLE:
        raise ValueError(f"unknown engine {engine!r}; distributed engines: {', '.join(ENGINE_TABLE)}")
    return DISTRIBUTED[ENGINE_TABLE[engine][0]]


def _global_scan(cxi: CXIFile) -> PtychoScan:
    """A scan whose frames are not read: positions, geometry, mask and probe (for the global object grid)."""
    shape_only = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (cxi.n_frames, *cxi.frame_shape), (0, 0, 0))
    return PtychoScan(frames=shape_only, positions_m=cxi.positions_m, geometry=cxi.geometry, mask=cxi.mask,
                      probe=cxi.probe)  # fmt: skip


def reconstruct_rank(path: str | Path, epochs: int, options: EngineOptions, device: str = "cpu",
                     exchange: str = "halo", engine: str | None = None,
                     frames_on_disk: str = "auto") -> dict:  # fmt: skip
    """Run this process's share of a distributed reconstruction of the CXI file ``path`` with ``engine``
    (``mlcg``, ``lsqml``, ``rpie``, ``epie``; the process group must be initialized). ``exchange``: ``halo``
    (PtyGer's) or ``allreduce`` (every rank holds the whole object and all-reduces its sums: the plain scheme,
    for comparison). Returns ``{"object": (Y, X)
    complex64 on rank 0 else None, "probe", "problem" (this rank's), "grid" (the global object grid), "log",
    "tiles", "history"}``. ``engine`` None: the one ``options`` are for."""
    engine = engine or engine_of(options)
    rank, world = dist.get_rank(), dist.get_world_size()
    with CXIFile(path) as cxi:
        header = _global_scan(cxi)
        grid = object_grid(header)
        tiles = partition(grid.positions_px, cxi.frame_shape, world)
        if exchange == "allreduce":  # every rank's box is the whole object
            whole = (0, grid.object_shape[0], 0, grid.object_shape[1])
            tiles = [Tile(t.rank, t.frames, whole) for t in tiles]
        mine = tiles[rank]
        on_disk = cxi.frames_on_disk().subset(mine.frames)  # this rank's frames only, either way
        frames = on_disk if keep_on_disk(on_disk, frames_on_disk) else cxi.read_frame_subset(mine.frames)
    local_scan = PtychoScan(frames=frames, positions_m=header.positions_m[mine.frames], geometry=header.geometry,
                            mask=header.mask, probe=header.probe)  # fmt: skip
    problem = prepare(local_scan, device=device)
    origin = torch.tensor([mine.box[0], mine.box[2]], dtype=torch.float64, device=problem.device)
    problem.positions_px = torch.from_numpy(grid.positions_px[mine.frames]).to(problem.device) - origin
    problem.object_shape = mine.shape
    problem.origin_m = grid.origin_m
    if header.probe is None:  # the one-process guess, from the mean pattern over every rank's frames
        power = power_sum(problem.amplitudes)
        count = torch.tensor([problem.n_frames], dtype=torch.float64, device=problem.device)
        dist.all_reduce(power)
        dist.all_reduce(count)
        mean_pattern = torch.sqrt(power / count)[None]  # float64, as the one-process guess takes its mean
        everyone = dataclasses.replace(problem, amplitudes=mean_pattern,
                                       positions_px=torch.from_numpy(grid.positions_px).to(problem.device))  # fmt: skip
        probe = initial_probe(everyone, options.n_probe_modes)
    else:
        probe = torch.as_tensor(np.asarray(header.probe, dtype=np.complex64)).reshape(-1, *problem.frame_shape)
        probe = add_probe_modes(probe.to(problem.device), options.n_probe_modes)
    obj = torch.ones(mine.shape, dtype=torch.complex64, device=problem.device)
    runner = engine_class(engine)(problem, State(obj, probe, problem.positions_px.clone()), options, tiles, rank,
                                  exchange, grid.object_shape)  # fmt: skip
    runner.name = engine
    history = runner.run(epochs)
    assembled = _assemble(runner.state.object, tiles, rank, grid.object_shape, runner.owned, runner.whole)
    return {"object": assembled, "probe": runner.state.probe, "log": runner.log, "tiles": tiles,
            "history": history, "grid": grid, "problem": problem}  # fmt: skip


def _assemble(local: torch.Tensor, tiles: list[Tile], rank: int, shape: tuple[int, int], owned: torch.Tensor,
              whole: torch.Tensor | None = None):  # fmt: skip
    """The global object on rank 0: one reduction of the owned pixels; pixels no frame touches are 1, or, after
    momentum steps (which move them too), ``whole``'s."""
    canvas = torch.zeros(shape, dtype=local.dtype, device=local.device)
    covered = torch.zeros(shape, dtype=torch.float32, device=local.device)
    y0, y1, x0, x1 = tiles[rank].box
    canvas[y0:y1, x0:x1] = torch.where(owned, local, torch.zeros_like(local))
    covered[y0:y1, x0:x1] = owned.to(torch.float32)
    dist.reduce(canvas, dst=0)
    dist.reduce(covered, dst=0)
    if rank != 0:
        return None
    outside = whole.to(canvas.dtype) if whole is not None else torch.ones_like(canvas)
    return torch.where(covered > 0, canvas, outside).cpu().numpy()


def init_process_group(device: str = "cpu", timeout_s: float = 60.0) -> None:
    """gloo on CPU, NCCL on CUDA, from torchrun's environment (or :func:`launch`'s); a rank that dies makes the
    others' collectives fail within ``timeout_s``."""
    if dist.is_initialized():
        return
    backend = "nccl" if str(device).startswith("cuda") else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _gather_json(record: dict) -> list[dict]:
    """Every rank's ``record``, on every rank, as JSON bytes in tensors (no pickle, unlike all_gather_object)."""
    import json

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    payload = torch.frombuffer(bytearray(json.dumps(record, default=str).encode()), dtype=torch.uint8).to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([payload.numel()], device=device))
    longest = int(max(size.item() for size in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[: payload.numel()] = payload
    buffers = [torch.zeros(longest, dtype=torch.uint8, device=device) for _ in sizes]
    dist.all_gather(buffers, padded)
    return [json.loads(bytes(b[: int(n.item())].cpu().tolist())) for b, n in zip(buffers, sizes, strict=True)]


def run_rank(path: str | Path, output: str | Path, epochs: int, options: EngineOptions, device: str = "cpu",
             exchange: str = "halo", engine: str | None = None, frames_on_disk: str = "auto") -> dict:  # fmt: skip
    """Every rank calls this (process group initialized): reconstruct; once every rank has finished, rank 0 writes
    the product ``output`` and its JSON summary (with every rank's communication log). Returns the summary."""
    import json

    from edgeray.io import write_product

    engine = engine or engine_of(options)
    rank, world = dist.get_rank(), dist.get_world_size()
    started = time.perf_counter()
    result = reconstruct_rank(path, epochs, options, device, exchange, engine, frames_on_disk)
    seconds = time.perf_counter() - started
    mine = result["tiles"][rank]
    logs = _gather_json({"rank": rank, "frames": len(mine.frames), "box": mine.box, "epochs": result["log"].epochs})
    dist.barrier()  # the product is written only once every rank has finished
    summary = {"seconds": seconds, "ranks": world, "engine": engine, "exchange": exchange,
               "epochs": len(result["history"].cost), "backend": dist.get_backend(), "cost": result["history"].cost,
               "communication": logs}  # fmt: skip
    if rank == 0:
        grid = result["grid"]
        n_frames = len(grid.positions_px)
        summary["frames_per_s"] = n_frames * summary["epochs"] / seconds
        problem = result["problem"]
        problem = dataclasses.replace(problem, object_shape=grid.object_shape, origin_m=grid.origin_m,
                                      positions_px=torch.from_numpy(grid.positions_px))  # fmt: skip
        state = State(torch.from_numpy(result["object"]), result["probe"].cpu(), problem.positions_px)
        product = to_product(state, problem, result["history"], engine, options, seconds)
        product.attrs["ranks"] = world
        write_product(output, product)
        Path(output).with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    dist.barrier()
    return summary


def _spawned(rank: int, world: int, port: int, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))  # fmt: skip
    torch.set_num_threads(1)
    path, output, epochs, options, device, timeout_s, exchange, engine, frames_on_disk, errors = args
    try:
        init_process_group(device, timeout_s)
        run_rank(path, output, epochs, options, device, exchange, engine, frames_on_disk)
    except Exception as error:  # noted for launch(): the first cause, not the others' broken connections
        secondary = isinstance(error, dist.DistError) or "closed by peer" in str(error) or "gloo" in str(error)
        Path(errors, f"{'later' if secondary else 'cause'}-rank{rank}.txt").write_text(
            f"{type(error).__name__}: {error}"
        )
        raise
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def launch(nproc: int, path: str | Path, output: str | Path, epochs: int, options: EngineOptions,
           device: str = "cpu", timeout_s: float = 60.0, exchange: str = "halo",
           engine: str | None = None, frames_on_disk: str = "auto") -> dict:  # fmt: skip
    """Start ``nproc`` ranks on this machine (gloo, 127.0.0.1) and run the reconstruction; returns rank 0's summary.

    ``frames_on_disk``: ``auto`` (each rank reads its frames per batch from the file when they would not fit in
    memory), ``always`` or ``never``. A rank that raises or is killed stops the others (they are terminated) and
    this raises :class:`RuntimeError` naming it; no product is written unless every rank finished.
    """
    import json
    import socket
    import tempfile

    import torch.multiprocessing as mp

    refuse_undistributed(options)  # before any rank starts
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc must be a positive integer, not {nproc!r}")
    from edgeray.io import CXIFile

    with CXIFile(path) as cxi:
        if cxi.n_frames < nproc:
            raise ValueError(
                f"{path}: {cxi.n_frames} frames cannot be shared by {nproc} ranks (one frame each at least)"
            )
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    with tempfile.TemporaryDirectory() as errors:
        arguments = (str(path), str(output), epochs, options, device, timeout_s, exchange, engine, frames_on_disk,
                     errors)  # fmt: skip
        try:
            mp.spawn(_spawned, args=(nproc, port, arguments), nprocs=nproc, join=True)
        except mp.ProcessRaisedException as error:
            # the cause: a rank's own error before the others' broken connections, the earliest first
            notes = sorted(Path(errors).glob("*.txt"), key=lambda note: (note.name[0] != "c", note.stat().st_mtime_ns))
            first = notes[0].read_text() if notes else str(error).strip().splitlines()[-1]
            where = notes[0].stem.split("-")[-1] if notes else "a rank"
            raise RuntimeError(f"{where} failed, every rank was stopped and no product written: {first}") from None
        except mp.ProcessExitedException as error:
            raise RuntimeError(f"a rank died ({error}); every rank was stopped and no product written") from None
    return json.loads(Path(output).with_suffix(".json").read_text())
