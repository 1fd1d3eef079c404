"""NeXus NXtomo files as Diamond's and tomoscan's writers lay them out: read, inspected, reconstructed and replayed as
their Data Exchange twins are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from edgeray.io import EdgeRayFormatError, detect_kind, inspect, open_tomo, read_tomo, write_dxchange
from edgeray.io.nxtomo import TomoPaths
from edgeray.metrics import ssim
from edgeray.sim import TomoSimConfig, simulate_tomo


@pytest.fixture(scope="module")
def scan():
    """A small simulated scan, uint16 counts, 4 flats and 2 darks."""
    return simulate_tomo(TomoSimConfig(size=48, slices=3, angles=90, photons=1e4, n_flats=4, n_darks=2, seed=5))


def _frames_and_keys(scan) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Darks, half the flats, the projections, the other flats: frames ``(n, rows, cols)``, image keys, angles."""
    half = len(scan.flats) // 2
    frames = np.concatenate([scan.darks, scan.flats[:half], scan.projections, scan.flats[half:]])
    keys = np.concatenate([np.full(len(scan.darks), 2), np.full(half, 1), np.zeros(len(scan.projections), int),
                           np.full(len(scan.flats) - half, 1)])  # fmt: skip
    angles = np.concatenate([np.zeros(len(scan.darks) + half), scan.theta_deg,
                             np.full(len(scan.flats) - half, scan.theta_deg[-1])])  # fmt: skip
    return frames, keys, angles


def write_tomoscan_style(path: Path, scans: list, axes: tuple[str, ...] | None = None) -> Path:
    """One ``entryNNNN`` per scan (NXentry, ``definition`` NXtomo): detector data, image_key, sample rotation_angle
    (degree), an NXdata group of links. ``axes``: store the frames in this order of ("rotation_angle", "y", "x")."""
    with h5py.File(path, "w") as h5:
        for k, scan in enumerate(scans):
            frames, keys, angles = _frames_and_keys(scan)
            entry = h5.create_group(f"entry{k:04d}")
            entry.attrs["NX_class"] = "NXentry"
            entry["definition"] = "NXtomo"
            detector = entry.create_group("instrument/detector")
            detector.attrs["NX_class"] = "NXdetector"
            order = (0, 1, 2)
            if axes is not None:
                order = tuple(("rotation_angle", "y", "x").index(a) for a in axes)
            detector.create_dataset("data", data=np.transpose(frames, order).astype(np.uint16), chunks=True)
            detector["image_key"] = keys
            detector["image_key_control"] = keys
            sample = entry.create_group("sample")
            sample["rotation_angle"] = angles
            sample["rotation_angle"].attrs["units"] = "degree"
            data = entry.create_group("data")
            data.attrs["NX_class"] = "NXdata"
            data.attrs["signal"] = "data"
            if axes is not None:
                data.attrs["axes"] = np.array(axes, dtype=h5py.string_dtype())
            data["data"] = h5py.SoftLink(detector["data"].name)
            data["rotation_angle"] = h5py.SoftLink(sample["rotation_angle"].name)
            data["image_key"] = h5py.SoftLink(detector["image_key"].name)
    return path


def write_diamond_style(path: Path, scan) -> Path:
    """Diamond's layout: ``/entry1/tomo_entry`` (NXsubentry) with instrument/detector, sample, data (links)."""
    frames, keys, angles = _frames_and_keys(scan)
    with h5py.File(path, "w") as h5:
        entry = h5.create_group("entry1")
        entry.attrs["NX_class"] = "NXentry"
        tomo = entry.create_group("tomo_entry")
        tomo.attrs["NX_class"] = "NXsubentry"
        tomo["definition"] = "NXtomo"
        detector = tomo.create_group("instrument/detector")
        detector["data"] = frames.astype(np.uint16)
        detector["image_key"] = keys.astype(np.float64)  # Diamond writes the keys as floats
        tomo.create_group("sample")["rotation_angle"] = angles
        tomo["data/data"] = h5py.SoftLink(detector["data"].name)
        tomo["data/rotation_angle"] = h5py.SoftLink(tomo["sample/rotation_angle"].name)
    return path


