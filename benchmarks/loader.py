"""Training-data loading: SOLAR against the PyTorch DataLoader, an LRU cache and NoPFS-style frequency placement,
each on both file layouts, best against best.

A training set four times all ranks' buffers together (full: 2.4 GB against 0.6 GB; quick: 0.4 GB against 0.1 GB;
frames stored as uint16 counts, amplitude and phase float32) is written twice, with the same samples: one sample
per HDF5 chunk (what a user of random access would choose) and 64 samples per chunk (1 MiB chunks), uncompressed
chunks written as ``write_trainset`` writes them, a sample's frames, amplitude and phase side by side. Before each
loader's run the file's pages are dropped from the page cache, and during the run every loader reads through a
file object that drops each range right after reading it (``posix_fadvise(DONTNEED)``), so storage behaves like a
parallel file system whose data is far larger than memory (SOLAR's setting) and no loader is helped by the page
cache. The disk's sequential read rate (8 MiB reads) and random read rate (one sample's bytes at random places, 8
threads or 256 reads announced at a time: the most a loader reading samples at random can get) are measured in the
same run, on the same file, the same way. Ranks are real processes (2 and 4; quick: 2) sharing this machine's 2
cores, with the same schedule (epochs, global batch, seed) for every loader:

- ``torch``: ``torch.utils.data.DataLoader`` over a Dataset that opens the file lazily in its process and reads
  one sample per ``__getitem__`` (frames, amplitude, phase, scale), rank ``r`` taking ``batch[r::R]`` of each
  global batch (DistributedSampler's split), with 0 and with 1 worker process per rank (the better one counts);
  its rate is steady, so it runs the first ``--torch-steps`` steps;
- ``lru``, ``frequency``, ``solar``: :class:`edgeray.loader.SolarLoader` with that policy (all three with the same
  reads and prefetch thread; only the policy differs).

One JSON line per loader, layout and rank count: ``loader``, ``layout``, ``samples_per_s`` (all ranks' samples
over the slowest rank's time), storage ``bytes_read``, ``read_calls``, ``hit_rate`` and ``belady_hit_rate`` (the
optimal policy on that loader's own accesses); then per rank count the headline, each loader on its best layout:
``solar_vs_torch_best``, ``solar_vs_cache_best``, ``disk_fraction`` (SOLAR's samples per second times the bytes
of a sample, over the disk's sequential read rate) and ``storage_vs_random_reads`` (SOLAR's bytes from storage per
second over the random read rate).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgeray.loader import DroppingFile, Schedule, SolarLoader, drop_cache, even_split
from edgeray.nn.trainset import write_interleaved


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


class UncachedSamples(torch.utils.data.Dataset):
    """One sample per ``__getitem__``, the file opened lazily in the reading process, pages dropped after reads."""

    counted = "frames"  # the dataset whose length is the sample count

    def __init__(self, path: Path):
        self.path, self.h5, self.raw = path, None, None
        with h5py.File(path) as h5:
            self.n = h5[self.counted].shape[0]

    def __len__(self) -> int:
        return self.n

    def __del__(self) -> None:  # HDF5 first, then the file under it (the other order crashes a worker at exit)
        if self.h5 is not None:
            self.h5.close()
            self.raw.close()

    def file(self) -> h5py.File:
        """The file, opened in this process at first use."""
        if self.h5 is None:
            self.raw = DroppingFile(self.path)
            self.h5 = h5py.File(self.raw, "r")
        return self.h5

    def __getitem__(self, index: int):
        h5 = self.file()
        scale = float(h5["scale"][index])
        frame = torch.from_numpy(h5["frames"][index].astype(np.float32))
        return (torch.sqrt(frame.clamp_min(0) / scale)[None], torch.from_numpy(h5["amplitude"][index])[None],
                torch.from_numpy(h5["phase"][index])[None])  # fmt: skip


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
        workers = args["workers"]
        dataset = UncachedSamples(path)
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=workers,
            prefetch_factor=4 if workers else None,
            multiprocessing_context="forkserver" if workers else None,
        )
        dist.barrier()
        start, samples = time.perf_counter(), 0
        for inputs, _, _ in loader:
            samples += len(inputs)
        seconds = time.perf_counter() - start
        # worker processes read in their own copies of the dataset: their counts do not come back (None)
        record = {"samples": samples, "seconds": seconds,
                  "bytes_read": dataset.raw.bytes_read if dataset.raw is not None else None,
                  "read_calls": dataset.raw.read_calls if dataset.raw is not None else None,
                  "hit_rate": 0.0, "belady_hit_rate": None, "workers": workers}  # fmt: skip
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
    name = f"{kind}-{args['layout']}-{args.get('workers', 0)}-{world_size}"
    out, store = str(folder / name), folder / f"{name}.store"
    mp.spawn(worker, args=(world_size, str(store), {**args, "loader": kind}, out), nprocs=world_size, join=True)
    records = [json.loads(Path(f"{out}.{r}").read_text()) for r in range(world_size)]
    samples = sum(r["samples"] for r in records)
    seconds = max(r["seconds"] for r in records)
    beladys = [r["belady_hit_rate"] for r in records if r["belady_hit_rate"] is not None]
    counted = [r["bytes_read"] for r in records if r["bytes_read"] is not None]
    record = {"loader": kind, "layout": args["layout"], "ranks": world_size, "samples": samples, "seconds": seconds,
              "samples_per_s": samples / seconds, "bytes_read": sum(counted) if counted else None,
              "read_calls": sum(r["read_calls"] or 0 for r in records) if counted else None,
              "hit_rate": float(np.mean([r["hit_rate"] for r in records])),
              "belady_hit_rate": float(np.mean(beladys)) if beladys else None}  # fmt: skip
    if kind == "torch":
        record["workers"] = args["workers"]
    emit(record)
    return record


def sequential_rate(path: Path, block: int = 8 << 20) -> float:
    """The disk's sequential read rate, bytes/s: the whole file in ``block`` reads, pages dropped before and after
    each read (as every loader reads)."""
    drop_cache(path)
    raw = DroppingFile(path)
    buffer = bytearray(block)
    start = time.perf_counter()
    while raw.readinto(buffer):
        pass
    seconds = time.perf_counter() - start
    raw.close()
    return raw.bytes_read / seconds


def random_rate(path: Path, record_bytes: int, reads: int = 6000) -> float:
    """The disk's random read rate, bytes/s: ``reads`` reads of ``record_bytes`` (one sample's bytes) at random
    places in the file, pages dropped before and after each read; the better of 8 threads reading and of 256 reads at
    a time announced to the kernel (``posix_fadvise(WILLNEED)``) then read in order: what a loader reading samples
    at random can get at most."""
    fd = os.open(path, os.O_RDONLY)
    places = np.random.default_rng(1).choice(os.fstat(fd).st_size // record_bytes, reads, replace=False) * record_bytes

    def read_share(share: np.ndarray, announce: bool = False) -> None:
        buffer = bytearray(record_bytes)
        if announce:
            for offset in share.tolist():
                os.posix_fadvise(fd, offset, record_bytes, os.POSIX_FADV_WILLNEED)
        for offset in share.tolist():
            os.preadv(fd, [buffer], offset)
            os.posix_fadvise(fd, offset, record_bytes, os.POSIX_FADV_DONTNEED)

    rates = []
    for announced in (False, True):
        drop_cache(path)
        start = time.perf_counter()
        if announced:
            for share in np.array_split(places, reads // 256):
                read_share(share, announce=True)
        else:
            with ThreadPoolExecutor(8) as pool:
                list(pool.map(read_share, np.array_split(places, 8)))
        rates.append(reads * record_bytes / (time.perf_counter() - start))
    os.close(fd)
    return max(rates)


LAYOUTS = {"1 per chunk": (1, False), "64 per chunk": (64, False), "1 per chunk, frames bitshuffle-LZ4": (1, True)}
"""layout name -> (samples per chunk, frames compressed); the compressed layout runs the DataLoader (no workers) and
SOLAR only: it tells whether compression beats this disk."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    quick_help = "0.4 GB set, 2 ranks, no compressed layout, no DataLoader workers (about 2 minutes)"
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the training sets (default: /tmp)")
    args = parser.parse_args()
    gigabytes, buffers, rank_counts = (0.4, 0.1, [2]) if args.quick else (2.4, 0.6, [2, 4])
    sample_bytes = 64 * 64 * (2 + 4 + 4) + 4
    n_samples = int(gigabytes * 1e9 // sample_bytes)
    emit({"benchmark": "loader", "date": time.strftime("%Y-%m-%d"), "set_gb": gigabytes, "buffers_gb": buffers,
          "samples": n_samples, "sample_bytes": sample_bytes, "cores": os.cpu_count(),
          "layouts": LAYOUTS})  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        layouts = {k: v for k, v in LAYOUTS.items() if not (args.quick and v[1])}  # quick: no compressed layout
        paths = {layout: write_big_set(folder / f"set-{k}.h5", n_samples, rows, compressed)
                 for k, (layout, (rows, compressed)) in enumerate(layouts.items())}  # fmt: skip
        emit({"file_bytes": {layout: path.stat().st_size for layout, path in paths.items()}})
        disk = max(sequential_rate(paths["64 per chunk"]) for _ in range(2))
        emit({"disk_sequential_bytes_per_s": disk, "file": "the 64-per-chunk set, 8 MiB reads"})
        disk_random = max(random_rate(paths["64 per chunk"], sample_bytes) for _ in range(2))
        emit({"disk_random_bytes_per_s": disk_random, "file": "the 64-per-chunk set, one sample's bytes at a time"})
        for world_size in rank_counts:
            results: dict[str, list[dict]] = {"torch": [], "lru": [], "frequency": [], "solar": []}
            for layout, path in paths.items():
                common = {
                    "path": str(path), "layout": layout, "n_samples": n_samples, "epochs": 3,
                    "batch": 64 * world_size, "seed": 0, "buffer_bytes": int(buffers * 1e9 / world_size),
                    "torch_steps": 40 if args.quick else 60,
                }  # fmt: skip
                compressed = LAYOUTS[layout][1]
                for workers in (0,) if compressed or args.quick else (0, 1):
                    results["torch"].append(run("torch", world_size, {**common, "workers": workers}, folder))
                for kind in ("solar",) if compressed else ("lru", "frequency", "solar"):
                    results[kind].append(run(kind, world_size, common, folder))
            best = {kind: max(records, key=lambda r: r["samples_per_s"]) for kind, records in results.items()}
            cache = max((best["lru"], best["frequency"]), key=lambda r: r["samples_per_s"])
            solar = best["solar"]
            summary = {
                "ranks": world_size,
                "solar_vs_torch_best": solar["samples_per_s"] / best["torch"]["samples_per_s"],
                "solar_vs_cache_best": solar["samples_per_s"] / cache["samples_per_s"],
                "disk_fraction": solar["samples_per_s"] * sample_bytes / disk,
                "storage_vs_random_reads": solar["bytes_read"] / solar["seconds"] / disk_random,
                "best_layouts": {kind: record["layout"] for kind, record in best.items()},
                "torch_best_workers": best["torch"]["workers"], "cache_best": cache["loader"],
                "solar_hit_rate_minus_belady": solar["hit_rate"] - solar["belady_hit_rate"],
            }  # fmt: skip
            summary["targets_met"] = bool(summary["solar_vs_torch_best"] >= 10 and summary["solar_vs_cache_best"] >= 2.5
                                          and summary["disk_fraction"] >= 0.5)  # fmt: skip
            emit(summary)


def write_big_set(path: Path, n_samples: int, rows_per_chunk: int, compressed: bool = False, block: int = 2048) -> Path:
    """Write ``n_samples`` random samples (the same for every layout) block by block, ``rows_per_chunk`` samples
    per chunk of each dataset: uint16 Poisson counts (bitshuffle + LZ4 when ``compressed``), float32 amplitude and
    phase (random: incompressible), float32 scale."""
    import hdf5plugin

    rng = np.random.default_rng(0)
    filters = hdf5plugin.Bitshuffle(cname="lz4") if compressed else {}
    with h5py.File(path, "w") as h5:
        h5.create_dataset("frames", shape=(n_samples, 64, 64), dtype=np.uint16, chunks=(rows_per_chunk, 64, 64),
                          **filters)  # fmt: skip
        for key in ("amplitude", "phase"):
            h5.create_dataset(key, shape=(n_samples, 64, 64), dtype=np.float32, chunks=(rows_per_chunk, 64, 64))
        h5["scale"] = np.full(n_samples, 50, np.float32)
        datasets = {key: h5[key] for key in ("frames", "amplitude", "phase")}
        for start in range(0, n_samples, block):
            stop = min(start + block, n_samples)
            rows = {"frames": rng.poisson(50, (stop - start, 64, 64)).astype(np.uint16),
                    "amplitude": rng.random((stop - start, 64, 64), dtype=np.float32),
                    "phase": rng.random((stop - start, 64, 64), dtype=np.float32)}  # fmt: skip
            if compressed:
                for key, value in rows.items():
                    datasets[key][start:stop] = value
            else:  # as write_trainset writes: each sample's chunks side by side
                write_interleaved(datasets, start, rows)
        h5.attrs["source"] = "benchmark"
    return path


if __name__ == "__main__":
    main()
