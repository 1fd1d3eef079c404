"""Time to a fixed validation loss: the same data-parallel training fed by the PyTorch DataLoader (on its best layout,
one sample per HDF5 chunk) and by SOLAR, with the page cache kept out (every read dropped after it, as in
``benchmarks/loader.py``).

A simulated ptychography training set (uint16 counts, written in both layouts) four times all ranks' buffers
together; ranks are real processes (gloo, DistributedDataParallel) on this machine's cores; both loaders follow
one schedule (epochs, global batch, seed), so both runs take the same optimizer steps on the same global batches
(SOLAR scales each rank's loss by ``loss_scale``, so the averaged gradient is the global batch's). Every
``--eval-every`` steps rank 0 scores a held-out set kept in memory, with the clock stopped. The target loss is the
worse of the two runs' final validation losses, so both reach it; the JSON lines give each run's curve, its time to
the target and the ratio. Surrogates: the ``compact`` edge network and the ``ptychonn`` layout (TomoGAN trains on
slice pairs, which the SOLAR loader does not read yet).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from edgeray.loader import Schedule, SolarLoader, drop_cache
from loader import StepSampler, UncachedSamples  # benchmarks/loader.py's DataLoader side (this folder is on the path)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def make_sets(folder: Path, n_train: int, n_val: int) -> tuple[dict[str, Path], Path]:
    """Simulated scans -> the training set in two layouts and a held-out set (other objects, other seed)."""
    from edgeray.nn.trainset import samples_from_scan, simulate_scans, write_trainset
    from edgeray.sim import PtychoSimConfig

    base = PtychoSimConfig(frame_size=64)
    train = [samples_from_scan(scan) for scan in simulate_scans(n_train, base, seed=0)]
    paths = {f"{rows} per chunk": write_trainset(folder / f"train-{rows}.h5", train, {"source": "benchmark"}, rows)
             for rows in (1, 64)}  # fmt: skip
    held_out = [samples_from_scan(scan) for scan in simulate_scans(n_val, base, seed=99)]
    return paths, write_trainset(folder / "val.h5", held_out, {"source": "benchmark"})


def loss_of(model, inputs, amplitude, phase) -> torch.Tensor:
    predicted_amplitude, predicted_phase = model(inputs)
    return (predicted_amplitude - amplitude).abs().mean() + (predicted_phase - phase).abs().mean()


def worker(rank: int, world_size: int, store: str, args: dict, out: str) -> None:
    from edgeray.nn.models import ModelConfig, build_model
    from edgeray.nn.train import TrainsetDataset

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(build_model(ModelConfig(kind=args["model"])))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    val = TrainsetDataset(args["val"])
    val_batch = [torch.stack(t) for t in zip(*[val[i] for i in range(len(val))], strict=True)]
    schedule = Schedule(args["n_samples"], args["epochs"], args["batch"], args["seed"])
    if args["loader"] == "torch":
        sampler = StepSampler(schedule, rank, world_size, len(schedule.steps()))
        batches = ((x, a, p, 1.0) for x, a, p in torch.utils.data.DataLoader(
            UncachedSamples(Path(args["path"])), batch_sampler=sampler, num_workers=0))  # fmt: skip
    else:
        solar = SolarLoader(args["path"], args["batch"], args["epochs"], args["seed"], rank, world_size,
                            buffer_bytes=args["buffer_bytes"], uncached=True)  # fmt: skip
        batches = ((b.inputs, b.amplitude, b.phase, b.loss_scale) for b in solar)
    curve, clock, step = [], 0.0, 0
    dist.barrier()
    started = time.perf_counter()
    for inputs, amplitude, phase, scale in batches:
        loss = loss_of(model, inputs, amplitude, phase) * scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % args["eval_every"] == 0:
            clock += time.perf_counter() - started
            dist.barrier()
            if rank == 0:
                with torch.no_grad():
                    curve.append((step, clock, float(loss_of(model.module, *val_batch))))
            dist.barrier()
            started = time.perf_counter()
    clock += time.perf_counter() - started
    if rank == 0:
        with torch.no_grad():
            curve.append((step, clock, float(loss_of(model.module, *val_batch))))
        Path(out).write_text(json.dumps(curve))
    dist.barrier()
    dist.destroy_process_group()


def run(loader: str, model: str, world_size: int, args: dict, folder: Path) -> list:
    drop_cache(args["path"])
    name = f"{loader}-{model}-{world_size}"
    out = folder / f"{name}.json"
    mp.spawn(worker, args=(world_size, str(folder / f"{name}.store"), {**args, "loader": loader, "model": model},
                           str(out)), nprocs=world_size, join=True)  # fmt: skip
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 samples, 2 ranks, 2 epochs")
    parser.add_argument("--dir", type=Path, default=None, help="where to write the training sets (default: /tmp)")
    args = parser.parse_args()
    n_samples, rank_counts, epochs = (3000, [2], 2) if args.quick else (24000, [2, 4], 3)
    sample_bytes = 64 * 64 * (2 + 4 + 4) + 4
    emit({"benchmark": "loader_training", "date": time.strftime("%Y-%m-%d"), "samples": n_samples,
          "epochs": epochs, "cores": os.cpu_count(), "buffers": "a quarter of the set"})  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        paths, val = make_sets(folder, n_samples, 512)
        for world_size in rank_counts:
            for model in ("compact", "ptychonn"):
                common = {"n_samples": n_samples, "epochs": epochs, "batch": 64 * world_size, "seed": 0,
                          "buffer_bytes": int(n_samples * sample_bytes / 4 / world_size), "val": str(val),
                          "eval_every": 10}  # fmt: skip
                curves = {"torch": run("torch", model, world_size, {**common, "path": str(paths["1 per chunk"])},
                                       folder),
                          "solar": run("solar", model, world_size, {**common, "path": str(paths["64 per chunk"])},
                                       folder)}  # fmt: skip
                target = max(curve[-1][2] for curve in curves.values())
                reach = {k: next(t for _, t, v in curve if v <= target) for k, curve in curves.items()}
                for kind, curve in curves.items():
                    emit({"model": model, "ranks": world_size, "loader": kind, "steps": curve[-1][0],
                          "seconds": curve[-1][1], "final_val_loss": curve[-1][2], "curve": curve})  # fmt: skip
                emit({"model": model, "ranks": world_size, "target_val_loss": target,
                      "torch_seconds_to_target": reach["torch"], "solar_seconds_to_target": reach["solar"],
                      "solar_over_torch": reach["solar"] / reach["torch"],
                      "target_at_most_one_third_met": reach["solar"] <= reach["torch"] / 3})  # fmt: skip


if __name__ == "__main__":
    main()
