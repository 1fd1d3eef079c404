"""Edge streaming: protocol, mosaic, run file, the service over real ZeroMQ sockets, signals, keys, CLI demo."""

from __future__ import annotations

import json
import os
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
import zmq

from edgeray.io import CXIFile
from edgeray.io.geometry import PtychoGeometry
from edgeray.nn.stitch import stitch, to_complex
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream import (
    EdgeOptions,
    EdgeService,
    Mosaic,
    ProtocolError,
    RunFile,
    connect,
    decode,
    encode_end,
    encode_frame,
    encode_start,
    make_keys,
    replay,
    scan_geometry,
)
from edgeray.stream.protocol import End, Frame, Start

GEOMETRY = {"energy_eV": 10000.0, "detector_distance_m": 2.0, "detector_pixel_size_m": 75e-6}


@pytest.fixture(scope="module")
def scan():
    return simulate_ptycho(PtychoSimConfig(n_positions=600, step_px=5, seed=11))


def start_service(tmp_path: Path, **options) -> EdgeService:
    defaults = {"listen": "tcp://127.0.0.1:0", "out": tmp_path, "publish": None, "preview": False}
    return EdgeService(EdgeOptions(**{**defaults, **options})).start()


def stream_through(service: EdgeService, scan, rate_hz: float, scan_id: str) -> dict:
    """Replay ``scan`` into a started one-scan ``service``, wait for it to finish, return the scan's summary."""
    socket = connect(service.endpoint)
    replay(scan, socket, rate_hz, scan_id=scan_id)
    assert service.wait(60)
    service.join(10)
    socket.close()
    return json.loads((Path(service.options.out) / f"{scan_id}.json").read_text())


def wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.02)


# -- protocol ----------------------------------------------------------------------------------------------------
def test_protocol_round_trip():
    frame = np.arange(12, dtype=np.uint16).reshape(3, 4)
    start = decode(encode_start("s1", "uint16", (3, 4), GEOMETRY, 5))
    assert isinstance(start, Start) and start.shape == (3, 4) and start.n_frames == 5
    message = decode(encode_frame("s1", 7, frame, (1e-6, -2e-6), 99))
    assert isinstance(message, Frame) and message.index == 7 and message.t_ns == 99
    assert message.position_m == (1e-6, -2e-6)
    np.testing.assert_array_equal(message.data, frame)
    end = decode(encode_end("s1", 5))
    assert isinstance(end, End) and end.n_frames == 5


@pytest.mark.parametrize(
    "parts, reason",
    [
        ([b"{not json"], "not JSON"),
        ([b'{"v": 2, "type": "end", "scan_id": "a", "n_frames": 1}'], "version"),
        ([b'{"v": 1, "type": "stop", "scan_id": "a"}'], "unknown message type"),
        ([b'{"v": 1, "type": "end", "scan_id": "../etc", "n_frames": 1}'], "usable name"),
        ([b'{"v": 1, "type": "end", "scan_id": "a"}'], "without 'n_frames'"),
        ([b'{"v": 1, "type": "end", "scan_id": "a", "n_frames": 1}', b"x"], "2 parts"),
        ([b'{"v": 1, "type": "start", "scan_id": "a", "dtype": "uint16", "shape": [4, 4], "geometry": {}}'], "energy"),
        (
            [
                b'{"v": 1, "type": "start", "scan_id": "a", "dtype": "int64", "shape": [4, 4], "geometry": '
                + json.dumps(GEOMETRY).encode()
                + b"}"
            ],
            "dtype 'int64'",
        ),
    ],
)
def test_protocol_rejects(parts, reason):
    with pytest.raises(ProtocolError, match=reason):
        decode(parts)


SENDER = """
import sys
from edgeray.stream import connect, disconnect
socket = connect(sys.argv[1])
for _ in range(int(sys.argv[2])):
    socket.send(bytes(4096))
socket.send(b"END")
sys.exit(0 if disconnect(socket) else 3)
"""


def test_a_sender_that_exits_ahead_of_a_slow_edge_delivers_everything():
    # ZeroMQ's I/O thread dies with the process: without disconnect() the queued tail and the end were lost
    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    port = receiver.bind_to_random_port("tcp://127.0.0.1")
    sent = 40_000
    sender = subprocess.Popen([sys.executable, "-c", SENDER, f"tcp://127.0.0.1:{port}", str(sent)])
    received, last = 0, b""
    while last != b"END" and receiver.poll(20_000):
        last = receiver.recv()
        received += 1
        if received % 500 == 0:
            time.sleep(0.005)  # a slow receiver: the sender is done long before it is
    assert sender.wait(60) == 0
    assert (received, last) == (sent + 1, b"END")
    receiver.close(linger=0)
    context.term()


def test_protocol_rejects_byte_count():
    header, payload = encode_frame("s", 0, np.zeros((4, 4), np.uint16), (0, 0))
    with pytest.raises(ProtocolError, match="has 30 bytes, uint16 x \\(4, 4\\) needs 32"):
        decode([header, bytes(payload)[:30]])


# -- mosaic ------------------------------------------------------------------------------------------------------
def test_mosaic_of_exact_patches_is_the_object_and_matches_batch_stitching():
    rng = np.random.default_rng(0)
    obj = (rng.uniform(0.5, 1, (120, 130)) * np.exp(1j * rng.uniform(-1, 1, (120, 130)))).astype(np.complex64)
    frame_shape, pixel = (16, 16), (1e-8, 1e-8)
    positions_px = np.round(rng.uniform(8, [112, 122], size=(300, 2)))  # whole pixels: patches are exact windows
    corners = (positions_px - 8).astype(int)
    patches = np.stack([obj[r : r + 16, c : c + 16] for r, c in corners])
    positions_m = positions_px * 1e-8 + 3e-6  # any origin: the mosaic anchors itself
    reference, _ = stitch(torch.from_numpy(patches), torch.from_numpy(positions_px), obj.shape)
    for fraction in (1.0, 0.99):  # the whole patch, or the window holding 99% of the weights (the default)
        mosaic = Mosaic(frame_shape, pixel, fraction=fraction)
        for chunk in np.array_split(rng.permutation(300), 7):  # arrival order and batch sizes do not matter
            mosaic.add(torch.from_numpy(patches[chunk]), positions_m[chunk])
        image, coverage = mosaic.image()
        shift = np.round((mosaic.origin_m - 3e-6) / 1e-8).astype(int)  # object pixel [0, 0] on the mosaic
        covered = coverage > 0
        rows, cols = np.nonzero(covered)
        np.testing.assert_allclose(image[covered], obj[rows + shift[0], cols + shift[1]], atol=1e-5)
        if fraction == 1.0:
            np.testing.assert_allclose(image[covered], reference.numpy()[rows + shift[0], cols + shift[1]],
                                       atol=1e-5)  # fmt: skip


