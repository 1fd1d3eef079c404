"""Surrogate networks against LSQML and the PtychoNN layout: speed, accuracy on unseen objects, the beamline case,
and the live image (network, live refinement, LSQML on the same frames).

Prints one JSON object per line:
- ``throughput``: frames/s of each model through ONNX Runtime and torch eager by batch (normalization included),
  on 2 CPU threads: the shipped edge model, the larger one when given (``--large``), the original PtychoNN layout;
- ``accuracy``: one line per case of :func:`edgeray.nn.evaluate.evaluate_model` (unseen objects at 1e5 photons,
  doses 1e3 and 1e2, a sparse scan whose step is the beam's width), the network's and LSQML's (30 epochs, true
  probe start) phase SSIM against the ground truth; then ``accuracy_summary`` with the medians and targets;
- ``beamline``: the shipped model fine-tuned on scan A's frames alone (no labels), then inverting scan B;
- ``--device cuda``: only the GPU throughput (torch.compile, bfloat16, channels-last) of the shipped edge model
  and the PtychoNN layout;
- ``live``: LSQML for 30 epochs on a simulated scan from the refiner's start probe, then ``edgeray demo`` on the
  same frames (a simulated detector at 2 kHz, the edge service, live refinement for ``--tail-s`` seconds after the
  last frame; default a fifth of LSQML's CPU seconds): phase SSIM of the network's, the refined and LSQML's images
  (target: the refined within 0.03 of LSQML in a fifth of its time).

    python benchmarks/ptychonn.py --quick
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # scoring must not steal the cores from timed work

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from edgeray.nn import ModelConfig, build_model, normalize_frames
from edgeray.nn.checkpoint import SHIPPED, load_model
from edgeray.nn.evaluate import EVALUATION_PAIRS, EvaluationOptions, evaluate_model, phase_ssim
from edgeray.nn.export import OnnxModel, export_onnx
from edgeray.nn.models import count_parameters
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def throughput(name: str, model: torch.nn.Module, batches: list[int], repeats: int, folder: Path) -> None:
    model = model.eval()
    onnx = OnnxModel(export_onnx(model, folder / f"{name}.onnx", 64), threads=2)
    for batch in batches:
        counts = torch.poisson(torch.full((batch, 64, 64), 20.0))
        for runtime_name, runtime in (("onnxruntime", onnx), ("torch", model)):
            with torch.inference_mode():
                runtime(normalize_frames(counts))
                start = time.perf_counter()
                for _ in range(repeats):
                    runtime(normalize_frames(counts))
                seconds = (time.perf_counter() - start) / repeats
            emit({"throughput": name, "parameters": count_parameters(model), "runtime": runtime_name,
                  "threads": 2, "batch": batch, "frames_per_s": batch / seconds})  # fmt: skip


def accuracy(model_dir: Path | None, quick: bool) -> None:
    options = EvaluationOptions(pairs=6 if quick else 8, frames=400 if quick else 900, lsqml_epochs=30)
    result = evaluate_model(model_dir, options)
    for case in result["cases"]:
        emit({"accuracy": case["case"], "model": str(model_dir.name if model_dir else "shipped"), **case})
    low = {c["case"]: c for c in result["cases"] if c["case"].startswith("dose")}
    sparse = [c for c in result["cases"] if c["case"].startswith("sparse")]
    emit({
        "accuracy_summary": str(model_dir.name if model_dir else "shipped"),
        "frames": options.frames,
        "median_unseen_nn": result["median_unseen_nn"],
        "median_unseen_lsqml": result["median_unseen_lsqml"],
        "target_median_met": result["median_unseen_nn"] >= 0.60,
        "low_dose_margin_min": min(c["nn_phase_ssim"] - c["lsqml_phase_ssim"] for c in low.values()),
        "sparse_margin_min": min(c["nn_phase_ssim"] - c["lsqml_phase_ssim"] for c in sparse),
        "target_low_dose_met": all(c["nn_phase_ssim"] >= c["lsqml_phase_ssim"] + 0.15 for c in low.values()),
        "target_sparse_met": all(c["nn_phase_ssim"] >= c["lsqml_phase_ssim"] + 0.15 for c in sparse),
        "onnx_frames_per_s": result["frames_per_s"],
    })  # fmt: skip


def beamline(model_dir: Path | None, n_positions: int, epochs: int, folder: Path) -> None:
    """Fine-tune on scan A's frames (no labels, the probe estimated from the data), then invert scan B."""
    from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan
    from edgeray.nn.infer import infer_scan
    from edgeray.ptycho.reconstruct import run

    base = PtychoSimConfig(n_positions=n_positions, photons=1e5)
    scan_a = simulate_ptycho(replace(base, object="rocket,hubble_deep_field", seed=1))
    scan_b = simulate_ptycho(replace(base, object="chelsea,immunohistochemistry", seed=2))
    before = phase_ssim(infer_scan(scan_b, model_dir).product, scan_b)
    result = finetune_on_scan(scan_a, model_dir, folder / "tuned", options=FinetuneOptions(epochs=epochs))
    after = phase_ssim(infer_scan(scan_b, folder / "tuned").product, scan_b)
    lsqml_b = phase_ssim(run(scan_b, "lsqml", 30).product, scan_b)
    emit({"beamline": "fine-tune on scan A's frames (no labels) -> infer scan B", "frames": n_positions,
          "finetune_epochs": epochs, "finetune_minutes": result.seconds / 60,
          "probe": result.card["finetuned"]["probe"], "holdout_deviance_A_before": result.holdout_before,
          "holdout_deviance_A_after": result.holdout_after, "nn_phase_ssim_B_before": before,
          "nn_phase_ssim_B": after, "lsqml_phase_ssim_B": lsqml_b, "target_met": after >= 0.50})  # fmt: skip