def test_a_tomoscan_file_reads_as_its_data_exchange_twin(tmp_path, scan):
    path = write_tomoscan_style(tmp_path / "scan.nx", [scan])
    assert detect_kind(path) == "tomo-raw"
    back = read_tomo(path)
    np.testing.assert_array_equal(back.projections, scan.projections)
    np.testing.assert_array_equal(back.theta_deg, scan.theta_deg)
    np.testing.assert_array_equal(np.sort(back.flats, axis=0), np.sort(scan.flats, axis=0))  # before and after
    np.testing.assert_array_equal(back.darks, scan.darks)
    with open_tomo(path) as nx:
        np.testing.assert_array_equal(nx.read_sinograms(1, 3), scan.projections[:, 1:3])
        np.testing.assert_array_equal(nx.read_projections(10, 13), scan.projections[10:13])
        assert nx.problems() == []


@pytest.mark.parametrize("axes", [("rotation_angle", "x", "y"), ("y", "x", "rotation_angle")])
def test_the_axis_order_the_file_states_is_followed(tmp_path, scan, axes):
    path = write_tomoscan_style(tmp_path / "scan.nx", [scan], axes=axes)
    with open_tomo(path) as nx:
        assert nx.frame_shape == scan.projections.shape[1:]
        np.testing.assert_array_equal(nx.read_sinograms(0, 2), scan.projections[:, 0:2])
        np.testing.assert_array_equal(nx.flats(slice(1, 2))[:, 0], scan.flats[:, 1])


def test_several_entries_the_first_by_default_any_by_name(tmp_path, scan):
    other = simulate_tomo(TomoSimConfig(size=48, slices=3, angles=30, photons=3e3, n_flats=2, n_darks=2, seed=6))
    path = write_tomoscan_style(tmp_path / "two.nx", [scan, other])
    with open_tomo(path) as nx:
        assert nx.n_angles == 90 and any("2 NXtomo entries" in a for a in nx.assumptions)
    assert read_tomo(path, "entry0001").projections.shape == other.projections.shape
    with pytest.raises(EdgeRayFormatError, match="entry0007: no such NXtomo entry; the file has entry0000, entry0001"):
        open_tomo(path, "entry0007")
    info = inspect(path)
    assert info["kind"] == "tomo-raw" and info["n_angles"] == 90 and info["n_flats"] == 4


def test_an_nxtomo_file_reconstructs_as_its_data_exchange_twin(tmp_path, scan):
    def recon(path: Path) -> tuple[np.ndarray, dict]:
        out = path.with_name(path.stem + "_recon.h5")
        subprocess.run([sys.executable, "-m", "edgeray", "tomo", "recon", str(path), "-o", str(out)], check=True,
                       capture_output=True, timeout=300)  # fmt: skip
        with h5py.File(out) as h5:
            return h5["exchange/data"][()], json.loads(out.with_suffix(".json").read_text())

    ours, summary = recon(write_dxchange(tmp_path / "dx.h5", scan))
    assert np.corrcoef(ours[1].ravel(), scan.ground_truth[1].ravel())[0, 1] > 0.8  # a real reconstruction
    for path in (write_tomoscan_style(tmp_path / "ts.nx", [scan]), write_diamond_style(tmp_path / "dls.nxs", scan)):
        twin, twin_summary = recon(path)
        assert min(ssim(o, t) for o, t in zip(ours, twin, strict=True)) >= 0.999, path.name
        assert twin_summary["center"] == pytest.approx(summary["center"]), path.name


