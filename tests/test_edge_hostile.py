"""The edge against the odd messages a beamline sends by mistake: each is refused by name (or its scan ends with the
reason in its summary), the stream goes on, and the next valid scan is whole. A failing stage is contained."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from edgeray.io import CXIFile
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream import (
    EdgeOptions,
    EdgeService,
    ProtocolError,
    connect,
    decode,
    encode_end,
    encode_frame,
    encode_start,
    replay,
    scan_geometry,
)
from edgeray.stream.protocol import Start
from edgeray.stream.receiver import MIN_RING_FRAMES, ring_frames_within

GEOMETRY = {"energy_eV": 10000.0, "detector_distance_m": 2.0, "detector_pixel_size_m": 75e-6}


@pytest.fixture(scope="module")
def scan():
    return simulate_ptycho(PtychoSimConfig(n_positions=200, step_px=5, seed=23))


def header(**fields) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


def frame_with(scan_id: str, index: int, frame: np.ndarray, position, **overrides) -> list:
    """A frame message whose header fields are overridden (a sender's mistake)."""
    head, payload = encode_frame(scan_id, index, frame, position)
    fields = {**json.loads(head), **overrides}
    return [json.dumps(fields).encode(), bytes(payload)]


@pytest.mark.parametrize(
    "parts, reason",
    [
        (frame_with("a", 0, np.zeros((4, 4), np.uint16), (0, 0), t_ns="soon"), "'t_ns' must be an integer"),
        ([b"[" * 200_000 + b"]" * 200_000], "header of 400000 bytes"),
        ([b"[" * 30_000 + b"]" * 30_000], "nested too deeply"),
        (
            [
                header(
                    type="start",
                    scan_id="a",
                    dtype="uint16",
                    shape=[8, 8],
                    geometry={**GEOMETRY, "object_pixel_size_m": "10 nm"},
                )
            ],
            "object_pixel_size_m",
        ),
        (
            [
                header(
                    type="start",
                    scan_id="a",
                    dtype="uint16",
                    shape=[8, 8],
                    geometry={**GEOMETRY, "detector_pixel_size_m": [75e-6]},
                )
            ],
            "a list of 1",
        ),
        (
            [
                header(
                    type="start",
                    scan_id="a",
                    dtype="uint16",
                    shape=[8, 8],
                    geometry={**GEOMETRY, "detector_distance_m": 2000.0 * 1e3},
                )
            ],
            "outside",
        ),
        ([header(type="end", scan_id="é" * 200, n_frames=1)], "too long for a file name"),
        ([header(type="end", scan_id="a\nb", n_frames=1)], "usable name"),
    ],
)
def test_the_protocol_refuses_each_mistake_by_name(parts, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(parts)


def test_a_ring_shrinks_to_the_memory_ceiling_and_a_scan_beyond_it_is_refused():
    big = Start("big", "uint16", (2048, 2048), GEOMETRY)
    frame_bytes = 2048 * 2048 * 2
    assert ring_frames_within(big, 8192, 1 << 30, 0) == (1 << 30) // frame_bytes  # 128 of 8 MiB, not 64 GiB
    assert ring_frames_within(big, 100, 1 << 34, 256 << 20) == 100
    with pytest.raises(ValueError, match=r"--memory-gb"):
        ring_frames_within(big, 8192, MIN_RING_FRAMES * frame_bytes - 1, 0)
    with pytest.raises(ValueError, match="scan huge"):
        ring_frames_within(Start("huge", "uint32", (65536, 65536), GEOMETRY), 8192, 6 << 30, 256 << 20)


def test_each_odd_message_is_refused_or_named_and_the_next_scan_is_whole(tmp_path, scan):
    """One service, each mistake once (its own scan where it needs one), then a valid scan: refused messages are
    counted, scans the network cannot image are written and say why, and the valid scan is whole."""
    out = tmp_path / "edge"
    service = EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=out, publish=None, preview=True)).start()
    socket = connect(service.endpoint)
    geometry = scan_geometry(scan)
    frames, positions = scan.frames, scan.positions_m
    try:
        # receiver-level mistakes, each refused: the scan they sit in goes on
        socket.send_multipart(encode_start("tns", "uint16", (64, 64), geometry, 3))
        socket.send_multipart(frame_with("tns", 0, frames[0], positions[0], t_ns="12:00:01"))
        socket.send_multipart([b"[" * 200_000 + b"]" * 200_000])
        for i in range(1, 3):
            socket.send_multipart(encode_frame("tns", i, frames[i], positions[i]))
        socket.send_multipart(encode_frame("tns", 3, frames[3], (1.0, 1.0)))  # metres where micrometres belong
        socket.send_multipart(encode_end("tns", 3))
        socket.send_multipart([header(type="start", scan_id="huge", dtype="uint32", shape=[65536, 65536],
                                      geometry=geometry)])  # fmt: skip
        socket.send_multipart(encode_start("é" * 200, "uint16", (64, 64), geometry, 3))
        socket.send_multipart([header(type="start", scan_id="pix", dtype="uint16", shape=[64, 64],
                                      geometry={**geometry, "detector_pixel_size_m": [75e-6]})])  # fmt: skip
        socket.send_multipart([header(type="start", scan_id="opix", dtype="uint16", shape=[64, 64],
                                      geometry={**geometry, "object_pixel_size_m": "fine"})])  # fmt: skip
        # a float detector with a NaN frame: that frame refused, the others imaged
        socket.send_multipart(encode_start("nan", "float32", (64, 64), geometry, 4))
        nan = frames[0].astype(np.float32)
        nan[10, 10] = np.nan
        socket.send_multipart(encode_frame("nan", 0, nan, positions[0]))
        for i in range(1, 5):
            socket.send_multipart(encode_frame("nan", i, frames[i].astype(np.float32), positions[i]))
        socket.send_multipart(encode_end("nan", 4))
        # another detector region: received and written, no network image, the reason in the summary
        socket.send_multipart(encode_start("small", "uint16", (32, 32), geometry, 5))
        for i in range(5):
            socket.send_multipart(encode_frame("small", i, frames[i][16:48, 16:48].copy(), positions[i]))
        socket.send_multipart(encode_end("small", 5))
        # an end that announces more frames than came: incomplete, in the summary and the run file
        socket.send_multipart(encode_start("short", "uint16", (64, 64), geometry, None))
        for i in range(8):
            socket.send_multipart(encode_frame("short", i, frames[i], positions[i]))
        socket.send_multipart(encode_end("short", 1000))
        replay(scan, socket, 0, scan_id="valid")
        summary_path = out / "valid.json"
        deadline = time.monotonic() + 120
        while not summary_path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        socket.close()
        service.stop()
        assert service.wait(60)
        service.join(10)
    by_id = {s["scan_id"]: s for s in service.summaries}
    assert set(by_id) == {"tns", "nan", "small", "short", "valid"}
    tns = by_id["tns"]
    assert tns["frames_received"] == tns["frames_written"] == 2 and tns["frames_invalid"] == 3
    assert by_id["nan"]["frames_written"] == by_id["nan"]["frames_inferred"] == 4
    assert by_id["nan"]["frames_invalid"] == 1 and by_id["nan"]["errors"] == []
    with CXIFile(out / "nan.cxi") as cxi:
        assert np.isfinite(cxi.read_frames()).all()
    small = by_id["small"]
    assert small["frames_written"] == 5 and small["frames_inferred"] == 0
    assert "32x32" in small["network_image"] and "64x64" in small["network_image"]
    assert "product" not in small["files"]
    short = by_id["short"]
    assert not short["complete"] and short["frames_written"] == 8
    with h5py.File(out / "short.cxi", "r") as h5:
        assert not h5["entry_1"].attrs["complete"]
    valid = by_id["valid"]
    assert valid["complete"] and valid["errors"] == [] and valid["network_image"] is None
    assert valid["frames_written"] == valid["frames_inferred"] == scan.n_frames
    assert Path(valid["files"]["product"]).exists() and Path(valid["files"]["preview"]).exists()
    # tns: 3 refused in the scan (the deep header among them); between scans: 4 refused starts; the NaN frame
    assert service.invalid_total == 3 + 4 + 1


