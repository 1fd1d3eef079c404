"""Tomography: EdgeRay's gridrec and FBP against astra's CPU FBP and scikit-image's iradon, on the same sinograms.

Sinograms: exact line integrals of a 3-D Shepp-Logan phantom (``edgeray.sim``), 1e6 photons per pixel, flat and
dark corrected, minus-log; sizes 512^2 from 360 angles and 1024^2 from 720 (quick: 256^2/180 and 512^2/360).
astra: ``FBP`` with the ``linear`` projector and its default Ram-Lak filter (astra-toolbox from PyPI, CPU).
scikit-image: ``iradon`` with the ramp filter, linear interpolation. EdgeRay: ``gridrec`` (NUFFT, Joseph kernel:
astra's image) and ``fbp`` (torch backprojection), ramp filter. Times are the best of 3 (2 threads each);
SSIM on the reconstruction circle against the phantom and against astra's image.

``edgeray tomo recon`` as a user runs it (issue 36): a raw Data Exchange file of 8 slices (1024^2 from 720 angles;
quick 512^2 / 360), the centre given, the ramp filter, in its own process: the command's ``seconds`` (reading,
flat/dark, log, filtering, NUFFT, writing) against astra's FBP of the same 8 sinograms one after another, and
against the core alone (gridrec on the sinograms in memory). Prints one JSON object per line.

    python benchmarks/tomo_vs_astra.py --quick
    python benchmarks/tomo_vs_astra.py --device cuda     # adds astra's FBP_CUDA and EdgeRay's fbp on the GPU
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from skimage.metrics import structural_similarity

from astra_peer import astra_fbp
from edgeray.device import resolve_device
from edgeray.sim import TomoSimConfig, simulate_tomo
from edgeray.tomo import fbp, gridrec, minus_log, normalize


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def best_of(function, repeats: int = 3):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return result, min(times)


def iradon(sinogram: np.ndarray, theta: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import iradon as skimage_iradon

    # scikit-image's columns are angles, its angles turn the other way, and it scales by pi / (2 A)
    return skimage_iradon(sinogram.T, theta=-np.degrees(theta), output_size=size, filter_name="ramp", circle=True)


def ssim(image: np.ndarray, reference: np.ndarray) -> float:
    size = reference.shape[0]
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    disk = yy**2 + xx**2 <= (size / 2 - 2) ** 2
    span = reference[disk].max() - reference[disk].min()
    return float(structural_similarity(image * disk, reference * disk, data_range=span))


def on_gpu(function):
    """``function`` timed to its end on the GPU (CUDA work is asynchronous)."""

    def timed():
        result = function()
        torch.cuda.synchronize()
        return result

    return timed


def case(size: int, angles: int, repeats: int, device: str = "cpu") -> None:
    scan = simulate_tomo(TomoSimConfig(size=size, slices=1, angles=angles, photons=1e6, seed=1))
    sinogram = np.moveaxis(minus_log(normalize(scan.projections, scan.flats, scan.darks)), 1, 0)[0]
    theta = np.radians(scan.theta_deg)
    phantom = scan.ground_truth[0]
    reference, astra_seconds = best_of(lambda: astra_fbp(sinogram, theta, size), repeats)
    runs = {
        "astra FBP (CPU, linear)": (reference, astra_seconds),
        "scikit-image iradon": best_of(lambda: iradon(sinogram, theta, size), 1),
        "edgeray gridrec": best_of(lambda: gridrec(sinogram[None], theta, filter_name="ramp")[0], repeats),
        "edgeray gridrec (pixel kernel)": best_of(
            lambda: gridrec(sinogram[None], theta, filter_name="ramp", kernel="pixel")[0], repeats
        ),
        "edgeray fbp (torch)": best_of(lambda: fbp(sinogram[None], theta, filter_name="ramp")[0], 1),
    }
    if device.startswith("cuda"):
        runs["astra FBP_CUDA"] = best_of(on_gpu(lambda: astra_fbp(sinogram, theta, size, gpu=True)), repeats)
        runs[f"edgeray fbp (torch, {device})"] = best_of(
            on_gpu(lambda: fbp(sinogram[None], theta, filter_name="ramp", device=device)[0]), repeats
        )
    for name, (image, seconds) in runs.items():
        emit({"size": size, "angles": angles, "method": name, "seconds": seconds,
              "speedup_vs_astra": astra_seconds / seconds, "ssim_vs_phantom": ssim(image, phantom),
              "ssim_vs_astra": ssim(image, reference)})  # fmt: skip
    image, seconds = runs["edgeray gridrec"]
    emit({"size": size, "angles": angles, "target": ">= 2x astra at SSIM >= 0.99 vs astra",
          "speedup": astra_seconds / seconds, "ssim_vs_astra": ssim(image, reference),
          "target_met": bool(astra_seconds / seconds >= 2 and ssim(image, reference) >= 0.99)})  # fmt: skip


def command_case(size: int, angles: int, slices: int = 8) -> None:
    """``edgeray tomo recon`` on a raw file against astra on the same sinograms and against its own core."""
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from edgeray.io import read_reconstruction, write_dxchange

    scan = simulate_tomo(TomoSimConfig(size=size, slices=slices, angles=angles, photons=1e6, seed=2))
    sinograms = np.ascontiguousarray(np.moveaxis(minus_log(normalize(scan.projections, scan.flats, scan.darks)), 1, 0))
    theta = np.radians(scan.theta_deg)
    center = size / 2 - 0.5  # gridrec's default axis, given to the command too
    references, astra_seconds = best_of(lambda: [astra_fbp(s, theta, size) for s in sinograms], 1)
    core, core_seconds = best_of(lambda: gridrec(sinograms, theta, center, filter_name="ramp"), 3)
    with tempfile.TemporaryDirectory() as folder:
        raw = write_dxchange(Path(folder) / "raw.h5", scan, compression="none")
        out = Path(folder) / "rec.h5"
        command = [sys.executable, "-m", "edgeray", "tomo", "recon", str(raw), "-o", str(out), "--center",
                   str(center), "--filter", "ramp"]  # fmt: skip
        runs = []
        for _ in range(3):
            started = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            runs.append((json.loads(out.with_suffix(".json").read_text())["seconds"], time.perf_counter() - started))
        seconds, wall = min(runs)
        images, _ = read_reconstruction(out)
    agreement = min(ssim(image, reference) for image, reference in zip(images, references, strict=True))
    core_agreement = min(ssim(image, reference) for image, reference in zip(core, references, strict=True))
    emit({"size": size, "angles": angles, "slices": slices, "method": "edgeray tomo recon (command)",
          "command_seconds": seconds, "process_seconds": wall, "core_seconds": core_seconds,
          "astra_seconds": astra_seconds, "command_speedup_vs_astra": astra_seconds / seconds,
          "core_speedup_vs_astra": astra_seconds / core_seconds, "command_over_core": seconds / core_seconds,
          "ssim_vs_astra_min": agreement, "core_ssim_vs_astra_min": core_agreement})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="256^2/180 and 512^2/360 (about a minute)")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: adds the GPU rows (astra FBP_CUDA, ours)")
    args = parser.parse_args()
    try:
        resolve_device(args.device)  # before any work: a GPU asked for and none here is said at once
    except ValueError as error:
        emit({"error": str(error)})
        raise SystemExit(1) from None
    torch.set_num_threads(2)
    import astra

    emit({"benchmark": "tomo_vs_astra", "date": time.strftime("%Y-%m-%d"), "astra": astra.__version__,
          "torch": torch.__version__, "threads": 2})  # fmt: skip
    for size, angles in [(256, 180), (512, 360)] if args.quick else [(512, 360), (1024, 720)]:
        case(size, angles, 3, args.device)
    command_case(*((512, 360) if args.quick else (1024, 720)))


if __name__ == "__main__":
    main()
