"""Tiled, where Bluesky facilities find their data: scans read from a real Tiled server, and the edge's scans
published to one (``tiled serve`` on 127.0.0.1 with an API key, started here), readable by Tiled's own client."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from tiled.client import from_uri

from edgeray.cli import main
from edgeray.io import CXIFile, PtychoScan, read_product, read_reconstruction
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream import EdgeOptions, EdgeService, connect, replay
from edgeray.stream.refine import RefineOptions
from edgeray.stream.tiled_publish import TiledOptions
from tiled_server import TiledServer

KEY = "edgeraytestkey0123"


@pytest.fixture(scope="module")
def scan():
    """3 s of frames at 2 kHz, the edge model's geometry."""
    return simulate_ptycho(PtychoSimConfig(n_positions=6000, step_px=4.0, seed=21))


def edge(tmp_path: Path, uri: str, **options) -> EdgeService:
    tiled = TiledOptions(uri, period_s=0.25, retry_s=options.pop("retry_s", 30.0))
    defaults = {"listen": "tcp://127.0.0.1:0", "out": tmp_path / "out", "publish": None, "preview": False,
                "scans": 1, "tiled": tiled}  # fmt: skip
    return EdgeService(EdgeOptions(**{**defaults, **options})).start()


def summary_of(service: EdgeService, scan_id: str) -> dict:
    return json.loads((Path(service.options.out) / f"{scan_id}.json").read_text())


# -- reading ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def served_files(tmp_path_factory, petra_cxi, tooth_h5):
    """``tiled serve directory`` of the PETRA III scan, the tooth and an NXtomo file (tomoscan's layout)."""
    from edgeray.sim import TomoSimConfig, simulate_tomo
    from test_nxtomo import write_tomoscan_style

    folder = tmp_path_factory.mktemp("served")
    files = folder / "files"
    files.mkdir()
    shutil.copy(petra_cxi, files)
    shutil.copy(tooth_h5, files)
    nxtomo = simulate_tomo(TomoSimConfig(size=48, slices=3, angles=90, photons=1e4, n_flats=4, n_darks=2, seed=5))
    write_tomoscan_style(files / "phantom.nx", [nxtomo])
    with TiledServer(folder / "server", KEY, directory=files) as server:
        yield server, files


@pytest.mark.parametrize(
    ("command", "name", "flags"),
    [
        (["ptycho", "reconstruct"], "petra3_p25_nearfield.cxi", ["--near-field", "--epochs", "3"]),
        (["tomo", "recon"], "tooth.h5", []),
        (["tomo", "recon"], "phantom.nx", []),
    ],
)
def test_a_run_read_through_tiled_reconstructs_as_its_file(tmp_path, monkeypatch, served_files, command, name, flags):
    server, files = served_files
    monkeypatch.setenv("TILED_API_KEY", KEY)
    uri = server.uri + Path(name).stem
    assert main([*command, str(files / name), "-o", str(tmp_path / "file.h5"), *flags]) == 0
    assert main([*command, uri, "-o", str(tmp_path / "tiled.h5"), *flags]) == 0
    if command[0] == "ptycho":
        from_file, from_tiled = read_product(tmp_path / "file.h5"), read_product(tmp_path / "tiled.h5")
        np.testing.assert_array_equal(from_tiled.object, from_file.object)
        np.testing.assert_array_equal(from_tiled.probe, from_file.probe)
        assert from_tiled.attrs["source"] == uri
    else:
        from_file = read_reconstruction(tmp_path / "file.h5")[0]  # the same data; the threaded FFTs may round apart
        np.testing.assert_allclose(read_reconstruction(tmp_path / "tiled.h5")[0], from_file, rtol=0,
                                   atol=1e-5 * np.abs(from_file).max())  # fmt: skip
    summary = json.loads((tmp_path / "tiled.json").read_text())
    assert uri in json.dumps(summary)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiled-")]  # the copy is gone