def _stage_run(scan):
    from edgeray.stream.ring import FrameRing
    from edgeray.stream.scan import ScanRun

    start = Start("failing", "uint16", (64, 64), scan_geometry(scan), scan.n_frames)
    ring = FrameRing(256, start.shape, start.dtype)
    n = scan.n_frames
    ring.frames[:n], ring.positions_m[:n], ring.index[:n], ring.infer[:n] = scan.frames, scan.positions_m, range(n), 1
    ring.arrival_ns[:n] = time.perf_counter_ns()
    ring.received = n
    return ScanRun(start, time.time(), time.perf_counter_ns(), ring, stored=n, published=n)


def test_a_network_that_fails_ends_the_scans_image_not_the_inference(scan):
    """The inference's network raises on the scan's first batch: the scan is named failed, its remaining frames are
    handed on as skipped, and its end and the stop still go on in order."""
    from edgeray.stream.helpers import ScanHelpers
    from edgeray.stream.inference import Inference
    from edgeray.stream.scan import ScanEnded, ScanStarted, Skipped, Stop
    from edgeray.stream.serving import ModelHolder

    options = EdgeOptions(max_batch=64)
    models = ModelHolder(None)
    control, to_stitch = queue.Queue(), queue.Queue()
    stage = Inference(options, models, control, to_stitch, threading.Condition(),
                      ScanHelpers(options, models, threading.Lock(), 1).scan_started)  # fmt: skip

    def broken(*_):
        raise RuntimeError("the accelerator fell off the bus")

    stage.run_network = broken
    run = _stage_run(scan)
    for message in (ScanStarted(run), ScanEnded(run), Stop()):
        control.put(message)
    stage.run()
    out = [to_stitch.get_nowait() for _ in range(to_stitch.qsize())]
    assert isinstance(out[-2], ScanEnded) and isinstance(out[-1], Stop)
    assert all(isinstance(m, Skipped) for m in out[:-2]) and out[-3].upto == scan.n_frames
    assert run.errors == ["inference: RuntimeError: the accelerator fell off the bus"]
    assert "the network failed" in run.no_network
    run.ring.close()


