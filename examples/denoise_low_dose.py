"""A low-dose tomography slice denoised by the shipped TomoGAN, beside the ground truth.

Simulates a foam phantom at 500 photons per ray and 90 angles, reconstructs it (gridrec), denoises the slices with
the shipped low-dose TomoGAN, and scores both against the truth (SSIM after the best affine intensity match).

    python examples/denoise_low_dose.py [OUTPUT_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np

from edgeray.io import read_reconstruction, write_dxchange
from edgeray.metrics import ssim
from edgeray.sim import TomoSimConfig, simulate_tomo
from edgeray.tomo import TomoOptions, reconstruct_file
from edgeray.tomo.denoise import denoise_volume, load_denoiser
from edgeray.viz import slice_panels

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
out.mkdir(parents=True, exist_ok=True)
scan = simulate_tomo(TomoSimConfig(phantom="foam", size=128, slices=2, angles=90, photons=500, seed=11))
write_dxchange(out / "foam_low_dose.h5", scan)
reconstruct_file(out / "foam_low_dose.h5", out / "foam_rec.h5", TomoOptions(center=(128 - 1) / 2))
slices, _ = read_reconstruction(out / "foam_rec.h5")
model, _ = load_denoiser("low-dose")
denoised = denoise_volume(slices, model)
truth = scan.ground_truth


def matched_ssim(image: np.ndarray, reference: np.ndarray) -> float:
    design = np.stack([image.ravel(), np.ones(image.size)], 1)
    gain, offset = np.linalg.lstsq(design, reference.ravel(), rcond=None)[0]
    return float(ssim(gain * image + offset, reference))


scores = [matched_ssim(image[0], truth[0]) for image in (slices, denoised)]
panels = {"ground truth": truth[0], f"gridrec: SSIM {scores[0]:.2f}": slices[0],
          f"shipped TomoGAN: SSIM {scores[1]:.2f}": denoised[0]}  # fmt: skip
slice_panels(panels, out / "denoise_low_dose.png", "foam phantom, 500 photons per ray, 90 angles")
print(f"SSIM: reconstruction {scores[0]:.3f}, denoised {scores[1]:.3f}")