def live(model_dir: Path | None, frames: int, folder: Path, tail_s: float | None) -> None:
    """LSQML (30 epochs, its defaults) on the demo's frames from the refiner's start probe, then ``edgeray demo``
    with live refinement for ``tail_s`` s after the last frame (default: a fifth of LSQML's CPU seconds, the target's
    budget, over the ~1.5 cores the refinement keeps busy). The budget is checked in CPU seconds on both sides: the edge
    process's CPU time (all threads) after the last frame against LSQML's process CPU time."""
    from edgeray.io import read_cxi, read_product
    from edgeray.ptycho.evaluate import compare_on_scanned_region
    from edgeray.ptycho.reconstruct import run

    scan = simulate_ptycho(PtychoSimConfig(n_positions=frames, step_px=4.0, photons=1e5, seed=3))  # the demo's
    model, _ = load_model(model_dir)
    probe = model.complex_probe().numpy()[None] * np.sqrt(scan.frames.mean())  # the refiner's start probe
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    start = time.process_time()
    lsqml = run(scan, "lsqml", 30, probe=probe)
    lsqml_cpu_s = time.process_time() - start
    torch.set_num_threads(threads)
    lsqml_ssim = compare_on_scanned_region(lsqml.product, scan.ground_truth, scan.positions_m)["ssim_phase"]
    tail_s = lsqml_cpu_s / 5 / 1.7 if tail_s is None else tail_s  # measured: ~1.5 cores busy in the tail
    out = folder / "demo"
    command = [sys.executable, "-m", "edgeray", "demo", "--out", str(out), "--frames", str(frames), "--hold", "0",
               "--port", "0", "--refine-tail-s", f"{tail_s:.1f}"]  # fmt: skip
    command += ["--model", str(model_dir)] if model_dir else []
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    demo = json.loads((out / "demo.json").read_text())
    summary = demo["edge"]
    if not np.array_equal(read_cxi(out / "scan.cxi").frames, scan.frames):
        raise RuntimeError("the demo's run file does not hold the frames LSQML was given")
    refined = read_product(summary["files"]["refined"])
    refined_ssim = compare_on_scanned_region(refined, scan.ground_truth, scan.positions_m)["ssim_phase"]
    after = summary["refinement"]["seconds_after_last_frame"]
    cpu_after = summary["refinement"]["cpu_seconds_after_last_frame"]
    emit({"live": "edgeray demo (2 kHz) + live refinement vs LSQML 30 epochs on the same frames", "frames": frames,
          "frames_received": summary["frames_received"], "frames_inferred": summary["frames_inferred"],
          "latency_ms_p99": summary["latency_ms_p99"], "network_phase_ssim": demo["vs_ground_truth"]["ssim_phase"],
          "refined_phase_ssim": refined_ssim, "refine_epochs": summary["refinement"]["epochs"],
          "refine_seconds_after_last_frame": after, "lsqml30_phase_ssim": lsqml_ssim,
          "refine_cpu_s_after_last_frame": cpu_after, "lsqml30_cpu_s": lsqml_cpu_s,
          "refine_cpu_fraction_of_lsqml": cpu_after / lsqml_cpu_s,
          "target_refined_met": refined_ssim >= 0.65,
          "target_network_met": demo["vs_ground_truth"]["ssim_phase"] >= 0.55,
          "target_vs_lsqml_met": refined_ssim >= lsqml_ssim - 0.03 and cpu_after <= lsqml_cpu_s / 5})  # fmt: skip


