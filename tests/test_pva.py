"""EPICS PV Access input: a real p4p server and client on loopback (address lists pinned to 127.0.0.1, no automatic
address list), frames as areaDetector's NTNDArray, into the edge's one receiver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from edgeray.io import read_cxi, write_cxi
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream.protocol import End, Frame, Start, decode
from edgeray.stream.pva import PvaBridge, PvaOptions, load_positions
from edgeray.stream.pva_server import serve

LOOPBACK = {"EPICS_PVA_ADDR_LIST": "127.0.0.1", "EPICS_PVA_AUTO_ADDR_LIST": "NO",
            "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1", "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO"}  # fmt: skip
GEOMETRY = {"energy_eV": 8000.0, "detector_distance_m": 2.0, "detector_pixel_size_m": [75e-6, 75e-6]}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch):
    for key, value in LOOPBACK.items():
        monkeypatch.setenv(key, value)


class Harness:
    """A p4p server on loopback, and a bridge feeding a ZeroMQ PULL socket this harness reads."""

    def __init__(self, mode: str = "ptycho", **options):
        self.server = serve("test:image", (8, 8))
        self.context = zmq.Context()
        self.pull = self.context.socket(zmq.PULL)
        self.pull.bind("inproc://edge")
        options = PvaOptions("test:image", name_server=self.server.address, mode=mode, **options)
        self.bridge = PvaBridge(options, "inproc://edge", self.context).start()
        assert self.bridge.connected.wait(10)  # its monitor runs: it has the channel's value before any frame

    def post(self, uid: int, attributes: dict | None = None) -> None:
        frame = np.full((8, 8), uid % 60000, dtype=np.uint16)
        self.server.post(frame, uid, {**GEOMETRY, **(attributes or {})})

    def messages(self, count: int, timeout_s: float = 10.0) -> list:
        found = []
        self.pull.setsockopt(zmq.RCVTIMEO, int(timeout_s * 1e3))
        while len(found) < count:
            found.append(decode(self.pull.recv_multipart(copy=False)))
        return found

    def close(self) -> None:
        self.bridge.stop()
        self.server.close()
        self.pull.close(0)
        self.context.term()


def test_updates_become_the_protocol_with_gaps_counted_and_new_acquisitions_split():
    harness = Harness(frames=None, idle_s=0.5)
    try:
        for uid in [*range(1, 11), *range(13, 21)]:  # uniqueIds 11 and 12 never sent: numbered, not received
            harness.post(uid, {"position_y_m": uid * 1e-7, "position_x_m": -uid * 1e-7})
        for uid in range(1, 4):  # the counter starts again: a new acquisition
            harness.post(uid, {"position_y_m": 0.0, "position_x_m": 0.0})
        messages = harness.messages(1 + 18 + 1 + 1 + 3 + 1)  # start, frames, end, start, frames, end (idle)
    finally:
        harness.close()
    first, frames, end = messages[0], messages[1:19], messages[19]
    assert isinstance(first, Start) and first.shape == (8, 8) and first.dtype == "uint16"
    assert first.geometry["energy_eV"] == 8000.0 and first.geometry["detector_pixel_size_m"] == [75e-6, 75e-6]
    assert all(isinstance(f, Frame) for f in frames)
    assert [f.index for f in frames] == [*range(0, 10), *range(12, 20)]
    assert frames[4].position_m == pytest.approx((5e-7, -5e-7)) and frames[4].data[0, 0] == 5
    assert isinstance(end, End) and end.n_frames == 20  # so the edge sees 2 frames missing
    second = messages[20:]
    assert isinstance(second[0], Start) and second[0].scan_id != first.scan_id
    assert [m.index for m in second[1:4]] == [0, 1, 2] and isinstance(second[4], End) and second[4].n_frames == 3
    record = harness.bridge.stats()["scans"][0]
    assert record["missing_unique_ids"] == 2 and record["received"] == 18 and record["numbered"] == 20


def test_positions_from_a_file_and_angles_for_tomography(tmp_path):
    positions = np.arange(10, dtype=float).reshape(5, 2) * 1e-7
    np.save(tmp_path / "positions.npy", positions)
    loaded, geometry = load_positions(tmp_path / "positions.npy")
    harness = Harness(positions=loaded, geometry=geometry, frames=5)
    try:
        for uid in range(1, 6):
            harness.post(uid)
        frames = harness.messages(7)[1:6]
    finally:
        harness.close()
    np.testing.assert_allclose([f.position_m for f in frames], positions)
    tomo = Harness(mode="tomo", frames=3)
    try:
        for uid, (theta, key) in enumerate([(0.0, 2), (0.0, 1), (33.5, 0)], start=1):
            tomo.post(uid, {"theta_deg": theta, "image_key": key})
        frames = tomo.messages(5)[1:4]
    finally:
        tomo.close()
    assert [(f.theta_deg, f.image_key) for f in frames] == [(0.0, 2), (0.0, 1), (33.5, 0)]
    with pytest.raises(ValueError, match=r"\(N, 2\) \[y, x\] m"):
        np.save(tmp_path / "bad.npy", np.zeros(4))
        load_positions(tmp_path / "bad.npy")


def test_a_frame_without_positions_is_counted_not_fatal():
    harness = Harness(frames=2)
    try:
        harness.post(1)  # no position attributes, no positions file
        harness.post(2, {"position_y_m": 0.0, "position_x_m": 0.0})
        messages = harness.messages(3)
    finally:
        harness.close()
    assert [type(m).__name__ for m in messages] == ["Start", "Frame", "End"] and messages[1].index == 1
    assert harness.bridge.errors and "no position_y_m/position_x_m attribute" in harness.bridge.errors[0]


def _zmq_summary_keys(tmp_path) -> set[str]:
    from edgeray.stream import EdgeOptions, EdgeService, connect, replay

    service = EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path / "zmq", publish=None, scans=1))
    service.start()
    socket = connect(service.endpoint)
    replay(simulate_ptycho(PtychoSimConfig(frame_size=64, n_positions=200, seed=1)), socket, rate_hz=0)
    assert service.wait(60)
    service.join(10)
    socket.close(0)
    return set(service.summaries[0])


def test_cli_20000_frames_at_2khz_over_pva_nothing_lost(tmp_path):
    """The issue's bar: detector replay --pva serving 20,000 frames of 64 x 64 at 2 kHz to edge --pva, found by a
    UDP search on loopback: sent = received = written = inferred, the ZeroMQ path's summary."""
    scan = simulate_ptycho(PtychoSimConfig(frame_size=64, n_positions=1000, step_px=4.0, photons=1e5, seed=8))
    scan_file = write_cxi(tmp_path / "scan.cxi", scan)
    command = [sys.executable, "-m", "edgeray"]
    replay = subprocess.Popen([*command, "detector", "replay", str(scan_file), "--cycles", "20", "--rate", "2000",
                               "--pva", "test:frames"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ready = json.loads(replay.stdout.readline())["ready"]
        env = {**os.environ, "EPICS_PVA_BROADCAST_PORT": str(ready["search_port"])}  # found by search, loopback only
        edge = subprocess.run([*command, "edge", "--pva", "test:frames", "--out", str(tmp_path / "run"), "--http",
                               "off", "--publish", "off", "--scans", "1"],
                              capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
        assert edge.returncode == 0, edge.stderr
        sent = json.loads(replay.communicate(timeout=60)[0].strip().splitlines()[-1])
    finally:
        if replay.poll() is None:
            replay.kill()
    summary = next(json.loads(line)["summary"] for line in edge.stdout.splitlines() if '"summary"' in line)
    assert sent["frames_sent"] == 20000 and sent["rate_hz"] > 1800
    assert summary["frames_received"] == summary["frames_written"] == summary["frames_inferred"] == 20000
    assert summary["complete"] and summary["frames_dropped"] == 0
    record = json.loads((tmp_path / "run" / "pva.json").read_text())["scans"][0]
    assert record["missing_unique_ids"] == 0 and record["received"] == 20000
    run = read_cxi(tmp_path / "run" / f"{summary['scan_id']}.cxi")
    np.testing.assert_array_equal(run.frames[:1000], scan.frames)  # every frame as sent, in place
    np.testing.assert_allclose(run.positions_m[-1000:], scan.positions_m)
    assert set(summary) == _zmq_summary_keys(tmp_path)


def test_no_subscriber_is_said(tmp_path):
    scan_file = write_cxi(tmp_path / "scan.cxi", simulate_ptycho(PtychoSimConfig(frame_size=32, n_positions=20)))
    began = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edgeray", "detector", "replay", str(scan_file), "--pva", "x:y",
                             "--pva-wait-s", "1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode != 0 and "no client subscribed to x:y within 1 s" in result.stderr
    assert time.perf_counter() - began < 30
