"""The edge-to-HPC flow: overlapped against one-after-another, the edge stream during a live flow, and what the
model swap does to the edge image.

1. Scans 1..K (simulated, the same probe and geometry, objects from one set of images) go through reconstruct ->
   labels -> fine-tune -> deploy on local Parsl executors (``reconstruct`` and ``train``, one worker each, one
   core each), once with every task waited for before the next is submitted and once overlapped; same tasks, same
   inputs, one run. Each fine-tuning uses the newest scan's labels plus as many frames replayed from earlier
   scans (bounded replay, so each costs the same). Without ``--quick``, both once more fine-tuning on all labels
   so far (the unbounded setting, whose fine-tuning grows scan by scan).
2. Live: an edge service (its own process, following the registry) receives scans 1..K from a detector at 2 kHz,
   then scans of new objects (10 s each, still at 2 kHz) until the flow has ended, while ``edgeray workflow run
   --follow`` takes each training scan from the edge's run folder as it ends and deploys new models, which the edge
   swaps in mid-stream. Reported:
   frames sent / received / written / inferred, p99 latency, the swaps.
3. Learning: scan K+1 (new objects) inverted by the registry's first version (before the flow) and its last: phase
   SSIM of the stitched edge image against the ground truth.

Prints one JSON object per line; the last has ``speedup``, ``ssim_before`` and ``ssim_after``.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeray.io import write_cxi
from edgeray.nn.checkpoint import SHIPPED
from edgeray.nn.infer import infer_scan
from edgeray.nn.registry import Registry
from edgeray.ptycho.evaluate import compare_on_scanned_region
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.workflow import FlowOptions, local_config, run_flow

TRAIN_OBJECTS = ["camera,astronaut", "coins,moon", "text,brick", "grass,gravel", "cell,page", "moon,camera"]
RATE_HZ = 2000.0


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def flow_record(name: str, report: dict) -> dict:
    return {"flow": name, "end_to_end_s": report["end_to_end_s"], "executor_startup_s": report["executor_startup_s"],
            "tasks": {t["label"]: [round(t["start"] - report["began"], 2), round(t["end"] - report["began"], 2)]
                      for t in report["tasks"]}}  # fmt: skip


def detector(endpoint: str, scan_file: Path, scan_id: str, cycles: int = 1) -> dict:
    command = [sys.executable, "-m", "edgeray", "detector", "replay", str(scan_file), "--endpoint", endpoint,
               "--rate", str(RATE_HZ), "--scan-id", scan_id, "--cycles", str(cycles)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def live(folder: Path, scans: list[Path], test_scan: Path, frames: int, options: FlowOptions) -> dict:
    """Edge + detector + ``workflow run --follow``, all at once: the training scans, then stream segments of
    new objects (about 10 s each, at 2 kHz) until the flow has ended, plus one more; returns the stream figures."""
    registry = folder / "registry-live"
    Registry(registry).publish(SHIPPED, {"source": "shipped model (flow start)"})
    run_dir = folder / "live-run"
    edge = subprocess.Popen(
        [sys.executable, "-m", "edgeray", "edge", "--listen", "tcp://127.0.0.1:0", "--out", str(run_dir), "--http",
         "off", "--publish", "off", "--registry", str(registry)],
        stdout=subprocess.PIPE, stderr=(folder / "edge.log").open("w"), text=True,
    )  # fmt: skip
    endpoint = json.loads(edge.stdout.readline())["ready"]["listen"]
    flow = subprocess.Popen(
        [sys.executable, "-m", "edgeray", "workflow", "run", "--follow", str(run_dir), "--n-scans", str(len(scans)),
         "--registry", str(registry), "--out", str(folder / "live-work"), "--epochs", str(options.epochs),
         "--finetune-epochs", str(options.finetune_epochs), "--replay", str(options.replay), "--idle-timeout", "300"],
        stdout=subprocess.DEVNULL, stderr=(folder / "flow.log").open("w"),
    )  # fmt: skip
    sent = []
    try:
        for k, scan in enumerate(scans, start=1):
            detector(endpoint, scan, f"train{k}")
        cycles = max(1, math.ceil(RATE_HZ * 10 / frames))
        while flow.poll() is None and len(sent) < 60:
            sent.append(detector(endpoint, test_scan, f"stream{len(sent) + 1}", cycles))
        sent.append(detector(endpoint, test_scan, f"stream{len(sent) + 1}", cycles))  # the last model's turn
        flow_status = flow.wait(600)
        edge.send_signal(signal.SIGTERM)
        edge.wait(120)
    finally:
        for process in (flow, edge):
            if process.poll() is None:
                process.kill()
    segments = [json.loads((run_dir / f"stream{k}.json").read_text()) for k in range(1, len(sent) + 1)]
    timeline = json.loads((folder / "live-work" / "timeline.json").read_text())
    frames_sent = sum(report["frames_sent"] for report in sent)
    return {
        "live": True, "flow_exit_status": flow_status, "flow_end_to_end_s": timeline["end_to_end_s"],
        "rate_target_hz": RATE_HZ, "rate_sent_hz_min": min(report["rate_hz"] for report in sent),
        "segments": len(segments), "frames_sent": frames_sent,
        **{f"frames_{what}": sum(s[f"frames_{what}"] for s in segments)
           for what in ("received", "written", "inferred")},
        "frames_lost": frames_sent - sum(s["frames_written"] for s in segments),
        "latency_ms_p50_max": max(s["latency_ms_p50"] for s in segments),
        "latency_ms_p99_max": max(s["latency_ms_p99"] for s in segments),
        "latency_ms_p99_segments": [round(s["latency_ms_p99"], 1) for s in segments],
        "swaps": [{"to": swap["registry_version"], "load_s": round(swap["load_s"], 3)}
                  for s in segments for swap in s["model_swaps"]],
        "versions_per_segment": [sorted(v.split("@")[0] for v in s["model_versions"]) for s in segments],
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 scans of 400 frames (about two minutes)")
    args = parser.parse_args()
    # LSQML epochs and fine-tuning epochs are set so the two stages take about as long (the overlap of two stages
    # on two workers gains at most 2K/(K+1) for K scans, and only when they are balanced)
    n_scans, frames, epochs, finetune_epochs = (4, 400, 40, 3) if args.quick else (5, 900, 60, 4)
    emit({"benchmark": "workflow", "date": time.strftime("%Y-%m-%d"), "scans": n_scans, "frames": frames,
          "lsqml_epochs": epochs, "finetune_epochs": finetune_epochs, "replay_frames": frames,
          "executors": "reconstruct (1 worker), train (1 worker)"})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        scans = [
            write_cxi(folder / f"scan{k}.cxi",
                      simulate_ptycho(PtychoSimConfig(n_positions=frames, object=TRAIN_OBJECTS[k], seed=k)))
            for k in range(n_scans)
        ]  # fmt: skip
        new_scan = simulate_ptycho(PtychoSimConfig(n_positions=frames, object="chelsea,coffee", seed=99))
        test_file = write_cxi(folder / "new.cxi", new_scan)
        reports = {}
        modes = [("sequential", False, frames), ("overlapped", True, frames)]
        if not args.quick:
            modes += [("sequential-all-labels", False, None), ("overlapped-all-labels", True, None)]
        for name, overlap, replay in modes:
            options = FlowOptions(epochs=epochs, finetune_epochs=finetune_epochs, overlap=overlap, replay=replay)
            reports[name] = run_flow(scans, folder / f"registry-{name}", folder / name,
                                     local_config(folder / f"parsl-{name}"), options)  # fmt: skip
            emit(flow_record(name, reports[name]))
        options = FlowOptions(epochs=epochs, finetune_epochs=finetune_epochs, replay=frames)
        stream = live(folder, scans, test_file, frames, options)
        emit(stream)
        registry = Registry(folder / "registry-overlapped")
        scores = {}
        for label, version in (("before", registry.versions()[0]), ("after", registry.versions()[-1])):
            product = infer_scan(new_scan, registry.path(version)).product
            scores[label] = compare_on_scanned_region(product, new_scan.ground_truth, new_scan.positions_m)
        speedup = reports["sequential"]["end_to_end_s"] / reports["overlapped"]["end_to_end_s"]
        all_labels = None
        if "overlapped-all-labels" in reports:
            all_labels = (
                reports["sequential-all-labels"]["end_to_end_s"] / reports["overlapped-all-labels"]["end_to_end_s"]
            )
        emit({"speedup": speedup, "sequential_s": reports["sequential"]["end_to_end_s"],
              "overlapped_s": reports["overlapped"]["end_to_end_s"], "speedup_all_labels": all_labels,
              "bound_balanced": 2 * n_scans / (n_scans + 1),
              "ssim_before": scores["before"]["ssim_phase"], "ssim_after": scores["after"]["ssim_phase"],
              "rel_error_before": scores["before"]["rel_error"], "rel_error_after": scores["after"]["rel_error"],
              "target_speedup_met": speedup >= 1.5,
              "swap_improves": scores["after"]["ssim_phase"] > scores["before"]["ssim_phase"],
              "stream_lossless": stream["frames_lost"] == 0 and stream["frames_inferred"] == stream["frames_sent"],
              "stream_p99_within_100ms": stream["latency_ms_p99_max"] <= 100})  # fmt: skip


if __name__ == "__main__":
    main()