def test_compiled_mosaic_kernel_equals_the_tensor_reference():
    """Noisy patches with a random constant phase each (so the turns matter), in batches, the first ones too
    isolated to be turned alone (synchronized): the compiled kernel's mosaic equals the tensor code's, and
    ``add_polar`` equals ``add`` of the complex patches."""
    rng = np.random.default_rng(1)
    n, frame_shape, pixel = 240, (16, 16), (1e-8, 1e-8)
    positions_px = rng.uniform(8, [72, 82], size=(n, 2))  # sub-pixel positions, placed at the nearest pixel
    amplitude = rng.uniform(0.5, 1, (n, 1, 16, 16)).astype(np.float32)
    phase = (rng.uniform(-1, 1, (n, 1, 16, 16)) + rng.uniform(-3, 3, (n, 1, 1, 1))).astype(np.float32)
    amplitude, phase = torch.from_numpy(amplitude), torch.from_numpy(phase)
    positions_m = positions_px * 1e-8 + 3e-6
    compiled, polar = Mosaic(frame_shape, pixel), Mosaic(frame_shape, pixel)
    reference = Mosaic(frame_shape, pixel, compiled=False)
    for chunk in np.array_split(np.arange(n), 9):
        patches = to_complex(amplitude[chunk], phase[chunk])
        compiled.add(patches, positions_m[chunk])
        reference.add(patches, positions_m[chunk])
        polar.add_polar(amplitude[chunk], phase[chunk], positions_m[chunk])
    for mosaic in (compiled, polar):
        np.testing.assert_array_equal(mosaic.origin_m, reference.origin_m)
        torch.testing.assert_close(mosaic.coverage, reference.coverage, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(mosaic.numerator, reference.numerator, rtol=1e-4, atol=1e-4)
    plain = Mosaic(frame_shape, pixel, align="none")  # no turns: a different sum (the turns were exercised)
    for chunk in np.array_split(np.arange(n), 9):
        plain.add_polar(amplitude[chunk], phase[chunk], positions_m[chunk])
    assert float((plain.numerator - reference.numerator).abs().max()) > 1.0


# -- run file ----------------------------------------------------------------------------------------------------
def test_run_file_is_readable_while_written_and_after(tmp_path):
    geometry = PtychoGeometry(10000.0, 2.0, (75e-6, 75e-6), (8, 8))
    run = RunFile(tmp_path / "r.cxi", geometry, "uint16", {"scan_id": "r"})
    frames = np.arange(10 * 64, dtype=np.uint16).reshape(10, 8, 8)
    positions = np.column_stack([np.arange(10) * 1e-7, -np.arange(10) * 2e-7])
    run.append(frames[:6], positions[:6], np.arange(6), np.arange(6))
    run.flush()
    with h5py.File(run.path, "r", swmr=True) as reader:  # a live reader sees what was flushed
        np.testing.assert_array_equal(reader["entry_1/data_1/data"][:], frames[:6])
        run.append(frames[6:], positions[6:], np.arange(6, 10), np.arange(6, 10))
        run.flush()
        reader["entry_1/data_1/data"].refresh()
        assert reader["entry_1/data_1/data"].shape[0] == 10
    with CXIFile(run.path) as cxi:  # open in SWMR mode: CXIFile still reads it
        assert cxi.n_frames == 10
    run.close({"complete": True})
    with CXIFile(run.path) as cxi:
        np.testing.assert_array_equal(cxi.read_frames(), frames)
        np.testing.assert_allclose(cxi.positions_m, positions)
    assert RunFile(tmp_path / "r.cxi", geometry, "uint16").path.name == "r_1.cxi"  # never overwrites


# -- the service -------------------------------------------------------------------------------------------------
def test_edge_keeps_and_inverts_every_frame(tmp_path, scan):
    service = start_service(tmp_path, scans=1, preview=True)
    socket = connect(service.endpoint)
    report = replay(scan, socket, 2000, scan_id="alpha")
    assert service.wait(60)
    service.join(10)
    socket.close()
    assert report.frames_sent == scan.n_frames and 0 < report.rate_hz <= 2100  # paced, never faster than asked
    summary = json.loads((tmp_path / "alpha.json").read_text())
    for key in ("frames_received", "frames_written", "frames_inferred"):
        assert summary[key] == scan.n_frames, key
    assert summary["complete"] and summary["frames_invalid"] == 0
    assert 0 < summary["latency_ms_p50"] <= summary["latency_ms_p99"]
    profile = summary["latency_ms_p99_per_s"]  # one p99 per second of the scan, the worst of them the scan's max
    assert len(profile) == int(np.ceil(summary["seconds"]))
    assert summary["latency_ms_p99"] - 0.05 <= max(profile) <= summary["latency_ms_max"] + 0.05  # rounded to 0.1
    cpu, busy = summary["stage_cpu_fraction"], summary["stage_busy_fraction"]
    for stage in ("infer", "stitch", "write"):  # one thread (process) each: CPU time within its wall time at work
        assert 0 < cpu[stage] <= 1.05 * busy[stage] + 2e-3, (stage, cpu, busy)
    assert 0 < cpu["receive"] <= 1.0  # the receiving thread's whole CPU time while the scan was open: one core at most
    assert summary["stream_cpu_cores"] == pytest.approx(sum(cpu.values()))
    assert summary["max_rate_hz"] >= summary["frames_per_s"]  # it kept this rate: the estimate cannot be below it
    with CXIFile(tmp_path / "alpha.cxi") as cxi:  # the run file holds exactly what was sent
        np.testing.assert_array_equal(cxi.read_frames(), scan.frames)
        np.testing.assert_allclose(cxi.positions_m, scan.positions_m, atol=1e-15)
        assert cxi.geometry.energy_eV == pytest.approx(scan.geometry.energy_eV)
    assert (tmp_path / "alpha_product.h5").exists() and (tmp_path / "alpha.png").exists()


def test_several_inference_workers_invert_every_frame_as_one_would(tmp_path, scan):
    service = start_service(tmp_path, scans=1, infer_workers=2)
    runtime = service.models.for_dtype("uint16").runtime
    counts = scan.frames[:100]
    *split, workers_cpu_s = service.inference.run_network(runtime, counts, 1e3)  # two parts, at once
    whole = runtime(counts, 1e3)
    for a, b in zip(split, whole, strict=True):
        torch.testing.assert_close(a, b)
    assert workers_cpu_s > 0  # the workers' CPU time is counted (it is not the calling thread's)
    summary = stream_through(service, scan, 0, "workers")
    assert summary["frames_received"] == summary["frames_written"] == summary["frames_inferred"] == scan.n_frames
    with pytest.raises(ValueError, match="infer_workers"):
        EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path, publish=None, infer_workers=0))


