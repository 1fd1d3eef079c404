"""The edge at work: a simulated detector streams 4,000 frames at 2 kHz over ZeroMQ to an edge service, which writes
every frame to a CXI run file, inverts each with the shipped network and stitches the patches into the live image.

The picture is the mosaic the service wrote at the scan's end, beside the latency of every frame (arrival to stitch).

    python examples/live_stream.py [OUTPUT_FOLDER]
"""

import json
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from edgeray.io import read_product
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream import EdgeOptions, EdgeService, connect, replay


def main(out: Path) -> None:
    scan = simulate_ptycho(PtychoSimConfig(n_positions=4000, step_px=4.0, object="camera,astronaut", seed=7))
    with tempfile.TemporaryDirectory() as run_folder:
        edge = EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=run_folder, publish=None, scans=1)).start()
        detector = connect(edge.endpoint)
        report = replay(scan, detector, 2000.0, scan_id="example")  # paced as a detector at 2 kHz
        edge.wait(60)
        edge.join(10)
        detector.close()
        summary = json.loads((Path(run_folder) / "example.json").read_text())
        mosaic = read_product(summary["files"]["product"])
        latencies_ms = np.asarray(summary["latency_ms_p99_per_s"])
    visited = np.nonzero(np.abs(mosaic.object[0] - 1) > 1e-6)  # the scanned region (the rest stays 1)
    live = mosaic.object[0][visited[0].min() : visited[0].max() + 1, visited[1].min() : visited[1].max() + 1]
    fig, (truth, image, latency) = plt.subplots(1, 3, figsize=(14, 4.6), width_ratios=(1, 1, 1.2))
    truth.imshow(np.angle(scan.ground_truth.object), cmap="gray")
    truth.set_title("the sample (phase; the scan covers its middle)", fontsize=10)
    low, high = np.percentile(np.angle(live), [1, 99])  # a few outlying patches at the edge would set the scale
    image.imshow(np.angle(live), cmap="gray", vmin=low, vmax=high)
    image.set_title(f"live image: {summary['frames_inferred']:,} patches stitched", fontsize=10)
    for ax in (truth, image):
        ax.axis("off")
    latency.plot(np.arange(len(latencies_ms)) + 1, latencies_ms, "o-")
    latency.set_xticks(np.arange(len(latencies_ms)) + 1)
    latency.set_xlabel("second of the scan")
    latency.set_ylabel("p99 latency, ms (arrival to stitched)")
    latency.set_ylim(bottom=0)
    latency.set_title(f"{summary['frames_received']:,} received, {summary['frames_written']:,} written, "
                      f"sent at {report.rate_hz:,.0f} frames/s", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(out / "live_stream.png", dpi=100)
    print(
        f"{summary['frames_received']} frames at {summary['frames_per_s']:.0f} frames/s, p99 latency "
        f"{summary['latency_ms_p99']:.0f} ms, none lost: {summary['frames_written'] == summary['frames_received']}"
    )


if __name__ == "__main__":  # the edge starts processes of its own (writer, pictures)
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    folder.mkdir(parents=True, exist_ok=True)
    main(folder)