def test_a_wrong_key_or_node_is_refused_by_name(tmp_path, monkeypatch, capsys, served_files):
    server, _ = served_files
    monkeypatch.setenv("TILED_API_KEY", "notthekey")
    assert main(["tomo", "recon", server.uri + "tooth", "-o", str(tmp_path / "rec.h5")]) != 0
    assert "refused the API key" in capsys.readouterr().err
    monkeypatch.setenv("TILED_API_KEY", KEY)
    assert main(["tomo", "recon", server.uri + "nothing", "-o", str(tmp_path / "rec.h5")]) != 0
    assert "no such node" in capsys.readouterr().err
    assert not (tmp_path / "rec.h5").exists()


# -- publishing --------------------------------------------------------------------------------------------------
def filled(amplitude: np.ndarray) -> int:
    """Pixels of a live image that hold data (a reader can catch a just-made array before its data: zeros)."""
    return int(np.count_nonzero(np.isfinite(amplitude) & (amplitude != 0)))


def test_the_edge_publishes_a_scan_readable_by_tiled_and_equal_to_its_files(tmp_path, monkeypatch, scan):
    """The scan is sent in three parts of one scan; before each next part the reader waits (however long the
    machine needs) until the live image in Tiled shows more than it did: it grows during the scan, by events, not
    by a count of updates within a time."""
    monkeypatch.setenv("TILED_API_KEY", KEY)
    with TiledServer(tmp_path / "server", KEY) as server:
        service = edge(tmp_path, server.uri, refine=RefineOptions(tail_s=1.0))
        client = from_uri(server.uri, api_key=KEY)
        seen, errors = [0], []

        def read_live() -> int:
            try:
                seen.append(filled(client["live-1"]["live"]["amplitude"].read()))
            except Exception as error:  # not made yet (KeyError), or extended under the reader
                errors.append(repr(error))
            return seen[-1]

        def wait_for_more_than(level: int, timeout_s: float = 180.0) -> None:
            deadline = time.monotonic() + timeout_s
            while read_live() <= level:
                assert time.monotonic() < deadline, f"the live image stayed at {level} px: {seen[-5:]}, {errors[-3:]}"
                time.sleep(0.05)

        import stamina

        stamina.set_active(False)  # the reader looks the node up again at once after an extension (its old shape
        socket = connect(service.endpoint)  # is refused), rather than retrying the old request
        thirds = np.linspace(0, len(scan.frames), 4).astype(int)
        try:
            for k in range(3):
                part = PtychoScan(scan.frames[: thirds[k + 1]], scan.positions_m[: thirds[k + 1]], scan.geometry,
                                  None, None, None, {})  # fmt: skip
                before = max(seen)  # the most the image showed before this part's frames
                replay(part if k < 2 else scan, socket, 2000, scan_id="live-1", start_index=int(thirds[k]),
                       send_end=k == 2)  # fmt: skip
                if k < 2:
                    wait_for_more_than(before)  # this part's new rows reach Tiled while the scan is open
        finally:
            socket.close()
            stamina.set_active(True)
        assert service.wait(120)
        service.join(10)
        summary = summary_of(service, "live-1")
        assert summary["tiled"]["published"] is True and summary["tiled"]["failed_requests"] == 0
        assert summary["frames_written"] == len(scan.frames) and summary["complete"]
        assert summary["frames_duplicate"] == 0

        node = from_uri(server.uri, api_key=KEY)["live-1"]
        metadata = node.metadata
        assert metadata["state"] == "done" and metadata["scan_id"] == "live-1"
        assert metadata["summary"]["frames_received"] == len(scan.frames)
        assert Path(metadata["run_file"]) == Path(summary["files"]["raw"]).resolve()
        assert metadata["model_version"] == summary["model_version"]
        for key in ("product", "refined"):
            product = read_product(summary["files"][key])
            np.testing.assert_array_equal(node[key]["object"].read(), product.object)
            np.testing.assert_array_equal(node[key]["probe"].read(), product.probe)
            np.testing.assert_array_equal(node[key]["positions_m"].read(), product.positions_m)
        assert filled(node["live"]["amplitude"].read()) >= max(seen)

        # the container reads as its run file (on this machine): the iterative engines refine the live scan
        refined = tmp_path / "from_tiled.h5"
        assert main(["ptycho", "reconstruct", server.uri + "live-1", "-o", str(refined), "--epochs", "1"]) == 0
        with CXIFile(summary["files"]["raw"]) as cxi:
            np.testing.assert_allclose(read_product(refined).positions_m, cxi.positions_m)
        assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tiled-")]


