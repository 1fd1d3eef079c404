"""Every second of every scan: the edge's latency from a scan's first second on, one scan and scans back to back.

The edge service (``edgeray edge --http off --publish off``) and a paced detector client run as separate
processes over real ZeroMQ on loopback, with the shipped edge model (issue 33):

- ``one scan``: 10,000 frames (quick 4,000) at 2 kHz: p99 latency (arrival to in-mosaic) of each second of the scan,
  the first included (target: every second <= 50 ms);
- ``back to back``: 10 scans (quick 4) of 3,600 frames at 2 kHz, 0.1 s apart: every frame written, and each
  scan's first-second p99 and worst second (target: every second <= 50 ms);
- ``rate``: the highest of 3, 4 and 5 kHz at which a 4 s scan keeps p99 <= 100 ms with nothing lost.

The peer is the edge as it was before its stages were split (issue 33's figures: first second 208 ms, back-to-back
first seconds 85-885 ms); the records carry each scan's whole per-second profile. Prints one JSON object per line.

    python benchmarks/edge_scans.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from edgeray.io import write_cxi
from edgeray.sim import PtychoSimConfig, simulate_ptycho

CLIENT = textwrap.dedent(
    """
    import json, sys, time
    import zmq
    from edgeray.io import read_cxi
    from edgeray.stream import connect, replay

    endpoint, path, rate, scans, gap_s, prefix = sys.argv[1:7]
    scan = read_cxi(path)
    socket = connect(endpoint)
    reports = []
    for k in range(int(scans)):
        report = replay(scan, socket, float(rate), scan_id=f"{prefix}{k}")
        reports.append(report.as_dict())
        time.sleep(float(gap_s))
    socket.close(linger=10000)
    print(json.dumps(reports))
    """
)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def start_edge(out: Path, scans: int) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "edgeray", "edge", "--listen", "tcp://127.0.0.1:0", "--out", str(out),
               "--http", "off", "--publish", "off", "--scans", str(scans)]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "edge.log").open("w")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
    ready = json.loads(process.stdout.readline())["ready"]
    return process, ready["listen"]


def run(folder: Path, scan_file: Path, rate: float, scans: int, gap_s: float, prefix: str) -> list[dict]:
    """``scans`` replays of ``scan_file`` at ``rate`` into a fresh edge; each scan's summary."""
    out = folder / prefix
    edge, endpoint = start_edge(out, scans)
    client = subprocess.run([sys.executable, "-c", CLIENT, endpoint, str(scan_file), str(rate), str(scans),
                             str(gap_s), prefix], capture_output=True, text=True, check=True)  # fmt: skip
    reports = json.loads(client.stdout.strip().splitlines()[-1])
    edge.wait(300)
    summaries = [json.loads((out / f"{prefix}{k}.json").read_text()) for k in range(scans)]
    for report, summary in zip(reports, summaries, strict=True):
        summary["frames_sent"] = report["frames_sent"]
        summary["rate_sent_hz"] = report["rate_hz"]
    return summaries


def record(case: str, summary: dict) -> dict:
    profile = summary["latency_ms_p99_per_s"]
    return {
        "case": case,
        "scan": summary["scan_id"],
        "frames_sent": summary["frames_sent"],
        "frames_written": summary["frames_written"],
        "frames_inferred": summary["frames_inferred"],
        "frames_lost": summary["frames_sent"] - summary["frames_written"],
        "rate_hz": summary["rate_sent_hz"],
        "latency_ms_p99": summary["latency_ms_p99"],
        "first_second_p99_ms": profile[0] if profile else None,
        "worst_second_p99_ms": max(profile) if profile else None,
        "p99_per_s": profile,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="shorter scans, fewer of them")
    args = parser.parse_args()
    long_frames, n_scans = (4000, 4) if args.quick else (10000, 10)
    emit({"benchmark": "edge_scans", "date": time.strftime("%Y-%m-%d"), "quick": args.quick})
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        files = {}
        for n in (long_frames, 3600, 8000):
            files[n] = write_cxi(folder / f"scan{n}.cxi", simulate_ptycho(PtychoSimConfig(n_positions=n, seed=2)))
        (one,) = run(folder, files[long_frames], 2000, 1, 0.0, "long")
        emit(record("one scan, 2 kHz", one))
        worst = []
        for summary in run(folder, files[3600], 2000, n_scans, 0.1, "b2b"):
            emit(record("back to back, 2 kHz, 0.1 s apart", summary))
            worst.append(max(summary["latency_ms_p99_per_s"] or [0.0]))
        kept = None
        for rate in (3000, 4000, 5000):
            (summary,) = run(folder, files[8000], rate, 1, 0.0, f"rate{rate}-")
            result = record(f"rate {rate / 1000:g} kHz", summary)
            result["sustained"] = result["frames_lost"] == 0 and summary["latency_ms_p99"] <= 100
            emit(result)
            if result["sustained"]:
                kept = rate
        emit({"summary": {"one_scan_worst_second_ms": max(one["latency_ms_p99_per_s"]),
                          "back_to_back_worst_second_ms": max(worst), "sustained_rate_hz": kept,
                          "target_ms": 50.0}})  # fmt: skip


if __name__ == "__main__":
    main()
