"""TomoGAN on held-out data: low-dose simulations, FBP + TomoGAN vs. SIRT (ours and astra's), and the tooth.

1. Simulated low dose (60 photons per pixel, 180 angles, 128 x 128 slices, foam and Shepp-Logan phantoms; held-out
   phantoms with seeds the training never saw): SSIM against the ground truth of gridrec's slices (the input) and
   of the shipped TomoGAN's output; the same for SIRT (EdgeRay's and astra's CPU SIRT, 100 iterations), with times.
2. The perceptual term's effect: two generators trained here for the same steps on the same pairs, with and
   without it (EdgeRay's own feature network), scored on the held-out phantoms.
3. The tooth (shared/data/tooth.h5: 181 angles, 2 rows of 640 columns; centre 296): slices from 1/8 of the angles
   vs. all angles; a denoiser trained on row 0, scored on row 1 (an adjacent row, so a weak hold-out: said so).
4. Transfer (``edgeray tomo evaluate-denoiser``): the shipped low-dose TomoGAN and the shipped general denoiser on
   held-out phantom families and reconstructors (each slice alone), the low-dose case of 1, and the tooth.
5. Self-supervised (Noise2Inverse) on the tooth's own sparse projections (1/8 of the angles, split in two), from
   the general denoiser, scored on row 1 against the full-angle reconstruction as in 3; its CPU time.

Prints one JSON object per line; the last has the headline figures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeray.metrics import ssim
from edgeray.tomo.denoise import (
    DenoiserOptions,
    denoise_volume,
    load_denoiser,
    simulated_pairs,
    tooth_pairs,
    train_denoiser,
    write_pairs,
)
from edgeray.tomo.tomogan import TomoGANConfig

TOOTH = Path(__file__).resolve().parents[2] / "shared" / "data" / "tooth.h5"


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def per_volume(noisy: np.ndarray, model, block: int) -> np.ndarray:
    """Denoise each volume (``block`` slices) on its own, as a user would denoise a reconstruction."""
    return np.concatenate([denoise_volume(noisy[i : i + block], model) for i in range(0, len(noisy), block)])


def mean_ssim(images: np.ndarray, references: np.ndarray) -> float:
    return float(np.mean([ssim(a, b) for a, b in zip(images, references, strict=True)]))


def sirt_slices(pairs_scan_seed: int, n_volumes: int, iterations: int, use_astra: bool) -> tuple[np.ndarray, float]:
    """SIRT of the same low-dose scans simulated_pairs made (same seeds) -> slices, seconds."""
    from edgeray.sim import TomoSimConfig, simulate_tomo
    from edgeray.tomo.preprocess import minus_log, normalize
    from edgeray.tomo.sirt import sirt

    out, seconds = [], 0.0
    for k in range(n_volumes):
        phantom = "foam" if k % 2 == 0 else "shepp"
        scan = simulate_tomo(TomoSimConfig(phantom=phantom, size=128, slices=8, angles=180, photons=60,
                                           seed=pairs_scan_seed + k))  # fmt: skip
        sinograms = np.swapaxes(minus_log(normalize(scan.projections, scan.flats, scan.darks)), 0, 1)
        theta = np.radians(scan.theta_deg)
        start = time.perf_counter()
        if use_astra:
            out.append(np.stack([astra_sirt(s, theta, 128, iterations) for s in sinograms]))
        else:
            out.append(sirt(sinograms, theta, iterations=iterations))
        seconds += time.perf_counter() - start
    return np.concatenate(out), seconds


def astra_sirt(sinogram: np.ndarray, theta_rad: np.ndarray, size: int, iterations: int) -> np.ndarray:
    import astra

    volume = astra.create_vol_geom(size, size)
    geometry = astra.create_proj_geom("parallel", 1.0, sinogram.shape[1], -np.asarray(theta_rad, dtype=np.float64))
    projector = astra.create_projector("linear", geometry, volume)
    sino_id = astra.data2d.create("-sino", geometry, np.asarray(sinogram, dtype=np.float32))
    rec_id = astra.data2d.create("-vol", volume, 0.0)
    config = astra.astra_dict("SIRT")
    config.update(ReconstructionDataId=rec_id, ProjectionDataId=sino_id, ProjectorId=projector)
    algorithm = astra.algorithm.create(config)
    try:
        astra.algorithm.run(algorithm, iterations)
        return astra.data2d.get(rec_id).astype(np.float32)
    finally:
        astra.algorithm.delete(algorithm)
        astra.data2d.delete([sino_id, rec_id])
        astra.projector.delete(projector)


def self_supervised_tooth(steps: int) -> tuple[float, float]:
    """Noise2Inverse 1:X on row 0 of the tooth (its 181 projections in 8 interleaved subsets, from the shipped
    general denoiser; no full-angle reconstruction is a target): SSIM of row 1's every-8th-angle reconstruction,
    enhanced, against row 1's full-angle reconstruction, and the fine-tune's seconds."""
    from edgeray.io import read_tomo
    from edgeray.tomo import noise2inverse
    from edgeray.tomo.fbp import gridrec
    from edgeray.tomo.preprocess import minus_log, normalize

    scan = read_tomo(TOOTH)
    sinograms = np.swapaxes(minus_log(normalize(scan.projections, scan.flats, scan.darks)), 0, 1)
    theta = np.radians(scan.theta_deg)
    full = gridrec(sinograms[1:2], theta, 296.0)[0]
    sparse = gridrec(sinograms[1:2, ::8], theta[::8], 296.0)
    sub = noise2inverse.split_reconstructions(sinograms[:1], theta, 8, 296.0)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        noise2inverse.train(sub, Path(folder) / "n2i", steps=steps, source="tooth.h5", strategy="1:X")
        seconds = time.perf_counter() - started
        model, _ = load_denoiser(Path(folder) / "n2i")
    return ssim(denoise_volume(sparse, model)[0], full), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer held-out phantoms and training steps")
    args = parser.parse_args()
    held_out, steps = (2, 300) if args.quick else (4, 2000)
    emit({"benchmark": "tomogan", "date": time.strftime("%Y-%m-%d"), "held_out_volumes": held_out,
          "training_steps_ablation": steps})  # fmt: skip
    test = simulated_pairs(n_volumes=held_out, size=128, slices=8, angles=180, low_photons=60, seed=1000)
    model, card = load_denoiser()
    start = time.perf_counter()
    out = per_volume(test["noisy"], model, 8)
    denoise_s = time.perf_counter() - start
    record = {"case": "simulated low dose, shipped model", "ssim_input": mean_ssim(test["noisy"], test["truth"]),
              "ssim_output": mean_ssim(out, test["truth"]), "ssim_full_data_fbp": None,
              "denoise_s_per_slice": denoise_s / len(out), "model_parameters": card.get("parameters")}  # fmt: skip
    emit(record)
    sirt_iterations = 100
    for use_astra in (False, True):
        slices, seconds = sirt_slices(1000, held_out, sirt_iterations, use_astra)
        emit({"case": f"SIRT {sirt_iterations} iterations ({'astra' if use_astra else 'EdgeRay'})",
              "ssim_output": mean_ssim(slices, test["truth"]), "seconds_per_slice": seconds / len(slices)})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        train = write_pairs(folder / "train.h5", simulated_pairs(n_volumes=8, size=128, slices=8, angles=180,
                                                                   low_photons=60, seed=0))  # fmt: skip
        ablation = {}
        for name, weight in (("with perceptual", 0.1), ("without perceptual", 0.0)):
            options = DenoiserOptions(steps=steps, perceptual_weight=weight, pixel_loss="l1", seed=1)
            started = time.perf_counter()
            train_denoiser(train, folder / name, TomoGANConfig(depth=3, width=16, in_slices=3), options)
            trained, _ = load_denoiser(folder / name)
            ablation[name] = mean_ssim(per_volume(test["noisy"], trained, 8), test["truth"])
            emit({"case": f"ablation: {name}", "steps": steps, "ssim_output": ablation[name],
                  "train_s": time.perf_counter() - started})  # fmt: skip
        tooth = {}
        if TOOTH.exists():
            pairs = tooth_pairs(TOOTH, stride=8, center=296.0)
            one_row = {"noisy": pairs["noisy"][:1], "clean": pairs["clean"][:1], "attrs": pairs["attrs"]}
            path = write_pairs(folder / "tooth.h5", one_row)
            options = DenoiserOptions(steps=steps, holdout=0.0, patch=96, seed=2)
            train_denoiser(path, folder / "tooth-model", TomoGANConfig(depth=3, width=16), options)
            tooth_model, _ = load_denoiser(folder / "tooth-model")
            enhanced = denoise_volume(pairs["noisy"], tooth_model)
            shipped = denoise_volume(pairs["noisy"], model)
            tooth = {"ssim_sparse_row1": ssim(pairs["noisy"][1], pairs["clean"][1]),
                     "ssim_enhanced_row1": ssim(enhanced[1], pairs["clean"][1]),
                     "ssim_shipped_row1": ssim(shipped[1], pairs["clean"][1])}  # fmt: skip
            emit({"case": "tooth, 1/8 of the angles vs all (row 1; trained on row 0)", **tooth})
    transfer = {}
    from edgeray.tomo.denoise import SHIPPED_DENOISER, SHIPPED_GENERAL_DENOISER
    from edgeray.tomo.denoise_eval import evaluate_denoiser

    for directory in (SHIPPED_DENOISER, SHIPPED_GENERAL_DENOISER):
        for row in evaluate_denoiser(directory, quick=args.quick)["cases"]:
            emit({"case": f"transfer: {row['case']}", "model": directory.name, **{k: v for k, v in row.items()
                                                                                    if k != "case"}})  # fmt: skip
            transfer[f"{directory.name}: {row['case']}"] = row["ssim_out"]
    if TOOTH.exists():
        tooth["ssim_self_supervised_row1"], seconds = self_supervised_tooth(steps=300 if args.quick else 1500)
        emit({"case": "tooth, self-supervised 1:X on row 0's own projections, row 1 from 1/8 of the angles",
              "ssim": tooth["ssim_self_supervised_row1"], "train_s": seconds})  # fmt: skip
    emit({"ssim_low_dose_in": record["ssim_input"], "ssim_low_dose_out": record["ssim_output"],
          "target_in_at_most_0.2": record["ssim_input"] <= 0.2,
          "target_out_at_least_0.9": record["ssim_output"] >= 0.9,
          "perceptual_effect": ablation["with perceptual"] - ablation["without perceptual"], **tooth})  # fmt: skip


if __name__ == "__main__":
    main()