def test_a_network_that_falls_a_ring_behind_skips_frames_and_the_run_file_loses_none(tmp_path, scan):
    """A tiny ring and spill, frames at 6 kHz: the network cannot keep up, so it gives up frames
    (counted); every frame is still written, and none is dropped. The real network, held to at most 2,000 frames/s
    (on a fast, idle machine it would otherwise keep up for a while and the test would depend on the load). At 10 kHz
    the writer itself fell behind the spill in 2 of 3 full runs from a fresh clone here (76 and 502 frames dropped)."""
    service = start_service(tmp_path, scans=1, ring_frames=256, spill_bytes=8192 * scan.frames[0].nbytes, flush_s=0.02)
    model = service.models.for_dtype("uint16")
    network = model.runtime

    def slow_network(counts, scale):
        time.sleep(len(counts) / 2000)
        return network(counts, scale)

    model.runtime = slow_network
    long_scan = type(scan)(np.concatenate([scan.frames] * 24), np.concatenate([scan.positions_m] * 24), scan.geometry,
                           None, None, None, {})  # fmt: skip
    summary = stream_through(service, long_scan, 6000, "flood")  # the writer keeps this pace, the network not
    n = long_scan.n_frames
    assert summary["frames_received"] == summary["frames_written"] == n and summary["frames_dropped"] == 0
    assert summary["frames_not_inverted"] > 0  # it did fall behind here
    assert summary["frames_inferred"] + summary["frames_not_inverted"] == n
    with CXIFile(tmp_path / "flood.cxi") as cxi:
        np.testing.assert_array_equal(cxi.read_frames(), long_scan.frames)


def test_live_refinement_costs_no_frame_and_writes_a_valid_product(tmp_path, scan):
    """With --refine the edge keeps every frame and writes a refined product (the cost in latency is the streaming
    benchmark's to measure, not a test's)."""
    from edgeray.io import read_product
    from edgeray.stream.refine import RefineOptions

    np.save(tmp_path / "probe.npy", scan.ground_truth.probe)
    for name, refine in (("plain", None), ("refined", RefineOptions(tail_s=2.0, batch_size=64))):
        out = tmp_path / name
        service = start_service(out, scans=1, refine=refine, refine_probe_file=tmp_path / "probe.npy")
        summary = stream_through(service, scan, 2000, "gamma")
        for key in ("frames_received", "frames_written", "frames_inferred"):
            assert summary[key] == scan.n_frames, (name, key)
    refinement = summary["refinement"]
    assert refinement["frame_updates"] > 0 and refinement["misfit"] is not None  # it ran (at the lowest priority)
    refined, network = read_product(summary["files"]["refined"]), read_product(summary["files"]["product"])
    assert refined.object.shape == network.object.shape and np.isfinite(refined.object).all()
    assert np.abs(refined.probe).max() > 0


