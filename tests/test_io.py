"""File formats: round trips (compressed too), atomic writes, lazy reads, validation errors, real files."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from edgeray.io import (
    CXIFile,
    DataExchangeFile,
    EdgeRayFormatError,
    Product,
    detect_kind,
    inspect,
    read_cxi,
    read_dxchange,
    read_product,
    read_reconstruction,
    write_cxi,
    write_dxchange,
    write_product,
    write_reconstruction,
)
from edgeray.io.cxi import FRAMES, TRANSLATION

# --------------------------------------------------------------------------------------------------- CXI


@pytest.mark.parametrize("compression", ["none", "gzip", "lz4", "bitshuffle"])
def test_cxi_round_trip(tmp_path, small_scan, compression):
    path = write_cxi(tmp_path / "scan.cxi", small_scan, compression=compression)
    back = read_cxi(path)
    np.testing.assert_array_equal(back.frames, small_scan.frames)
    assert back.frames.dtype == small_scan.frames.dtype
    np.testing.assert_allclose(back.positions_m, small_scan.positions_m, rtol=1e-12)
    assert back.geometry.energy_eV == pytest.approx(small_scan.geometry.energy_eV, rel=1e-12)
    assert back.geometry.distance_m == small_scan.geometry.distance_m
    assert back.geometry.detector_pixel_size_m == small_scan.geometry.detector_pixel_size_m
    np.testing.assert_array_equal(back.ground_truth.object, small_scan.ground_truth.object)
    np.testing.assert_array_equal(back.ground_truth.probe, small_scan.ground_truth.probe)
    assert "config" in back.attrs
    with h5py.File(path, "r") as h5:
        assert h5["cxi_version"][()] > 0
        assert h5.get("entry_1/data_1/data", getlink=True).path == "/" + FRAMES
        # CXI definition: the stored translation is the sample's, the negative of the probe position.
        np.testing.assert_allclose(h5[TRANSLATION][:, 1], -small_scan.positions_m[:, 0])
    with CXIFile(path) as cxi:
        expected = {"none": "none", "gzip": "shuffle+gzip", "lz4": "lz4", "bitshuffle": "bitshuffle"}[compression]
        assert cxi.compression() == expected


def test_cxi_reads_lazily_in_chunks(tmp_path, small_scan):
    path = write_cxi(tmp_path / "scan.cxi", small_scan)
    with CXIFile(path) as cxi:
        blocks = list(cxi.iter_frames(chunk=50))
        assert [start for start, _ in blocks] == [0, 50, 100]
        assert [len(b) for _, b in blocks] == [50, 50, 20]
        np.testing.assert_array_equal(cxi.read_frames(7, 9), small_scan.frames[7:9])


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, small_scan, monkeypatch):
    path = write_cxi(tmp_path / "scan.cxi", small_scan)
    before = path.read_bytes()

    broken = small_scan.__class__(**{**small_scan.__dict__, "positions_m": small_scan.positions_m[:3]})
    with pytest.raises(ValueError, match="positions_m"):
        write_cxi(path, broken)

    import edgeray.io.cxi as cxi_module

    def explode(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cxi_module.h5py, "SoftLink", explode)  # fails half-way through writing
    with pytest.raises(OSError, match="disk full"):
        write_cxi(path, small_scan)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scan.cxi"]  # no temporary left behind


def _corrupt(tmp_path, small_scan, edit):
    path = write_cxi(tmp_path / "bad.cxi", small_scan, compression="none")
    with h5py.File(path, "r+") as h5:
        edit(h5)
    return path


@pytest.mark.parametrize(
    ("edit", "dataset", "message"),
    [
        (lambda h5: h5.__delitem__(TRANSLATION), TRANSLATION, "missing dataset"),
        (lambda h5: h5.__delitem__("entry_1/instrument_1/detector_1/distance"), "distance", "missing dataset"),
        (
            lambda h5: (h5.__delitem__(TRANSLATION), h5.create_dataset(TRANSLATION, data=np.zeros((5, 3)))),
            TRANSLATION,
            "5 positions for 120 frames",
        ),
        (
            lambda h5: (
                h5.__delitem__(FRAMES),
                h5.__delitem__("entry_1/data_1/data"),
                h5.create_dataset(FRAMES, data=np.zeros((120, 32))),
            ),
            FRAMES,
            "2 dimensions",
        ),
        (
            lambda h5: (
                h5.__delitem__(FRAMES),
                h5.__delitem__("entry_1/data_1/data"),
                h5.create_dataset(FRAMES, data=np.zeros((120, 32, 32), dtype=np.complex64)),
            ),
            FRAMES,
            "unsupported dtype complex64",
        ),
    ],
)
def test_cxi_header_errors_name_file_and_dataset(tmp_path, small_scan, edit, dataset, message):
    path = _corrupt(tmp_path, small_scan, edit)
    with pytest.raises(EdgeRayFormatError, match=message) as err:
        CXIFile(path)
    assert str(path) in str(err.value)
    assert dataset in str(err.value)


@pytest.mark.parametrize(("value", "message"), [(np.nan, "NaN or inf"), (-3.0, "negative counts")])
def test_cxi_bad_counts_found_when_read(tmp_path, small_scan, value, message):
    def edit(h5):
        frames = h5[FRAMES][()].astype(np.float32)
        frames[57, 3, 4] = value
        del h5[FRAMES], h5["entry_1/data_1/data"]
        h5.create_dataset(FRAMES, data=frames, chunks=(10, 32, 32))

    path = _corrupt(tmp_path, small_scan, edit)
    with CXIFile(path) as cxi:
        cxi.read_frames(0, 50)  # clean block reads fine
        with pytest.raises(EdgeRayFormatError, match=f"{message}, first at frame 57") as err:
            cxi.read_frames(50, 60)
        assert FRAMES in str(err.value) and str(path) in str(err.value)
        assert len(cxi.problems()) == 1
    info = inspect(path)
    assert info["problems"] and "frame 57" in info["problems"][0]


def test_cxi_not_hdf5(tmp_path):
    path = tmp_path / "notes.cxi"
    path.write_text("not hdf5")
    with pytest.raises(EdgeRayFormatError, match="cannot open as HDF5"):
        CXIFile(path)
    with pytest.raises(EdgeRayFormatError, match=r"notes\.cxi"):
        detect_kind(path)


def test_cxi_transposed_translation_and_basis_orientation(tmp_path, small_scan):
    """Writers in the wild store translation as (3, N) and basis_vectors as (3, 2), axes flipped."""

    def edit(h5):
        translation = h5[TRANSLATION][()]
        del h5[TRANSLATION]
        h5[TRANSLATION] = translation.T
        del h5["entry_1/instrument_1/detector_1/basis_vectors"]
        pixel = 75e-6
        h5["entry_1/instrument_1/detector_1/basis_vectors"] = np.array([[0, -pixel], [-pixel, 0], [0, 0]])

    path = _corrupt(tmp_path, small_scan, edit)
    with CXIFile(path) as cxi:
        np.testing.assert_allclose(cxi.positions_m, small_scan.positions_m)
        np.testing.assert_array_equal(cxi.read_frames(0, 2), small_scan.frames[:2, ::-1, ::-1])
        notes = " ".join(cxi.assumptions)
        assert "(3, 2)" in notes and "rows flipped" in notes and "transpose" in notes
    with CXIFile(path, follow_basis=False, translation="probe") as cxi:
        np.testing.assert_array_equal(cxi.read_frames(0, 2), small_scan.frames[:2])
        np.testing.assert_allclose(cxi.positions_m, -small_scan.positions_m)


def test_real_petra_cxi_reads_with_its_geometry(petra_cxi):
    with CXIFile(petra_cxi) as cxi:
        assert cxi.n_frames == 200 and cxi.frame_shape == (100, 100)
        assert cxi.dtype == np.int32
        assert cxi.geometry.distance_m == pytest.approx(1.12)
        assert cxi.geometry.detector_pixel_size_m == pytest.approx((55e-6, 55e-6))
        assert cxi.geometry.energy_eV == pytest.approx(12658, rel=1e-3)
        assert cxi.geometry.wavelength_m == pytest.approx(9.7949e-11, rel=1e-4)
        assert cxi.mask is not None and cxi.mask.sum() == 5
        assert cxi.positions_m.shape == (200, 2)
        # probe positions are the negated sample translations: the raw x, y are all negative
        assert (cxi.positions_m > 0).all()
        assert np.ptp(cxi.positions_m, axis=0) == pytest.approx([19.0e-6, 20.2e-6], rel=0.02)
        assert cxi.ground_truth() is None
        assert cxi.problems() == []
        assert any("basis_vectors stored as (3, 2)" in a for a in cxi.assumptions)
        assert any("far-field" in a for a in cxi.assumptions)
    info = inspect(petra_cxi)
    assert info["kind"] == "cxi" and info["problems"] == []
    assert info["geometry"]["object_pixel_size_m"][0] == pytest.approx(1.9946e-8, rel=1e-3)


# ----------------------------------------------------------------------------------------------- product


def make_product() -> Product:
    rng = np.random.default_rng(0)
    return Product(
        object=(rng.standard_normal((1, 40, 50)) + 1j * rng.standard_normal((1, 40, 50))).astype(np.complex64),
        probe=(rng.standard_normal((2, 16, 16)) + 1j).astype(np.complex64),
        positions_m=rng.standard_normal((30, 2)) * 1e-6,
        object_pixel_size_m=(5e-8, 5.1e-8),
        probe_pixel_size_m=(5e-8, 5.1e-8),
        energy_eV=9000.0,
        distance_m=2.5,
        object_center_m=(1e-7, -2e-7),
        loss_values=np.array([3.0, 2.0, 1.5]),
        loss_epochs=np.array([0, 1, 2]),
        name="test",
        attrs={"engine": "lsqml"},
    )


def test_product_round_trip(tmp_path):
    product = make_product()
    path = write_product(tmp_path / "product.h5", product)
    back = read_product(path)
    np.testing.assert_array_equal(back.object, product.object)
    np.testing.assert_array_equal(back.probe, product.probe)
    np.testing.assert_array_equal(back.positions_m, product.positions_m)
    assert back.object_pixel_size_m == product.object_pixel_size_m
    np.testing.assert_allclose(back.object_center_m, product.object_center_m, rtol=0, atol=1e-20)
    assert back.energy_eV == product.energy_eV and back.distance_m == product.distance_m
    np.testing.assert_array_equal(back.loss_values, product.loss_values)
    np.testing.assert_array_equal(back.position_indexes, np.arange(30))
    assert back.name == "test" and back.attrs == {"engine": "lsqml"}
    assert detect_kind(path) == "product"
    with h5py.File(path, "r") as h5:  # ptychodus-compatible keys
        assert {"probe_position_x_m", "probe_position_y_m", "probe_position_indexes"} <= set(h5)
        assert {"photon_energy_eV", "detector_object_distance_m"} <= set(h5.attrs)
        assert {"pixel_width_m", "pixel_height_m", "center_x_m", "center_y_m"} <= set(h5["object"].attrs)


def test_product_errors(tmp_path):
    path = write_product(tmp_path / "product.h5", make_product())
    with h5py.File(path, "r+") as h5:
        del h5.attrs["photon_energy_eV"]
    with pytest.raises(EdgeRayFormatError, match="photon_energy_eV: missing attribute"):
        read_product(path)
    with h5py.File(path, "r+") as h5:
        h5.attrs["photon_energy_eV"] = 9000.0
        del h5["object"].attrs["pixel_width_m"]
    with pytest.raises(EdgeRayFormatError, match="/object attribute pixel_width_m: missing attribute"):
        read_product(path)
    with h5py.File(path, "r+") as h5:
        del h5["probe"]
    with pytest.raises(EdgeRayFormatError, match="/probe: missing dataset"):
        read_product(path)


# ------------------------------------------------------------------------------------------ Data Exchange


@pytest.mark.parametrize("compression", ["none", "bitshuffle"])
def test_dxchange_round_trip(tmp_path, small_tomo, compression):
    path = write_dxchange(tmp_path / "tomo.h5", small_tomo, compression=compression)
    back = read_dxchange(path)
    np.testing.assert_array_equal(back.projections, small_tomo.projections)
    np.testing.assert_array_equal(back.flats, small_tomo.flats)
    np.testing.assert_array_equal(back.darks, small_tomo.darks)
    np.testing.assert_array_equal(back.theta_deg, small_tomo.theta_deg)
    np.testing.assert_array_equal(back.ground_truth, small_tomo.ground_truth)
    assert detect_kind(path) == "tomo-raw"
    with DataExchangeFile(path) as dx:
        sino = dx.read_sinograms(1, 3)
        np.testing.assert_array_equal(sino, small_tomo.projections[:, 1:3])


def test_dxchange_errors(tmp_path, small_tomo):
    path = write_dxchange(tmp_path / "tomo.h5", small_tomo)
    with h5py.File(path, "r+") as h5:
        del h5["exchange/theta"]
        h5["exchange/theta"] = np.arange(10.0)
    with pytest.raises(EdgeRayFormatError, match="exchange/theta: 10 angles for 90 projections"):
        DataExchangeFile(path)
    with h5py.File(path, "r+") as h5:
        del h5["exchange/theta"]
    with pytest.raises(EdgeRayFormatError, match="/exchange/theta: missing dataset"):
        DataExchangeFile(path)


def test_dxchange_nan_projection_is_reported(tmp_path, small_tomo):
    bad = small_tomo.projections.astype(np.float32)
    bad[12, 0, 5] = np.nan
    scan = small_tomo.__class__(**{**small_tomo.__dict__, "projections": bad})
    path = write_dxchange(tmp_path / "tomo.h5", scan)
    with DataExchangeFile(path) as dx:
        with pytest.raises(EdgeRayFormatError, match="first at frame 12"):
            dx.read_projections()
        with pytest.raises(EdgeRayFormatError, match="detector row 0"):
            dx.read_sinograms(0, 1)
        assert dx.problems()


def test_real_tooth_reads(tooth_h5):
    with DataExchangeFile(tooth_h5) as dx:
        assert dx.n_angles == 181 and dx.frame_shape == (2, 640)
        assert dx.theta_deg[0] == 0 and dx.theta_deg[-1] == pytest.approx(180, abs=1.01)
        assert dx.flats().shape == (10, 2, 640) and dx.darks().shape == (10, 2, 640)
        assert dx.problems() == []
        assert dx.read_sinograms(0, 1).shape == (181, 1, 640)
    assert inspect(tooth_h5)["kind"] == "tomo-raw"


def test_reconstruction_round_trip(tmp_path):
    volume = np.random.default_rng(0).random((3, 20, 20)).astype(np.float32)
    path = write_reconstruction(tmp_path / "recon.h5", volume, {"algorithm": "fbp", "center": 10.5})
    back, params = read_reconstruction(path)
    np.testing.assert_array_equal(back, volume)
    assert params == {"algorithm": "fbp", "center": 10.5}
    assert detect_kind(path) == "tomo-recon"
