"""Publishing to Tiled costs the stream nothing: the edge at 2 kHz without Tiled, with a Tiled server, and with a
Tiled URI where no server answers, side by side (issue 37).

The edge service (``edgeray edge --http off --publish off [--tiled URI]``), a paced detector client and a real
Tiled server (``tiled serve catalog`` with an API key) run as separate processes on 127.0.0.1. Each round runs the
three cases on the same scan, one after another; a reader in this process (Tiled's Python client) watches the live
image while the scan runs. Reported per run: frames sent and written, p99 latency (arrival to in-mosaic); with a
server, the live image's largest lag behind the edge (from the edge's snapshot to the moment the next image was
readable in Tiled), the reader's longest wait between two new images, and whether the products read back through
Tiled's client equal the files. Targets: no frame lost, p99 within 5 ms of no Tiled, lag <= 1 s.

On this 2-core machine the server shares the cores with the detector and the edge; ``--server-nice`` (default 10)
lowers its priority, standing in for a server on a host of its own (0: equal shares). Prints one JSON object per
line, then a summary with the median p99 of each case and the differences.

    python benchmarks/tiled_publish.py [--quick] [--rounds N] [--server-nice 10]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np

from edgeray.io import read_product, write_cxi
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from tiled_server import TiledServer, free_port

CLIENT = textwrap.dedent(
    """
    import json, sys
    from edgeray.io import read_cxi
    from edgeray.stream import connect, replay

    endpoint, path, scan_id = sys.argv[1:4]
    socket = connect(endpoint)
    report = replay(read_cxi(path), socket, 2000.0, scan_id=scan_id)
    socket.close(linger=10000)
    print(json.dumps(report.as_dict()))
    """
)


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def watch(uri: str, key: str, scan_id: str, stop: threading.Event, changes: list, period_s: float) -> None:
    """Poll the scan's live image every ``period_s``; append the time of each new image seen. The node is looked up
    again at each poll (the arrays grow with the mosaic: a read of an old shape is refused), without retries."""
    import stamina
    from tiled.client import from_uri

    stamina.set_active(False)
    client, last = from_uri(uri, api_key=key), None
    while not stop.is_set():
        try:
            image = client[scan_id]["live"]["amplitude"].read()
            filled = int(np.isfinite(image).sum())
            if filled != last:
                changes.append(time.time())
                last = filled
        except Exception:  # not there yet, or being made again as the mosaic grows
            pass
        time.sleep(period_s)


def cpu_seconds(pid: int) -> float:
    """CPU seconds so far of the process ``pid`` and its children (the edge: its run-file writer and Tiled writer
    processes)."""
    import psutil

    process = psutil.Process(pid)
    total = 0.0
    for member in [process, *process.children(recursive=True)]:
        try:
            times = member.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def run(folder: Path, scan_file: Path, case: str, uri: str | None, key: str, scan_id: str,
        reader_period_s: float) -> dict:  # fmt: skip
    """One scan through a fresh edge; its summary, with the reader's view in ``reader``."""
    out = folder / scan_id
    out.mkdir(parents=True)
    command = [sys.executable, "-m", "edgeray", "edge", "--listen", "tcp://127.0.0.1:0", "--out", str(out),
               "--http", "off", "--publish", "off", "--scans", "1"]  # fmt: skip
    if uri is not None:
        command += ["--tiled", uri, "--tiled-retry-s", "5"]
    env = {**os.environ, "TILED_API_KEY": key}
    with (out / "edge.log").open("w") as log:
        edge = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        endpoint = json.loads(edge.stdout.readline())["ready"]["listen"]
        changes, stop = [], threading.Event()
        reader = None
        if case == "server" and reader_period_s > 0:
            reader = threading.Thread(target=watch, args=(uri, key, scan_id, stop, changes, reader_period_s))
            reader.start()
        before, started = cpu_seconds(edge.pid), time.monotonic()
        client = subprocess.run([sys.executable, "-c", CLIENT, endpoint, str(scan_file), scan_id],
                                capture_output=True, text=True, check=True)  # fmt: skip
        edge_cores = (cpu_seconds(edge.pid) - before) / (time.monotonic() - started)  # the client's start included
        report = json.loads(client.stdout.strip().splitlines()[-1])
        edge.wait(300)
        stop.set()
        if reader is not None:
            reader.join()
    summary = json.loads((out / f"{scan_id}.json").read_text())
    summary["frames_sent"] = report["frames_sent"]
    summary["edge_cores"] = edge_cores
    gaps = np.diff(changes) if len(changes) > 1 else np.zeros(0)
    summary["reader"] = {"images_seen": len(changes), "longest_wait_s": float(gaps.max()) if gaps.size else None}
    return summary


