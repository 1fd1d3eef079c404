"""EdgeRay's iterative engines against pty-chi on the same scans, the same start and the same epochs.

Prints one JSON object per line: one per (case, tool, engine) with seconds per epoch, frames/s, the final error
against the ground truth (aligned, over the well-lit region), the epochs and seconds needed to reach an error of
0.15, the final amplitude misfit (EdgeRay's cost, evaluated the same way for both tools); EdgeRay's LSQML also
without its fused CPU kernels (``fused=False``, the tensor reference), and the FFT floor of an epoch (one forward
and one inverse FFT of every frame) with LSQML's time as a multiple of it; then ratio lines and a line per target.
pty-chi runs in its own environment (``.venv-peers``, made by ``make peers``: pty-chi needs torchvision, which
does not import beside the CPU torch 2.13 build EdgeRay installs).

    python benchmarks/ptycho_vs_ptychi.py --quick       # 900 frames of 64x64 and the real near-field scan
    python benchmarks/ptycho_vs_ptychi.py               # adds 3600 frames of 128x128
    python benchmarks/ptycho_vs_ptychi.py --device cuda --peers-python python3   # on a GPU: 3600x128x128 only
"""

from __future__ import annotations

import os

# Scoring each epoch calls BLAS (outside the timed part); OpenBLAS threads that spin on afterwards would steal
# the two cores from the next timed epoch. One BLAS thread keeps the timings honest.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeray.device import resolve_device
from edgeray.io import PtychoScan, read_cxi
from edgeray.metrics import align, relative_error
from edgeray.ptycho import Geometry, State, initial_probe, prepare
from edgeray.ptycho.engine import Batch
from edgeray.ptycho.evaluate import illumination_mask, scanned_region_pair
from edgeray.ptycho.problem import object_grid
from edgeray.ptycho.reconstruct import run
from edgeray.sim import PtychoSimConfig, simulate_ptycho

ROOT = Path(__file__).resolve().parents[1]
TARGET_ERROR = 0.15


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def object_error(obj: np.ndarray, scan: PtychoScan, pixel, centre, lit: np.ndarray) -> float:
    recon, reference, mask = scanned_region_pair(obj, scan.ground_truth, scan.positions_m, pixel, centre, lit)
    aligned, _ = align(recon, reference, weights=mask)
    return relative_error(aligned, reference, mask)


def misfit(scan: PtychoScan, geometry: Geometry, obj: np.ndarray, probe: np.ndarray) -> float:
    """EdgeRay's normalized amplitude misfit of any (object, probe) on EdgeRay's grid of ``scan``."""
    problem = prepare(scan, geometry)
    state = State(
        torch.from_numpy(np.ascontiguousarray(obj)).to(torch.complex64),
        torch.from_numpy(np.asarray(probe, dtype=np.complex64)).reshape(-1, *problem.frame_shape),
        problem.positions_px,
    )
    spectrum = torch.fft.fft2(state.probe)
    total = 0.0
    for index in torch.split(torch.arange(problem.n_frames), 256):
        total += float(Batch(problem, state, index, spectrum).misfit(problem.valid))
    return total / float((problem.valid * problem.amplitudes**2).sum())


def summarize(case, tool, engine, seconds, errors, n_frames, cost) -> dict:
    seconds = np.asarray(seconds)
    reached = [i for i, e in enumerate(errors) if e is not None and e <= TARGET_ERROR]
    return {
        "case": case,
        "tool": tool,
        "engine": engine,
        "epochs": len(seconds),
        "s_per_epoch": float(seconds.mean()),
        "frames_per_s": float(n_frames / seconds.mean()),
        "final_error": errors[-1],
        "epochs_to_0.15": reached[0] + 1 if reached else None,
        "seconds_to_0.15": float(seconds[: reached[0] + 1].sum()) if reached else None,
        "final_cost": cost,
    }


def fft_floor(n_frames: int, frame_shape: tuple[int, int], batch: int, threads: int, device: str = "cpu") -> float:
    """Seconds of the FFTs no engine can skip in an epoch: one forward and one inverse 2-D FFT of every frame's
    exit wave (complex64, in batches of ``batch``), best of 3."""
    torch.set_num_threads(threads)
    waves = torch.randn(batch, *frame_shape, dtype=torch.complex64, device=device)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for first in range(0, n_frames, batch):
            part = waves[: min(batch, n_frames - first)]
            torch.fft.ifft2(torch.fft.fft2(part, norm="ortho"), norm="ortho")
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run_ours(case, scan, engine, epochs, geometry, probe, batch, threads,
             device: str = "cpu", **options) -> tuple[dict, np.ndarray, np.ndarray]:  # fmt: skip
    torch.set_num_threads(threads)
    grid = object_grid(scan, geometry)
    pixel, centre = grid.pixel_size_m, grid.center_m
    errors: list = []
    lit = illumination_mask(scan.ground_truth) if scan.ground_truth is not None else None

    def observe(state: State) -> None:
        if scan.ground_truth is not None:
            errors.append(object_error(state.object.detach().cpu().numpy(), scan, pixel, centre, lit))
        else:
            errors.append(None)

    result = run(scan, engine, epochs, device, geometry=geometry, probe=probe, batch_size=batch, observer=observe,
                 **options)  # fmt: skip
    obj, probe_out = result.product.object[0], result.product.probe
    cost = misfit(scan, geometry, obj, probe_out)
    return summarize(case, "edgeray", engine, result.history.seconds, errors, scan.n_frames, cost), obj, probe_out


