"""Does the network learn the user's sample? Network vs LSQML where the seeds claim the network wins (issue 32).

One simulated object (a pair no EdgeRay model trains on), a probe unlike the shipped model's (28 px across, given
in the scan as a file gives it). ``nn finetune`` at its defaults (or as ``--regimes`` say) learns from the first
40 % of a dense raster scan's rows; every other case images only the remaining rows, never trained on:

- ``same sample``: the dense scan's remaining frames;
- ``sparse``: the same object scanned at 2x and 4x the dense step (overlap falling to none);
- ``dose``: the dense scan at 1e4, 1e3, 1e2 photons per frame.

On each, the shipped network, the learned network, and LSQML (true probe, 30 epochs, Gaussian and Poisson noise
models: the better one is its score) on the same frames; phase SSIM against the ground truth. Prints one JSON
object per line, the last a summary with the differences.

    python benchmarks/ptychonn_same_sample.py --quick   # 900 dense frames, steps 1x/4x, dose 1e3, 10 epochs
    python benchmarks/ptychonn_same_sample.py           # 1600 dense frames, steps 1x-4x, doses 1e4-1e2
    python benchmarks/ptychonn_same_sample.py --replot run.jsonl --plot docs/img/ptychonn_same_sample.png
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgeray.io import PtychoScan
from edgeray.nn.evaluate import phase_ssim
from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan
from edgeray.nn.infer import infer_scan
from edgeray.ptycho.reconstruct import run
from edgeray.sim import PtychoSimConfig, simulate_ptycho

OBJECT, SEED, PROBE_DIAMETER_PX, DENSE_STEP_PX = "chelsea,coffee", 5, 28.0, 6.0


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def frames_of(scan: PtychoScan, chosen: np.ndarray) -> PtychoScan:
    """The scan restricted to frames ``chosen`` (ground truth kept, positions cut to match)."""
    truth = replace(scan.ground_truth, positions_px=scan.ground_truth.positions_px[chosen])
    return replace(scan, frames=scan.frames[chosen], positions_m=scan.positions_m[chosen], ground_truth=truth)


def simulate(side_px: float, step_px: float, photons: float) -> PtychoScan:
    """A raster scan of ``side_px`` x ``side_px`` object pixels, the probe stored in the scan as a file holds it."""
    n = round(side_px / step_px) ** 2
    config = PtychoSimConfig(scan="raster", n_positions=n, step_px=step_px, photons=photons, object=OBJECT,
                             seed=SEED, probe_diameter_px=PROBE_DIAMETER_PX)  # fmt: skip
    scan = simulate_ptycho(config)
    return replace(scan, probe=scan.ground_truth.probe)


def rows_from(scan: PtychoScan, cut_px: float) -> np.ndarray:
    """Frames whose probe centre lies at or below ``cut_px`` (object rows never trained on)."""
    return np.nonzero(scan.ground_truth.positions_px[:, 0] >= cut_px)[0]


def lsqml_best(scan: PtychoScan, epochs: int) -> tuple[float, str, float]:
    """LSQML's best phase SSIM of its two noise models on ``scan``, which one, and its seconds."""
    best = (-1.0, "", 0.0)
    for noise in ("gaussian", "poisson"):
        start = time.perf_counter()
        product = run(scan, "lsqml", epochs, probe=scan.ground_truth.probe, noise=noise).product
        score = phase_ssim(product, scan)
        best = max(best, (score, noise, time.perf_counter() - start))
    return best