def test_live_refiner_improves_the_image_newest_frames_first(scan):
    """The refiner, fed as the edge feeds it: unseen frames go first (newest first), every update lowers the
    data misfit on average, and the refined image is closer to the truth than the mosaic it started from."""
    from edgeray.metrics import compare
    from edgeray.nn.corpus import unit_probe
    from edgeray.nn.physics import probe_weights
    from edgeray.stream.refine import HOLDOUT_EVERY, LiveRefiner, RefineOptions

    probe = torch.from_numpy(scan.ground_truth.probe[0])
    mosaic = Mosaic((64, 64), scan.geometry.object_pixel_size_m, probe_weights(unit_probe(64)))
    flat = torch.ones(len(scan.frames), 64, 64, dtype=torch.complex64)  # a poor network: no structure at all
    mosaic.add(flat, scan.positions_m)

    def sums():
        return mosaic.numerator.clone(), mosaic.coverage.clone(), mosaic.origin_m.copy(), mosaic.pixel_size_m.copy()

    refiner = LiveRefiner((64, 64), probe, RefineOptions(batch_size=50, capacity=1000), sums)
    refiner.add(scan.frames[:300], scan.positions_m[:300])
    refiner.step()
    held_out = sum(k % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 for k in range(250, 300))  # never fitted
    assert refiner.frame_updates == 50 - held_out and refiner.positions_px[:300].any()
    first_batch = refiner.misfits[0]
    refiner.add(scan.frames[300:], scan.positions_m[300:])
    refiner.step()  # the newest frames come first
    fitted = np.array([k for k in range(550, 600) if k % HOLDOUT_EVERY != HOLDOUT_EVERY - 1])
    np.testing.assert_allclose(refiner.positions_px[fitted].numpy(),
                               (scan.positions_m[fitted] - refiner.origin_m) / refiner.pixel_size_m)  # fmt: skip
    while refiner.epochs < 4:
        refiner.step()
    assert refiner.misfit < 0.5 * first_batch[0] / first_batch[1]
    epochs, misfits = zip(*refiner.history, strict=True)  # one record per whole epoch, for the refined product
    assert epochs == (1, 2, 3, 4) and misfits[-1] < misfits[0]
    numerator, coverage = mosaic.numerator.numpy(), mosaic.coverage.numpy()
    refined = refiner.image(numerator, coverage)
    start = mosaic.image()[0]
    shift = np.round(
        (
            mosaic.origin_m
            - (-np.asarray(scan.ground_truth.object.shape) / 2 * np.asarray(scan.geometry.object_pixel_size_m))
        )
        / mosaic.pixel_size_m
    )
    rows = slice(int(-shift[0]) + 60, int(-shift[0]) + scan.ground_truth.object.shape[0] - 60)
    cols = slice(int(-shift[1]) + 60, int(-shift[1]) + scan.ground_truth.object.shape[1] - 60)
    truth = scan.ground_truth.object[60:-60, 60:-60]
    assert compare(refined[rows, cols], truth)["ssim_phase"] > compare(start[rows, cols], truth)["ssim_phase"] + 0.2


def _ended_refiner(scan, network: str = "flat", **options):
    """A refiner over ``scan`` seeded by a network of no structure (``flat``) or a perfect one (``truth``: the
    true object's patches), all frames handed over, the scan ended; returns the refiner and its mosaic."""
    from edgeray.nn.corpus import unit_probe
    from edgeray.nn.physics import probe_weights
    from edgeray.nn.trainset import object_patches
    from edgeray.stream.refine import LiveRefiner, RefineOptions

    probe = torch.from_numpy(scan.ground_truth.probe[0])
    probe = probe / torch.linalg.vector_norm(probe)  # unit power, as the edge hands it over
    mosaic = Mosaic((64, 64), scan.geometry.object_pixel_size_m, probe_weights(unit_probe(64)))
    if network == "flat":
        patches = torch.ones(len(scan.frames), 64, 64, dtype=torch.complex64)
    else:
        truth = scan.ground_truth
        patches = torch.from_numpy(object_patches(truth.object, truth.positions_px, (64, 64)))
    mosaic.add(patches, scan.positions_m)

    def sums():
        return mosaic.numerator.clone(), mosaic.coverage.clone(), mosaic.origin_m.copy(), mosaic.pixel_size_m.copy()

    refiner = LiveRefiner((64, 64), probe, RefineOptions(batch_size=50, capacity=1000, **options), sums)
    refiner.add(scan.frames, scan.positions_m)
    refiner.end()
    return refiner, mosaic


def test_the_refined_image_is_the_best_on_held_out_frames_never_worse_than_the_network(scan):
    """Held-out frames are never fitted; the image kept is the best on them. A refinement that helps is kept; one
    that makes a perfect network's image worse at every epoch (sabotaged here) leaves the network's image as the
    refined one."""
    from edgeray.stream.refine import HOLDOUT_EVERY

    refiner, mosaic = _ended_refiner(scan)
    refiner.step()
    fitted, update = [], refiner.engine.update
    refiner.engine.update = lambda slots, refine_probe: fitted.append(slots.clone()) or update(slots, refine_probe)
    while refiner.epochs < 3:
        refiner.step()
    assert not (torch.cat(fitted) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1).any()  # frames 0..599 lie in slots 0..599
    refiner._settle()
    summary = refiner.summary()
    assert summary["chosen"] == "refined" and summary["holdout_misfit"] < 0.5 * summary["network_holdout_misfit"]
    assert [epoch for epoch, _ in summary["holdout_history"]] == sorted(e for e, _ in summary["holdout_history"])
    assert summary["holdout_misfit"] == min(m for _, m in summary["holdout_history"])

    sabotaged, mosaic = _ended_refiner(scan, "truth", patience_epochs=2)
    generator = torch.Generator().manual_seed(0)
    sabotaged.step()  # the engine exists; from now on every update scrambles the object's phase
    update = sabotaged.engine.update

    def scrambling(slots, refine_probe):
        misfit = update(slots, refine_probe)
        noise = torch.rand(sabotaged.engine.state.object.shape, generator=generator) * 6.0
        sabotaged.engine.state.object = sabotaged.engine.state.object * torch.polar(torch.ones_like(noise), noise)
        return misfit

    sabotaged.engine.update = scrambling
    while not sabotaged.stop.is_set() and sabotaged.epochs < 10:  # patience ends it
        sabotaged.step()
    assert sabotaged.stopped_early is not None
    sabotaged._settle()
    assert sabotaged.summary()["chosen"] == "network", json.dumps(sabotaged.summary())
    numerator, coverage = mosaic.numerator.numpy(), mosaic.coverage.numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        network = np.where(coverage > 0, numerator / coverage, np.nan).astype(np.complex64)
    np.testing.assert_array_equal(sabotaged.image(numerator, coverage), network)


def test_the_refined_object_is_placed_on_a_grown_grid_by_its_origin():
    """A mosaic made again on a grid grown by whole pixels: the refined object lands on the same object pixels."""
    from edgeray.stream.refine import _place

    obj = (np.arange(12).reshape(3, 4) + 1j).astype(np.complex64)
    seeded = np.ones((3, 4), bool)
    pixel = np.array([1e-8, 1e-8])
    origin = np.array([5e-8, 7e-8])
    placed, placed_seeded = _place(obj, seeded, origin, origin - 2 * pixel, pixel, (6, 8))  # grew 2 px before
    np.testing.assert_array_equal(placed[2:5, 2:6], obj)
    assert placed_seeded.sum() == 12 and placed_seeded[2:5, 2:6].all()
    clipped, clipped_seeded = _place(obj, seeded, origin, origin + pixel, pixel, (2, 3))  # a smaller grid: cropped
    np.testing.assert_array_equal(clipped, obj[1:3, 1:4])
    assert clipped_seeded.all()


