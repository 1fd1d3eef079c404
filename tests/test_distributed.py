"""ML-CG across ranks on real torch.distributed process groups (gloo, 127.0.0.1): partition, equality with the
one-process engine, a failing rank, the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import h5py
import numpy as np
import psutil
import pytest
import torch

from edgeray.cli import main
from edgeray.io import read_cxi, read_product, write_cxi
from edgeray.ptycho.distributed import launch, ownership, partition
from edgeray.ptycho.mlcg import MLCGOptions
from edgeray.ptycho.ops import split_positions
from edgeray.ptycho.problem import object_grid
from edgeray.ptycho.reconstruct import default_options, run
from edgeray.sim import PtychoSimConfig, simulate_ptycho


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory):
    scan = simulate_ptycho(PtychoSimConfig(n_positions=300, seed=1))
    return write_cxi(tmp_path_factory.mktemp("dist") / "scan.cxi", scan)


@pytest.mark.parametrize("ranks", [1, 2, 3, 4, 7])
def test_partition_is_balanced_compact_and_covers_every_frame(ranks):
    rng = np.random.default_rng(0)
    positions = rng.uniform(32, 400, size=(1000, 2))
    tiles = partition(positions, (64, 64), ranks)
    counts = [len(t.frames) for t in tiles]
    assert sorted(np.concatenate([t.frames for t in tiles])) == list(range(1000))
    assert max(counts) - min(counts) <= 3  # at most one frame of rounding per level of bisection
    corners, _ = split_positions(torch.from_numpy(positions), (64, 64))
    corners = corners.numpy()
    for tile in tiles:  # every frame's window inside its tile's box
        y0, y1, x0, x1 = tile.box
        assert (corners[tile.frames] >= [y0, x0]).all() and (corners[tile.frames] + 64 <= [y1, x1]).all()
    if ranks > 1:  # compact: the boxes together are far from `ranks` copies of the whole object
        whole = (positions.max(0) - positions.min(0) + 64).prod()
        assert sum((t.box[1] - t.box[0]) * (t.box[3] - t.box[2]) for t in tiles) < 0.6 * ranks * whole
    owned = sum(int(ownership(tiles, r).sum()) for r in range(ranks))  # each pixel of the union owned once
    union = np.zeros((600, 600), bool)
    for tile in tiles:
        union[tile.box[0] : tile.box[1], tile.box[2] : tile.box[3]] = True
    assert owned == union.sum()


def test_two_gloo_ranks_equal_one_process_to_float32_round_off(scan_file, tmp_path):
    options = MLCGOptions()
    serial = run(read_cxi(scan_file), "mlcg", 6, options=options)
    summary = launch(2, scan_file, tmp_path / "two.h5", 6, options)
    product = read_product(tmp_path / "two.h5")
    reference = serial.product.object[0]
    difference = np.abs(product.object[0] - reference).max() / np.abs(reference).max()
    assert difference < 1e-4, difference  # measured 3.6e-6 after 5 epochs
    assert np.abs(product.probe - serial.product.probe).max() / np.abs(serial.product.probe).max() < 1e-4
    np.testing.assert_allclose(summary["cost"], serial.history.cost, rtol=1e-5)
    assert product.attrs["ranks"] == 2 and summary["ranks"] == 2
    ranks = summary["communication"]
    assert sum(r["frames"] for r in ranks) == 300
    epoch = ranks[0]["epochs"][0]  # what moved: halo strips and the probe, not the object
    assert epoch["halo_exchange"]["bytes"] > 0 and epoch["all_reduce_probe"]["bytes"] > 0
    assert epoch["compute_s"] + epoch["communication_s"] == pytest.approx(epoch["seconds"])
    grid = object_grid(read_cxi(scan_file))
    object_bytes = grid.object_shape[0] * grid.object_shape[1] * 8
    assert epoch["halo_exchange"]["bytes"] < 2 * object_bytes  # two object-shaped sums, strips only


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("ranks", [2, 4])
@pytest.mark.parametrize("engine", ["lsqml", "rpie", "epie", "mlcg"])
def test_every_engine_s_default_options_give_the_one_process_answer_on_any_ranks(scan_file, tmp_path, engine, ranks):
    """The defaults as a user gets them (LSQML's low-pass momentum included), 5 epochs: the object and probe of 2
    and 4 ranks equal one process's (measured 2e-7 to 1e-6 relative norm; before momentum was distributed, 4e-2)."""
    options = default_options(engine)
    serial = run(read_cxi(scan_file), engine, 5, options=options)
    summary = launch(ranks, scan_file, tmp_path / "ranks.h5", 5, options, engine=engine)
    product = read_product(tmp_path / "ranks.h5")
    assert _relative(product.object[0], serial.product.object[0]) < 1e-4
    assert _relative(product.probe, serial.product.probe) < 1e-4
    np.testing.assert_allclose(summary["cost"], serial.history.cost, rtol=1e-5)
    assert product.attrs["engine"] == engine and summary["engine"] == engine and summary["ranks"] == ranks
    epoch = summary["communication"][0]["epochs"][-1]
    if engine != "mlcg":  # per batch: illumination and direction at least
        assert epoch["halo_exchange"]["calls"] >= 2 * int(np.ceil(300 / options.batch_size))
    if engine == "lsqml":  # the momentum's one whole-object all-reduce per epoch
        assert epoch["all_reduce_momentum"]["calls"] == 1


@pytest.mark.parametrize(("engine", "changes"), [("lsqml", {"n_probe_modes": 2, "batch_size": 64}),
                                                 ("mlcg", {"noise": "poisson", "n_probe_modes": 2}),
                                                 ("rpie", {"n_probe_modes": 3, "probe_refine": False})])  # fmt: skip
def test_probe_modes_noise_models_and_a_fixed_probe_keep_the_answer_on_two_ranks(scan_file, tmp_path, engine, changes):
    options = default_options(engine, **changes)
    serial = run(read_cxi(scan_file), engine, 4, options=options)
    launch(2, scan_file, tmp_path / "two.h5", 4, options, engine=engine)
    product = read_product(tmp_path / "two.h5")
    assert _relative(product.object[0], serial.product.object[0]) < 1e-4
    assert _relative(product.probe, serial.product.probe) < 1e-4


def test_options_that_cannot_keep_the_answer_are_refused_before_any_rank_starts(scan_file, tmp_path):
    for options, reason in [(default_options("lsqml", position_correction=True), "position correction"),
                            (default_options("lsqml", noise="poisson"), "Poisson noise")]:  # fmt: skip
        started = time.monotonic()
        with pytest.raises(ValueError, match=reason):
            launch(2, scan_file, tmp_path / "never.h5", 3, options)
        assert time.monotonic() - started < 1.0  # no rank was started
    result = subprocess.run([sys.executable, "-m", "edgeray", "ptycho", "reconstruct", str(scan_file), "-o",
                             str(tmp_path / "never.h5"), "--nproc", "2", "--position-correction"],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "position correction is not distributed" in result.stderr
    assert not (tmp_path / "never.h5").exists()


def test_two_torchrun_nodes_on_loopback_equal_one_process(scan_file, tmp_path):
    """Two torchrun launchers, one rank each, joined in one process group over 127.0.0.1 as two nodes would be
    (static rendezvous on the master's address): the CLI's --distributed product equals one process's."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    output = tmp_path / "nodes.h5"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
                "--master-addr", "127.0.0.1", "--master-port", str(port)]  # fmt: skip
    command = ["-m", "edgeray", "ptycho", "reconstruct", str(scan_file), "-o", str(output), "--epochs", "5",
               "--distributed"]  # fmt: skip
    nodes = [subprocess.Popen([*torchrun, "--node-rank", str(k), *command], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for k in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    serial = run(read_cxi(scan_file), "lsqml", 5, options=default_options("lsqml"))
    product = read_product(output)
    assert product.attrs["ranks"] == 2
    assert _relative(product.object[0], serial.product.object[0]) < 1e-4
    assert _relative(product.probe, serial.product.probe) < 1e-4


def test_a_killed_rank_ends_the_run_with_a_clear_error_and_no_product(scan_file, tmp_path):
    output = tmp_path / "killed.h5"
    command = [sys.executable, "-m", "edgeray", "ptycho", "reconstruct", str(scan_file), "-o", str(output),
               "--engine", "mlcg", "--epochs", "100000", "--nproc", "2"]  # fmt: skip
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        ranks = []
        while len(ranks) < 2 and time.monotonic() - started < 120:  # the two rank processes, once started
            time.sleep(0.5)
            children = psutil.Process(process.pid).children()
            ranks = [c for c in children if "spawn_main" in " ".join(c.cmdline())]
        assert len(ranks) == 2, "the ranks did not start"
        time.sleep(5)  # into the epochs
        assert process.poll() is None
        ranks[1].kill()
        killed = time.monotonic()
        out, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert time.monotonic() - killed < 90
    assert process.returncode != 0
    assert "died" in out and "no product written" in out, out[-2000:]
    assert not output.exists() and not output.with_suffix(".json").exists()
    for rank in ranks:
        assert not rank.is_running() or rank.status() == psutil.STATUS_ZOMBIE


def test_a_failing_rank_stops_every_rank_with_a_clear_error_and_no_product(tmp_path):
    scan = simulate_ptycho(PtychoSimConfig(n_positions=200, seed=2))
    scan.frames = scan.frames.astype(np.float32)
    path = write_cxi(tmp_path / "bad.cxi", scan)
    tiles = partition(object_grid(scan).positions_px, scan.frames.shape[1:], 2)
    with h5py.File(path, "r+") as h5:  # a NaN frame that only rank 1 reads
        h5["entry_1/instrument_1/detector_1/data"][int(tiles[1].frames[3])] = np.nan
    with pytest.raises(RuntimeError, match=r"rank1 failed.*NaN"):
        launch(2, path, tmp_path / "out.h5", 3, MLCGOptions(), timeout_s=20)
    assert not (tmp_path / "out.h5").exists()


def test_cli_nproc_writes_product_and_communication_log(scan_file, tmp_path):
    output = tmp_path / "cli.h5"
    assert main(["ptycho", "reconstruct", str(scan_file), "-o", str(output), "--engine", "mlcg", "--epochs", "2",
                 "--nproc", "2"]) == 0  # fmt: skip
    summary = json.loads(output.with_suffix(".json").read_text())
    assert summary["ranks"] == 2 and summary["frames_per_s"] > 0 and len(summary["communication"][1]["epochs"]) == 2
    refused = main(["ptycho", "reconstruct", str(scan_file), "-o", str(tmp_path / "no.h5"), "--nproc", "2",
                    "--position-correction"])  # fmt: skip
    assert refused == 2 and not (tmp_path / "no.h5").exists()


def test_frames_left_on_disk_give_the_in_memory_answer_read_ahead_on_one_rank_or_two(scan_file, tmp_path):
    """Frames read per batch from the file (h5py for compressed frames, direct reads for raw ones): the very same
    reconstruction as in memory; the batches come from the thread reading ahead, each rank reads its own frames."""
    from edgeray.io import CXIFile
    from edgeray.ptycho.disk_frames import DiskAmplitudes

    raw = write_cxi(tmp_path / "raw.cxi", read_cxi(scan_file), compression="none")
    for path in (scan_file, raw):
        memory = run(read_cxi(path), "lsqml", 3)
        with CXIFile(path) as cxi:
            lazy = cxi.lazy()
        disk = run(lazy, "lsqml", 3)
        amplitudes = disk.problem.amplitudes
        assert isinstance(amplitudes, DiskAmplitudes) and (amplitudes.direct is not None) == (path == raw)
        np.testing.assert_array_equal(disk.product.object, memory.product.object)
        np.testing.assert_array_equal(disk.product.probe, memory.product.probe)
        frame_bytes = int(np.prod(lazy.frames.shape[1:])) * lazy.frames.dtype.itemsize
        assert amplitudes.bytes_read == 4 * 300 * frame_bytes  # the checking pass, then each epoch once
        assert amplitudes.read_ahead_hits == 3 * int(np.ceil(300 / default_options("lsqml").batch_size))  # every batch
    summary = launch(2, raw, tmp_path / "two.h5", 3, default_options("lsqml"), frames_on_disk="always")
    two = read_product(tmp_path / "two.h5")
    assert _relative(two.object[0], memory.product.object[0]) < 1e-4 and summary["ranks"] == 2


def test_a_bad_frame_on_disk_is_named_before_any_epoch(tmp_path):
    from edgeray.io import CXIFile, EdgeRayFormatError

    scan = simulate_ptycho(PtychoSimConfig(n_positions=100, seed=4))
    scan.frames = scan.frames.astype(np.float32)
    scan.frames[57, 3, 3] = -5
    path = write_cxi(tmp_path / "bad.cxi", scan, compression="none")
    with CXIFile(path) as cxi, pytest.raises(EdgeRayFormatError, match=r"bad.cxi.*frames 0\.\.99 hold NaN"):
        run(cxi.lazy(), "lsqml", 2)
