"""Surrogate networks: throughput (torch vs ONNX Runtime, by batch) and accuracy against LSQML on the same data.

``--device cuda``: only the GPU throughput of both models (the issue's anchor: the full model >= 130,000
frames/s on an H100 with torch.compile, bfloat16 and channels-last at batch 512).

Prints one JSON object per line:
- ``throughput``: frames/s of each model and runtime by batch size, normalization included;
- ``accuracy``: on simulated scans of objects never used in training (scikit-image's held-out images), at
  1e5, 1e3 and 1e2 photons per frame: stitched phase SSIM and relative error of the shipped compact model and of
  LSQML (30 epochs, true probe) against the ground truth, the seconds each took to an image, and their ratio;
- ``beamline``: scan A is reconstructed with LSQML, its patches train a compact model, which then inverts scan B
  (same probe, another object); B's phase SSIM for the NN and for LSQML on B.

    python benchmarks/ptychonn.py --quick
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # scoring must not steal the cores from timed work

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from edgeray.nn import ModelConfig, build_model, infer_scan, normalize_frames
from edgeray.nn.export import OnnxModel, export_onnx
from edgeray.nn.models import count_parameters
from edgeray.nn.train import TrainOptions, train
from edgeray.nn.trainset import samples_from_reconstruction, write_trainset
from edgeray.ptycho.evaluate import compare_on_scanned_region
from edgeray.ptycho.reconstruct import run
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def throughput(kind: str, width: int, batches: list[int], repeats: int, folder: Path) -> None:
    model = build_model(ModelConfig(kind, width, 3, 64)).eval()
    runtimes = {"torch": model, "onnxruntime": OnnxModel(export_onnx(model, folder / f"{kind}.onnx", 64), threads=2)}
    for batch in batches:
        counts = torch.poisson(torch.full((batch, 64, 64), 20.0))
        for name, runtime in runtimes.items():
            with torch.inference_mode():
                runtime(normalize_frames(counts))
                start = time.perf_counter()
                for _ in range(repeats):
                    runtime(normalize_frames(counts))
                seconds = (time.perf_counter() - start) / repeats
            emit(
                {
                    "throughput": kind,
                    "parameters": count_parameters(model),
                    "runtime": name,
                    "batch": batch,
                    "frames_per_s": batch / seconds,
                }
            )


def score(product, scan) -> dict:
    metrics = compare_on_scanned_region(product, scan.ground_truth, scan.positions_m)
    return {"phase_ssim": metrics["ssim_phase"], "rel_error": metrics["rel_error"]}


def accuracy(photons: float, n_positions: int, epochs: int) -> None:
    config = PtychoSimConfig(n_positions=n_positions, photons=photons, object="chelsea,coffee", seed=5)
    scan = simulate_ptycho(config)
    nn_result = infer_scan(scan)
    start = time.perf_counter()
    lsqml = run(scan, "lsqml", epochs, probe=scan.ground_truth.probe)
    lsqml_seconds = time.perf_counter() - start
    nn_scores, lsqml_scores = score(nn_result.product, scan), score(lsqml.product, scan)
    emit(
        {
            "accuracy": "held-out objects (chelsea, coffee)",
            "photons": photons,
            "frames": n_positions,
            "nn_phase_ssim": nn_scores["phase_ssim"],
            "lsqml_phase_ssim": lsqml_scores["phase_ssim"],
            "nn_rel_error": nn_scores["rel_error"],
            "lsqml_rel_error": lsqml_scores["rel_error"],
            "nn_seconds": nn_result.seconds,
            "lsqml_seconds": lsqml_seconds,
            "lsqml_epochs": epochs,
            "time_to_image_ratio": lsqml_seconds / nn_result.seconds,
            "target_met": bool(
                lsqml_seconds / nn_result.seconds >= 100
                and nn_scores["phase_ssim"] >= lsqml_scores["phase_ssim"] - 0.05
            ),
        }
    )


def beamline(n_positions: int, epochs: int, train_epochs: int, folder: Path) -> None:
    base = PtychoSimConfig(n_positions=n_positions, photons=1e5)
    scan_a = simulate_ptycho(PtychoSimConfig(**{**base.__dict__, "object": "rocket,hubble_deep_field", "seed": 1}))
    scan_b = simulate_ptycho(PtychoSimConfig(**{**base.__dict__, "object": "chelsea,immunohistochemistry", "seed": 2}))
    start = time.perf_counter()
    product_a = run(scan_a, "lsqml", epochs).product
    trainset = write_trainset(folder / "a.h5", [samples_from_reconstruction(scan_a, product_a)], {"source": "A"})
    train(
        trainset,
        folder / "model_a",
        ModelConfig("compact", 8, 3, 64),
        TrainOptions(epochs=train_epochs, batch_size=32, learning_rate=5e-3),
    )
    prepare_seconds = time.perf_counter() - start
    nn_b = infer_scan(scan_b, folder / "model_a")
    lsqml_b = run(scan_b, "lsqml", epochs).product
    emit(
        {
            "beamline": "LSQML(A) -> labels -> train compact -> infer B",
            "frames": n_positions,
            "minutes_to_model": prepare_seconds / 60,
            "nn_phase_ssim_B": score(nn_b.product, scan_b)["phase_ssim"],
            "lsqml_phase_ssim_B": score(lsqml_b, scan_b)["phase_ssim"],
            "nn_seconds_B": nn_b.seconds,
        }
    )


def gpu_throughput(kind: str, width: int, batches: list[int], repeats: int) -> None:
    """Frames/s on a CUDA device as the issue's anchor was measured: torch.compile, bfloat16 autocast,
    channels-last, normalization included; frames either already on the GPU or copied from pinned host memory
    (uint16 counts, as a detector delivers them)."""
    model = build_model(ModelConfig(kind, width, 3, 64)).cuda().eval().to(memory_format=torch.channels_last)
    runtime = {"model": torch.compile(model, dynamic=False), "name": "torch.compile bf16 cuda"}  # a graph per batch

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
                emit({"throughput": kind, "parameters": count_parameters(model), "runtime": runtime["name"],
                      "device": torch.cuda.get_device_name(), "frames": source, "batch": batch,
                      "frames_per_s": batch / seconds})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu (everything) or cuda (GPU throughput of both models)")
    args = parser.parse_args()
    if args.device.startswith("cuda"):
        emit({"benchmark": "ptychonn", "torch": torch.__version__, "device": torch.cuda.get_device_name(),
              "date": time.strftime("%Y-%m-%d")})  # fmt: skip
        gpu_throughput("ptychonn", 32, [512, 2048, 8192], 20 if args.quick else 100)
        gpu_throughput("compact", 8, [512, 2048, 8192], 20 if args.quick else 100)
        return
    torch.set_num_threads(2)
    emit({"benchmark": "ptychonn", "torch": torch.__version__, "threads": 2, "date": time.strftime("%Y-%m-%d")})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        throughput("compact", 8, [1, 16, 256] if args.quick else [1, 8, 64, 256, 1024], 3 if args.quick else 10, folder)
        throughput("ptychonn", 32, [16] if args.quick else [1, 16, 128], 1 if args.quick else 3, folder)
        for photons in (1e5, 1e3, 1e2):
            accuracy(photons, 400 if args.quick else 900, 30)
        beamline(400 if args.quick else 900, 30, 8 if args.quick else 25, folder)


if __name__ == "__main__":
    main()
