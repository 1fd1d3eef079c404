"""The edge model's physics: the forward model and its Poisson deviance, the procedural corpus, training on it,
fine-tuning on a scan's own frames without labels, and the evaluation command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from edgeray.nn.checkpoint import load_model, save_model
from edgeray.nn.corpus import FAMILIES, Corpus, CorpusConfig, unit_probe
from edgeray.nn.corpus_training import CorpusTrainOptions, train_on_corpus
from edgeray.nn.export import OnnxModel, export_onnx
from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan, holdout_deviance, overlap_deviance
from edgeray.nn.models import EdgeNet, ModelConfig, build_model, softplus
from edgeray.nn.physics import far_field_intensity, poisson_deviance, probe_weights, supervised_losses
from edgeray.nn.trainset import object_patches, relative_to_transmission
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.sim.ptycho import far_field_intensity as simulator_intensity


@pytest.fixture(scope="module")
def probe32() -> torch.Tensor:
    return unit_probe(32)


def test_forward_model_matches_the_simulator_and_parseval(probe32):
    rng = np.random.default_rng(0)
    patch = (rng.uniform(0.5, 1, (3, 32, 32)) * np.exp(1j * rng.uniform(-1, 1, (3, 32, 32)))).astype(np.complex64)
    ours = far_field_intensity(torch.from_numpy(patch), probe32).numpy()
    reference = simulator_intensity((probe32.numpy() * patch)[:, None])
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
    # Parseval: numpy's unnormalized FFT gives H W sum |p patch|^2
    np.testing.assert_allclose(ours.sum(axis=(1, 2)), 32 * 32 * (np.abs(probe32.numpy() * patch) ** 2).sum((1, 2)),
                               rtol=1e-4)  # fmt: skip


def test_physics_loss_is_zero_for_the_true_patch_and_finite_at_zero_counts(probe32):
    rng = np.random.default_rng(1)
    patch = torch.from_numpy((np.exp(1j * rng.uniform(-1, 1, (4, 32, 32)))).astype(np.complex64))
    noiseless = far_field_intensity(patch, probe32)
    assert float(poisson_deviance(noiseless, noiseless).abs().max()) < 1e-5
    wrong = far_field_intensity(patch * torch.polar(torch.ones(32, 32), torch.linspace(0, 1, 32)[:, None]), probe32)
    assert float(poisson_deviance(wrong, noiseless).min()) > 1e-3
    # zero counts everywhere, and a model that predicts zero where counts are zero: value and gradient finite
    amplitude = torch.full((2, 32, 32), 0.5, requires_grad=True)
    model_intensity = far_field_intensity(torch.polar(amplitude, torch.zeros(2, 32, 32)), probe32)
    measured = torch.zeros(2, 32, 32)
    measured[1, 10:20, 10:20] = 3.0
    loss = poisson_deviance(model_intensity, measured).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(amplitude.grad).all() and float(amplitude.grad.abs().sum()) > 0


def test_supervised_losses_ignore_a_constant_phase(probe32):
    target = torch.polar(torch.full((2, 32, 32), 0.8), torch.rand(2, 32, 32))
    weights = probe_weights(probe32)
    amplitude_l1, phase_l1 = supervised_losses(target.abs(), target.angle() + 2.5, target, weights)
    assert float(amplitude_l1.max()) < 1e-6 and float(phase_l1.max()) < 1e-5
    _, tilted = supervised_losses(target.abs(), target.angle() + 0.05 * torch.arange(32.0), target, weights)
    assert float(tilted.min()) > 0.01


def test_corpus_counts_follow_the_forward_model_and_are_repeatable():
    config = CorpusConfig(frame_size=32, tile_px=48, frames_per_object=4, photons=(1e5, 1e6), seed=4)
    images = torch.rand(2, 1, 64, 64)
    batch = Corpus(config, images).batch(6)
    again = Corpus(config, images).batch(6)
    assert torch.equal(batch.counts, again.counts) and batch.counts.shape == (24, 32, 32)
    assert set(batch.family.tolist()) <= set(range(len(FAMILIES)))
    expected = far_field_intensity(batch.patch, unit_probe(32)) * batch.scale[:, None, None]
    # Poisson counts: their sum is the expectation's within a few standard deviations
    totals, means = batch.counts.sum(dim=(1, 2)), expected.sum(dim=(1, 2))
    assert float(((totals - means).abs() / means.sqrt()).max()) < 6
    # the labels are relative to each scan's mean transmission: mean of sum |p patch|^2 over a scan's frames is 1
    transmitted = (far_field_intensity(batch.patch, unit_probe(32)).sum(dim=(1, 2)) / 32**2).reshape(6, 4).mean(1)
    np.testing.assert_allclose(transmitted.numpy(), 1.0, rtol=1e-4)


def test_every_family_makes_maps_in_range():
    corpus = Corpus(CorpusConfig(frame_size=32, tile_px=48, seed=5), torch.rand(2, 1, 64, 64))
    for name in FAMILIES:
        maps = getattr(corpus, name)(3)
        assert maps.shape == (3, 48, 48) and float(maps.min()) >= 0 and float(maps.max()) <= 1
        assert float(maps.std()) > 0.01, name


def test_edge_model_carries_its_probe_exports_and_loads(tmp_path, probe32):
    config = ModelConfig("edge", 4, 3, 32)
    model = build_model(config).eval()
    assert isinstance(model, EdgeNet)
    np.testing.assert_allclose(model.complex_probe().numpy(), probe32.numpy(), atol=1e-6)
    x = torch.rand(5, 1, 32, 32) * 2
    with torch.inference_mode():
        amplitude, phase = model(x)
    assert amplitude.shape == phase.shape == (5, 1, 32, 32) and float(amplitude.min()) >= 0
    onnx = OnnxModel(export_onnx(model, tmp_path / "m.onnx", 32))
    amplitude_o, phase_o = onnx(x)
    assert float((amplitude - amplitude_o).abs().max()) < 1e-4 and float((phase - phase_o).abs().max()) < 1e-4
    other = unit_probe(32, "gaussian")
    model.set_probe(other)
    save_model(tmp_path / "m", model, {"config": config.to_dict()})
    loaded, _ = load_model(tmp_path / "m")
    np.testing.assert_allclose(loaded.complex_probe().numpy(), other.numpy(), atol=1e-6)


def test_exported_softplus_is_the_same_function_without_the_slow_kernel(tmp_path):
    import onnx

    class Amplitude(torch.nn.Module):
        def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return softplus(logits), logits

    logits = torch.linspace(-60.0, 60.0, 32 * 32 * 3).reshape(3, 1, 32, 32)
    path = export_onnx(Amplitude(), tmp_path / "softplus.onnx", 32)
    assert "Softplus" not in {node.op_type for node in onnx.load(str(path)).graph.node}
    exported, _ = OnnxModel(path)(logits)
    reference = torch.nn.functional.softplus(logits.double())  # float64: log(1 + e^x) to the last bit
    # amplitudes are ~1 (relative to the transmission): the error is judged against max(1, value)
    assert float(((exported.double() - reference) / reference.clamp_min(1.0)).abs().max()) < 1e-6


def test_training_on_the_corpus_learns_and_resumes(tmp_path):
    config = ModelConfig("edge", 4, 3, 32)
    corpus = CorpusConfig(frame_size=32, tile_px=48, frames_per_object=4, seed=2)
    options = CorpusTrainOptions(steps=60, objects_per_step=8, warmup_steps=5, checkpoint_every=30,
                                 validation_objects=8, learning_rate=3e-3)  # fmt: skip
    first = train_on_corpus(tmp_path / "m", config, corpus, CorpusTrainOptions(**{**options.__dict__, "steps": 30}))
    card = train_on_corpus(tmp_path / "m", config, corpus, options, resume=True)
    steps = card["history"]["step"]
    assert steps == [30, 60] and first["history"]["step"] == [30]
    before, after = card["history"]["validation"]
    assert after["total"] < before["total"]  # measured: the amplitude term falls first
    assert card["training"]["samples"] == 60 * 8 * 4
    text = json.dumps(card)
    assert str(tmp_path) not in text  # no path of the machine it was made on


def test_fine_tuning_on_frames_alone_lowers_the_held_out_deviance(tmp_path):
    scan = simulate_ptycho(PtychoSimConfig(frame_size=32, n_positions=160, step_px=3.0, photons=1e5, seed=8,
                                           object="random"))  # fmt: skip
    model = build_model(ModelConfig("edge", 4, 3, 32))
    save_model(tmp_path / "start", model, {"config": ModelConfig("edge", 4, 3, 32).to_dict()})
    probe = scan.ground_truth.probe
    np.save(tmp_path / "probe.npy", probe)
    options = FinetuneOptions(regime="physics", group_size=1, epochs=6, groups_per_step=8, learning_rate=3e-3,
                              group_radius_px=8.0)  # fmt: skip
    result = finetune_on_scan(scan, tmp_path / "start", tmp_path / "tuned", tmp_path / "probe.npy", options)
    assert result.holdout_after < 0.8 * result.holdout_before  # frames never trained on are explained better
    tuned, card = load_model(tmp_path / "tuned")
    assert card["finetuned"]["probe"] == "probe.npy"
    np.testing.assert_allclose(tuned.complex_probe().numpy(), (probe[0] / np.linalg.norm(probe[0])), atol=1e-5)


def test_overlap_term_is_zero_for_a_consistent_object(probe32):
    """Neighbouring frames of one object: the patches stitched into one local object explain every frame."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(3)
    smooth = gaussian_filter(rng.standard_normal((2, 90, 90)), (0, 3, 3))  # bilinear resampling is near exact
    obj = (1 + smooth[0]) * np.exp(2j * smooth[1])
    positions = np.array([[45.0, 45.0], [47.3, 44.1], [43.6, 48.2], [46.0, 41.5]])
    patches = torch.from_numpy(object_patches(obj, positions, (32, 32)))
    patches = relative_to_transmission(patches.numpy(), probe32.numpy())
    patches = torch.from_numpy(patches) * torch.polar(torch.ones(4), torch.tensor([0.0, 1.0, -2.0, 0.5]))[:, None, None]
    measured = far_field_intensity(patches, probe32)
    offsets = torch.from_numpy(positions - positions[:1])[None]
    deviance = overlap_deviance(patches[None], offsets, measured[None], probe32, None, radius_px=6.0)
    assert float(deviance[0]) < 2e-3
    noisy = patches * torch.polar(torch.ones(4, 32, 32), 0.3 * torch.randn(4, 32, 32))
    assert float(overlap_deviance(noisy[None], offsets, measured[None], probe32, None, 6.0)[0]) > 10 * float(
        deviance[0]
    )


def test_holdout_deviance_prefers_the_truth(probe32):
    """A model that returns the true patch scores lower than one that returns a flat patch."""

    class Oracle(torch.nn.Module):
        def __init__(self, patches):
            super().__init__()
            self.patches = patches
            self.register_buffer("probe", torch.stack([probe32.real, probe32.imag]))

        def complex_probe(self):
            return probe32

        def forward(self, x):
            return self.patches.abs()[:, None], self.patches.angle()[:, None]

    patch = torch.polar(torch.full((3, 32, 32), 0.9), 0.4 * torch.randn(3, 32, 32))
    inputs = torch.sqrt(far_field_intensity(patch, probe32))[:, None]
    truth = holdout_deviance(Oracle(patch), inputs, None)
    flat = holdout_deviance(Oracle(torch.ones(3, 32, 32, dtype=torch.complex64)), inputs, None)
    assert truth < 1e-5 < flat and math.isfinite(flat)
