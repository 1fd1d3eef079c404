"""Tomography: EdgeRay's gridrec and FBP against astra's CPU FBP and scikit-image's iradon, on the same sinograms.

Sinograms: exact line integrals of a 3-D Shepp-Logan phantom (``edgeray.sim``), 1e6 photons per pixel, flat and
dark corrected, minus-log; sizes 512^2 from 360 angles and 1024^2 from 720 (quick: 256^2/180 and 512^2/360).
astra: ``FBP`` with the ``linear`` projector and its default Ram-Lak filter (astra-toolbox from PyPI, CPU).
scikit-image: ``iradon`` with the ramp filter, linear interpolation. EdgeRay: ``gridrec`` (NUFFT, Joseph kernel:
astra's image) and ``fbp`` (torch backprojection), ramp filter. Times are the best of 3 (2 threads each);
SSIM on the reconstruction circle against the phantom and against astra's image. Prints one JSON object per line.

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


if __name__ == "__main__":
    main()