def run_ptychi(case, scan, engine, epochs, geometry, probe, batch, threads, python) -> tuple[dict, np.ndarray]:
    grid = object_grid(scan, geometry)
    pixel = grid.pixel_size_m
    near = np.inf
    if geometry.propagation == "near":
        z1, z2 = geometry.focus_to_sample_m, scan.geometry.distance_m
        near = z2 * z1 / (z1 + z2)
    mask = np.ones(scan.frames.shape[1:], bool) if scan.mask is None else ~np.asarray(scan.mask, bool)
    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder) / "in.npz", Path(folder) / "out.npz"
        np.savez(
            source,
            frames=scan.frames,
            positions_px=grid.positions_px,
            probe=np.asarray(probe, np.complex64),
            object_shape=np.array(grid.object_shape),
            pixel_size_m=pixel[0],
            engine=engine,
            epochs=epochs,
            batch_size=batch,
            near_field_m=near,
            wavelength_m=scan.geometry.wavelength_m,
            mask=mask,
            threads=threads,
        )
        subprocess.run([python, str(ROOT / "benchmarks" / "ptychi_runner.py"), str(source), str(target)], check=True)
        out = np.load(target)
        objects, seconds, probe_out = out["objects"], out["seconds"], out["probe"]
    centre = grid.center_m
    if scan.ground_truth is not None:
        lit = illumination_mask(scan.ground_truth)
        errors = [object_error(o, scan, pixel, centre, lit) for o in objects]
    else:
        errors = [None] * len(objects)
    cost = misfit(scan, geometry, objects[-1], probe_out.reshape(-1, *scan.frames.shape[1:]))
    return summarize(case, "pty-chi", engine, seconds, errors, scan.n_frames, cost), objects[-1]


def ratio_lines(case: str, records: list[dict]) -> None:
    ours = {r["engine"]: r for r in records if r["tool"] == "edgeray"}
    theirs = {r["engine"]: r for r in records if r["tool"] == "pty-chi"}
    if "lsqml" in ours and "lsqml" in theirs:
        speed = ours["lsqml"]["frames_per_s"] / theirs["lsqml"]["frames_per_s"]
        emit({"case": case, "ratio": "frames_per_s edgeray lsqml / pty-chi lsqml", "value": speed})
        if "lsqml (tensor reference)" in ours:
            reference = ours["lsqml (tensor reference)"]["frames_per_s"]
            emit({"case": case, "ratio": "frames_per_s edgeray lsqml (tensor reference) / pty-chi lsqml",
                  "value": reference / theirs["lsqml"]["frames_per_s"]})  # fmt: skip
            emit({"case": case, "ratio": "frames_per_s edgeray lsqml fused / tensor reference",
                  "value": ours["lsqml"]["frames_per_s"] / reference})  # fmt: skip
        if ours["lsqml"]["final_error"] is not None:
            ok = speed >= 5 and ours["lsqml"]["final_error"] <= theirs["lsqml"]["final_error"]
            emit({"case": case, "target": ">= 5x pty-chi LSQML frames/s at <= its error", "met": bool(ok)})
    scored = [r for r in theirs.values() if r["final_error"] is not None]
    if scored:
        best = min(scored, key=lambda r: r["final_error"])
        for engine in ("epie", "rpie", "mlcg"):
            if engine in ours:
                ok = ours[engine]["final_error"] <= best["final_error"]
                emit(
                    {
                        "case": case,
                        "target": f"edgeray {engine} error <= pty-chi's best ({best['engine']}) at equal epochs",
                        "edgeray_error": ours[engine]["final_error"],
                        "ptychi_best_error": best["final_error"],
                        "met": bool(ok),
                    }
                )
    if not scored and "lsqml" in ours and "lsqml" in theirs:
        emit(
            {
                "case": case,
                "ratio": "final_cost edgeray lsqml / pty-chi lsqml (no ground truth)",
                "value": ours["lsqml"]["final_cost"] / theirs["lsqml"]["final_cost"],
            }
        )


