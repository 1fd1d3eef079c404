"""Streaming tomography: image quality against the fraction of projections received, with and without the
enhancer, and the cost of one incremental update against reconstructing the buffer from scratch.

1. Quality: held-out simulated phantoms (foam and Shepp-Logan, 180 projections over a half turn, 1e4 photons per
   pixel, 128 x 128 slices), streamed in golden-angle order through :class:`StreamingSlices`; after each fraction
   of the projections: SSIM against the ground truth of the streamed slices and of the shipped stream TomoGAN's
   output; the fraction at which the enhanced stream first reaches what the plain stream reaches with all
   projections. (SSIM against the full-data reconstruction is reported too; against it the plain stream at 100%
   scores 1 by definition, so the target is judged against the truth.) Plot: ``--plot PNG``.
2. Latency of one update of a 512 x 512 slice (``update_every`` = 1, 4, 8, 16 projections, buffer of 720) against
   the peers that recompute the buffer's slice from scratch: astra's CPU FBP and EdgeRay's gridrec.

Prints one JSON object per line; the last has the headline figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from edgeray.metrics import ssim
from edgeray.sim import TomoSimConfig, simulate_tomo
from edgeray.tomo.denoise import SHIPPED_STREAM_DENOISER, denoise_volume, load_denoiser
from edgeray.tomo.fbp import gridrec
from edgeray.tomo.preprocess import minus_log, normalize
from edgeray.tomo.streaming import StreamingSlices, acquisition_order

FRACTIONS = (0.05, 0.08, 0.12, 0.16, 0.2, 0.25, 0.32, 0.4, 0.5, 0.6, 0.8, 1.0)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def quality(n_volumes: int, angles: int = 180, size: int = 128, slices: int = 4) -> dict[float, dict]:
    model, _ = load_denoiser(SHIPPED_STREAM_DENOISER)
    scores: dict[float, dict[str, list]] = {f: {"raw": [], "enhanced": [], "raw_vs_full": []} for f in FRACTIONS}
    stops = {max(1, round(f * angles)): f for f in FRACTIONS}
    for k in range(n_volumes):
        scan = simulate_tomo(TomoSimConfig(phantom="foam" if k % 2 == 0 else "shepp", size=size, slices=slices,
                                           angles=angles, photons=1e4, seed=2000 + k))  # fmt: skip
        line_integrals = minus_log(normalize(scan.projections, scan.flats, scan.darks))
        stream = StreamingSlices(slices, size, angles, update_every=angles + 1)
        final = None
        for received, which in enumerate(acquisition_order(scan.theta_deg, "golden"), start=1):
            stream.add(line_integrals[which], scan.theta_deg[which], int(which))
            if received in stops:
                stream.update()
                fraction = stops[received]
                scores[fraction]["raw_slices"] = stream.slices.copy()
                enhanced = denoise_volume(stream.slices, model)
                for s in range(slices):
                    scores[fraction]["raw"].append(ssim(stream.slices[s], scan.ground_truth[s]))
                    scores[fraction]["enhanced"].append(ssim(enhanced[s], scan.ground_truth[s]))
                if received == angles:
                    final = stream.slices.copy()
        for fraction in FRACTIONS:  # against the stream's own full-data slices
            raw = scores[fraction].pop("raw_slices")
            scores[fraction]["raw_vs_full"] += [ssim(raw[s], final[s]) for s in range(slices)]
    return {f: {key: float(np.mean(values)) for key, values in v.items()} for f, v in scores.items()}


def latency(repeats: int) -> list[dict]:
    """One 512 x 512 slice, a buffer of 720 projections, updates of 8 or 16 projections (after the buffer is full,
    so every update also subtracts); peers rebuild the slice from the whole buffer."""
    from astra_peer import astra_fbp

    rng = np.random.default_rng(0)
    columns, capacity = 512, 720
    records = []
    for every in (1, 4, 8, 16):
        stream = StreamingSlices(1, columns, capacity, update_every=every)
        theta = np.mod(np.arange(capacity + every * (repeats + 1)) * 180.0 / 1.6180339887, 180.0)
        for index, angle in enumerate(theta):
            stream.add(rng.random((1, columns), dtype=np.float32), angle, index)
        timed = [u["seconds"] for u in stream.updates if u["replaced"] > 0][-repeats:]
        records.append({"update_every": every, "update_ms_median": 1e3 * float(np.median(timed))})
    sinogram = stream.filtered[:, 0]  # any 720 x 512 sinogram will do for the peers' timing
    theta_rad = stream.theta_rad
    for name, run in (("astra FBP (CPU) of the buffer", lambda: astra_fbp(sinogram, theta_rad, columns)),
                      ("EdgeRay gridrec of the buffer", lambda: gridrec(sinogram[None], theta_rad))):  # fmt: skip
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        records.append({"peer": name, "full_ms_median": 1e3 * float(np.median(times))})
    return records


def plot(scores: dict[float, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted(scores)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([100 * f for f in fractions], [scores[f]["raw"] for f in fractions], "o-", label="streamed slices")
    ax.plot([100 * f for f in fractions], [scores[f]["enhanced"] for f in fractions], "s-", label="enhanced (TomoGAN)")
    ax.axhline(scores[1.0]["raw"], color="grey", ls=":", label="streamed, all projections")
    ax.set_xlabel("projections received, % of a half turn")
    ax.set_ylabel("SSIM against the ground truth")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 phantoms, 3 timed updates")
    parser.add_argument("--plot", type=Path, default=None, help="write the quality curve here (PNG)")
    args = parser.parse_args()
    n_volumes, repeats = (2, 3) if args.quick else (6, 10)
    emit({"benchmark": "streaming_tomo", "date": time.strftime("%Y-%m-%d"), "volumes": n_volumes, "angles": 180,
          "photons": 1e4, "size": 128})  # fmt: skip
    scores = quality(n_volumes)
    for fraction, values in sorted(scores.items()):
        emit({"fraction": fraction, "ssim_raw": values["raw"], "ssim_enhanced": values["enhanced"],
              "ssim_raw_vs_full_data": values["raw_vs_full"]})  # fmt: skip
    goal = scores[1.0]["raw"]
    reached = [f for f in sorted(scores) if scores[f]["enhanced"] >= goal]
    for record in latency(repeats):
        emit(record)
    if args.plot:
        plot(scores, args.plot)
    first = reached[0] if reached else None
    emit({"plain_stream_ssim_at_100": goal, "enhanced_reaches_it_at_fraction": first,
          "target_at_most_0.32_met": first is not None and first <= 0.32,
          "acquisition_saved": None if first is None else 1 - first})  # fmt: skip


if __name__ == "__main__":
    main()
