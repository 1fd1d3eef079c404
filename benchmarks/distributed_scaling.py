"""ML-CG across ranks (PtyGer's scheme on torch.distributed, gloo on 127.0.0.1): strong scaling on this machine,
what moves per epoch, and a model of the bytes for a large scan.

Runs, on one simulated scan, same seed and epochs: the one-process engine (the reference and the peer: a single
device), then 1, 2 and 4 ranks with halo exchange, and 2 ranks all-reducing the whole object (the plain scheme);
then LSQML and ePIE (mini-batches of 96 frames), one process against 2 ranks.
This machine has 2 cores, so 4 ranks are oversubscribed: they show correctness, not speed. Each run reports the
median time per epoch (after the first), the share of it spent in communication, the bytes each rank sent per
epoch, and the largest difference of its object from the one-process one. Then the model: bytes per epoch and rank
for a 10^5-frame scan of 256 x 256 frames (step 64 px, a square object) against the number of ranks, halo
exchange against all-reducing the whole object.

``--device cuda`` (a machine with one GPU): the one-process engine on the GPU against one NCCL rank on it, the
same scan, seed and epochs (NCCL allows one rank per GPU, so more ranks need more GPUs).

Prints one JSON object per line; the last has the headline figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from edgeray.io import read_cxi, read_product, write_cxi
from edgeray.ptycho.distributed import launch
from edgeray.ptycho.mlcg import MLCGOptions
from edgeray.ptycho.reconstruct import default_options, run
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def bytes_model(frames: int = 100_000, frame: int = 256, step: int = 64, ranks: int = 2) -> dict:
    """Bytes one rank sends per ML-CG epoch: the gradient (complex64) and the illumination (float32) are
    object-shaped; the probe gradient (complex64) and its weight (float32) are frame-shaped."""
    side = math.sqrt(frames) * step + frame  # object side, pixels
    per_pixel = 8 + 4
    probe = frame * frame * per_pixel
    ring = 2 * (ranks - 1) / ranks  # a ring all-reduce sends this many times the tensor per rank
    allreduce = ring * (side * side * per_pixel + probe)
    tile = side / math.sqrt(ranks)
    halo_strips = 4 * tile * frame if ranks > 1 else 0  # a tile's four sides, one probe width deep
    halo = halo_strips * per_pixel + ring * probe
    return {"ranks": ranks, "object_side_px": round(side), "object_GB": side * side * 8 / 1e9,
            "allreduce_MB_per_epoch": allreduce / 1e6, "halo_MB_per_epoch": halo / 1e6,
            "ratio": allreduce / halo if halo else None}  # fmt: skip


def summarize(name: str, summary: dict, reference: np.ndarray, output: Path) -> dict:
    epochs = summary["communication"][0]["epochs"][1:] or summary["communication"][0]["epochs"]
    seconds = float(np.median([e["seconds"] for e in epochs]))
    communication = float(np.median([e["communication_s"] for e in epochs]))
    sent = [float(np.median([sum(v["bytes"] for k, v in e.items() if isinstance(v, dict)) for e in rank["epochs"]]))
            for rank in summary["communication"]]  # fmt: skip
    obj = read_product(output).object[0]
    return {"run": name, "ranks": summary["ranks"], "exchange": summary["exchange"], "seconds_per_epoch": seconds,
            "communication_share": communication / seconds, "MB_sent_per_epoch_per_rank_max": max(sent) / 1e6,
            "frames_per_rank": [r["frames"] for r in summary["communication"]],
            "max_rel_difference_vs_one_process": float(np.abs(obj - reference).max() / np.abs(reference).max()),
            }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1,000 frames, 5 epochs")
    parser.add_argument("--device", default="cpu", help="cpu (gloo ranks) or cuda (one NCCL rank on one GPU)")
    args = parser.parse_args()
    frames, epochs = (1000, 5) if args.quick else (4000, 10)
    gpu = args.device.startswith("cuda")
    emit({"benchmark": "distributed_scaling", "date": time.strftime("%Y-%m-%d"), "frames": frames, "epochs": epochs,
          "frame_px": 64, "backend": "nccl" if gpu else "gloo", "device": args.device,
          "device_name": torch.cuda.get_device_name() if gpu else f"{os.cpu_count()} CPU cores"})  # fmt: skip
    options = MLCGOptions()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = write_cxi(folder / "scan.cxi", simulate_ptycho(PtychoSimConfig(n_positions=frames, seed=5)))
        scan = read_cxi(path)
        serial = run(scan, "mlcg", epochs, args.device, options=options)
        one = float(np.median(serial.history.seconds[1:]))
        reference = serial.product.object[0]
        emit({"run": "one process (peer: a single device)", "device": args.device, "seconds_per_epoch": one})
        if gpu:
            output = folder / "nccl-1.h5"
            record = summarize("1 NCCL rank", launch(1, path, output, epochs, options, device=args.device), reference,
                               output)  # fmt: skip
            record["time_vs_one_process"] = record["seconds_per_epoch"] / one
            emit(record)
            return
        records = []
        for name, ranks, exchange in (("1 rank", 1, "halo"), ("2 ranks, halo", 2, "halo"),
                                      ("2 ranks, all-reduce object", 2, "allreduce"),
                                      ("4 ranks, halo (oversubscribed)", 4, "halo")):  # fmt: skip
            output = folder / f"{ranks}-{exchange}.h5"
            summary = launch(ranks, path, output, epochs, options, exchange=exchange)
            record = summarize(name, summary, reference, output)
            record["speedup_vs_one_process"] = one / record["seconds_per_epoch"]
            records.append(record)
            emit(record)
        for engine in ("lsqml", "epie"):  # mini-batch engines: a halo exchange per batch (96 frames), not per epoch
            options_mb = default_options(engine, momentum=0.0)  # not distributed (it needs the whole object)
            serial_mb = run(scan, engine, epochs, options=options_mb)
            one_mb = float(np.median(serial_mb.history.seconds[1:]))
            output = folder / f"{engine}-2.h5"
            summary = launch(2, path, output, epochs, options_mb, engine=engine)
            record = summarize(f"{engine}, 2 ranks, halo", summary, serial_mb.product.object[0], output)
            record.update(engine=engine, one_process_seconds_per_epoch=one_mb,
                          speedup_vs_one_process=one_mb / record["seconds_per_epoch"])  # fmt: skip
            records.append(record)
            emit(record)
    for ranks in (2, 4, 16, 64, 256):
        emit({"model": "1e5 frames, 256 x 256, step 64 px", **bytes_model(ranks=ranks)})
    halo, plain = records[1], records[2]
    emit({"speedup_2_ranks": halo["speedup_vs_one_process"],
          "max_rel_difference": max(r["max_rel_difference_vs_one_process"] for r in records),
          "allreduce_over_halo_bytes_2_ranks":
              plain["MB_sent_per_epoch_per_rank_max"] / halo["MB_sent_per_epoch_per_rank_max"],
          "model_ratio_64_ranks": bytes_model(ranks=64)["ratio"],
          **{f"speedup_2_ranks_{r['engine']}": r["speedup_vs_one_process"]
             for r in records if "engine" in r}})  # fmt: skip


if __name__ == "__main__":
    main()
