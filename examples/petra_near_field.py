"""A real near-field scan: the PETRA III P25 Siemens star (200 frames of 192 x 192, a magnified geometry, from
ptychodus's test data) reconstructed with the Fresnel propagator by LSQML, starting from the file's probe guess.

    python examples/petra_near_field.py [OUTPUT_FOLDER]
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from edgeray.io import read_cxi
from edgeray.ptycho import Geometry
from edgeray.ptycho.reconstruct import run

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
out.mkdir(parents=True, exist_ok=True)
scan = read_cxi(Path(__file__).parents[1] / "tests" / "data" / "petra3_p25_nearfield.cxi")
near = Geometry("near", focus_to_sample_m=3.65e-3)  # the P25 setup's focus-to-sample distance
result = run(scan, "lsqml", 40, geometry=near, batch_size=20)
product = result.product
fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
panels = {
    "object phase": np.angle(product.object[0]),
    "object amplitude": np.abs(product.object[0]),
    "probe amplitude": np.abs(product.probe[0]),
}
for ax, (label, image) in zip(axes, panels.items(), strict=True):
    low, high = np.percentile(image, [1, 99])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high)
    ax.set_title(label, fontsize=10)
    ax.axis("off")
fig.suptitle(f"PETRA III P25, near field: LSQML, {len(result.history.cost)} epochs in {result.seconds:.0f} s, "
             f"pixel {product.object_pixel_size_m[0] * 1e9:.0f} nm", fontsize=10)  # fmt: skip
fig.tight_layout(rect=(0, 0, 1, 0.94))
fig.savefig(out / "petra_near_field.png", dpi=100)
print(f"cost {result.history.cost[0]:.4g} -> {result.history.cost[-1]:.4g} in {result.seconds:.1f} s")