def plot(records: list[dict], path: Path) -> Path:
    """Bars of phase SSIM per case (rows never trained on): each network column and LSQML's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = [r for r in records if "case" in r]
    columns = [k for k in cases[0] if (k in ("shipped", "lsqml") or k.startswith("learned ")) and "per_s" not in k]
    columns = [c for c in columns if c != "lsqml"] + ["lsqml"]
    fig, ax = plt.subplots(figsize=(9, 3.8))
    width = 0.8 / len(columns)
    for k, column in enumerate(columns):
        label = "LSQML (best noise model)" if column == "lsqml" else f"network, {column}"
        ax.bar(np.arange(len(cases)) + (k - (len(columns) - 1) / 2) * width, [c[column] for c in cases], width,
               label=label)  # fmt: skip
    ax.set_xticks(np.arange(len(cases)), [c["case"] for c in cases])
    ax.set_ylabel("phase SSIM, unseen rows")
    ax.set_ylim(0, 1.12)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=len(columns), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller scan, fewer cases")
    parser.add_argument("--regimes", default="auto", help="comma-separated nn finetune regimes to learn with")
    parser.add_argument("--group-size", type=int, default=FinetuneOptions.group_size)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default: the command's)")
    parser.add_argument("--lsqml-epochs", type=int, default=30)
    parser.add_argument("--plot", type=Path, default=None, help="write the bar chart of the cases here (PNG)")
    parser.add_argument("--replot", type=Path, default=None, help="only draw --plot from this run's JSONL output")
    args = parser.parse_args()
    if args.replot is not None:
        records = [json.loads(line) for line in args.replot.read_text().splitlines() if line.strip()]
        plot(records, args.plot or args.replot.with_suffix(".png"))
        return
    torch.set_num_threads(2)
    side = 180.0 if args.quick else 240.0
    steps = (1, 4) if args.quick else (1, 2, 3, 4)
    doses = (1e3,) if args.quick else (1e4, 1e3, 1e2)
    emit({"machine": platform.machine(), "cores": torch.get_num_threads(), "quick": args.quick, "object": OBJECT,
          "probe_diameter_px": PROBE_DIAMETER_PX, "dense_step_px": DENSE_STEP_PX})  # fmt: skip
    dense = simulate(side, DENSE_STEP_PX, 1e5)
    y = dense.ground_truth.positions_px[:, 0]
    cut = float(np.quantile(y, 0.4))
    learn = frames_of(dense, np.nonzero(y < cut)[0])
    cases = {f"step {k}x": simulate(side, k * DENSE_STEP_PX, 1e5) for k in steps}
    cases.update({f"dose {d:.0e}": simulate(side, DENSE_STEP_PX, d) for d in doses})
    cases = {name: frames_of(scan, rows_from(scan, cut)) for name, scan in cases.items()}
    summary, records = {}, []
    with tempfile.TemporaryDirectory() as work:
        models = {"shipped": None}
        for regime in args.regimes.split(","):
            options = FinetuneOptions(regime=regime, group_size=args.group_size)
            epochs = args.epochs or (10 if args.quick else None)
            if epochs:
                options = replace(options, epochs=epochs)
            start = time.perf_counter()
            result = finetune_on_scan(learn, None, Path(work) / regime, None, options)
            emit({"learn": regime, "frames": learn.n_frames, "group_size": args.group_size, "epochs": options.epochs,
                  "seconds": time.perf_counter() - start, "holdout_deviance_before": result.holdout_before,
                  "holdout_deviance_after": result.holdout_after})  # fmt: skip
            models[f"learned {regime}"] = Path(work) / regime
        for name, scan in cases.items():
            record = {"case": name, "frames": scan.n_frames}
            for label, model in models.items():
                inferred = infer_scan(scan, model)
                record[label] = phase_ssim(inferred.product, scan)
                record[f"{label} frames_per_s"] = inferred.frames_per_s
            record["lsqml"], record["lsqml_noise"], record["lsqml_seconds"] = lsqml_best(scan, args.lsqml_epochs)
            best_nn = max(record[label] for label in models)
            record["best network - lsqml"] = best_nn - record["lsqml"]
            summary[name] = {"network": best_nn, "lsqml": record["lsqml"]}
            emit(record)
            records.append(record)
    emit({"summary": summary})
    if args.plot is not None:
        plot(records, args.plot)


if __name__ == "__main__":
    main()
