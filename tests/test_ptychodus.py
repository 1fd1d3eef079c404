"""ptychodus both ways, with ptychodus's own readers and writers (ptychodus 1.7, a dev dependency):
EdgeRay's products and CXI scans open in ptychodus, ptychodus's products continue in EdgeRay."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from ptychodus.api.io import load_product, save_product
from ptychodus.plugins.cxi_file import CXIDiffractionFileReader, CXIProductFileIO

from edgeray.io import CXIFile, read_product, write_cxi
from edgeray.ptycho.reconstruct import run


@pytest.fixture(scope="module")
def reconstructed(small_scan):
    """A small simulated scan and an LSQML reconstruction of it (EdgeRay's product)."""
    return small_scan, run(small_scan, "lsqml", 20, batch_size=32).product


def _our_pixels(product) -> np.ndarray:
    """Probe centres in object pixels ``(N, 2)`` [y, x], by EdgeRay's convention (centre at pixel shape / 2)."""
    pixel = np.asarray(product.object_pixel_size_m)
    origin = np.asarray(product.object_center_m) - np.asarray(product.object.shape[-2:]) / 2 * pixel
    return (product.positions_m - origin) / pixel


def test_ptychodus_loads_an_edgeray_product(tmp_path, reconstructed):
    from edgeray.io import write_product

    _, product = reconstructed
    path = write_product(tmp_path / "product.h5", product)
    theirs = load_product(path)
    np.testing.assert_array_equal(theirs.object_.get_array(), product.object)
    np.testing.assert_array_equal(theirs.probes.get_array()[0], product.probe)
    geometry = theirs.object_.get_geometry()
    assert (geometry.pixel_height_m, geometry.pixel_width_m) == product.object_pixel_size_m
    assert theirs.metadata.photon_energy_eV == pytest.approx(product.energy_eV)
    assert theirs.metadata.detector_distance_m == pytest.approx(product.distance_m)
    np.testing.assert_array_equal(theirs.probe_positions.get_coordinates_x_m(), product.positions_m[:, 1])
    np.testing.assert_array_equal(theirs.probe_positions.get_coordinates_y_m(), product.positions_m[:, 0])
    # the same probe lands on the same object pixel in both programs (their centre convention is half a pixel off)
    their_px = np.stack(
        [
            geometry.map_probe_positions_to_object_y_px(theirs.probe_positions),
            geometry.map_probe_positions_to_object_x_px(theirs.probe_positions),
        ],
        axis=1,
    )
    np.testing.assert_allclose(their_px, _our_pixels(product), atol=1e-6)
    assert [loss.value for loss in theirs.losses] == pytest.approx(list(product.loss_values))


def test_edgeray_reads_a_ptychodus_product(tmp_path, reconstructed):
    _, product = reconstructed
    from edgeray.io import write_product

    theirs = load_product(write_product(tmp_path / "ours.h5", product))
    save_product(tmp_path / "theirs.h5", theirs)  # written by ptychodus (4-D probe sequence, its centre)
    with h5py.File(tmp_path / "theirs.h5") as h5:
        assert h5["probe"].ndim == 4
    back = read_product(tmp_path / "theirs.h5")
    np.testing.assert_array_equal(back.object, product.object)
    np.testing.assert_array_equal(back.probe, product.probe)
    np.testing.assert_array_equal(back.positions_m, product.positions_m)
    np.testing.assert_allclose(back.object_center_m, product.object_center_m, rtol=0, atol=1e-18)
    np.testing.assert_allclose(_our_pixels(back), _our_pixels(product), atol=1e-9)


def test_ptychodus_reads_an_edgeray_cxi_scan(tmp_path, small_scan):
    path = write_cxi(tmp_path / "scan.cxi", small_scan)
    dataset = CXIDiffractionFileReader().read(path)
    metadata = dataset.get_metadata()
    assert list(metadata.num_patterns_per_array) == [small_scan.n_frames]
    patterns = np.concatenate([np.asarray(array.get_patterns()) for array in dataset])
    with CXIFile(path) as cxi:
        np.testing.assert_array_equal(patterns, cxi.read_frames())
        geometry = cxi.geometry
    assert metadata.detector_distance_m == pytest.approx(geometry.distance_m)
    assert metadata.detector_pixel_geometry.width_m == pytest.approx(geometry.detector_pixel_size_m[1])
    assert metadata.photon_energy_eV == pytest.approx(geometry.energy_eV, rel=1e-6)
    # ptychodus takes CXI translation as the probe's position; the CXI definition (EdgeRay's) moves the sample
    with h5py.File(path) as h5:
        positions = CXIProductFileIO()._read_positions(h5)
    np.testing.assert_allclose(positions.get_coordinates_x_m(), -small_scan.positions_m[:, 1], rtol=1e-12)
    np.testing.assert_allclose(positions.get_coordinates_y_m(), -small_scan.positions_m[:, 0], rtol=1e-12)


def test_reconstruction_continues_from_a_ptychodus_product(tmp_path, reconstructed):
    """``--object`` / ``--probe`` from a ptychodus product: 3 more epochs from it are as good as the 20 it took,
    and far better than 3 epochs from scratch."""
    scan, product = reconstructed
    from edgeray.io import write_product

    scan_path = write_cxi(tmp_path / "scan.cxi", scan)
    save_product(tmp_path / "theirs.h5", load_product(write_product(tmp_path / "ours.h5", product)))

    def reconstruct(name: str, *start: str) -> float:
        out = tmp_path / name
        args = [str(scan_path), "-o", str(out), "--epochs", "3", "--batch-size", "32", *start]
        subprocess.run([sys.executable, "-m", "edgeray", "ptycho", "reconstruct", *args], check=True, timeout=300)
        return json.loads(out.with_suffix(".json").read_text())["vs_ground_truth"]["rel_error"]

    continued = reconstruct(
        "continued.h5", "--object", str(tmp_path / "theirs.h5"), "--probe", str(tmp_path / "theirs.h5")
    )
    scratch = reconstruct("scratch.h5")
    from edgeray.ptycho.evaluate import compare_on_scanned_region

    before = compare_on_scanned_region(product, scan.ground_truth, scan.positions_m)["rel_error"]
    assert continued < 1.2 * before and continued < 0.5 * scratch


def test_a_start_object_elsewhere_is_placed_by_its_centre(reconstructed):
    from dataclasses import replace

    from edgeray.ptycho import prepare
    from edgeray.ptycho.problem import object_on_grid

    scan, product = reconstructed
    problem = prepare(scan)
    np.testing.assert_array_equal(object_on_grid(product, problem), product.object[0])
    pixel = np.asarray(product.object_pixel_size_m)
    moved = replace(product, object_center_m=tuple(np.asarray(product.object_center_m) + [3, -2] * pixel))
    placed = object_on_grid(moved, problem)  # the same array three rows down, two columns left
    np.testing.assert_array_equal(placed[3:, : -2 or None], product.object[0][:-3, 2:])
    assert np.all(placed[:3] == 1) and np.all(placed[:, -2:] == 1)
    with pytest.raises(ValueError, match="object pixel"):
        object_on_grid(replace(product, object_pixel_size_m=tuple(pixel * 2)), problem)
    with pytest.raises(ValueError, match="does not overlap"):
        object_on_grid(replace(product, object_center_m=(1.0, 1.0)), problem)


def test_an_edgeray_product_of_the_november_layout_still_reads(tmp_path, reconstructed):
    _, product = reconstructed
    path = Path(tmp_path / "old.h5")
    with h5py.File(path, "w") as h5:  # EdgeRay's keys before 2026-12: all geometry as file attributes
        h5["object"], h5["probe"] = product.object, product.probe
        h5["probe_position_y_m"], h5["probe_position_x_m"] = product.positions_m[:, 0], product.positions_m[:, 1]
        h5.attrs["probe_energy_eV"], h5.attrs["detector_object_distance_m"] = product.energy_eV, product.distance_m
        h5.attrs["object_pixel_height_m"], h5.attrs["object_pixel_width_m"] = product.object_pixel_size_m
        h5.attrs["probe_pixel_height_m"], h5.attrs["probe_pixel_width_m"] = product.probe_pixel_size_m
        h5.attrs["object_center_y_m"], h5.attrs["object_center_x_m"] = product.object_center_m
    back = read_product(path)
    assert back.object_center_m == product.object_center_m and back.energy_eV == product.energy_eV
    np.testing.assert_array_equal(back.object, product.object)
