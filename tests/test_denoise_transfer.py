"""Denoisers for data they were not made from: phantom families, the scan-and-reconstruct corpus, Noise2Inverse's
angle splits, slices alone and in volumes, and the evaluation that states how a model transfers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeray.sim.families import FAMILIES, HELD_OUT_FAMILIES, phantom_slice
from edgeray.tomo import noise2inverse
from edgeray.tomo.denoise import SHIPPED_GENERAL_DENOISER, denoise_volume, load_denoiser
from edgeray.tomo.denoise_corpus import CorpusSpec, Degradation, make_pairs, scan_and_reconstruct
from edgeray.tomo.project import project


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_draws_new_bounded_objects(family):
    rng = np.random.default_rng(0)
    first, second = phantom_slice(family, 64, rng), phantom_slice(family, 64, rng)
    for image in (first, second):
        assert image.shape == (64, 64) and image.dtype == np.float32
        assert np.isfinite(image).all() and image.min() >= 0 and image.max() == pytest.approx(1.0)
        assert (image > 0).mean() > 0.05  # a sample, not an empty field
    assert not np.array_equal(first, second)


def test_held_out_families_and_reconstructors_stay_out_of_training():
    spec = CorpusSpec()
    assert not set(HELD_OUT_FAMILIES) & set(spec.families) and "iradon" not in spec.reconstructors
    pairs = make_pairs(6, CorpusSpec(size=64, reconstructors=("gridrec", "fbp")), seed=1)
    assert pairs["noisy"].shape == pairs["clean"].shape == (6, 64, 64) and pairs["attrs"]["block"] == 1


@pytest.mark.parametrize("reconstructor", ["gridrec", "fbp", "sirt", "iradon"])
def test_every_reconstructor_gives_the_object_back_from_full_clean_data(reconstructor):
    truth = phantom_slice("ellipses", 64, np.random.default_rng(2))
    out = scan_and_reconstruct(truth, Degradation(reconstructor, "ramp", stride=1, photons=1e7, sirt_iterations=60),
                               np.random.default_rng(3))  # fmt: skip
    assert np.corrcoef(out.ravel(), truth.ravel())[0, 1] > 0.85  # same orientation, same units
    assert float((out * truth).sum() / (truth * truth).sum()) == pytest.approx(1.0, abs=0.35)


def test_angle_splits_are_disjoint_and_their_noise_independent():
    splits = noise2inverse.angle_splits(181, 3)
    joined = np.concatenate(splits)
    assert len(joined) == 181 and len(np.unique(joined)) == 181  # disjoint, and every angle used
    assert all(np.ptp(s) >= 170 for s in splits)  # each covers the half turn
    # pure noise: the sub-reconstructions' noise is uncorrelated (disjoint projections); an object: correlated
    rng = np.random.default_rng(4)
    theta = np.radians(np.arange(180) * 1.0)
    noise = rng.standard_normal((4, 180, 64))
    sub = noise2inverse.split_reconstructions(noise, theta, 2)
    r_noise = np.corrcoef(sub[0].ravel(), sub[1].ravel())[0, 1]
    truth = phantom_slice("foam", 64, rng)
    clean = project(torch.from_numpy(truth[None].astype(np.float64)), theta, 32.0, 64).numpy()
    sub = noise2inverse.split_reconstructions(clean, theta, 2, 32.0)
    r_object = np.corrcoef(sub[0].ravel(), sub[1].ravel())[0, 1]
    assert abs(r_noise) < 0.03 and r_object > 0.9


def test_noise2inverse_pairs_predict_one_split_from_the_others():
    sub = np.random.default_rng(5).standard_normal((3, 2, 8, 8)).astype(np.float32)
    pairs = noise2inverse.training_pairs(sub)
    assert pairs["noisy"].shape == (6, 8, 8) and pairs["attrs"]["block"] == 2
    np.testing.assert_allclose(pairs["noisy"][2:4], (sub[0] + sub[2]) / 2, atol=1e-6)  # t = 1: the others' mean
    np.testing.assert_array_equal(pairs["clean"][2:4], sub[1])


def test_one_to_x_pairs_and_their_correction_give_the_full_angle_reconstruction():
    sub = np.random.default_rng(5).standard_normal((3, 2, 8, 8)).astype(np.float32)
    pairs = noise2inverse.training_pairs(sub, "1:X")
    np.testing.assert_array_equal(pairs["noisy"][2:4], sub[1])  # t = 1 alone in, the others' mean out
    np.testing.assert_allclose(pairs["clean"][2:4], (sub[0] + sub[2]) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="strategy"):
        noise2inverse.training_pairs(sub, "2:2")
    # what a 1:X model's output means: (k-1)/k of the others' mean plus 1/k of the input is the reconstruction
    # from every angle (filtered back projection is linear; equal subsets)
    from edgeray.tomo.fbp import gridrec

    rng = np.random.default_rng(8)
    theta = np.radians(np.arange(180) * 1.0)
    truth = phantom_slice("cells", 64, rng)
    sinogram = project(torch.from_numpy(truth[None].astype(np.float64)), theta, 32.0, 64).numpy()
    sinogram += 0.05 * rng.standard_normal(sinogram.shape)
    k = 4
    sub = noise2inverse.split_reconstructions(sinogram, theta, k, 32.0)
    others = (sub.sum(axis=0) - sub[1]) / (k - 1)
    full = gridrec(sinogram, theta, 32.0)
    np.testing.assert_allclose(((k - 1) * others + sub[1]) / k, full, atol=1e-3 * np.ptp(full))
    assert np.abs(sub[1] - full).max() > 0.05 * np.ptp(full)  # one subset alone is not the full reconstruction


@pytest.mark.parametrize("name", ["general", "stream"])
def test_a_slice_alone_denoises_as_it_does_in_a_volume(name):
    model, card = load_denoiser(name)
    assert card["normalization_scope"] == "slice" and model.config.in_slices == 1
    rng = np.random.default_rng(6)
    volume = np.stack([phantom_slice("rock", 64, rng) for _ in range(5)]) + 0.1 * rng.standard_normal((5, 64, 64))
    volume[0] *= 40  # a neighbour on another scale must not matter either
    together = denoise_volume(volume, model)
    alone = denoise_volume(volume[2], model)[0]
    scale = np.ptp(together[2])
    assert np.max(np.abs(alone - together[2])) <= 1e-3 * scale


def test_a_multi_slice_model_collapses_to_one_slice_exactly():
    from edgeray.tomo.tomogan import TomoGANConfig, UNet, single_slice_copy

    torch.manual_seed(0)
    three = UNet(TomoGANConfig(depth=2, width=4, in_slices=3)).eval()
    one = single_slice_copy(three).eval()
    assert one.config.in_slices == 1 and three.config.in_slices == 3
    slices = torch.rand(2, 1, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(one(slices), three(slices.repeat(1, 3, 1, 1)), atol=1e-5)
        assert not torch.allclose(three(torch.rand(2, 3, 32, 32)), three(slices.repeat(1, 3, 1, 1)))


def test_self_supervised_training_from_a_scan(tmp_path):
    from edgeray.io import write_dxchange
    from edgeray.sim import TomoSimConfig, simulate_tomo

    scan = write_dxchange(tmp_path / "scan.h5", simulate_tomo(TomoSimConfig(size=64, slices=4, angles=90,
                                                                            photons=300, seed=7)))  # fmt: skip
    out = tmp_path / "n2i"
    result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "train-denoiser", "--self-supervised", str(scan),
                             "-o", str(out), "--steps", "20", "--center", "32", "--device", "cpu"],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["splits"] == 2 and summary["rows"] == [0, 1, 2, 3] and summary["start_from"] == "tomogan-general"
    card = json.loads((out / "model.json").read_text())
    assert card["training"]["pairs_attrs"]["source"] == "noise2inverse"
    model, _ = load_denoiser(out)
    assert np.isfinite(denoise_volume(np.ones((2, 64, 64)), model)).all()


def test_one_to_x_self_supervised_model_carries_its_input_weight(tmp_path):
    from edgeray.io import write_dxchange
    from edgeray.sim import TomoSimConfig, simulate_tomo

    scan = write_dxchange(tmp_path / "scan.h5", simulate_tomo(TomoSimConfig(size=64, slices=2, angles=96,
                                                                            photons=1000, seed=9)))  # fmt: skip
    out = tmp_path / "sparse"
    result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "train-denoiser", "--self-supervised", str(scan),
                             "--strategy", "1:X", "--splits", "4", "-o", str(out), "--steps", "10", "--center", "32",
                             "--device", "cpu"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads(out.with_suffix(".json").read_text())["strategy"] == "1:X"
    model, card = load_denoiser(out)
    assert card["config"]["input_weight"] == 0.25 and card["self_supervised"]["splits"] == 4
    assert "1/4 of the angles" in (out / "MODEL_CARD.md").read_text()
    slices = torch.from_numpy(np.random.default_rng(10).random((1, 1, 64, 64), dtype=np.float32))
    weighted = model(slices)
    model.config.input_weight = 0.0
    np.testing.assert_allclose(weighted, 0.75 * model(slices) + 0.25 * slices, atol=1e-5)


def test_evaluate_denoiser_states_how_a_model_transfers(tmp_path):
    model_dir = shutil.copytree(SHIPPED_GENERAL_DENOISER, tmp_path / "model")
    result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "evaluate-denoiser", str(model_dir), "--quick",
                             "--record", "-o", str(tmp_path / "eval.json")], capture_output=True, text=True,
                            timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    names = [row["case"] for row in evaluation["cases"]]
    assert any("held-out family and reconstructor" in n for n in names) and any("tooth" in n for n in names)
    assert all(0 <= row["ssim_out"] <= 1 for row in evaluation["cases"])
    assert "## Transfer" in (model_dir / "MODEL_CARD.md").read_text()
    assert json.loads((model_dir / "model.json").read_text())["transfer"]["cases"] == evaluation["cases"]
