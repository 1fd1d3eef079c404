"""Tomography: filters, FBP and gridrec against phantoms and astra, adjoint projector, centre, pipeline, errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from edgeray.cli import main
from edgeray.io import EdgeRayFormatError, read_reconstruction
from edgeray.sim import TomoSimConfig, simulate_tomo
from edgeray.tomo import (
    TomoOptions,
    angle_weights,
    backproject,
    cgls,
    fbp,
    filter_response,
    find_center_entropy,
    find_center_pair,
    gridrec,
    minus_log,
    normalize,
    project,
    reconstruct_file,
    remove_stripes,
    sirt,
)
from edgeray.tomo.recon import preprocess_rows

TOOTH = "tests/data/tooth.h5"


def disk_mask(size: int, margin: float = 2) -> np.ndarray:
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    return yy**2 + xx**2 <= (size / 2 - margin) ** 2


def ssim_on_disk(image: np.ndarray, reference: np.ndarray, margin: float = 2) -> float:
    disk = disk_mask(reference.shape[-1], margin)
    span = reference[disk].max() - reference[disk].min()
    return structural_similarity(image * disk, reference * disk, data_range=span)


@pytest.fixture(scope="module")
def shepp():
    scan = simulate_tomo(TomoSimConfig(size=128, slices=2, angles=180, photons=1e7))
    sinograms = np.moveaxis(minus_log(normalize(scan.projections, scan.flats, scan.darks)), 1, 0)
    return sinograms, np.radians(scan.theta_deg), scan.ground_truth


def test_ramp_filter_is_omega_and_angle_weights_sum_to_pi():
    response = filter_response(1024, "ramp")
    omega = np.abs(np.fft.fftfreq(1024))
    middle = (omega > 0.05) & (omega < 0.45)
    np.testing.assert_allclose(response[middle], omega[middle], rtol=0.01)
    assert 0 < response[0] < 1e-3  # the discrete ramp keeps a small DC weight
    rng = np.random.default_rng(0)
    theta = rng.uniform(0, 2 * np.pi, 37)
    assert angle_weights(theta).sum() == pytest.approx(np.pi)
    np.testing.assert_allclose(angle_weights(np.arange(90) * np.pi / 90), np.pi / 90)


def test_projector_and_backprojector_are_adjoint():
    rng = np.random.default_rng(1)
    theta = rng.uniform(0, np.pi, 23)
    image = torch.from_numpy(rng.standard_normal((2, 40, 40)))
    sinogram = torch.from_numpy(rng.standard_normal((2, 23, 47)))
    forward = project(image, theta, 23.3, 47)
    back = backproject(sinogram, theta, 23.3, 40)
    assert float((forward * sinogram).sum()) == pytest.approx(float((image * back).sum()), rel=1e-12)


def test_projector_matches_exact_line_integrals(shepp):
    _sinograms, theta, truth = shepp
    # the projector applied to the rasterized phantom vs the simulator's exact chord lengths (noise-free data)
    exact = simulate_tomo(TomoSimConfig(size=128, slices=2, angles=180, photons=1e8))
    exact_sino = np.moveaxis(minus_log(normalize(exact.projections, exact.flats, exact.darks)), 1, 0)
    ours = project(torch.from_numpy(truth.astype(np.float64)), theta, 63.5, 128).numpy()
    error = np.linalg.norm(ours - exact_sino) / np.linalg.norm(exact_sino)
    assert error < 0.05


@pytest.mark.parametrize("method", ["gridrec", "fbp"])
def test_fbp_reconstructs_the_shepp_logan_phantom(shepp, method):
    sinograms, theta, truth = shepp
    reconstruct = gridrec if method == "gridrec" else fbp
    images = reconstruct(sinograms, theta, filter_name="shepp-logan")
    disk = disk_mask(128)
    error = np.linalg.norm((images - truth)[:, disk]) / np.linalg.norm(truth[:, disk])
    assert error < 0.18  # measured 0.149 for both (128 px, 180 angles, partial-volume phantom edges)
    assert ssim_on_disk(images[0], truth[0]) > 0.88  # measured 0.913-0.914
    assert images[:, disk].mean() == pytest.approx(truth[:, disk].mean(), rel=0.02)  # no DC offset


def test_gridrec_equals_linear_backprojection(shepp):
    sinograms, theta, _ = shepp
    fast = gridrec(sinograms, theta, filter_name="ramp", bands=3, eps=1e-8, kernel="pixel")
    slow = fbp(sinograms, theta, filter_name="ramp")
    disk = disk_mask(128, margin=4)
    assert np.linalg.norm((fast - slow)[:, disk]) / np.linalg.norm(slow[:, disk]) < 5e-3


def test_iterative_methods_beat_fbp_on_sparse_angles(shepp):
    sinograms, theta, truth = shepp
    few = slice(None, None, 6)  # 30 angles
    analytic = gridrec(sinograms[:1, few], theta[few], filter_name="hann")
    disk = disk_mask(128)
    error_fbp = np.linalg.norm((analytic - truth[:1])[:, disk])
    for iterative in (
        sirt(sinograms[:1, few], theta[few], iterations=60),
        cgls(sinograms[:1, few], theta[few], iterations=10),
    ):
        assert np.linalg.norm((iterative - truth[:1])[:, disk]) < error_fbp


def test_cgls_solves_a_consistent_system():
    rng = np.random.default_rng(3)
    theta = np.linspace(0, np.pi, 60, endpoint=False)
    image = np.zeros((1, 32, 32))
    image[0, 10:22, 8:20] = rng.uniform(0.5, 1, (12, 12))
    data = project(torch.from_numpy(image), theta, 15.5, 32).numpy()
    solution = cgls(data, theta, iterations=200)
    residual = project(torch.from_numpy(solution.astype(np.float64)), theta, 15.5, 32).numpy() - data
    assert np.linalg.norm(residual) < 1e-3 * np.linalg.norm(data)


def test_center_is_found_to_a_quarter_pixel(shepp):
    sinograms, theta, _ = shepp
    true_center = 63.5 + 3.4
    spectrum = np.fft.fft(sinograms[:1], axis=-1) * np.exp(-2j * np.pi * np.fft.fftfreq(128) * 3.4)
    shifted = np.fft.ifft(spectrum, axis=-1).real  # the axis moved 3.4 px to the right
    assert find_center_entropy(shifted[0], theta) == pytest.approx(true_center, abs=0.25)
    # half a turn later the projection is the mirror image about the axis: p(theta + pi, j) = p(theta, 2 c - j)
    first = shifted[0, 0]
    mirrored = first[::-1]  # p(theta, 127 - j): the mirror about the detector's middle
    move = 2 * true_center - 127
    opposite = np.fft.ifft(np.fft.fft(mirrored, 256) * np.exp(-2j * np.pi * np.fft.fftfreq(256) * move)).real[:128]
    assert find_center_pair(first, opposite) == pytest.approx(true_center, abs=0.25)


def test_stripe_removal_takes_out_column_offsets():
    rng = np.random.default_rng(2)
    theta = np.linspace(0, np.pi, 180, endpoint=False)
    columns = np.arange(256) - 127.5
    # a smooth object (two Gaussian blobs) seen from every angle, plus a fixed offset per detector column
    blob_x, blob_y = 30 * np.cos(theta), 30 * np.sin(theta)
    clean = 2 * np.exp(-((columns[None] - blob_x[:, None]) ** 2) / 800) + np.exp(
        -((columns[None] + blob_y[:, None]) ** 2) / 300
    )
    offsets = 0.02 * rng.standard_normal(256)
    offsets[rng.random(256) < 0.03] += 0.3  # a few bad pixels: strong rings
    striped = (clean + offsets[None])[None]
    cleaned = remove_stripes(striped, size=5)[0]
    stripes_before = np.std((striped[0] - clean).mean(axis=0))
    stripes_after = np.std((cleaned - clean).mean(axis=0))
    assert stripes_after < stripes_before / 3  # measured 3.7x


def test_tooth_end_to_end_agrees_with_astra(tmp_path):
    pytest.importorskip("astra")
    from astra_peer import astra_fbp

    output = tmp_path / "tooth_rec.h5"
    assert main(["tomo", "recon", TOOTH, "-o", str(output), "--filter", "ramp"]) == 0
    volume, params = read_reconstruction(output)
    assert volume.shape == (2, 640, 640)
    assert params["center"] == pytest.approx(296, abs=1.5)  # tomopy's tooth: axis near column 296
    assert output.with_suffix(".png").exists() and output.with_suffix(".json").exists()
    from edgeray.io import DataExchangeFile

    with DataExchangeFile(TOOTH) as data:
        sinogram = preprocess_rows(data, slice(0, 1), TomoOptions())[0]
        theta = np.radians(data.theta_deg)
    # astra's FBP wants the axis mid-detector: pad zeros on the left until column 296 is the middle (687 columns,
    # an odd width, so both images have a pixel on the axis), and reconstruct ours on the same 687 x 687 grid
    center = round(params["center"])
    pad = 639 - 2 * center  # columns right of the axis minus columns left of it
    padded = np.pad(sinogram, ((0, 0), (pad, 0)))
    width = padded.shape[1]
    ours = gridrec(sinogram[None], theta, center=center, size=width, filter_name="ramp")[0]
    reference = astra_fbp(padded, theta, width)
    assert ssim_on_disk(ours, reference, margin=30) >= 0.95  # measured 0.994
    inner = slice((width - 640) // 2 + 1, (width - 640) // 2 + 641)  # our 640 px slice sits half a pixel off
    assert np.corrcoef(volume[0].ravel(), reference[inner, inner].ravel())[0, 1] > 0.9  # measured 0.965


def test_bad_inputs_give_clear_errors(tmp_path, shepp):
    sinograms, theta, _ = shepp
    with pytest.raises(ValueError, match="179 angles for sinograms with 180"):
        gridrec(sinograms, theta[:-1])
    broken = sinograms.copy()
    broken[0, 3, 5] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fbp(broken, theta)
    projections = np.ones((4, 2, 8))
    with pytest.raises(ValueError, match="no flat fields"):
        normalize(projections, None, np.zeros((1, 2, 8)))
    with pytest.raises(ValueError, match="no dark fields"):
        normalize(projections, np.ones((1, 2, 8)), None)
    with pytest.raises(ValueError, match="swapped"):
        normalize(projections, np.zeros((1, 2, 8)), np.ones((1, 2, 8)))
    no_flats = tmp_path / "no_flats.h5"
    with h5py.File(no_flats, "w") as h5:
        h5["exchange/data"] = np.ones((4, 2, 8), np.uint16)
        h5["exchange/data_dark"] = np.zeros((1, 2, 8), np.uint16)
        h5["exchange/theta"] = np.arange(4.0)
    with pytest.raises(ValueError, match="no flat fields"):
        reconstruct_file(no_flats, tmp_path / "out.h5", TomoOptions(center=4))
    assert not (tmp_path / "out.h5").exists()  # nothing half-written
    wrong_theta = tmp_path / "wrong_theta.h5"
    with h5py.File(wrong_theta, "w") as h5:
        h5["exchange/data"] = np.ones((4, 2, 8), np.uint16)
        h5["exchange/theta"] = np.arange(3.0)
    with pytest.raises(EdgeRayFormatError, match="3 angles for 4 projections"):
        reconstruct_file(wrong_theta, tmp_path / "out.h5", TomoOptions(center=4))
    assert main(["tomo", "recon", str(wrong_theta), "-o", str(tmp_path / "x.h5")]) == 2
