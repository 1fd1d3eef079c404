"""Time to a fixed validation loss: the same data-parallel training fed by the PyTorch DataLoader and by SOLAR, each
on its best layout (one sample per HDF5 chunk, a sample's datasets side by side: ``benchmarks/loader.py``), with
the page cache kept out (every read dropped after it, as there).

Surrogates: the ``compact`` edge network and the ``ptychonn`` layout on a simulated ptychography training set
(uint16 counts), and ``tomogan``, TomoGAN's generator (3 adjacent slices in) on a set of 64-pixel patch pairs cut
from simulated low-dose reconstructions and their full-dose ones (``noisy (N, 3, 64, 64)``, ``clean (N, 1, 64,
64)``; pixel loss only: the critic and the feature network cost both loaders the same). Each set is four times all
ranks' buffers together; ranks are real processes (gloo, DistributedDataParallel) on this machine's cores; both
loaders follow one schedule (epochs, global batch, seed), so both runs take the same optimizer steps on the same
global batches (SOLAR scales each rank's loss by ``loss_scale``, so the averaged gradient is the global batch's).
Every ``--eval-every`` steps rank 0 scores a held-out set (other objects, other seeds) kept in memory, with the clock
stopped. The target loss is the worse of the two runs' final validation losses, so both reach it; the JSON lines
give each run's curve, its time to the target and the ratio. ``--loaders torch,solar,memory`` adds a run from the
set held in memory (read before the clock starts, the same batches): the floor no loader can beat, which tells
how much of the training time loading is at all on this machine.
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


def make_sets(folder: Path, n_train: int, n_val: int, families: set[str]) -> dict[str, tuple[Path, Path]]:
    """Simulated data -> ``{surrogate family: (training set, held-out set)}``: ``ptycho`` (scans of other objects and
    seeds held out) and ``tomogan`` (patch pairs of other phantoms held out)."""
    from edgeray.nn.trainset import samples_from_scan, simulate_scans, write_trainset
    from edgeray.sim import PtychoSimConfig

    sets = {}
    if "ptycho" in families:
        base = PtychoSimConfig(frame_size=64)
        train = [samples_from_scan(scan) for scan in simulate_scans(n_train, base, seed=0)]
        held_out = [samples_from_scan(scan) for scan in simulate_scans(n_val, base, seed=99)]
        sets["ptycho"] = (write_trainset(folder / "train.h5", train, {"source": "benchmark"}, rows_per_chunk=1),
                          write_trainset(folder / "val.h5", held_out, {"source": "benchmark"}))  # fmt: skip
    if "tomogan" in families:
        sets["tomogan"] = (write_patch_pairs(folder / "patches.h5", n_train, seed=0),
                           write_patch_pairs(folder / "patches-val.h5", n_val, seed=1000))  # fmt: skip
    return sets


def write_patch_pairs(path: Path, n_patches: int, seed: int, size: int = 64, in_slices: int = 3) -> Path:
    """``n_patches`` random ``size``-pixel patch pairs, drawn as TomoGAN's training draws them: low-dose (60 photons)
    gridrec slices with their neighbours ``(n, in_slices, s, s)`` and the full-dose slice ``(n, 1, s, s)``, each
    volume normalized as :func:`edgeray.tomo.denoise.train_denoiser` does; one sample per chunk, side by side."""
    import h5py
    import numpy as np

    from edgeray.nn.trainset import write_interleaved
    from edgeray.tomo.denoise import _patches, normalized_pairs, simulated_pairs, stacked_volumes

    slices, volumes = 8, max(2, n_patches // 250)
    pairs = simulated_pairs(volumes, size=128, slices=slices, angles=180, target="full", seed=seed)
    noisy, clean = normalized_pairs(pairs["noisy"], pairs["clean"], slices)
    inputs, targets = _patches(torch.from_numpy(stacked_volumes(noisy, slices, in_slices)),
                               torch.from_numpy(clean[:, None]), size, n_patches,
                               torch.Generator().manual_seed(seed))  # fmt: skip
    patches = {"noisy": inputs.numpy(), "clean": targets.numpy()}
    with h5py.File(path, "w") as h5:
        datasets = {key: h5.create_dataset(key, shape=value.shape, dtype=np.float32, chunks=(1, *value.shape[1:]))
                    for key, value in patches.items()}  # fmt: skip
        write_interleaved(datasets, 0, patches)
    return path


class UncachedPatches(UncachedSamples):
    """One patch pair per ``__getitem__`` (``noisy``, ``clean``), read as :class:`UncachedSamples` reads."""

    counted = "noisy"

    def __getitem__(self, index: int):
        h5 = self.file()
        return torch.from_numpy(h5["noisy"][index]), torch.from_numpy(h5["clean"][index])


def loss_of(model, tomogan: bool, data: tuple) -> torch.Tensor:
    """TomoGAN: the pixel MSE of ``(noisy, clean)``; ptychography: L1 of amplitude and phase for ``(inputs,
    amplitude, phase)``."""
    if tomogan:
        noisy, clean = data
        return torch.nn.functional.mse_loss(model(noisy), clean)
    inputs, amplitude, phase = data
    predicted_amplitude, predicted_phase = model(inputs)
    return (predicted_amplitude - amplitude).abs().mean() + (predicted_phase - phase).abs().mean()


def held_out(path: str, tomogan: bool) -> tuple:
    import h5py

    from edgeray.nn.set_training import TrainsetDataset

    if tomogan:
        with h5py.File(path) as h5:
            return torch.from_numpy(h5["noisy"][()]), torch.from_numpy(h5["clean"][()])
    val = TrainsetDataset(path)
    return tuple(torch.stack(t) for t in zip(*[val[i] for i in range(len(val))], strict=True))


def memory_batches(path: Path, sampler: StepSampler, tomogan: bool):
    """The sampler's batches from the set held in memory (read now, before the clock starts), as the loaders give
    them: ``((tensors...), loss scale 1)``."""
    import h5py
    import numpy as np

    from edgeray.loader.solar import network_input

    keys = ("noisy", "clean") if tomogan else ("frames", "amplitude", "phase", "scale")
    with h5py.File(path) as h5:
        data = {key: h5[key][()] for key in keys}

    def batches():
        for ids in sampler:
            ids = np.asarray(ids)
            if tomogan:
                yield (torch.from_numpy(data["noisy"][ids]), torch.from_numpy(data["clean"][ids])), 1.0
            else:
                inputs = torch.from_numpy(network_input(data["frames"][ids], data["scale"][ids]))[:, None]
                labels = [torch.from_numpy(data[key][ids])[:, None] for key in ("amplitude", "phase")]
                yield (inputs, *labels), 1.0

    return batches()


def worker(rank: int, world_size: int, store: str, args: dict, out: str) -> None:
    from edgeray.nn.models import ModelConfig, build_model
    from edgeray.tomo.tomogan import TomoGANConfig, UNet

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    tomogan = args["model"] == "tomogan"
    network = UNet(TomoGANConfig(in_slices=3)) if tomogan else build_model(ModelConfig(kind=args["model"]))
    model = torch.nn.parallel.DistributedDataParallel(network)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    val = held_out(args["val"], tomogan)
    schedule = Schedule(args["n_samples"], args["epochs"], args["batch"], args["seed"])
    if args["loader"] == "torch":
        sampler = StepSampler(schedule, rank, world_size, len(schedule.steps()))
        dataset = UncachedPatches(Path(args["path"])) if tomogan else UncachedSamples(Path(args["path"]))
        batches = ((tuple(b), 1.0) for b in torch.utils.data.DataLoader(dataset, batch_sampler=sampler))
    elif args["loader"] == "memory":  # the whole set in memory, nothing read during training: any loader's floor
        batches = memory_batches(Path(args["path"]), StepSampler(schedule, rank, world_size, len(schedule.steps())),
                                 tomogan)  # fmt: skip
    else:
        solar = SolarLoader(args["path"], args["batch"], args["epochs"], args["seed"], rank, world_size,
                            buffer_bytes=args["buffer_bytes"], uncached=True,
                            keys=("noisy", "clean") if tomogan else None)  # fmt: skip
        batches = ((((b.arrays["noisy"], b.arrays["clean"]) if tomogan else (b.inputs, b.amplitude, b.phase)),
                    b.loss_scale) for b in solar)  # fmt: skip
    curve, clock, step = [], 0.0, 0
    dist.barrier()
    started = time.perf_counter()
    for data, scale in batches:
        loss = loss_of(model, tomogan, data) * scale
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step += 1
        if step % args["eval_every"] == 0:
            clock += time.perf_counter() - started
            dist.barrier()
            if rank == 0:
                with torch.no_grad():
                    curve.append((step, clock, float(loss_of(model.module, tomogan, val))))
            dist.barrier()
            started = time.perf_counter()
    clock += time.perf_counter() - started
    if rank == 0:
        with torch.no_grad():
            curve.append((step, clock, float(loss_of(model.module, tomogan, val))))
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
    quick_help = "3,000 samples, 2 ranks, compact and ptychonn, about 3 minutes (default: 12,000, 2 and 4, all three)"
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--samples", type=int, default=None, help="training samples (overrides the mode's)")
    parser.add_argument(
        "--models", default=None, help="surrogates to train, comma-separated (compact,ptychonn,tomogan)"
    )
    loaders_help = "comma-separated: torch, solar, memory (the set held in memory, nothing read: any loader's floor)"
    parser.add_argument("--loaders", default="torch,solar", help=loaders_help)
    parser.add_argument("--dir", type=Path, default=None, help="where to write the training sets (default: /tmp)")
    args = parser.parse_args()
    n_samples, rank_counts, epochs = (3000, [2], 2) if args.quick else (12000, [2, 4], 2)
    n_samples = args.samples or n_samples
    wanted = (args.models or ("compact,ptychonn" if args.quick else "compact,ptychonn,tomogan")).split(",")
    models = [m for m in ("compact", "ptychonn", "tomogan") if m in wanted]
    loaders = [kind for kind in ("torch", "solar", "memory") if kind in args.loaders.split(",")]
    sample_bytes = {"ptycho": 64 * 64 * (2 + 4 + 4) + 4, "tomogan": 64 * 64 * 4 * 4}
    emit({"benchmark": "loader_training", "date": time.strftime("%Y-%m-%d"), "samples": n_samples,
          "epochs": epochs, "cores": os.cpu_count(), "buffers": "a quarter of the set",
          "layout": "1 per chunk, a sample's datasets side by side (both loaders' best)"})  # fmt: skip
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        sets = make_sets(folder, n_samples, 512, {"tomogan" if m == "tomogan" else "ptycho" for m in models})
        for world_size in rank_counts:
            for model in models:
                family = "tomogan" if model == "tomogan" else "ptycho"
                train, val = sets[family]
                common = {"path": str(train), "n_samples": n_samples, "epochs": epochs, "batch": 64 * world_size,
                          "seed": 0, "buffer_bytes": int(n_samples * sample_bytes[family] / 4 / world_size),
                          "val": str(val), "eval_every": 10}  # fmt: skip
                curves = {kind: run(kind, model, world_size, common, folder) for kind in loaders}
                for kind, curve in curves.items():
                    emit({"model": model, "ranks": world_size, "loader": kind, "steps": curve[-1][0],
                          "seconds": curve[-1][1], "final_val_loss": curve[-1][2], "curve": curve})  # fmt: skip
                if not {"torch", "solar"} <= set(curves):
                    continue
                target = max(curves[kind][-1][2] for kind in ("torch", "solar"))
                reach = {k: next((t for _, t, v in curve if v <= target), curve[-1][1]) for k, curve in curves.items()}
                emit({"model": model, "ranks": world_size, "target_val_loss": target,
                      "torch_seconds_to_target": reach["torch"], "solar_seconds_to_target": reach["solar"],
                      "solar_over_torch": reach["solar"] / reach["torch"],
                      **({"memory_seconds_to_target": reach["memory"], "memory_over_torch": reach["memory"] /
                          reach["torch"]} if "memory" in reach else {}),
                      "target_at_most_one_third_met": reach["solar"] <= reach["torch"] / 3})  # fmt: skip


if __name__ == "__main__":
    main()