def test_a_killed_writer_loses_no_frame(tmp_path, scan):
    """SIGKILL the run-file writer mid-scan: the run file stays valid with every frame up to the kill, the service
    says so, and a new writer puts the rest in a part file; together they hold every frame sent."""
    service = start_service(tmp_path, scans=1)
    socket = connect(service.endpoint)
    socket.send_multipart(encode_start("kill", "uint16", (64, 64), scan_geometry(scan), len(scan.frames)))
    for i in range(300):
        socket.send_multipart(encode_frame("kill", i, scan.frames[i], scan.positions_m[i]))
    wait_for(lambda: service.current is not None and service.current.ring.written >= 200)
    victim = service.writer.process
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    for i in range(300, len(scan.frames)):
        socket.send_multipart(encode_frame("kill", i, scan.frames[i], scan.positions_m[i]))
    socket.send_multipart(encode_end("kill", len(scan.frames)))
    assert service.wait(60)
    service.join(10)
    socket.close()
    summary = service.summaries[0]
    assert summary["writer_errors"] and "writer died" in summary["writer_errors"][0]
    parts = summary["files"]["raw_parts"]
    assert len(parts) == 2 and parts[1].endswith("kill_part2.cxi")
    indices = []
    for part in parts:
        with CXIFile(part) as cxi:  # each part is a valid CXI file
            frames = cxi.read_frames()
            with h5py.File(part) as h5:
                part_indices = h5["entry_1/data_1/frame_index"][:]
            np.testing.assert_array_equal(frames, scan.frames[part_indices])
            indices.append(part_indices)
    assert len(indices[0]) >= 200  # every frame flushed before the kill
    assert set(np.concatenate(indices)) == set(range(len(scan.frames)))  # nothing lost (a few may be in both)
    assert summary["frames_written"] >= len(scan.frames) and summary["frames_inferred"] == len(scan.frames)


def test_a_stalled_writer_fills_a_bounded_spill_that_is_reported(tmp_path, scan):
    """With the writer stopped, frames wait in the ring, then in a spill bounded in bytes; what overflows is
    counted, and everything else is written once the writer runs again."""
    spill_frames = 100
    service = start_service(tmp_path, scans=1, ring_frames=64, spill_bytes=spill_frames * 64 * 64 * 2)
    os.kill(service.writer.process.pid, signal.SIGSTOP)
    try:
        socket = connect(service.endpoint)
        socket.send_multipart(encode_start("stall", "uint16", (64, 64), scan_geometry(scan), 400))
        for i in range(400):
            socket.send_multipart(encode_frame("stall", i, scan.frames[i], scan.positions_m[i]))
        wait_for(lambda: service.current is not None and service.current.received == 400)
        wait_for(lambda: service.current.dropped == 400 - 64 - spill_frames)
    finally:
        os.kill(service.writer.process.pid, signal.SIGCONT)
    socket.send_multipart(encode_end("stall", 400))
    assert service.wait(60)
    service.join(10)
    socket.close()
    summary = service.summaries[0]
    assert summary["frames_dropped"] == 400 - 64 - spill_frames and summary["spill_peak_frames"] == spill_frames
    assert summary["frames_written"] == summary["frames_inferred"] == 64 + spill_frames


def test_edge_counts_and_skips_bad_messages_and_survives(tmp_path, scan):
    service = start_service(tmp_path, scans=1)
    socket = connect(service.endpoint)
    frame = np.zeros((64, 64), np.uint16)
    socket.send_multipart([b"{oops"])
    socket.send_multipart([b'{"v": 9, "type": "end", "scan_id": "x", "n_frames": 0}'])
    socket.send_multipart(encode_frame("beta", 0, frame, (0, 0)))  # before its start
    socket.send_multipart(encode_start("beta", "uint16", (64, 64), scan_geometry(scan), 3))
    header, payload = encode_frame("beta", 0, frame, (0, 0))
    socket.send_multipart([header, bytes(payload)[:-2]])  # short by one pixel
    socket.send_multipart(encode_frame("beta", 1, np.zeros((32, 32), np.uint16), (0, 0)))  # wrong shape
    for i in range(3):
        socket.send_multipart(encode_frame("beta", i, scan.frames[i], scan.positions_m[i]))
    socket.send_multipart(encode_end("beta", 3))
    assert service.wait(30)
    service.join(10)
    socket.close()
    assert service.invalid_total == 5
    summary = service.summaries[0]
    assert summary["frames_written"] == summary["frames_inferred"] == 3
    assert summary["frames_invalid"] == 2  # the two bad frames after the start


def test_edge_handles_restart_late_frames_and_two_scans(tmp_path, scan):
    service = start_service(tmp_path, scans=2)
    socket = connect(service.endpoint)
    part = scan.frames[:200]
    from edgeray.io import PtychoScan

    small = PtychoScan(part, scan.positions_m[:200], scan.geometry, None, None, None, {})
    replay(small, socket, 0, scan_id="two")
    replay(small, socket, 0, scan_id="one", send_end=False)
    replay(small, socket, 0, scan_id="one", start_index=150)  # the sender restarts and resends from 150
    socket.send_multipart(encode_frame("one", 200, part[0], (0, 0)))  # after the end: counted, skipped
    assert service.wait(60)
    service.join(10)
    socket.close()
    two, one = service.summaries
    assert service.snapshot()["infer_queue"] == 0  # the repeats are not waiting for the mosaic (nor the refiner)
    assert one["frames_received"] == one["frames_written"] == 250 and one["frames_duplicate"] == 50
    assert one["frames_inferred"] == 200 and one["complete"]
    assert two["frames_written"] == two["frames_inferred"] == 200
    assert service.invalid_total == 1
    with CXIFile(tmp_path / "one.cxi") as cxi:
        assert cxi.n_frames == 250


