"""Frame transports side by side: EPICS PV Access (p4p, areaDetector's NTNDArray, through EdgeRay's bridge) and
EdgeRay's ZeroMQ protocol, on loopback, same frames, one run.

For each frame size: a sender process (a p4p server posting NTNDArray updates / a ZeroMQ PUSH socket sending the
protocol's messages) and this process receiving into a ZeroMQ PULL socket as the edge's receiver does (for PV
Access: subscription -> bridge -> the edge's socket). Two runs each: as fast as the sender can (the transport's
rate) and paced at 2 kHz (CPU per frame at the demo's rate). Reported: frames received of sent, rate, receiving CPU
per frame (every thread of the receiving process: p4p's network thread, the bridge, the socket), sending CPU per
frame.

Prints one JSON object per line; the last holds the ratios. ``--quick``: 64 x 64 only, fewer frames.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import zmq

SENDER = r"""
import json, sys, time
import numpy as np
transport, n, size, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
frames = np.random.default_rng(0).integers(0, 4000, (64, size, size)).astype(np.uint16)
geometry = {"energy_eV": 8000.0, "detector_distance_m": 2.0, "detector_pixel_size_m": [75e-6, 75e-6]}
period = 1.0 / rate if rate > 0 else 0.0
if transport == "pva":
    from edgeray.stream.pva_server import serve
    server = serve("bench:image", (size, size))
    print(json.dumps({"address": server.address}), flush=True)
    server.subscribers.first.wait(60)
    send = lambda i: server.post(frames[i % 64], i + 1, {**geometry, "n_frames": n, "position_y_m": 1e-8 * i,
                                                         "position_x_m": 0.0})
else:
    import zmq
    from edgeray.stream.protocol import encode_end, encode_frame, encode_start
    socket = zmq.Context.instance().socket(zmq.PUSH)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.connect(sys.argv[5])
    print(json.dumps({"address": sys.argv[5]}), flush=True)
    socket.send_multipart(encode_start("bench", "uint16", (size, size), geometry, n))
    send = lambda i: socket.send_multipart(encode_frame("bench", i, frames[i % 64], (1e-8 * i, 0.0), time.time_ns()))
cpu, t0 = time.process_time(), time.perf_counter()
for i in range(n):
    if period:
        delay = t0 + i * period - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    send(i)
seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu
if transport == "zmq":
    socket.send_multipart(encode_end("bench", n))
time.sleep(10.0)  # what is queued leaves before the sender goes (a receiver behind by seconds)
print(json.dumps({"seconds": seconds, "cpu_s": cpu}), flush=True)
"""


def process_cpu_s() -> float:
    """CPU seconds of every thread of this process (p4p's C++ threads included)."""
    return time.process_time()


def run(transport: str, n: int, size: int, rate: float) -> dict:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.bind("tcp://127.0.0.1:0" if transport == "zmq" else "inproc://edge")
    endpoint = pull.getsockopt_string(zmq.LAST_ENDPOINT)
    sender = subprocess.Popen([sys.executable, "-c", SENDER, transport, str(n), str(size), str(rate), endpoint],
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    bridge = None
    try:
        address = json.loads(sender.stdout.readline())["address"]
        cpu = process_cpu_s()
        if transport == "pva":
            from edgeray.stream.pva import PvaBridge, PvaOptions

            bridge = PvaBridge(PvaOptions("bench:image", name_server=address, idle_s=5.0), endpoint, context).start()
        pull.setsockopt(zmq.RCVTIMEO, 20000)
        received, first, last = 0, None, None
        while True:
            try:
                parts = pull.recv_multipart(copy=False)
            except zmq.Again:
                break
            if len(parts) == 2:
                received += 1
                last = time.perf_counter()
                first = first or last
            elif b'"end"' in parts[0].bytes:
                break
        cpu = process_cpu_s() - cpu
        sent = json.loads(sender.communicate(timeout=120)[0].strip().splitlines()[-1])
    finally:
        if sender.poll() is None:
            sender.kill()
        if bridge is not None:
            bridge.stop()
        pull.close(0)
        context.term()
    seconds = (last - first) if received > 1 else float("nan")
    return {
        "transport": "pva (p4p + bridge)" if transport == "pva" else "zeromq",
        "frame": f"{size}x{size} uint16",
        "target_hz": rate or "max",
        "sent": n,
        "received": received,
        "rate_hz": (received - 1) / seconds if received > 1 else 0.0,
        "receive_cpu_us_per_frame": cpu / max(received, 1) * 1e6,
        "send_cpu_us_per_frame": sent["cpu_s"] / n * 1e6,
        "receive_cores_at_rate": cpu / max(received, 1) * ((received - 1) / seconds if received > 1 else 0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 x 64 only, fewer frames (about two minutes)")
    args = parser.parse_args()
    sizes = (64,) if args.quick else (64, 128, 256)
    n_max, n_paced = (10000, 6000) if args.quick else (40000, 20000)
    print(json.dumps({"machine": f"{os.cpu_count()} cores", "python": sys.version.split()[0]}), flush=True)
    rows = []
    for size in sizes:
        for rate, n in ((0.0, n_max), (2000.0, n_paced)):
            for transport in ("zmq", "pva"):
                row = run(transport, n if size == 64 else n // 4, size, rate)
                rows.append(row)
                print(json.dumps(row), flush=True)
    ratios = {}
    for size in sizes:
        pick = {(r["transport"][:3], r["target_hz"]): r for r in rows if r["frame"].startswith(f"{size}x")}
        ratios[f"{size}x{size}"] = {
            "max_rate_zmq_over_pva": pick[("zer", "max")]["rate_hz"] / max(pick[("pva", "max")]["rate_hz"], 1e-9),
            "cpu_per_frame_pva_over_zmq_at_2khz": pick[("pva", 2000.0)]["receive_cpu_us_per_frame"]
            / pick[("zer", 2000.0)]["receive_cpu_us_per_frame"],
            "lost_pva": sum(r["sent"] - r["received"] for (kind, _), r in pick.items() if kind == "pva"),
            "lost_zmq": sum(r["sent"] - r["received"] for (kind, _), r in pick.items() if kind == "zer"),
        }
    print(json.dumps({"summary": ratios}), flush=True)


if __name__ == "__main__":
    main()