def test_bad_nxtomo_files_are_named(tmp_path, scan):
    path = write_tomoscan_style(tmp_path / "scan.nx", [scan])
    with h5py.File(path, "r+") as h5:
        del h5["entry0000/data/rotation_angle"], h5["entry0000/sample/rotation_angle"]
    with pytest.raises(EdgeRayFormatError, match="entry0000/sample/rotation_angle: missing dataset"):
        open_tomo(path)
    path = write_tomoscan_style(tmp_path / "keys.nx", [scan])
    with h5py.File(path, "r+") as h5:
        del h5["entry0000/instrument/detector/image_key"]
        h5["entry0000/instrument/detector/image_key"] = np.zeros(5, dtype=int)
    with pytest.raises(EdgeRayFormatError, match="image_key: 5 keys for 96 frames"):
        open_tomo(path)
    result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "recon", str(path), "-o", str(tmp_path / "x.h5")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 2 and "image_key: 5 keys for 96 frames" in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_an_nxtomo_file_streams_through_detector_replay(tmp_path, scan):
    path = write_diamond_style(tmp_path / "dls.nxs", scan)
    edge = subprocess.Popen([sys.executable, "-m", "edgeray", "edge", "--mode", "tomo", "--listen",
                             "tcp://127.0.0.1:0", "--out", str(tmp_path / "run"), "--http", "off", "--scans", "1",
                             "--enhancer", "off"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        endpoint = json.loads(edge.stdout.readline())["ready"]["listen"]
        sent = subprocess.run([sys.executable, "-m", "edgeray", "detector", "replay", str(path), "--endpoint",
                               endpoint, "--rate", "0", "--scan-id", "nx"],
                              capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
        assert json.loads(sent.stdout.strip().splitlines()[-1])["frames_sent"] == 90 + 4 + 2
        assert edge.wait(60) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
    summary = json.loads((tmp_path / "run" / "nx.json").read_text())
    assert summary["frames_written"] == 96 and summary["projections_in_buffer"] == 90


@pytest.mark.parametrize(("given", "paced_hz"), [(["--rate", "2000"], 2000.0), ([], 500.0)])
def test_detector_replay_of_a_tomography_file_keeps_the_rate_it_is_given(tmp_path, scan, given, paced_hz):
    """``--rate 2000`` is 2000 for a tomography file too (it used to be taken as "not given": 500 Hz); without
    ``--rate``, a tomography file goes at a tomography detector's 500 Hz."""
    import zmq

    path = write_diamond_style(tmp_path / "dls.nxs", scan)
    context = zmq.Context()
    sink = context.socket(zmq.PULL)
    port = sink.bind_to_random_port("tcp://127.0.0.1")
    try:
        sent = subprocess.run([sys.executable, "-m", "edgeray", "detector", "replay", str(path), "--endpoint",
                               f"tcp://127.0.0.1:{port}", *given, "--scan-id", "nx"],
                              capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    finally:
        sink.close(0)
        context.term()
    report = json.loads(sent.stdout.strip().splitlines()[-1])
    assert report["target_rate_hz"] == paced_hz and report["frames_sent"] == 96


def write_facility_style(path: Path, scan) -> Path:
    """A facility layout neither Data Exchange nor NXtomo (as a DIAD scan keeps its imaging data): the frames in a
    sibling file behind an external link, integer image keys elsewhere, one angle per projection only."""
    frames, keys, _ = _frames_and_keys(scan)
    sibling = path.with_name(path.stem + "_frames.h5")
    with h5py.File(sibling, "w") as h5:
        h5["frames"] = frames.astype(np.uint16)
    with h5py.File(path, "w") as h5:
        h5["entry/imaging/data"] = h5py.ExternalLink(sibling.name, "/frames")
        h5["entry/imaging/image_key"] = keys.astype(np.int32)
        h5["entry/imaging_sum/theta"] = scan.theta_deg
        h5["entry/imaging_sum/theta"].attrs["units"] = "degrees"
        h5["entry/monitor/counts"] = np.arange(len(keys), dtype=np.int64)  # another integer series: a candidate
    return path


def test_a_facility_file_reads_with_explicit_paths_and_without_them_lists_its_candidates(tmp_path, scan):
    from edgeray.io.nxtomo import TomoPaths

    path = write_facility_style(tmp_path / "diad.nxs", scan)
    with pytest.raises(EdgeRayFormatError) as refused:
        open_tomo(path)
    message = str(refused.value)
    assert "/exchange/data" in message and "/entry/imaging/data (96, 3, 48)" in message
    assert "/entry/imaging/image_key (96,)" in message and "/entry/monitor/counts (96,)" in message
    assert "/entry/imaging_sum/theta (90,)" in message and "--data-path" in message
    paths = TomoPaths("/entry/imaging/data", "/entry/imaging/image_key", "/entry/imaging_sum/theta")
    back = read_tomo(path, paths=paths)
    np.testing.assert_array_equal(back.projections, scan.projections)
    np.testing.assert_array_equal(back.theta_deg, scan.theta_deg)
    np.testing.assert_array_equal(np.sort(back.flats, axis=0), np.sort(scan.flats, axis=0))
    np.testing.assert_array_equal(back.darks, scan.darks)
    with pytest.raises(EdgeRayFormatError, match="/entry/imaging/keys: no such dataset"):
        open_tomo(path, paths=TomoPaths("/entry/imaging/data", "/entry/imaging/keys", "/entry/imaging_sum/theta"))
    out = tmp_path / "diad_rec.h5"
    result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "recon", str(path), "-o", str(out),
                             "--data-path", paths.data_path, "--image-key-path", paths.image_key_path,
                             "--angles-path", paths.angles_path],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    refused_cli = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "recon", str(path), "-o",
                                  str(tmp_path / "x.h5")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert refused_cli.returncode == 2 and "/entry/imaging/data (96, 3, 48)" in refused_cli.stderr
    assert not (tmp_path / "x.h5").exists()


def write_diad_layout(path: Path, scan, angles_name: str = "gts_cs_theta") -> Path:
    """A DIAD (K11) imaging file as httomo's loader settings for that beamline describe it: frames at
    /entry/imaging/data, image keys at /entry/instrument/imaging/image_key, angles (one per frame) in
    /entry/imaging_sum; no NXtomo definition and no Data Exchange group."""
    frames, keys, angles = _frames_and_keys(scan)
    with h5py.File(path, "w") as h5:
        h5["entry/imaging/data"] = frames.astype(np.uint16)
        h5["entry/instrument/imaging/image_key"] = keys.astype(np.uint8)
        h5[f"entry/imaging_sum/{angles_name}"] = angles
    return path


@pytest.mark.parametrize("angles_name", ["gts_cs_theta", "gts_theta_value"])
def test_a_known_facility_layout_is_found_without_paths(tmp_path, scan, angles_name):
    """Both angle datasets DIAD has written over time are found; the file reads as its Data Exchange twin, `tomo
    info` says which layout and datasets it read, and a layout the file does not have is refused with candidates."""
    path = write_diad_layout(tmp_path / "k11-1234.nxs", scan, angles_name)
    with open_tomo(path) as reader:
        assert reader.layout == "diamond-diad"
        assert reader.sources["angles"] == f"/entry/imaging_sum/{angles_name}"
    back = read_tomo(path)
    np.testing.assert_array_equal(back.projections, scan.projections)
    np.testing.assert_array_equal(back.theta_deg, scan.theta_deg)
    info = json.loads(subprocess.run([sys.executable, "-m", "edgeray", "tomo", "info", str(path), "--json"],
                                     capture_output=True, text=True, timeout=120, check=True).stdout)  # fmt: skip
    assert info["kind"] == "tomo-raw" and info["layout"] == "diamond-diad" and info["problems"] == []
    assert info["sources"]["frames"] == "/entry/imaging/data" and info["n_angles"] == len(scan.theta_deg)
    with pytest.raises(EdgeRayFormatError, match=r"/entry1/tomo_entry/data/data: no such dataset.*/entry/imaging/data"):
        open_tomo(path, paths=TomoPaths(layout="diamond-tomo"))
    with pytest.raises(ValueError, match="unknown layout 'aps-2bm'; known layouts: dxchange, nxtomo, diamond-diad"):
        open_tomo(path, paths=TomoPaths(layout="aps-2bm"))


def test_a_config_file_gives_the_paths_and_the_command_line_wins(tmp_path, scan):
    """`tomo recon --config` with the facility paths reconstructs what the flags do; a flag beats the file."""
    path = write_facility_style(tmp_path / "diad.nxs", scan)
    config = tmp_path / "beamline.toml"
    config.write_text('data-path = "/entry/imaging/data"\nimage-key-path = "/entry/imaging/image_key"\n'
                      'angles-path = "/entry/imaging_sum/theta"\nalgorithm = "fbp"\n')  # fmt: skip
    out = tmp_path / "rec.h5"
    command = ["tomo", "recon", str(path), "-o", str(out), "--config", str(config), "--algorithm", "gridrec"]
    result = subprocess.run([sys.executable, "-m", "edgeray", *command], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["options"]["algorithm"] == "gridrec" and summary["options"]["data_path"] == "/entry/imaging/data"