def test_sigterm_closes_the_run_file_validly(tmp_path, scan):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "edgeray", "edge", "--listen", "tcp://127.0.0.1:0", "--out", str(tmp_path),
               "--http", "off", "--publish", "off"]  # fmt: skip
    edge = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        ready = json.loads(edge.stdout.readline())["ready"]
        socket = connect(ready["listen"])
        socket.send_multipart(encode_start("gamma", "uint16", (64, 64), scan_geometry(scan), None))
        for i in range(300):
            socket.send_multipart(encode_frame("gamma", i, scan.frames[i], scan.positions_m[i]))
        socket.close()
        wait_for(lambda: (tmp_path / "gamma.cxi").exists())
        time.sleep(0.5)  # let the frames arrive
        edge.send_signal(signal.SIGTERM)
        assert edge.wait(60) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
    summary = json.loads((tmp_path / "gamma.json").read_text())
    assert summary["frames_written"] == 300 and not summary["complete"]
    with CXIFile(tmp_path / "gamma.cxi") as cxi:
        np.testing.assert_array_equal(cxi.read_frames(), scan.frames[:300])


def test_non_loopback_needs_curve_keys_and_keys_gate_clients(tmp_path, scan):
    with pytest.raises(ValueError, match="CurveZMQ keys"):
        EdgeService(EdgeOptions(listen="tcp://0.0.0.0:0", out=tmp_path, publish=None))
    keys = make_keys(tmp_path / "keys")
    context = zmq.Context()
    try:
        service = EdgeService(
            EdgeOptions(listen="tcp://0.0.0.0:0", out=tmp_path / "run", publish=None, scans=1, curve_keys=keys),
            context,
        ).start()
        port = service.endpoint.rsplit(":", 1)[1]
        intruder = connect(f"tcp://127.0.0.1:{port}", context)  # no keys: the handshake fails, nothing arrives
        intruder.send_multipart(encode_start("intruder", "uint16", (64, 64), scan_geometry(scan), 1))
        time.sleep(0.5)
        assert service.received_total == 0
        intruder.close(0)
        detector = connect(f"tcp://127.0.0.1:{port}", context, curve_keys=keys)
        small = type(scan)(scan.frames[:20], scan.positions_m[:20], scan.geometry, None, None, None, {})
        replay(small, detector, 0, scan_id="keyed")
        assert service.wait(30)
        service.join(10)
        detector.close()
        assert service.summaries[0]["frames_written"] == 20
    finally:
        context.destroy(0)


def test_tomography_edge_refuses_open_addresses_without_keys_and_takes_keyed_detectors(tmp_path):
    from edgeray.io import read_dxchange
    from edgeray.sim import TomoSimConfig, simulate_tomo
    from edgeray.stream.tomo import TomoEdgeOptions, TomoEdgeService, replay_tomo

    with pytest.raises(ValueError, match="CurveZMQ keys"):
        TomoEdgeService(TomoEdgeOptions(listen="tcp://0.0.0.0:0", out=tmp_path, enhancer="off"))
    scan = simulate_tomo(TomoSimConfig(size=32, slices=2, angles=30, photons=1e4, n_flats=2, n_darks=1))
    keys = make_keys(tmp_path / "keys")
    context = zmq.Context()
    try:
        options = TomoEdgeOptions(listen="tcp://0.0.0.0:0", out=tmp_path / "run", update_every=10, enhancer="off",
                                  scans=1, curve_keys=keys)  # fmt: skip
        service = TomoEdgeService(options, context).start()
        port = service.endpoint.rsplit(":", 1)[1]
        intruder = connect(f"tcp://127.0.0.1:{port}", context)  # no keys: the handshake fails, nothing arrives
        intruder.setsockopt(zmq.SNDTIMEO, 2000)  # once the handshake has failed there is no peer to send to
        try:
            replay_tomo(scan, intruder, rate_hz=0, scan_id="intruder")
        except zmq.Again:
            pass
        time.sleep(0.5)
        assert service.received == 0
        intruder.close(0)
        detector = connect(f"tcp://127.0.0.1:{port}", context, curve_keys=keys)
        report = replay_tomo(scan, detector, rate_hz=0, scan_id="keyed")
        assert service.wait(30)
        service.join(10)
        detector.close()
        summary = json.loads((tmp_path / "run" / "keyed.json").read_text())
        assert report.frames_sent == summary["frames_written"] == 30 + 2 + 1
        assert read_dxchange(tmp_path / "run" / "keyed.h5").projections.shape == (30, 2, 32)
    finally:
        context.destroy(0)


def test_tomography_run_file_grows_in_blocks_and_says_how_many_rows_are_frames(tmp_path):
    from edgeray.stream.tomo import _RunFile

    run = _RunFile(tmp_path / "run.h5", (4, 8), "uint16", block=64)
    frames = np.arange(100 * 32, dtype=np.uint16).reshape(100, 4, 8)
    for index, frame in enumerate(frames):
        run.append("data", frame, float(index))
    run.append("data_dark", frames[0], None)
    run.flush()
    with h5py.File(tmp_path / "run.h5", "r", libver="latest") as h5:  # a reader while it is open
        exchange = h5["exchange"]
        assert exchange["data"].shape[0] == 128 and exchange.attrs["data_frames"] == 100  # two blocks, 100 frames
        np.testing.assert_array_equal(exchange["data"][:100], frames)
    assert run.close() == {"data": 100, "data_white": 0, "data_dark": 1}
    with h5py.File(tmp_path / "run.h5", "r") as h5:
        assert h5["exchange/data"].shape == (100, 4, 8) and h5["exchange/theta"].shape == (100,)
        np.testing.assert_array_equal(h5["exchange/theta"][()], np.arange(100.0))


