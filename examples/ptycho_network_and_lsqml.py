"""A simulated scan imaged two ways: the shipped edge network (one pass, stitched) and LSQML (iterative).

Simulates 900 frames of 64 x 64 at 1e5 photons of an object pair no EdgeRay model trained on, inverts every frame
with the shipped network and stitches the patches, reconstructs the same frames with 20 LSQML epochs, and shows the
phase of both beside the ground truth with their phase SSIM.

    python examples/ptycho_network_and_lsqml.py [OUTPUT_FOLDER]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from edgeray.nn.evaluate import phase_ssim
from edgeray.nn.infer import infer_scan
from edgeray.ptycho.reconstruct import run
from edgeray.sim import PtychoSimConfig, simulate_ptycho

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
out.mkdir(parents=True, exist_ok=True)
scan = simulate_ptycho(PtychoSimConfig(n_positions=900, photons=1e5, object="chelsea,coffee", seed=5))
network = infer_scan(scan).product
lsqml = run(scan, "lsqml", 20, probe=scan.ground_truth.probe).product
scores = {name: phase_ssim(product, scan) for name, product in (("network", network), ("LSQML", lsqml))}
panels = {
    "ground truth (phase)": np.angle(scan.ground_truth.object),
    f"network, {network.attrs['seconds']:.1f} s: SSIM {scores['network']:.2f}": np.angle(network.object[0]),
    f"LSQML, 20 epochs: SSIM {scores['LSQML']:.2f}": np.angle(lsqml.object[0]),
}
fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
for ax, (label, phase) in zip(axes, panels.items(), strict=True):
    ax.imshow(phase, cmap="gray")  # each on its own scale: a phase is known up to a constant
    ax.set_title(label, fontsize=10)
    ax.axis("off")
fig.suptitle("900 frames, 1e5 photons, objects no model trained on", fontsize=10)
fig.tight_layout(rect=(0, 0, 1, 0.94))  # room for the title
fig.savefig(out / "ptycho_network_and_lsqml.png", dpi=100)
print(f"phase SSIM: network {scores['network']:.3f}, LSQML {scores['LSQML']:.3f}")
