"""Edge streaming: sustained rate, losses, latency and memory of the edge service, against a serial edge loop.

The edge service (``edgeray edge``) and the detector (``edgeray detector replay``) run as separate processes
sharing this machine's cores, over real ZeroMQ sockets on loopback, with the shipped edge model.

- ``demo``: ``edgeray demo`` (16,000 frames at 2 kHz, live refinement on) ``--demos`` times in a row (5; quick 2,
  with 8,000 frames): p99 latency of each run and frames lost (target: p99 <= 100 ms in every run, nothing lost).
- ``sustain``: 2,000 frames/s of 64x64 uint16 for ``--seconds`` (60; quick 10): sent, received, written,
  inferred, p50/p99 latency from arrival to in-mosaic, the edge's memory at start and end.
- ``ramp``: higher rates for a few seconds each; a rate is sustained when nothing is lost, the detector keeps
  its rate within 2 %, and p99 latency stays <= 100 ms.
- ``throughput``: frames sent as fast as possible; frames/s from first arrival to last frame in the mosaic,
  for our pipelined service and for the peer design, a serial loop that receives, writes, inverts and stitches one
  frame at a time (what a first edge script does; PtychoNN's own edge code is TensorRT + EPICS and does not run
  here). Ratio ours / serial.
- ``soak`` (``--soak SECONDS``): the sustain run made long, to show the edge's memory stays flat.
- ``browser`` (where Debian's Chromium is installed): the sustain run with the live view open in a headless
  browser on the same cores.

Each record carries the edge's own estimate of the rate it could have kept (``max_rate_hz``, from each stage's CPU
time: no stage above one core, all of them within the machine's cores), each stage's CPU and busy (wall) fraction
and the cores the stream used.

Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from edgeray.io import write_cxi
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Edge:
    """``edgeray edge`` in its own process, for ``scans`` scans."""

    def __init__(self, out: Path, scans: int, extra: list[str] | None = None, http: str = "off"):
        self.out = out
        command = [sys.executable, "-m", "edgeray", "edge", "--listen", "tcp://127.0.0.1:0", "--out", str(out),
                   "--http", http, "--publish", "off", "--scans", str(scans), *(extra or [])]  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)
        self.log = out / "edge.log"  # the edge's own log, quoted when a summary does not come
        with self.log.open("w") as log:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
        ready = json.loads(self.process.stdout.readline())["ready"]
        self.endpoint, self.view = ready["listen"], ready["view"]
        self.memory: list[tuple[float, float]] = []
        self._watch = threading.Thread(target=self._sample, daemon=True)
        self._watch.start()

    def _sample(self) -> None:
        start = time.perf_counter()
        while self.process.poll() is None:
            try:
                self.memory.append((time.perf_counter() - start, rss_mb(self.process.pid)))
            except (FileNotFoundError, ProcessLookupError):
                return
            time.sleep(0.5)

    def summary(self, scan_id: str, timeout: float = 120) -> dict:
        path = self.out / f"{scan_id}.json"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
                raise TimeoutError(f"no summary for {scan_id} after {timeout:g} s; the edge's log ends:\n{tail}")
            time.sleep(0.05)
        time.sleep(0.05)
        return json.loads(path.read_text())

    def close(self) -> None:
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.terminate()


def detector(endpoint: str, scan_file: Path, rate: float, scan_id: str, cycles: int) -> dict:
    command = [sys.executable, "-m", "edgeray", "detector", "replay", str(scan_file), "--endpoint", endpoint,
               "--rate", str(rate), "--scan-id", scan_id, "--cycles", str(cycles)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def sustained(summary: dict, report: dict) -> bool:
    return (
        summary["frames_written"] == summary["frames_received"] == report["frames_sent"]
        and summary["frames_inferred"] == report["frames_sent"]
        and report["rate_hz"] >= 0.98 * report["target_rate_hz"]
        and summary["latency_ms_p99"] <= 100
    )


def run_rate(edge: Edge, scan_file: Path, n_frames: int, rate: float, seconds: float, scan_id: str) -> dict:
    cycles = max(1, int(np.ceil(rate * seconds / n_frames)))
    report = detector(edge.endpoint, scan_file, rate, scan_id, cycles)
    summary = edge.summary(scan_id)
    return {
        "rate_target_hz": rate,
        "rate_sent_hz": report["rate_hz"],
        "jitter_us_p99": report["jitter_us_p99"],
        "frames_sent": report["frames_sent"],
        "frames_received": summary["frames_received"],
        "frames_written": summary["frames_written"],
        "frames_inferred": summary["frames_inferred"],
        "frames_lost": report["frames_sent"] - summary["frames_written"],
        "frames_dropped": summary.get("frames_dropped"),
        "frames_not_inverted": summary.get("frames_not_inverted"),
        "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p99": summary["latency_ms_p99"],
        "max_rate_hz": summary.get("max_rate_hz"),
        "stage_busy_fraction": summary.get("stage_busy_fraction"),
        "stage_cpu_fraction": summary.get("stage_cpu_fraction"),
        "stream_cpu_cores": summary.get("stream_cpu_cores"),
        "sustained": sustained(summary, report),
    }


def demo_runs(folder: Path, runs: int, frames: int, tail_s: float) -> None:
    """``edgeray demo`` ``runs`` times in a row, as a user would: p99 latency and losses of each."""
    worst = 0.0
    lost_total = 0
    for run in range(runs):
        out = folder / f"demo{run}"
        command = [sys.executable, "-m", "edgeray", "demo", "--out", str(out), "--frames", str(frames), "--hold", "0",
                   "--port", "0", "--refine-tail-s", str(tail_s)]  # fmt: skip
        subprocess.run(command, capture_output=True, text=True, check=True)
        report = json.loads((out / "demo.json").read_text())
        edge = report["edge"]
        lost = report["detector"]["frames_sent"] - min(edge["frames_written"], edge["frames_inferred"])
        worst, lost_total = max(worst, edge["latency_ms_p99"]), lost_total + lost
        emit({"demo_run": run + 1, "frames": frames, "latency_ms_p50": edge["latency_ms_p50"],
              "latency_ms_p99": edge["latency_ms_p99"], "frames_lost": lost, "max_rate_hz": edge.get("max_rate_hz"),
              "phase_ssim": report["vs_ground_truth"].get("ssim_phase"),
              "refined_phase_ssim": report.get("refined_vs_ground_truth", {}).get("ssim_phase")})  # fmt: skip
    emit({"demo_runs": runs, "worst_latency_ms_p99": worst, "frames_lost": lost_total,
          "target_met": worst <= 100 and lost_total == 0})  # fmt: skip


def browser_run(folder: Path, scan_file: Path, n_frames: int, seconds: float) -> None:
    """The 2 kHz sustain run with the live view open in headless Chromium on the same cores."""
    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        emit({"browser": "skipped: no /usr/bin/chromium"})
        return
    edge = Edge(folder / "browser", 1, http="127.0.0.1:0")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", f"--user-data-dir={folder}/cr"]
    browser = subprocess.Popen([str(chromium), *flags, "--remote-debugging-port=0", edge.view],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(3)  # the page loads and starts polling
        record = run_rate(edge, scan_file, n_frames, 2000, seconds, "browser")
    finally:
        browser.terminate()
        browser.wait(30)
        edge.close()
    emit({"browser": f"2 kHz for {seconds:g} s, live view open", **record,
          "target_met": record["sustained"] and record["frames_lost"] == 0})  # fmt: skip


def serial_edge(endpoint_file: Path, out: Path, n_frames: int) -> None:
    """The peer design: one loop receives, writes, inverts and stitches one frame at a time."""
    import torch
    import zmq

    from edgeray.nn.checkpoint import load_model
    from edgeray.nn.infer import cpu_runtime
    from edgeray.nn.models import normalize_frames
    from edgeray.nn.stitch import to_complex
    from edgeray.stream.mosaic import Mosaic
    from edgeray.stream.protocol import Frame, Start, decode, geometry_of, object_pixel_size_m
    from edgeray.stream.runfile import RunFile

    torch.set_num_threads(2)
    model, card = load_model(None)
    model = cpu_runtime(model, card, None, "auto")
    socket = zmq.Context.instance().socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, 0)
    port = socket.bind_to_random_port("tcp://127.0.0.1")
    endpoint_file.write_text(f"tcp://127.0.0.1:{port}")
    done, first, run, mosaic, scale = 0, None, None, None, None
    while done < n_frames:
        message = decode(socket.recv_multipart(copy=False))
        if isinstance(message, Start):
            run = RunFile(out / "serial.cxi", geometry_of(message), message.dtype)
            mosaic = Mosaic(message.shape, object_pixel_size_m(message))
        elif isinstance(message, Frame):
            first = first or time.perf_counter()
            run.append(message.data[None], np.array([message.position_m]), np.array([message.index]), np.zeros(1))
            counts = torch.from_numpy(message.data.astype(np.float32))[None]
            scale = scale or float(counts.mean())
            amplitude, phase = model(normalize_frames(counts, scale))
            mosaic.add(to_complex(amplitude, phase), np.array([message.position_m]))
            done += 1
    run.close()
    (out / "serial.json").write_text(json.dumps({"frames": done, "seconds": time.perf_counter() - first}))


def throughput(folder: Path, scan_file: Path, n_frames: int) -> None:
    edge = Edge(folder / "fast", 1)
    detector(edge.endpoint, scan_file, 0, "fast", 1)
    ours = edge.summary("fast")
    edge.close()
    # our summary's seconds end at the last arrival; count the time to the last frame in the mosaic too
    ours_rate = ours["frames_inferred"] / (ours["seconds"] + ours["latency_ms_max"] / 1e3)
    (folder / "serial").mkdir()
    endpoint_file = folder / "serial" / "endpoint"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'benchmarks'); from streaming import serial_edge; "
        f"serial_edge(Path({str(endpoint_file)!r}), Path({str(folder / 'serial')!r}), {n_frames})"
    )
    serial = subprocess.Popen([sys.executable, "-c", code])
    while not endpoint_file.exists():
        time.sleep(0.05)
    detector(endpoint_file.read_text(), scan_file, 0, "serial", 1)
    serial.wait(600)
    peer = json.loads((folder / "serial" / "serial.json").read_text())
    peer_rate = peer["frames"] / peer["seconds"]
    emit({"throughput": "as fast as possible", "frames": n_frames, "ours_frames_per_s": ours_rate,
          "serial_frames_per_s": peer_rate, "ratio": ours_rate / peer_rate,
          "ours_lost": n_frames - ours["frames_written"]})  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 s sustain, short ramp (about two minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="sustain duration (default 60; quick 10)")
    parser.add_argument("--soak", type=float, default=0, help="also run a soak of this many seconds at 2 kHz")
    parser.add_argument("--demos", type=int, default=None, help="`edgeray demo` runs in a row (default 5; quick 2)")
    args = parser.parse_args()
    seconds = args.seconds or (10 if args.quick else 60)
    emit({"benchmark": "streaming", "date": time.strftime("%Y-%m-%d"), "cores": 2, "model": "shipped edge"})
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        demo_runs(folder, args.demos or (2 if args.quick else 5), 8000 if args.quick else 16000,
                  2.0 if args.quick else 30.0)  # fmt: skip
        n_frames = 8000
        scan = simulate_ptycho(PtychoSimConfig(n_positions=n_frames, step_px=4, seed=3))
        scan_file = write_cxi(folder / "scan.cxi", scan, compression="none")
        rates = [4000, 6000, 8000] if args.quick else [3000, 4000, 5000, 6000, 8000, 10000, 12000]
        edge = Edge(folder / "edge", 1 + len(rates))
        result = run_rate(edge, scan_file, n_frames, 2000, seconds, "sustain")
        memory = [mb for t, mb in edge.memory if t > 2]
        emit({"sustain": f"2 kHz for {seconds:g} s", **result,
              "edge_rss_mb_start": memory[0] if memory else None, "edge_rss_mb_end": memory[-1] if memory else None,
              "target_met": result["sustained"] and result["frames_lost"] == 0})  # fmt: skip
        best = 2000 if result["sustained"] else 0
        for rate in rates:
            record = run_rate(edge, scan_file, n_frames, rate, 3 if args.quick else 5, f"ramp-{rate}")
            emit({"ramp": rate, **record})
            if record["sustained"]:
                best = max(best, rate)
        edge.close()
        emit({"highest_sustained_hz": best, "rates_tried": [2000, *rates]})
        throughput(folder, scan_file, n_frames)
        browser_run(folder, scan_file, n_frames, seconds)
        if args.soak:
            edge = Edge(folder / "soak", 1)
            record = run_rate(edge, scan_file, n_frames, 2000, args.soak, "soak")
            edge.close()
            memory = np.array([mb for t, mb in edge.memory if t > 5])
            emit({"soak_s": args.soak, **record, "edge_rss_mb_first_minute": float(memory[:120].mean()),
                  "edge_rss_mb_last_minute": float(memory[-120:].mean()),
                  "edge_rss_mb_max": float(memory.max())})  # fmt: skip


if __name__ == "__main__":
    main()