def test_edge_swaps_to_a_new_model_without_losing_frames_and_rejects_a_corrupt_one(tmp_path, scan):
    import shutil

    from safetensors.torch import load_file, save_file

    from edgeray.nn.checkpoint import SHIPPED
    from edgeray.nn.registry import Registry

    registry = Registry(tmp_path / "registry")
    service = start_service(tmp_path / "run", scans=1, registry=registry.root, registry_poll_s=0.05)
    assert registry.current() == "v0001"  # the shipped model, published as the first version
    first_version = service.model_version
    retrained = tmp_path / "retrained"  # a "fine-tuned" model: the shipped one with nudged weights
    shutil.copytree(SHIPPED, retrained, ignore=shutil.ignore_patterns("*.onnx"))
    weights = load_file(retrained / "model.safetensors")
    save_file({k: v * 1.01 for k, v in weights.items()}, retrained / "model.safetensors")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(SHIPPED, corrupt, ignore=shutil.ignore_patterns("*.onnx"))
    (corrupt / "model.safetensors").write_bytes(b"\0" * 100)
    socket = connect(service.endpoint)
    sender = threading.Thread(target=replay, args=(scan, socket, 400), kwargs={"scan_id": "swap"})
    sender.start()
    wait_for(lambda: service.received_total > 100)
    registry.publish(retrained, {"source_scans": ["test"], "engine": "lsqml", "epochs": 1})
    wait_for(lambda: len(service.swaps) == 1)
    registry.publish(corrupt, {"note": "broken on purpose"})
    wait_for(lambda: "v0003" in service.rejected_versions)
    sender.join(30)
    assert service.wait(30)
    service.join(10)
    socket.close()
    summary = service.summaries[0]
    assert summary["frames_received"] == summary["frames_written"] == summary["frames_inferred"] == scan.n_frames
    versions = summary["model_versions"]
    assert set(versions) == {first_version, service.model_version} and all(n > 0 for n in versions.values())
    segments = summary["model_version_segments"]
    assert segments[0][2] == first_version and segments[-1][2] == service.model_version  # frame by frame record
    assert service.model_version.startswith("v0002@")  # the corrupt v0003 never ran
    assert "corrupt weights" in service.rejected_versions["v0003"]
    assert registry.provenance("v0002")["engine"] == "lsqml"


def test_back_to_back_scans_never_wait_for_the_previous_scans_end(tmp_path, scan):
    """Scans 0.1 s apart at 2 kHz: every frame of every scan written and summarized; a scan's summary comes
    without the next scan having to start; and a scan's end that waits (here: until the whole next scan is in its
    mosaic) holds no frame of the next scan: had the stream needed the finisher, that wait would never end."""
    service = EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path, publish=None, preview=True, scans=3))
    finish, next_scan_done = service.finisher.finish, threading.Event()

    def finish_after_the_next_scan(run) -> None:
        if run.start.scan_id == "second":
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not next_scan_done.is_set():
                current = service.current
                if current is not None and current.start.scan_id == "third" and current.stitched == scan.n_frames:
                    next_scan_done.set()
                time.sleep(0.01)
        finish(run)

    service.finisher.finish = finish_after_the_next_scan
    service.start()
    socket = connect(service.endpoint)
    replay(scan, socket, 2000, scan_id="first")
    wait_for(lambda: (tmp_path / "first.json").exists(), 60)  # no next scan needed for it
    for scan_id in ("second", "third"):
        replay(scan, socket, 2000, scan_id=scan_id)
        time.sleep(0.1)
    assert service.wait(180)
    service.join(10)
    socket.close()
    assert next_scan_done.is_set(), "the next scan was not stitched while the previous scan's end waited"
    for scan_id in ("first", "second", "third"):
        summary = json.loads((tmp_path / f"{scan_id}.json").read_text())
        for key in ("frames_received", "frames_written", "frames_inferred"):
            assert summary[key] == scan.n_frames, (scan_id, key)
        assert Path(summary["files"]["preview"]).read_bytes()[:4] == b"\x89PNG"  # drawn in its own process


def _ring_run(scan, capacity: int = 1024):
    """A scan's run as the receiver leaves it: its frames in a ring, announced, with their arrival times."""
    from edgeray.stream.ring import FrameRing
    from edgeray.stream.scan import ScanRun

    start = Start("alone", scan.frames.dtype.name, tuple(scan.frames.shape[1:]), scan_geometry(scan), scan.n_frames)
    ring = FrameRing(capacity, start.shape, start.dtype)
    n = scan.n_frames
    ring.frames[:n], ring.positions_m[:n] = scan.frames, scan.positions_m
    ring.index[:n], ring.infer[:n] = np.arange(n), True
    ring.arrival_ns[:n] = time.perf_counter_ns()
    run = ScanRun(start, time.time(), time.perf_counter_ns(), ring, stored=n, published=n)
    ring.received = n
    return run


def test_the_inference_stage_alone_inverts_every_announced_frame_in_order(scan):
    """Inference fed the receiver's messages by hand: its output is every frame, in batches in ring order, then the
    scan's end, then the stop."""
    import queue

    from edgeray.stream.helpers import ScanHelpers
    from edgeray.stream.inference import Inference
    from edgeray.stream.scan import Inverted, ScanEnded, ScanStarted, Stop
    from edgeray.stream.serving import ModelHolder

    options = EdgeOptions(max_batch=64)
    models = ModelHolder(None)
    control, to_stitch = queue.Queue(), queue.Queue()
    helpers = ScanHelpers(options, models, threading.Lock(), 1)
    stage = Inference(options, models, control, to_stitch, threading.Condition(), helpers.scan_started)
    run = _ring_run(scan)
    for message in (ScanStarted(run), ScanEnded(run), Stop()):
        control.put(message)
    stage.run()
    out = [to_stitch.get_nowait() for _ in range(to_stitch.qsize())]
    batches = [m for m in out if isinstance(m, Inverted)]
    assert isinstance(out[-2], ScanEnded) and isinstance(out[-1], Stop) and len(out) == len(batches) + 2
    assert [b.upto for b in batches] == sorted(b.upto for b in batches) and batches[-1].upto == scan.n_frames
    assert sum(len(b.amplitude) for b in batches) == scan.n_frames and all(len(b.amplitude) <= 64 for b in batches)
    np.testing.assert_allclose(np.concatenate([b.positions_m for b in batches]), scan.positions_m)
    assert run.mosaic is not None and run.version_counts == {models.get().version: scan.n_frames}
    run.ring.close()


