"""Learned denoisers against BM3D on slices none of them was made from (issue 36).

The case the issue names: a phantom family kept out of every training (``textured_shepp``), 256 x 256, 45 angles
over 180 degrees, 2e3 photons per ray, reconstructed by scikit-image's filtered back-projection (ramp filter),
scored by SSIM against the truth after the best affine intensity match (least squares), so no method gains or
loses by its output's scale. The peer is BM3D (the ``bm3d`` package, no training) at the noise level estimated from
each slice (as ``edgeray tomo denoise --method bm3d`` runs it) and, as a ceiling no user has, at the best of the
fixed levels 0.1-0.5 of the slice's range (the truth picks it). Beside them: total variation at the estimated
level, and the shipped TomoGANs (general: ``tomo denoise``'s default; low-dose, the default before). Seconds per
slice for each.

Prints one JSON object per line. ``--quick``: 4 slices instead of 12.

    python benchmarks/denoise_vs_bm3d.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from edgeray.metrics import ssim
from edgeray.sim.families import phantom_slice
from edgeray.tomo.classical import denoise_slice, noise_sigma
from edgeray.tomo.denoise import denoise_volume, load_denoiser
from edgeray.tomo.denoise_corpus import Degradation, scan_and_reconstruct

FIXED_SIGMAS = (0.1, 0.2, 0.3, 0.4, 0.5)


def affine_ssim(image: np.ndarray, truth: np.ndarray) -> float:
    """SSIM against ``truth`` after the least-squares map ``a * image + b``."""
    design = np.stack([image.ravel(), np.ones(image.size)], axis=1).astype(np.float64)
    (a, b), *_ = np.linalg.lstsq(design, truth.ravel().astype(np.float64), rcond=None)
    return ssim(a * image + b, truth)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 4 if args.quick else 12
    rng = np.random.default_rng(36_000)  # seeds no training uses
    degradation = Degradation(reconstructor="iradon", filter_name="ramp", stride=1, photons=2e3, full_angles=45)
    truths = [phantom_slice("textured_shepp", 256, rng) for _ in range(n)]
    inputs = [scan_and_reconstruct(t, degradation, rng) for t in truths]
    methods = {
        "input (FBP)": lambda x: x,
        "BM3D, estimated noise (peer)": lambda x: denoise_slice(x, "bm3d"),
        "TV, estimated noise": lambda x: denoise_slice(x, "tv"),
    }
    for name in ("low-dose", "general"):
        model, _ = load_denoiser(name)
        label = f"TomoGAN {name}" + (" (tomo denoise default)" if name == "general" else " (the default before)")
        methods[label] = lambda x, model=model: denoise_volume(x, model)[0]
    seconds = {}
    for name, method in methods.items():
        started = time.perf_counter()
        scores = [affine_ssim(method(x), t) for x, t in zip(inputs, truths, strict=True)]
        seconds[name] = (time.perf_counter() - started) / n
        print(json.dumps({"method": name, "ssim": float(np.mean(scores)), "ssim_each": scores,
                          "seconds_per_slice": seconds[name]}), flush=True)  # fmt: skip
    best = {s: np.mean([affine_ssim(denoise_slice(x, "bm3d", s), t) for x, t in zip(inputs, truths, strict=True)])
            for s in FIXED_SIGMAS}  # fmt: skip
    print(json.dumps({"method": "BM3D, best fixed noise level (ceiling: the truth picks it)",
                      "ssim_by_sigma": {str(k): float(v) for k, v in best.items()}, "ssim": float(max(best.values())),
                      "estimated_sigma": [noise_sigma(x) for x in inputs]}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
