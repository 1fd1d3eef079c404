"""``edgeray demo``: the main job, live streaming on a simulated scan."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from rich.table import Table

from edgeray.cli._common import console, progress_bar
from edgeray.cli.stream import PTYCHO_RATE_HZ
from edgeray.sim import PtychoSimConfig, simulate_ptycho

#: the demo's scan: long enough to watch (8 s at 2 kHz), a dense step so the network's patches overlap
DEMO_SCAN = PtychoSimConfig(n_positions=16000, step_px=4.0, seed=3)
DEMO_TAIL_S = 60.0  # refinement and learning after the last frame, s: the refined image is the demo's end


def _free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    import socket

    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def add_demo(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_demo``."""
    demo = commands.add_parser("demo", help="the main job: live streaming on a simulated scan, all local")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--frames", type=int, default=DEMO_SCAN.n_positions, help="frames in the simulated scan")
    demo.add_argument("--rate", type=float, default=PTYCHO_RATE_HZ, help="detector frame rate, Hz")
    demo.add_argument("--step-px", type=float, default=DEMO_SCAN.step_px, help="scan step, object pixels")
    demo.add_argument("--photons", type=float, default=DEMO_SCAN.photons, help="mean photons per frame")
    demo.add_argument("--seed", type=int, default=DEMO_SCAN.seed)
    demo.add_argument("--port", type=int, default=8765, help="live-view port on 127.0.0.1 (0: any free port)")
    demo.add_argument("--hold", type=float, default=5.0, help="seconds the live view stays up after the scan")
    demo.add_argument("--model", type=Path, default=None, help="edge model directory (default: the shipped one)")
    demo.add_argument("--no-refine", action="store_true", help="the network's image only (no live refinement)")
    demo.add_argument(
        "--refine-tail-s", type=float, default=DEMO_TAIL_S, help="seconds of refinement after the last frame"
    )
    demo.add_argument("--no-learn", action="store_true", help="no continual learning of the sample at the edge")
    demo.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: an edge service in its own process, a simulated detector streaming to it at ``--rate``, the
    live view while it runs, and the final image, run file and summary in ``--out``."""
    import subprocess

    from edgeray.io import read_product
    from edgeray.ptycho.evaluate import compare_on_scanned_region
    from edgeray.stream import connect, replay

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = PtychoSimConfig(n_positions=args.frames, step_px=args.step_px, photons=args.photons, seed=args.seed)
    with progress_bar("simulating the scan", config.n_positions) as update:
        scan = simulate_ptycho(config, progress=update)
    listen = f"tcp://127.0.0.1:{_free_port()}"
    http = f"127.0.0.1:{_free_port(args.port)}"  # the preferred port, or any free one if it is taken
    command = [sys.executable, "-m", "edgeray", "edge", "--listen", listen, "--out", str(out), "--http", http,
               "--publish", "off", "--scans", "1", "--hold", str(args.hold)]  # fmt: skip
    if not args.no_refine:
        command += ["--refine", "--refine-tail-s", str(args.refine_tail_s)]
    if not args.no_learn:
        command += ["--learn", "--learn-tail-s", str(args.refine_tail_s)]
    if args.model is not None:
        command += ["--model", str(args.model)]
    edge = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(edge.stdout.readline() or "{}").get("ready")
        if not ready:
            raise RuntimeError(f"the edge service did not start (exit status {edge.wait()})")
        console.print(f"[bold]live view:[/] {ready['view']}  (open it in a browser while the scan runs)")
        socket = connect(ready["listen"])
        with progress_bar(f"detector at {args.rate:g} frames/s", scan.n_frames) as update:
            report = replay(scan, socket, args.rate, scan_id="scan", progress=update)
        socket.close()
        lines = edge.communicate(timeout=120 + args.hold + args.refine_tail_s)[0].splitlines()
    finally:
        if edge.poll() is None:
            edge.terminate()
            edge.wait(30)
    summary = next(json.loads(line)["summary"] for line in lines if line.startswith('{"summary"'))
    product = read_product(summary["files"]["product"])
    quality = compare_on_scanned_region(product, scan.ground_truth, np.asarray(scan.positions_m))
    result = {"detector": report.as_dict(), "edge": summary, "vs_ground_truth": quality}
    refined_quality = None
    if "refined" in summary["files"]:
        refined = read_product(summary["files"]["refined"])
        refined_quality = compare_on_scanned_region(refined, scan.ground_truth, np.asarray(scan.positions_m))
        result["refined_vs_ground_truth"] = refined_quality
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    table = Table(title="EdgeRay live demo", show_header=False)
    for key, value in [
        ("frames sent / received / written / inferred", f"{report.frames_sent} / {summary['frames_received']} / "
         f"{summary['frames_written']} / {summary['frames_inferred']}"),
        ("detector rate, jitter p99", f"{report.rate_hz:,.0f} frames/s, {report.jitter_us_p99:,.0f} us"),
        ("latency to mosaic p50 / p99", f"{summary['latency_ms_p50']:.1f} / {summary['latency_ms_p99']:.1f} ms"),
        ("phase SSIM vs ground truth, network", f"{quality['ssim_phase']:.2f}"),
        *([("phase SSIM vs ground truth, refined",
            f"{refined_quality['ssim_phase']:.2f} ({summary['refinement']['epochs']:.1f} epochs of live "
            f"{summary['refinement']['engine']}, {summary['refinement']['seconds_after_last_frame']:.1f} s after "
            "the last frame)"),
           ("refined image", summary["files"].get("refined_preview", ""))] if refined_quality else []),
        ("network image", summary["files"].get("preview", "")),
        ("raw frames (CXI)", summary["files"]["raw"]),
    ]:  # fmt: skip
        table.add_row(key, value)
    console.print(table)
    lost = report.frames_sent - summary["frames_written"]
    return 0 if lost == 0 else 1


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    add_demo(groups)
