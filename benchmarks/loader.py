"""Training-data loading: SOLAR against the PyTorch DataLoader, an LRU cache and NoPFS-style frequency placement.

A training set four times all ranks' buffers together (full: 2.4 GB against 0.6 GB; quick: 0.4 GB against 0.1 GB) is
written once; before each loader's run its pages are dropped from the page cache, and during the run every
loader reads through a file object that drops each range right after reading it (``posix_fadvise(DONTNEED)``), so
storage behaves like a parallel file system whose data is far larger than memory (SOLAR's setting) and no loader
is helped by the page cache. Ranks are real processes (2 and 4; quick: 2) sharing this machine's 2 cores, with the
same schedule (epochs, global batch, seed) for every loader:

- ``torch``: ``torch.utils.data.DataLoader`` over a Dataset that opens the file lazily in its process and reads
  one sample per ``__getitem__`` (frames, amplitude, phase, scale), rank ``r`` taking ``batch[r::R]`` of each
  global batch (DistributedSampler's split); its rate is steady, so it runs the first ``--torch-steps`` steps;
- ``lru``, ``frequency``, ``solar``: :class:`edgeray.loader.SolarLoader` with that policy (all three with the same
  coalesced reads and prefetch thread; only the policy differs).

One JSON line per loader and rank count: ``loader``, ``samples_per_s`` (all ranks' samples over the slowest
rank's time), storage ``bytes_read``, ``read_calls``, ``hit_rate`` and ``belady_hit_rate`` (the optimal policy on
that loader's own accesses), then the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgeray.loader import DroppingFile, Schedule, SolarLoader, drop_cache, even_split


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


class UncachedSamples(torch.utils.data.Dataset):
    """One sample per ``__getitem__``, the file opened lazily in the reading process, pages dropped after reads."""

    def __init__(self, path: Path):
        self.path, self.h5, self.raw = path, None, None
        with h5py.File(path) as h5:
            self.n = h5["frames"].shape[0]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int):
        if self.h5 is None:
            self.raw = DroppingFile(self.path)
            self.h5 = h5py.File(self.raw, "r")
        scale = float(self.h5["scale"][index])
        frame = torch.from_numpy(self.h5["frames"][index])
        return (torch.sqrt(frame.clamp_min(0) / scale)[None], torch.from_numpy(self.h5["amplitude"][index])[None],
                torch.from_numpy(self.h5["phase"][index])[None])  # fmt: skip


class StepSampler(torch.utils.data.Sampler):
    """This rank's ids of each global batch of the schedule, batch by batch (a batch sampler)."""

    def __init__(self, schedule: Schedule, rank: int, world_size: int, steps: int):
        self.batches = [even_split(schedule.batch(e, b), world_size)[rank] for e, b in schedule.steps()][:steps]

    def __iter__(self):
        return iter([b.tolist() for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def worker(rank: int, world_size: int, store: str, args: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    path, kind = Path(args["path"]), args["loader"]
    record: dict = {}
    if kind == "torch":
        schedule = Schedule(args["n_samples"], args["epochs"], args["batch"], args["seed"])
        sampler = StepSampler(schedule, rank, world_size, args["torch_steps"])
        loader = torch.utils.data.DataLoader(UncachedSamples(path), batch_sampler=sampler, num_workers=0)
        dist.barrier()
        start, samples = time.perf_counter(), 0
        for inputs, _, _ in loader:
            samples += len(inputs)
        seconds = time.perf_counter() - start
        dataset = loader.dataset
        record = {"samples": samples, "seconds": seconds, "bytes_read": dataset.raw.bytes_read,
                  "read_calls": dataset.raw.read_calls, "hit_rate": 0.0, "belady_hit_rate": None}  # fmt: skip
    else:
        loader = SolarLoader(path, args["batch"], args["epochs"], args["seed"], rank, world_size,
                             buffer_bytes=args["buffer_bytes"], policy=kind, uncached=True)  # fmt: skip
        dist.barrier()
        start, samples = time.perf_counter(), 0
        for batch in loader:
            samples += len(batch.samples)
        seconds = time.perf_counter() - start
        stats = loader.stats
        record = {"samples": samples, "seconds": seconds, "bytes_read": stats["bytes_read"],
                  "read_calls": stats["read_calls"], "hit_rate": stats["hits"] / max(samples, 1),
                  "belady_hit_rate": loader.belady_hit_rate()}  # fmt: skip
    Path(f"{out}.{rank}").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


def run(kind: str, world_size: int, args: dict, folder: Path) -> dict:
    drop_cache(args["path"])
    out = str(folder / f"{kind}-{world_size}")
    store = folder / f"{kind}-{world_size}.store"
    mp.spawn(worker, args=(world_size, str(store), {**args, "loader": kind}, out), nprocs=world_size, join=True)
    records = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world_size)]
    samples = sum(r["samples"] for r in records)
    seconds = max(r["seconds"] for r in records)
    beladys = [r["belady_hit_rate"] for r in records if r["belady_hit_rate"] is not None]
    record = {"loader": kind, "ranks": world_size, "samples": samples, "seconds": seconds,
              "samples_per_s": samples / seconds, "bytes_read": sum(r["bytes_read"] for r in records),
              "read_calls": sum(r["read_calls"] for r in records),
              "hit_rate": float(np.mean([r["hit_rate"] for r in records])),
              "belady_hit_rate": float(np.mean(beladys)) if beladys else None}  # fmt: skip
    emit(record)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="0.4 GB set, 2 ranks (about a minute and a half)")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the training set (default: /tmp)")
    args = parser.parse_args()
    gigabytes, buffers, rank_counts = (0.4, 0.1, [2]) if args.quick else (2.4, 0.6, [2, 4])
    sample_bytes = 64 * 64 * 12 + 4
    n_samples = int(gigabytes * 1e9 // sample_bytes)
    emit({"benchmark": "loader", "date": time.strftime("%Y-%m-%d"), "set_gb": gigabytes, "buffers_gb": buffers,
          "samples": n_samples, "cores": os.cpu_count()})  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        path = folder / "set.h5"
        write_big_set(path, n_samples)
        for world_size in rank_counts:
            common = {
                "path": str(path), "n_samples": n_samples, "epochs": 3, "batch": 64 * world_size, "seed": 0,
                "buffer_bytes": int(buffers * 1e9 / world_size), "torch_steps": 40 if args.quick else 60,
            }  # fmt: skip
            results = {kind: run(kind, world_size, common, folder) for kind in ("torch", "lru", "frequency", "solar")}
            solar = results["solar"]
            best_other = max(results["lru"]["samples_per_s"], results["frequency"]["samples_per_s"])
            versus_torch = solar["samples_per_s"] / results["torch"]["samples_per_s"]
            versus_cache = solar["samples_per_s"] / best_other
            near_belady = solar["hit_rate"] >= solar["belady_hit_rate"] - 0.05
            emit({"ranks": world_size, "solar_vs_torch": versus_torch, "solar_vs_best_cache": versus_cache,
                  "solar_hit_rate_minus_belady": solar["hit_rate"] - solar["belady_hit_rate"],
                  "target_met": bool(versus_torch >= 5 and versus_cache >= 1.5 and near_belady)})  # fmt: skip


def write_big_set(path: Path, n_samples: int, block: int = 2048) -> None:
    """Write ``n_samples`` random samples block by block (a few GB without holding them in memory)."""
    rng = np.random.default_rng(0)
    rows = (1 << 20) // (64 * 64 * 4)  # 1 MiB chunks, as DESIGN.md asks
    with h5py.File(path, "w") as h5:
        for key in ("frames", "amplitude", "phase"):
            h5.create_dataset(key, shape=(n_samples, 64, 64), dtype=np.float32, chunks=(rows, 64, 64))
        h5["scale"] = np.full(n_samples, 50, np.float32)
        for start in range(0, n_samples, block):
            stop = min(start + block, n_samples)
            h5["frames"][start:stop] = rng.poisson(50, (stop - start, 64, 64)).astype(np.float32)
            h5["amplitude"][start:stop] = rng.random((stop - start, 64, 64), dtype=np.float32)
            h5["phase"][start:stop] = rng.random((stop - start, 64, 64), dtype=np.float32)
        h5.attrs["source"] = "benchmark"


if __name__ == "__main__":
    main()