def near_field_figure(ours: np.ndarray, theirs: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 5))
    for ax, obj, title in ((axes[0], ours, "EdgeRay LSQML"), (axes[1], theirs, "pty-chi LSQML")):
        crop = obj[20:-20, 20:-20]
        phase = np.angle(crop * np.exp(-1j * np.angle(np.mean(crop))))
        im = ax.imshow(phase, cmap="gray", vmin=np.percentile(phase, 1), vmax=np.percentile(phase, 99))
        ax.set_title(f"{title}: phase (rad)")
        ax.set_xticks([])
        ax.set_yticks([])
        plt.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle("PETRA III P25 near-field scan (200 frames, 100x100), same start, same epochs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="900x64x64 and the near-field scan only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for both tools")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--peers-python", default=str(ROOT / ".venv-peers" / "bin" / "python"))
    parser.add_argument("--figure", type=Path, default=ROOT / "docs" / "img" / "petra_nearfield_vs_ptychi.png")
    parser.add_argument(
        "--device",
        default="cpu",
        help="cpu, or cuda: both tools on the GPU, 3600 frames of 128x128 only (the GPU target)",
    )
    args = parser.parse_args()
    try:
        resolve_device(args.device)  # before any work: a GPU asked for and none here is said at once
    except ValueError as error:
        emit({"error": str(error)})
        sys.exit(1)
    gpu = args.device.startswith("cuda")
    emit(
        {
            "benchmark": "ptycho_vs_ptychi",
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "threads": args.threads,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "torch": torch.__version__,
            "date": time.strftime("%Y-%m-%d"),
        }
    )
    args.peers_python = shutil.which(args.peers_python) or args.peers_python  # a path, or a name on PATH
    if not Path(args.peers_python).exists():
        emit({"error": f"no pty-chi environment at {args.peers_python}: run `make peers` first"})
        sys.exit(1)

    cases = [] if gpu else [("sim900x64", PtychoSimConfig(n_positions=900, frame_size=64, photons=1e5, seed=0),
                             ["epie"])]  # fmt: skip
    if not args.quick or gpu:
        cases.append(
            ("sim3600x128", PtychoSimConfig(n_positions=3600, frame_size=128, step_px=16, photons=1e5, seed=0), [])
        )
    for case, config, extra_ptychi in cases:
        scan = simulate_ptycho(config)
        probe = scan.ground_truth.probe
        records = []
        # The two LSQML runs go back to back, so that drifts in the shared machine's speed touch both alike.
        ours = ["lsqml", "mlcg"] if gpu else ["lsqml", "rpie", "epie", "mlcg"]
        for tool, engine in [("edgeray", ours[0]), ("pty-chi", "lsqml")] + [("edgeray", e) for e in ours[1:]] + \
                [("pty-chi", e) for e in extra_ptychi]:  # fmt: skip
            if tool == "edgeray":
                batch = 512 if engine == "mlcg" else 96
                record, _, _ = run_ours(case, scan, engine, args.epochs, Geometry(), probe, batch, args.threads,
                                        args.device)  # fmt: skip
            else:
                batch = 96 if engine == "lsqml" else 1
                record, _ = run_ptychi(
                    case, scan, engine, args.epochs, Geometry(), probe, batch, args.threads, args.peers_python
                )
            emit(record)
            records.append(record)
            if tool == "pty-chi" and engine == "lsqml" and not gpu:  # ours again, without its fused kernels
                record, _, _ = run_ours(case, scan, "lsqml", args.epochs, Geometry(), probe, 96, args.threads,
                                        fused=False)  # fmt: skip
                record["engine"] = "lsqml (tensor reference)"
                emit(record)
                records.append(record)
        floor = fft_floor(scan.n_frames, scan.frames.shape[1:], 96, args.threads, args.device)
        lsqml = next(r for r in records if r["tool"] == "edgeray" and r["engine"] == "lsqml")
        emit({"case": case, "fft_floor_s_per_epoch": floor, "edgeray_lsqml_s_per_epoch": lsqml["s_per_epoch"],
              "multiple_of_fft_floor": lsqml["s_per_epoch"] / floor})  # fmt: skip
        ratio_lines(case, records)
    if gpu:
        return

    case = "petra_nearfield"
    scan = read_cxi(ROOT / "tests" / "data" / "petra3_p25_nearfield.cxi")
    geometry = Geometry("near", 3.65e-3)
    probe = initial_probe(prepare(scan, geometry)).numpy()
    records = []
    record, ours_obj, _ = run_ours(case, scan, "lsqml", args.epochs * 2, geometry, probe, 20, args.threads)
    emit(record)
    records.append(record)
    record, theirs_obj = run_ptychi(
        case, scan, "lsqml", args.epochs * 2, geometry, probe, 20, args.threads, args.peers_python
    )
    emit(record)
    records.append(record)
    ratio_lines(case, records)
    near_field_figure(ours_obj, theirs_obj, args.figure)


if __name__ == "__main__":
    main()