def test_the_stitcher_alone_builds_the_mosaic_and_passes_the_end_on(scan):
    """Stitcher fed the inference's messages by hand (patches of the true object): every patch goes into the
    mosaic with its latency, a batch of repeats only moves the handled count, and the end and stop go on to the
    finisher in order."""
    import queue

    from edgeray.nn.trainset import object_patches
    from edgeray.stream.protocol import object_pixel_size_m
    from edgeray.stream.scan import Inverted, ScanEnded, Skipped, Stop
    from edgeray.stream.stitcher import Stitcher

    run = _ring_run(scan)
    run.mosaic = Mosaic(run.start.shape, object_pixel_size_m(run.start))
    truth = scan.ground_truth
    patches = torch.from_numpy(object_patches(truth.object, truth.positions_px, (64, 64)))
    to_stitch, to_finish = queue.Queue(), queue.Queue()
    arrivals = np.full(300, time.perf_counter_ns())
    to_stitch.put(Inverted(run, patches[:300].abs()[:, None], patches[:300].angle()[:, None], scan.positions_m[:300],
                           arrivals, None, 300))  # fmt: skip
    to_stitch.put(Skipped(run, 310))
    for message in (ScanEnded(run), Stop()):
        to_stitch.put(message)
    Stitcher(to_stitch, to_finish, threading.Lock()).run()
    assert isinstance(to_finish.get_nowait(), ScanEnded) and isinstance(to_finish.get_nowait(), Stop)
    assert run.stitched == 300 and run.stitched_upto == 310 and run.mosaic.n_patches == 300
    assert (run.latencies_ms[:300] >= 0).all()
    run.ring.close()


class WriterNotes:
    """The writer supervisor as the receiver sees it, keeping what it is told (the receiver's neighbour, faked)."""

    def __init__(self):
        self.told: list[tuple] = []

    def open(self, run) -> None:
        self.told.append(("open", run.start.scan_id))

    def frames(self, stop: int) -> None:
        self.told.append(("frames", stop))

    def end(self, run) -> None:
        self.told.append(("end", run.stored))


def test_the_receiver_alone_rings_every_frame_and_tells_its_neighbours_in_order(tmp_path, scan):
    """The receiver on a real socket, its neighbours' side faked: every frame goes into the ring with its position
    and index, a bad message is counted and skipped, the inference hears start then end then stop, the writer hears
    of the scan, its frames (never beyond the ring's count) and its end."""
    import queue

    from edgeray.stream.receiver import Receiver
    from edgeray.stream.scan import ScanEnded, ScanStarted, Stop
    from edgeray.stream.security import bind_server_socket

    context = zmq.Context()
    pull, endpoint = bind_server_socket(context, zmq.PULL, "tcp://127.0.0.1:0", None)
    control, writer, stopping = queue.Queue(), WriterNotes(), threading.Event()
    receiver = Receiver(pull, EdgeOptions(out=tmp_path, ring_frames=1024), writer, control, threading.Condition(),
                        stopping)  # fmt: skip
    thread = threading.Thread(target=receiver.run, daemon=True)
    thread.start()
    push = context.socket(zmq.PUSH)
    push.connect(endpoint)
    n = 200
    push.send_multipart(encode_start("solo", "uint16", (64, 64), scan_geometry(scan), n))
    push.send_multipart([b"not json"])
    for k in range(n):
        push.send_multipart(encode_frame("solo", k, scan.frames[k], scan.positions_m[k]))
    push.send_multipart(encode_end("solo", n))
    wait_for(lambda: receiver.current is not None and receiver.current.end_sent, 30)
    stopping.set()
    thread.join(10)
    run = receiver.current
    assert run.received == n and run.stored == n and receiver.invalid_total == 1
    np.testing.assert_array_equal(run.ring.frames[:n], scan.frames[:n])
    np.testing.assert_allclose(run.ring.positions_m[:n], scan.positions_m[:n])
    np.testing.assert_array_equal(run.ring.index[:n], np.arange(n))
    messages = [control.get_nowait() for _ in range(control.qsize())]
    assert [type(m) for m in messages] == [ScanStarted, ScanEnded, Stop] and messages[0].run is run
    assert writer.told[0] == ("open", "solo") and writer.told[-1] == ("end", n)
    announced = [stop for kind, stop in writer.told if kind == "frames"]
    assert announced == sorted(announced) and all(stop <= n for stop in announced)
    run.ring.close()
    push.close(0)
    pull.close(0)
    context.term()


@pytest.mark.parametrize("step", [1, 3])
def test_the_live_image_is_copied_in_blocks_equal_to_the_mosaic(scan, step):
    from types import SimpleNamespace

    from edgeray.stream.live import COPY_ROWS, LiveState

    mosaic = Mosaic((64, 64), (1e-8, 1e-8))
    rng = np.random.default_rng(0)
    patches = torch.polar(torch.rand(300, 64, 64) + 0.5, torch.rand(300, 64, 64))
    mosaic.add(patches, rng.uniform(0, 4 * COPY_ROWS * 1e-8, (300, 2)))
    assert mosaic.shape[0] > 3 * COPY_ROWS  # several blocks, the last one partial
    run = SimpleNamespace(mosaic=mosaic)
    live = LiveState(None, None, [], None, threading.Lock(), None, threading.Event())
    numerator, coverage, _ = live.mosaic_sums(run, step)
    np.testing.assert_array_equal(numerator, mosaic.numerator[::step, ::step].numpy())
    np.testing.assert_array_equal(coverage, mosaic.coverage[::step, ::step].numpy())
