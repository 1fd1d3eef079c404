"""A real tomography scan: tomopy's tooth (Data Exchange, 181 projections) reconstructed by gridrec (FBP by
non-uniform FFT) with the rotation centre found from the data.

    python examples/tooth_reconstruction.py [OUTPUT_FOLDER]
"""

import sys
from pathlib import Path

from edgeray.io import read_reconstruction
from edgeray.tomo import TomoOptions, reconstruct_file
from edgeray.viz import slice_panels

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
out.mkdir(parents=True, exist_ok=True)
tooth = Path(__file__).parents[1] / "tests" / "data" / "tooth.h5"
summary = reconstruct_file(tooth, out / "tooth_rec.h5", TomoOptions(filter_name="shepp-logan", slices=(0, 1)))
volume, params = read_reconstruction(out / "tooth_rec.h5")
title = f"tooth, row 0: centre {params['center']:.1f} px (found from the data), {summary['seconds']:.1f} s"
slice_panels({"gridrec (Shepp-Logan filter)": volume[0]}, out / "tooth_reconstruction.png", title)
print(title)
