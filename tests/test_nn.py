"""Surrogate networks: shapes, overfitting a tiny set, exact stitching, ONNX parity, checkpoint errors, inference."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch

from edgeray.nn.checkpoint import load_model, save_model
from edgeray.nn.export import OnnxModel, export_onnx
from edgeray.nn.infer import infer_scan
from edgeray.nn.models import ModelConfig, build_model, normalize_frames
from edgeray.nn.set_training import TrainOptions, TrainsetDataset, train
from edgeray.nn.stitch import stitch
from edgeray.nn.trainset import object_patches, samples_from_reconstruction, samples_from_scan, write_trainset
from edgeray.ptycho import prepare
from edgeray.ptycho.reconstruct import run
from edgeray.sim import PtychoSimConfig, simulate_ptycho


@pytest.fixture(scope="module")
def small_scan():
    return simulate_ptycho(PtychoSimConfig(frame_size=32, n_positions=64, step_px=4.0, photons=1e5, seed=7))


@pytest.mark.parametrize("kind", ["compact", "ptychonn"])
def test_model_shapes_and_ranges(kind):
    model = build_model(ModelConfig(kind, width=4, depth=3, frame_size=32))
    with torch.no_grad():
        amplitude, phase = model(torch.randn(5, 1, 32, 32) * 10)
    assert amplitude.shape == phase.shape == (5, 1, 32, 32)
    assert float(amplitude.min()) > 0 and float(amplitude.max()) < 1
    assert float(phase.abs().max()) < math.pi


def test_bad_model_configs():
    with pytest.raises(ValueError, match="not divisible"):
        build_model(ModelConfig("compact", 8, 3, 36))
    with pytest.raises(ValueError, match="unknown model"):
        build_model(ModelConfig("resnet"))


def test_normalization_keeps_frame_to_frame_differences():
    counts = torch.tensor([[[100.0, 0.0]], [[400.0, 0.0]]])
    x = normalize_frames(counts)
    assert x.shape == (2, 1, 1, 2)
    assert float(x[1, 0, 0, 0] / x[0, 0, 0, 0]) == pytest.approx(2.0)
    assert float((x**2).mean()) == pytest.approx(1.0)


def test_stitching_exact_patches_reproduces_the_object(small_scan):
    problem = prepare(small_scan)
    rng = np.random.default_rng(0)
    obj = (rng.random(problem.object_shape) + 0.5) * np.exp(1j * rng.uniform(-1, 1, problem.object_shape))
    positions = torch.round(problem.positions_px)  # whole pixels: the probe-centred grid is the object's
    patches = torch.from_numpy(object_patches(obj, positions.numpy(), (32, 32)))
    for align in ("none", "phase"):
        stitched, coverage = stitch(patches, positions, problem.object_shape, align=align)
        covered = coverage.numpy() > 0
        assert covered.mean() > 0.3
        np.testing.assert_allclose(stitched.numpy()[covered], obj[covered], rtol=1e-5, atol=1e-5)
        assert (stitched.numpy()[~covered] == 1).all()


def test_stitching_undoes_each_patch_constant_phase(small_scan):
    """A frame fixes its patch only up to a constant phase: patches turned at random stitch back to the object
    (up to one common phase), in any batch size; without alignment they do not."""
    problem = prepare(small_scan)
    rng = np.random.default_rng(1)
    obj = (rng.random(problem.object_shape) * 0.5 + 0.5) * np.exp(1j * rng.uniform(-1, 1, problem.object_shape))
    positions = torch.round(problem.positions_px)
    patches = torch.from_numpy(object_patches(obj, positions.numpy(), (32, 32)))
    turned = patches * torch.polar(torch.ones(len(patches)), torch.rand(len(patches)) * 2 * math.pi)[:, None, None]
    for batch_size in (7, 64):
        stitched, coverage = stitch(turned, positions, problem.object_shape, align="phase", batch_size=batch_size)
        covered = coverage.numpy() > 0
        common = np.vdot(stitched.numpy()[covered], obj[covered])
        np.testing.assert_allclose(
            stitched.numpy()[covered] * np.exp(1j * np.angle(common)), obj[covered], atol=3e-3
        )  # sweeps stop at 1e-3 rad; fmt: skip
    plain, _ = stitch(turned, positions, problem.object_shape, align="none")
    assert np.abs(plain.numpy()[covered] - obj[covered]).mean() > 0.1


def test_subpixel_placement_is_exact_for_linear_objects():
    """Bilinear extraction (labels) and placement (stitching) are exact for an object linear in y and x: patches
    taken at sub-pixel positions stitch back to the object (weights 0 on the rim, as a probe's are)."""
    yy, xx = np.mgrid[0:80, 0:90].astype(np.float64)
    obj = (1 + 0.01 * yy - 0.004 * xx) + 1j * (0.02 * xx + 0.003 * yy)
    positions = torch.from_numpy(np.random.default_rng(2).uniform([20, 20], [60, 70], size=(40, 2)))
    patches = torch.from_numpy(object_patches(obj, positions.numpy(), (16, 16)))
    corner = positions[0].numpy() - 8  # pixel (3, 5) of patch 0 is the object at corner + (3, 5)
    assert complex(patches[0, 3, 5]) == pytest.approx(obj[0, 0] + 0.01 * (corner[0] + 3) - 0.004 * (corner[1] + 5)
                                                      + 1j * (0.02 * (corner[1] + 5) + 0.003 * (corner[0] + 3)),
                                                      abs=1e-6)  # fmt: skip
    weights = torch.zeros(16, 16)
    weights[1:-1, 1:-1] = 1
    stitched, coverage = stitch(patches, positions, obj.shape, weights=weights, align="none")
    covered = coverage.numpy() > 0
    assert covered.sum() > 1000
    np.testing.assert_allclose(stitched.numpy()[covered], obj[covered], atol=1e-5)


def test_tiny_model_overfits_a_tiny_set(tmp_path):
    scan = simulate_ptycho(
        PtychoSimConfig(frame_size=32, n_positions=9, step_px=4.0, photons=1e5, seed=7, object="random")
    )
    path = write_trainset(tmp_path / "set.h5", [samples_from_scan(scan)], {"source": "test"})
    dataset = TrainsetDataset(path)
    assert len(dataset) == 9 and dataset.frame_shape == [32, 32]
    options = TrainOptions(epochs=300, batch_size=4, learning_rate=1e-2, val_fraction=0.1, seed=0)
    card = train(path, tmp_path / "model", ModelConfig("compact", 8, 3, 32), options)
    history = card["history"]
    assert history["train_loss"][-1] < 0.1 * history["initial_train_loss"]  # measured 18x
    assert (tmp_path / "model" / "MODEL_CARD.md").exists() and (tmp_path / "model" / "loss.png").exists()
    _, loaded = load_model(tmp_path / "model")
    assert loaded["config"]["width"] == 8


def test_training_is_deterministic_and_resumes(tmp_path, small_scan):
    path = write_trainset(tmp_path / "set.h5", [samples_from_scan(small_scan)], {"source": "test"})
    config = ModelConfig("compact", 4, 3, 32)
    a = train(path, tmp_path / "a", config, TrainOptions(epochs=3, batch_size=16, seed=1))
    b = train(path, tmp_path / "b", config, TrainOptions(epochs=3, batch_size=16, seed=1))
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    resumed = train(path, tmp_path / "a", config, TrainOptions(epochs=5, batch_size=16, seed=1), resume=True)
    assert len(resumed["history"]["train_loss"]) == 5
    assert resumed["history"]["train_loss"][:3] == a["history"]["train_loss"]


def test_training_with_the_solar_loader(tmp_path, small_scan):
    path = write_trainset(tmp_path / "set.h5", [samples_from_scan(small_scan)], {"source": "test"})
    config = ModelConfig("compact", 4, 3, 32)
    options = dict(epochs=6, batch_size=8, learning_rate=1e-2, seed=1)
    solar = train(path, tmp_path / "s", config, TrainOptions(**options, loader="solar", buffer_bytes=20 * 32 * 32 * 12))
    plain = train(path, tmp_path / "t", config, TrainOptions(**options))
    for card in (solar, plain):  # same batches per epoch (other order): both learn
        assert card["history"]["train_loss"][-1] < 0.8 * card["history"]["initial_train_loss"]
    assert solar["history"]["train_loss"][-1] < 1.25 * plain["history"]["train_loss"][-1]


def test_onnx_matches_torch(tmp_path):
    model = build_model(ModelConfig("compact", 8, 3, 32)).eval()
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "m.onnx", 32))
    x = torch.randn(7, 1, 32, 32)
    with torch.inference_mode():
        amplitude, phase = model(x)
    amplitude_o, phase_o = onnx_model(x)
    assert float((amplitude - amplitude_o).abs().max()) < 1e-4
    assert float((phase - phase_o).abs().max()) < 1e-4


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    model = build_model(ModelConfig("compact", 8, 3, 32))
    save_model(tmp_path / "m", model, {"config": ModelConfig("compact", 8, 3, 32).to_dict()})
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    card["config"]["width"] = 16
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="do not fit the compact architecture"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="corrupt weights"):
        load_model(tmp_path / "m")
    with pytest.raises(ValueError, match="not a model directory"):
        load_model(tmp_path / "nothing")


