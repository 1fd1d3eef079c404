"""The edge-to-HPC flow: overlapped against one-after-another, and what the model swap does to the edge image.

Scans 1..K (simulated, the same probe and geometry, objects from one set of images) go through reconstruct ->
labels -> fine-tune -> deploy on a local Parsl HighThroughputExecutor (2 workers, one per core), once overlapped
and once with every task waited for before the next is submitted; same tasks, same inputs, one run.
The same twice more with bounded replay (each fine-tuning on the newest scan's labels plus as many frames drawn
from the earlier ones). Then scan K+1 (new objects) is inverted by the edge's model before the flow (the
registry's first version) and after it (the last deployed version): phase SSIM of the stitched edge image against
the ground truth.
Prints one JSON object per line; the last has ``speedup``, ``ssim_before`` and ``ssim_after``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from edgeray.io import write_cxi
from edgeray.nn.infer import infer_scan
from edgeray.nn.registry import Registry
from edgeray.ptycho.evaluate import compare_on_scanned_region
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.workflow import FlowOptions, local_config, run_flow

TRAIN_OBJECTS = ["camera,astronaut", "coins,moon", "text,brick", "grass,gravel", "cell,page", "moon,camera"]


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 scans of 400 frames (about two minutes)")
    args = parser.parse_args()
    n_scans, frames, epochs, finetune_epochs = (3, 400, 15, 3) if args.quick else (4, 900, 30, 8)
    emit({"benchmark": "workflow", "date": time.strftime("%Y-%m-%d"), "scans": n_scans, "frames": frames,
          "lsqml_epochs": epochs, "finetune_epochs": finetune_epochs, "workers": 2})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scans = [
            write_cxi(folder / f"scan{k}.cxi",
                      simulate_ptycho(PtychoSimConfig(n_positions=frames, object=TRAIN_OBJECTS[k], seed=k)))
            for k in range(n_scans)
        ]  # fmt: skip
        reports = {}
        for overlap, replay in ((False, None), (True, None), (False, frames), (True, frames)):
            name = ("overlapped" if overlap else "sequential") + ("" if replay is None else "-replay")
            options = FlowOptions(epochs=epochs, finetune_epochs=finetune_epochs, overlap=overlap, replay=replay)
            report = run_flow(scans, folder / f"registry-{name}", folder / name,
                              local_config(folder / f"parsl-{name}"), options)  # fmt: skip
            reports[name] = report
            emit({"flow": name, "end_to_end_s": report["end_to_end_s"],
                  "executor_startup_s": report["executor_startup_s"],
                  "tasks": {t["label"]: [t["start"] - report["began"], t["end"] - report["began"]]
                            for t in report["tasks"]}})  # fmt: skip
        registry = Registry(folder / "registry-overlapped")
        new_scan = simulate_ptycho(PtychoSimConfig(n_positions=frames, object="chelsea,coffee", seed=99))
        scores = {}
        for label, version in (("before", registry.versions()[0]), ("after", registry.versions()[-1])):
            product = infer_scan(new_scan, registry.path(version)).product
            scores[label] = compare_on_scanned_region(product, new_scan.ground_truth, new_scan.positions_m)
        replay_speedup = reports["sequential-replay"]["end_to_end_s"] / reports["overlapped-replay"]["end_to_end_s"]
        emit({"replay_frames": frames, "speedup_with_replay": replay_speedup,
              "sequential_replay_s": reports["sequential-replay"]["end_to_end_s"],
              "overlapped_replay_s": reports["overlapped-replay"]["end_to_end_s"]})  # fmt: skip
        speedup = reports["sequential"]["end_to_end_s"] / reports["overlapped"]["end_to_end_s"]
        emit({"speedup": speedup, "sequential_s": reports["sequential"]["end_to_end_s"],
              "overlapped_s": reports["overlapped"]["end_to_end_s"],
              "ssim_before": scores["before"]["ssim_phase"], "ssim_after": scores["after"]["ssim_phase"],
              "rel_error_before": scores["before"]["rel_error"], "rel_error_after": scores["after"]["rel_error"],
              "target_speedup_met": speedup >= 1.5,
              "swap_improves": scores["after"]["ssim_phase"] > scores["before"]["ssim_phase"]})  # fmt: skip


if __name__ == "__main__":
    main()