def gpu_throughput(name: str, model: torch.nn.Module, batches: list[int], repeats: int) -> None:
    """Frames/s on a CUDA device: torch.compile, bfloat16 autocast, channels-last, normalization included; frames
    either already on the GPU or copied from pinned host memory (uint16 counts, as a detector delivers them)."""
    model = model.cuda().eval().to(memory_format=torch.channels_last)
    runtime = {"model": torch.compile(model, dynamic=False), "name": "torch.compile bf16 cuda"}

    def infer(counts: torch.Tensor) -> torch.Tensor:
        inputs = normalize_frames(counts, scale=20.0).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            try:
                return runtime["model"](inputs)[1]
            except Exception as error:  # no compiler toolchain: say so and measure eager bf16 instead
                if runtime["model"] is model:
                    raise
                emit({"warning": f"torch.compile failed ({type(error).__name__}: {str(error)[:200]}); eager bf16"})
                runtime.update(model=model, name="eager bf16 cuda")
                return model(inputs)[1]

    for batch in batches:
        host = torch.poisson(torch.full((batch, 64, 64), 20.0)).to(torch.uint16).pin_memory()
        on_gpu = host.cuda()
        with torch.inference_mode():
            for source, copy in (("on GPU", False), ("from pinned host", True)):
                for _ in range(3):  # compile and warm up
                    infer(host.cuda(non_blocking=True) if copy else on_gpu)
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(repeats):
                    infer(host.cuda(non_blocking=True) if copy else on_gpu)
                torch.cuda.synchronize()
                seconds = (time.perf_counter() - start) / repeats
                emit({"throughput": name, "parameters": count_parameters(model), "runtime": runtime["name"],
                      "device": torch.cuda.get_device_name(), "frames": source, "batch": batch,
                      "frames_per_s": batch / seconds})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer cases, smaller scans (about 10 minutes here)")
    parser.add_argument("--model", type=Path, default=None, help="edge model (default: the shipped one)")
    parser.add_argument("--large", type=Path, default=None, help="a larger edge model to score beside it")
    parser.add_argument("--skip", nargs="*", default=[], choices=("throughput", "accuracy", "beamline", "live"))
    parser.add_argument("--device", default="cpu", help="cpu (everything) or cuda (GPU throughput only)")
    parser.add_argument("--tail-s", type=float, default=None,
                        help="live case: refinement s after the last frame (default: LSQML's CPU s / 5)")  # fmt: skip
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        emit({"benchmark": "ptychonn", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "date": time.strftime("%Y-%m-%d")})  # fmt: skip
        gpu_throughput("edge (shipped)", load_model(args.model)[0], [512, 2048, 8192], 20 if args.quick else 100)
        gpu_throughput("ptychonn (original layout)", build_model(ModelConfig("ptychonn", 32, 3, 64)), [512, 2048],
                       20 if args.quick else 100)  # fmt: skip
        return
    torch.set_num_threads(2)
    large = args.large or (SHIPPED.parent / "edge-large" if (SHIPPED.parent / "edge-large").exists() else None)
    emit({"benchmark": "ptychonn", "torch": torch.__version__, "threads": 2, "date": time.strftime("%Y-%m-%d"),
          "model": str(args.model or "shipped"), "quick": args.quick, "pairs": len(EVALUATION_PAIRS)})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if "throughput" not in args.skip:
            batches = [64, 256] if args.quick else [16, 64, 256, 1024]
            throughput("edge (shipped)", load_model(args.model)[0], batches, 5 if args.quick else 20, folder)
            if large is not None:
                throughput("edge-large", load_model(large)[0], batches, 3 if args.quick else 10, folder)
            throughput("ptychonn (original layout)", build_model(ModelConfig("ptychonn", 32, 3, 64)), [64], 1, folder)
        if "accuracy" not in args.skip:
            accuracy(args.model, args.quick)
            if large is not None and not args.quick:
                accuracy(large, args.quick)
        if "beamline" not in args.skip:
            beamline(args.model, 400 if args.quick else 900, 1 if args.quick else 3, folder)
        if "live" not in args.skip:
            live(args.model, 4000 if args.quick else 16000, folder, args.tail_s)


if __name__ == "__main__":
    main()
