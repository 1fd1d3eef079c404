"""The classical denoisers (BM3D from the `bm3d` package, total variation from scikit-image): the noise level
estimated from the slice alone, what they do to a noisy slice, and `tomo denoise --method`."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edgeray.io import read_reconstruction, write_reconstruction
from edgeray.metrics import ssim
from edgeray.tomo.classical import denoise_slice, noise_sigma


def _piecewise_constant(size: int = 96) -> np.ndarray:
    y, x = np.mgrid[:size, :size] / size
    image = 0.2 + 0.5 * ((x - 0.5) ** 2 + (y - 0.5) ** 2 < 0.12) + 0.3 * ((x > 0.6) & (y < 0.35))
    return image.astype(np.float64)


@pytest.mark.parametrize("sigma", [0.02, 0.05, 0.1])
def test_the_noise_level_of_white_noise_is_found_from_the_image_alone(sigma):
    """White Gaussian noise of a known level on a piecewise-constant image: the wavelet estimate (gain 1) finds the
    level in units of the image's 0.5-99.5 percentile range to within 15 %."""
    rng = np.random.default_rng(1)
    clean = _piecewise_constant(256)
    noisy = clean + sigma * rng.standard_normal(clean.shape)
    span = np.subtract(*np.percentile(noisy, [99.5, 0.5]))
    assert noise_sigma(noisy, noise_gain=1.0) == pytest.approx(sigma / span, rel=0.15)


@pytest.mark.parametrize("method", ["bm3d", "tv"])
def test_a_classical_denoiser_brings_a_noisy_slice_closer_to_the_clean_one_on_its_own_scale(method):
    rng = np.random.default_rng(2)
    clean = 1e3 * _piecewise_constant()  # any scale: the slice goes back to its own
    noisy = (clean + 60 * rng.standard_normal(clean.shape)).astype(np.float32)
    out = denoise_slice(noisy, method)
    assert out.dtype == np.float32 and out.shape == noisy.shape
    assert ssim(out, clean) > ssim(noisy, clean) + 0.2
    assert abs(out.mean() - clean.mean()) < 0.02 * clean.mean()
    with pytest.raises(ValueError, match="unknown classical denoiser 'nlm'; choose from bm3d, tv"):
        denoise_slice(noisy, "nlm")


def test_tomo_denoise_method_bm3d_and_the_learned_default(tmp_path):
    rng = np.random.default_rng(3)
    volume = np.stack([_piecewise_constant(64) + 0.1 * rng.standard_normal((64, 64)) for _ in range(2)])
    source = write_reconstruction(tmp_path / "rec.h5", volume.astype(np.float32), {"algorithm": "test"})
    for method in ("bm3d", "tomogan"):
        out = tmp_path / f"{method}.h5"
        result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "denoise", str(source), "-o", str(out),
                                 "--method", method], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stderr
        denoised, _ = read_reconstruction(out)
        summary = json.loads(out.with_suffix(".json").read_text())
        assert denoised.shape == volume.shape and summary["method"] == method and summary["slices"] == 2
        if method == "tomogan":
            assert summary["model"] == "shipped TomoGAN (general)"  # the default transfers best (issue 36)
        assert np.std(np.diff(denoised, axis=-1)) < np.std(np.diff(volume, axis=-1))  # smoother than it came
    refused = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "denoise", str(source), "-o",
                              str(tmp_path / "x.h5"), "--method", "nlm"], capture_output=True, text=True)  # fmt: skip
    assert refused.returncode == 2 and "invalid choice: 'nlm'" in refused.stderr


def test_the_split_angle_check_ranks_methods_as_the_truth_does(tmp_path):
    """No truth needed: each method denoises the even-angle reconstruction and is scored against the odd-angle one
    (and the other way round). On a simulated scan, where the truth is known, ranking the methods by that split
    error gives their ranking by error against the truth; `evaluate-denoiser --scan` reports it."""
    from edgeray.io import write_dxchange
    from edgeray.sim import TomoSimConfig, simulate_tomo
    from edgeray.tomo.classical import denoise_volume_classical
    from edgeray.tomo.denoise import denoise_volume, load_denoiser
    from edgeray.tomo.denoise_eval import split_angle_check, split_halves

    scan = simulate_tomo(TomoSimConfig(size=64, slices=4, angles=180, photons=3e2, seed=5))
    path = write_dxchange(tmp_path / "raw.h5", scan)
    check = split_angle_check(path, (0, 4), None, 31.5)
    assert check["relative"]["input"] == 1.0 and set(check["split_mse"]) == {"input", "tomogan", "bm3d", "tv"}
    halves, _, _ = split_halves(path, (0, 4), 31.5)
    truth = np.asarray(scan.ground_truth)[:4]
    model, _ = load_denoiser(None)
    methods = {"input": lambda x: x, "tomogan": lambda x: denoise_volume(x, model)}
    methods |= {m: (lambda x, m=m: denoise_volume_classical(x, m)) for m in ("bm3d", "tv")}
    true_error = {name: np.mean([np.mean((method(half) - truth) ** 2) for half in halves]) for name, method in
                  methods.items()}  # fmt: skip
    assert sorted(check["split_mse"], key=check["split_mse"].get) == sorted(true_error, key=true_error.get)
    result = subprocess.run([sys.executable, "-m", "edgeray", "tomo", "evaluate-denoiser", "--quick", "--scan",
                             str(path), "--rows", "0:4", "--center", "31.5", "-o", str(tmp_path / "e.json")],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    evaluation = json.loads((tmp_path / "e.json").read_text())
    assert evaluation["scan"]["split_mse"] == pytest.approx(check["split_mse"], rel=1e-3)
    assert {"ssim_bm3d", "ssim_tv"} <= set(evaluation["cases"][0])  # the classical ones beside the model