def test_labels_from_a_reconstruction(small_scan):
    product = run(small_scan, "lsqml", 3, probe=small_scan.ground_truth.probe, batch_size=32).product
    samples = samples_from_reconstruction(small_scan, product)
    assert samples["frames"].shape == samples["amplitude"].shape == samples["phase"].shape == (64, 32, 32)
    assert np.abs(samples["phase"]).max() <= np.pi
    # amplitude relative to the scan's mean transmission under the probe: its probe-weighted mean square is 1
    power = np.abs(product.probe[0]) ** 2
    mean_square = (power / power.sum() * samples["amplitude"] ** 2).sum(axis=(1, 2)).mean()
    assert mean_square == pytest.approx(1.0, rel=1e-4)


def test_shipped_model_inverts_a_scan_and_warns_on_other_geometry():
    scan = simulate_ptycho(PtychoSimConfig(n_positions=100, photons=1e5, seed=11))
    result = infer_scan(scan)
    assert result.product.object.shape[0] == 1 and result.frames_per_s > 0
    assert result.mismatches == []
    other = simulate_ptycho(PtychoSimConfig(n_positions=20, photons=1e5, energy_eV=8000.0, seed=11))
    with pytest.warns(UserWarning, match="energy_eV"):
        infer_scan(other)


def test_registry_keeps_every_version_and_points_atomically(tmp_path):
    from edgeray.nn.checkpoint import SHIPPED
    from edgeray.nn.registry import Registry

    registry = Registry(tmp_path / "reg")
    assert registry.current() is None and registry.versions() == []
    first = registry.publish(SHIPPED, {"epochs": 25})
    second = registry.publish(SHIPPED, {"epochs": 30}, make_current=False)
    assert (first, second) == ("v0001", "v0002") and registry.versions() == ["v0001", "v0002"]
    assert registry.current() == "v0001"
    registry.set_current(second)
    assert registry.current() == "v0002" and registry.provenance("v0002")["epochs"] == 30
    record = registry.provenance("v0002")  # names and checksums, never the publishing machine's folders
    assert record["source"] == SHIPPED.name and str(SHIPPED.parent) not in json.dumps(record)
    assert record["weights_sha256"] == hashlib.sha256((SHIPPED / "model.safetensors").read_bytes()).hexdigest()
    assert not [p for p in registry.root.iterdir() if p.name.startswith(".")]  # no temporary left behind
    load_model(registry.path("v0002"))
    with pytest.raises(ValueError, match="not a model directory"):
        registry.publish(tmp_path)
    with pytest.raises(FileNotFoundError, match="no model version 'v0009'"):
        registry.set_current("v0009")
