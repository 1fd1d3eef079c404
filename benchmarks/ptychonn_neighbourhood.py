"""How much can a network that sees a frame's already-received neighbours know? An information bound for issue 16.

For every frame of a simulated scan (in arrival order), LSQML solves the small problem made of that frame and its
K nearest frames received before it (true probe, 30 epochs, flat start); the frame's own patch is kept, and the
patches are stitched exactly as the network's are. The phase SSIM of that image bounds what any model with the
same inputs (the frame and K causal neighbours) can be expected to reach; beside it: the shipped network (one
frame) and LSQML on the whole scan. Prints one JSON object per line.

    python benchmarks/ptychonn_neighbourhood.py --quick    # one object pair, 400 frames, K = 4, 8 (~3 min)
    python benchmarks/ptychonn_neighbourhood.py            # the two weakest pairs, 900 frames, K = 4, 8, 16 (~25 min)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace

import numpy as np
import torch

from edgeray.io import Product, PtychoScan
from edgeray.nn.evaluate import EVALUATION_PAIRS, phase_ssim
from edgeray.nn.infer import infer_scan, mosaic_product
from edgeray.nn.stitch import stitch
from edgeray.ptycho.problem import object_grid
from edgeray.ptycho.reconstruct import run
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def causal_neighbourhood_image(scan: PtychoScan, k: int, epochs: int) -> Product:
    """Each frame's patch from LSQML on that frame and its ``k`` nearest earlier frames, stitched in scan order."""
    grid = object_grid(scan)
    positions_px = grid.positions_px
    probe = scan.ground_truth.probe
    size = scan.frames.shape[-1]
    patches = np.zeros((scan.n_frames, size, size), np.complex64)
    for i in range(scan.n_frames):
        distances = np.linalg.norm(positions_px[:i] - positions_px[i], axis=1)
        chosen = np.concatenate([[i], np.argsort(distances)[:k]]).astype(int)
        local = PtychoScan(frames=scan.frames[chosen], positions_m=scan.positions_m[chosen], geometry=scan.geometry)
        engine = "lsqml" if len(chosen) > 1 else "rpie"
        options = {"momentum": 0.0} if engine == "lsqml" else {}
        solved = run(local, engine, epochs, probe=probe, **options).product.object[0]
        corner = np.round(object_grid(local).positions_px[0] - size / 2).astype(int)
        patches[i] = solved[corner[0] : corner[0] + size, corner[1] : corner[1] + size]
    weights = torch.from_numpy((np.abs(np.asarray(probe).reshape(-1, size, size)) ** 2).sum(0).astype(np.float32))
    obj, _ = stitch(torch.from_numpy(patches), torch.from_numpy(positions_px), grid.object_shape, weights)
    return mosaic_product(obj.numpy(), scan, grid, f"causal neighbourhood K={k}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one pair, 400 frames, K = 4 and 8")
    parser.add_argument("--epochs", type=int, default=30, help="LSQML epochs of each local solve and of the whole scan")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small solves: one thread is faster (and two pairs can run side by side)
    pairs = [EVALUATION_PAIRS[2]] if args.quick else [EVALUATION_PAIRS[2], EVALUATION_PAIRS[6]]
    frames, ks = (400, (4, 8)) if args.quick else (900, (4, 8, 16))
    emit({"benchmark": "ptychonn_neighbourhood", "machine": platform.machine(), "frames": frames,
          "epochs": args.epochs, "date": time.strftime("%Y-%m-%d")})  # fmt: skip
    for amplitude, phase, seed in pairs:
        config = replace(PtychoSimConfig(n_positions=frames, photons=1e5), object=f"{amplitude},{phase}", seed=seed)
        scan = simulate_ptycho(config)
        pair = f"{amplitude}/{phase}"
        emit({"pair": pair, "image": "network (one frame)", "phase_ssim": phase_ssim(infer_scan(scan).product, scan)})
        whole = run(scan, "lsqml", args.epochs, probe=scan.ground_truth.probe).product
        emit({"pair": pair, "image": "LSQML, whole scan", "phase_ssim": phase_ssim(whole, scan)})
        for k in ks:
            start = time.perf_counter()
            image = causal_neighbourhood_image(scan, k, args.epochs)
            emit({"pair": pair, "image": f"LSQML on each frame + {k} earlier neighbours", "k": k,
                  "phase_ssim": phase_ssim(image, scan), "seconds": time.perf_counter() - start})  # fmt: skip


if __name__ == "__main__":
    main()