def test_a_batch_that_cannot_be_stitched_ends_the_scans_image_not_the_stitcher(scan):
    from edgeray.stream.scan import Inverted, ScanEnded, Stop
    from edgeray.stream.stitcher import Stitcher

    run = _stage_run(scan)  # no mosaic: stitching it raises
    to_stitch, to_finish = queue.Queue(), queue.Queue()
    patches = torch.ones(10, 1, 64, 64)
    arrivals = np.full(10, time.perf_counter_ns())
    for upto in (10, 20):
        to_stitch.put(Inverted(run, patches, patches, scan.positions_m[:10], arrivals, None, upto))
    for message in (ScanEnded(run), Stop()):
        to_stitch.put(message)
    Stitcher(to_stitch, to_finish, threading.Lock()).run()
    assert isinstance(to_finish.get_nowait(), ScanEnded) and isinstance(to_finish.get_nowait(), Stop)
    assert run.stitched_upto == 20 and len(run.errors) == 1 and run.errors[0].startswith("stitcher: AttributeError")
    run.ring.close()


def test_a_picture_that_fails_leaves_the_pictures_process_drawing(tmp_path, scan):
    """A preview of a file that is no product fails with a message naming it; the next preview is drawn."""
    from edgeray.io import Product, write_product
    from edgeray.stream.pictures import Pictures, draw_preview

    pictures = Pictures()
    try:
        (tmp_path / "not_a_product.h5").write_bytes(b"nothing here")
        assert pictures.draw(draw_preview, str(tmp_path / "not_a_product.h5"), str(tmp_path / "bad.png")) is None
        product = Product(object=np.exp(1j * np.linspace(0, 1, 64 * 64)).reshape(1, 64, 64).astype(np.complex64),
                          probe=np.ones((1, 64, 64), np.complex64), positions_m=np.zeros((1, 2)),
                          object_pixel_size_m=(1e-8, 1e-8), probe_pixel_size_m=(1e-8, 1e-8), energy_eV=1e4,
                          distance_m=2.0)  # fmt: skip
        path = write_product(tmp_path / "good.h5", product)
        assert Path(pictures.draw(draw_preview, str(path), str(tmp_path / "good.png"))).exists()
    finally:
        pictures.close()


def test_sigterm_and_sigint_stop_the_edge_with_a_scan_open_and_its_file_closed(tmp_path, scan):
    """After odd messages and with a scan open, each signal ends the edge (exit 0) with every frame written."""
    for number, name in ((signal.SIGTERM, "term"), (signal.SIGINT, "int")):
        out = tmp_path / name
        command = [sys.executable, "-m", "edgeray", "edge", "--listen", "tcp://127.0.0.1:0", "--out", str(out),
                   "--http", "off", "--publish", "off", "--refine", "--refine-tail-s", "600"]  # fmt: skip
        edge = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            ready = json.loads(edge.stdout.readline())["ready"]
            socket = connect(ready["listen"])
            socket.send_multipart(encode_start("small", "uint16", (32, 32), scan_geometry(scan), 1))
            socket.send_multipart(encode_frame("small", 0, scan.frames[0][:32, :32].copy(), scan.positions_m[0]))
            socket.send_multipart(encode_start("open", "uint16", (64, 64), scan_geometry(scan), None))
            for i in range(100):
                socket.send_multipart(encode_frame("open", i, scan.frames[i], scan.positions_m[i]))
            socket.close()
            while not (out / "small.json").exists() or not (out / "open.cxi").exists():
                assert edge.poll() is None, "the edge ended by itself"
                time.sleep(0.05)
            time.sleep(0.5)  # the frames arrive (the test asserts what was written, whatever arrived)
            edge.send_signal(number)
            assert edge.wait(60) == 0
        finally:
            if edge.poll() is None:
                edge.kill()
        summary = json.loads((out / "open.json").read_text())
        assert not summary["complete"] and summary["frames_written"] == summary["frames_received"] > 0
        with CXIFile(out / "open.cxi") as cxi:
            assert cxi.n_frames == summary["frames_written"]