def warm_up(uri: str, key: str) -> None:
    """A fresh server's first array takes it ~1 s (its imports): pay that before the runs, as a server that has
    been up a while has."""
    from tiled.client import from_uri

    client = from_uri(uri, api_key=key)
    client.create_container(key="warm-up").write_array(np.zeros((8, 8), np.float32), key="zeros")


def products_equal(uri: str, key: str, summary: dict) -> bool:
    from tiled.client import from_uri

    node = from_uri(uri, api_key=key)[summary["scan_id"]]
    product = read_product(summary["files"]["product"])
    return bool(np.array_equal(node["product"]["object"].read(), product.object)
                and np.array_equal(node["product"]["probe"].read(), product.probe))  # fmt: skip


def difference(median: dict, case: str) -> float | None:
    """The case's median p99 less the one without Tiled, ms (None when either was not run)."""
    if median[case] is None or median["none"] is None:
        return None
    return median[case] - median["none"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 s scans, 2 rounds (else 10 s scans, 3 rounds)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds of the three cases")
    parser.add_argument("--reader-period-s", type=float, default=1.0,
                        help="how often a reader polls the live image in Tiled (0: no reader)")  # fmt: skip
    parser.add_argument("--cases", default="none,server,absent", help="which cases, comma-separated")
    parser.add_argument("--server-nice", type=int, default=10, help="the Tiled server's niceness (0: equal shares)")
    args = parser.parse_args()
    frames = 8000 if args.quick else 20000
    rounds = args.rounds or (2 if args.quick else 3)
    key = secrets.token_hex(16)
    emit({"benchmark": "tiled_publish", "date": time.strftime("%Y-%m-%d"), "quick": args.quick, "frames": frames,
          "rate_hz": 2000, "rounds": rounds, "server_nice": args.server_nice, "cores": os.cpu_count()})  # fmt: skip
    p99 = {"none": [], "server": [], "absent": []}
    cpu = {"none": [], "server": [], "absent": []}  # the edge's cores during the scan, its processes' included
    lost, lags, firsts, waits, equal = 0, [], [], [], True
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        scan_file = write_cxi(folder / "scan.cxi", simulate_ptycho(PtychoSimConfig(n_positions=frames, seed=4)))
        absent = f"http://127.0.0.1:{free_port()}/api/v1/metadata/"  # nothing listens there
        with TiledServer(folder / "tiled", key, nice=args.server_nice) as server:
            warm_up(server.uri, key)
            for k in range(rounds):
                cases = [("none", None), ("server", server.uri), ("absent", absent)]
                for case, uri in cases[k % 3 :] + cases[: k % 3]:  # each round starts with another case
                    if case not in args.cases.split(","):
                        continue
                    summary = run(folder, scan_file, case, uri, key, f"{case}-{k}", args.reader_period_s)
                    record = {"case": f"Tiled {case}", "round": k, "frames_sent": summary["frames_sent"],
                              "frames_written": summary["frames_written"],
                              "frames_inferred": summary["frames_inferred"],
                              "latency_ms_p50": summary["latency_ms_p50"], "latency_ms_p99": summary["latency_ms_p99"],
                              "p99_ms_per_s": summary["latency_ms_p99_per_s"], "edge_cores": summary["edge_cores"],
                              "tiled": summary.get("tiled")}  # fmt: skip
                    if case == "server":
                        record["reader"] = summary["reader"]
                        record["products_equal"] = products_equal(server.uri, key, summary)
                        equal &= record["products_equal"]
                        lags.append(summary["tiled"]["live_lag_s_max"])
                        firsts.append(summary["tiled"]["first_image_s"])
                        waits.append(summary["reader"]["longest_wait_s"])
                    emit(record)
                    p99[case].append(summary["latency_ms_p99"])
                    cpu[case].append(summary["edge_cores"])
                    lost += summary["frames_sent"] - summary["frames_written"]
    median = {case: statistics.median(values) if values else None for case, values in p99.items()}
    emit({"summary": {
        "p99_ms_median": median,
        "p99_ms_with_server_minus_none": difference(median, "server"),
        "p99_ms_server_absent_minus_none": difference(median, "absent"),
        "edge_cores_median": {case: statistics.median(v) if v else None for case, v in cpu.items()},
        "frames_lost": lost,
        "live_lag_s_max": max(lags) if lags else None,
        "first_image_s_max": max(firsts) if firsts else None,
        "reader_longest_wait_s": max(w for w in waits if w is not None) if any(waits) else None,
        "products_equal": equal,
        "targets": {"frames_lost": 0, "p99_ms_difference": 5.0, "live_lag_s": 1.0},
    }})  # fmt: skip


if __name__ == "__main__":
    main()