def test_a_key_the_server_refuses_stops_the_edge_before_it_listens(tmp_path, monkeypatch):
    monkeypatch.setenv("TILED_API_KEY", "notthekey")
    with TiledServer(tmp_path / "server", KEY) as server:
        with pytest.raises(ValueError, match="refused the API key"):
            EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path / "out", publish=None, preview=False,
                                    tiled=TiledOptions(server.uri)), context=None)  # fmt: skip


def test_a_server_killed_mid_scan_costs_no_frame_and_publishing_resumes_or_reports(tmp_path, monkeypatch, scan):
    monkeypatch.setenv("TILED_API_KEY", KEY)
    server = TiledServer(tmp_path / "server", KEY).start()
    try:
        service = edge(tmp_path, server.uri, scans=2, retry_s=20.0)
        socket = connect(service.endpoint)
        sender = threading.Thread(target=replay, args=(scan, socket, 2000.0), kwargs={"scan_id": "killed-1"})
        sender.start()
        time.sleep(1.0)
        server.kill()  # mid-scan: the edge goes on; the scan's products wait for the server
        sender.join()
        server.start()  # back (same port, same catalog) within the scan's retry time: publishing resumes
        deadline = time.monotonic() + 30
        while "tiled" not in summary_of(service, "killed-1") and time.monotonic() < deadline:
            time.sleep(0.1)
        server.kill()  # and gone for the whole second scan: its products are reported unpublished
        replay(scan, socket, 2000.0, scan_id="killed-2")
        assert service.wait(120)
        service.join(10)
        socket.close()
    finally:
        server.stop()
    first, second = summary_of(service, "killed-1"), summary_of(service, "killed-2")
    for summary in (first, second):
        assert summary["frames_received"] == summary["frames_written"] == len(scan.frames)
        assert summary["frames_inferred"] == len(scan.frames)
        assert read_product(summary["files"]["product"]).object.size
    assert first["tiled"]["published"] is True and first["tiled"]["failed_requests"] > 0
    assert second["tiled"]["published"] is False and "cannot reach" in second["tiled"]["last_error"]
    server.start()
    try:
        node = from_uri(server.uri, api_key=KEY)["killed-1"]
        np.testing.assert_array_equal(node["product"]["object"].read(), read_product(first["files"]["product"]).object)
        assert node.metadata["summary"]["frames_written"] == len(scan.frames)
    finally:
        server.stop()


def test_the_edge_beside_a_bluesky_run_engine_shares_the_run_id(tmp_path, monkeypatch, scan):
    """docs/tiled.md's recipe: Bluesky's TiledWriter publishes the run, the edge its images under a node of its own,
    the run's uid as the scan id; both are found by it."""
    from bluesky import RunEngine
    from bluesky.callbacks.tiled_writer import TiledWriter
    from bluesky.plans import count
    from ophyd.sim import det

    monkeypatch.setenv("TILED_API_KEY", KEY)
    with TiledServer(tmp_path / "server", KEY) as server:
        client = from_uri(server.uri, api_key=KEY)
        client.create_container("edgeray")
        engine = RunEngine({}, call_returns_result=False)
        engine.subscribe(TiledWriter(client))
        (uid,) = engine(count([det], num=5))
        service = edge(tmp_path, server.uri + "edgeray")
        socket = connect(service.endpoint)
        replay(scan, socket, 4000.0, scan_id=uid)
        assert service.wait(120)
        service.join(10)
        socket.close()
        run, images = client[uid], from_uri(server.uri, api_key=KEY)["edgeray"][uid]
        assert run.metadata["start"]["plan_name"] == "count"
        assert len(run["primary"]["det"].read()) == 5
        assert images.metadata["state"] == "done"
        summary = summary_of(service, uid)
        np.testing.assert_array_equal(
            images["product"]["object"].read(), read_product(summary["files"]["product"]).object
        )
