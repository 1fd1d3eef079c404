"""The multi-frame network: groups of neighbouring frames with their offsets, learning a scan's sample (labels from
LSQML and/or physics), and inference with groups."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeray.nn.checkpoint import load_model, save_model
from edgeray.nn.corpus import unit_probe
from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan, holdout_deviance
from edgeray.nn.group import GroupNet, group_indices, shift_onto_anchor
from edgeray.nn.infer import infer_scan
from edgeray.nn.models import EdgeNet, ModelConfig, build_model
from edgeray.nn.trainset import object_patches
from edgeray.sim import PtychoSimConfig, simulate_ptycho

SMALL = ModelConfig("group", 4, 3, 32, group_size=4, group_radius_px=8.0, fusion_width=8)


@pytest.fixture(scope="module")
def small_scan():
    return simulate_ptycho(PtychoSimConfig(frame_size=32, n_positions=144, step_px=3.0, photons=1e5, seed=8,
                                           object="random", scan="raster"))  # fmt: skip


def test_a_group_of_one_is_the_single_frame_model():
    """K = 1: same interface as the edge model, and (fusion untrained) the same patch as its per-frame branch."""
    torch.manual_seed(0)
    model = GroupNet(SMALL).eval()
    frames = torch.rand(5, 1, 32, 32) * 2
    with torch.no_grad():
        amplitude, phase = model(frames, torch.zeros(5, 1, 2))
        single_amplitude, single_phase = model.frame(frames)
    assert amplitude.shape == phase.shape == (5, 1, 32, 32) == single_amplitude.shape
    torch.testing.assert_close(amplitude, single_amplitude, atol=1e-5, rtol=1e-5)
    wrapped = torch.angle(torch.polar(torch.ones_like(phase), phase - single_phase))
    assert float(wrapped.abs().max()) < 1e-4


def test_shifting_a_neighbour_onto_the_anchor_reproduces_the_anchor_where_both_see_the_object():
    """Round trip through the object: patch B moved by (pos B - pos A) equals patch A on their common pixels."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(1)
    obj = gaussian_filter(rng.standard_normal((96, 96)), 6)  # smooth: bilinear interpolation is near exact
    for offset in ([3.0, -5.0], [2.4, 1.7]):
        positions = np.array([[48.0, 48.0], [48.0 + offset[0], 48.0 + offset[1]]])
        patches = object_patches(obj.astype(np.complex64), positions, (32, 32)).real
        offsets = torch.tensor([[[0.0, 0.0], offset]])
        moved = shift_onto_anchor(torch.from_numpy(patches)[None, :, None].float(), offsets)
        inner = (slice(8, 24), slice(8, 24))
        error = np.abs(moved[0, 1, 0].numpy()[inner] - patches[0][inner]).max()
        assert error < (1e-5 if offset[0] == 3.0 else 0.02) * np.abs(patches[0]).max()  # whole pixels: exact
        assert np.abs(moved[0, 0, 0].numpy() - patches[0]).max() < 1e-5  # offset 0: unchanged


def test_the_offsets_are_used():
    """The same frames with a neighbour placed elsewhere give another output."""
    torch.manual_seed(0)
    model = GroupNet(SMALL).eval()
    frames = torch.rand(1, 4, 32, 32) * 2
    offsets = torch.tensor([[[0.0, 0.0], [3.0, 0.0], [0.0, 3.0], [3.0, 3.0]]])
    with torch.no_grad():
        first = model(frames, offsets)[0]
        moved = model(frames, offsets + torch.tensor([0.0, 4.0]) * torch.tensor([[0], [1], [0], [0]]))[0]
    assert float((first - moved).abs().max()) > 1e-3


def test_groups_are_nearest_neighbours_and_causal_at_the_edge():
    positions = np.random.default_rng(2).uniform(0, 40, size=(300, 2))
    groups = group_indices(positions, 4, radius_px=6.0)
    assert (groups[:, 0] == np.arange(300)).all()
    distance = np.linalg.norm(positions[groups] - positions[:, None], axis=-1)
    assert distance.max() <= 6.0
    causal = group_indices(positions, 4, radius_px=6.0, causal=True)
    assert (causal[:, 0] == np.arange(300)).all() and (causal <= np.arange(300)[:, None]).all()
    assert (causal[0] == 0).all()  # the first frame has no one before it: alone
    # a neighbour of frame i is one of the 3 nearest earlier frames within the radius
    i = 250
    earlier = np.linalg.norm(positions[:i] - positions[i], axis=1)
    expected = [j for j in np.argsort(earlier)[:3] if earlier[j] <= 6.0]
    assert sorted(set(causal[i, 1:]) - {i}) == sorted(expected)


@pytest.mark.parametrize("regime", ["physics", "both", "twin"])
def test_learning_the_sample_lowers_the_held_out_deviance(tmp_path, small_scan, regime):
    start = build_model(ModelConfig("edge", 4, 3, 32))
    save_model(tmp_path / "start", start, {"config": ModelConfig("edge", 4, 3, 32).to_dict()})
    scan = small_scan
    scan.probe = scan.ground_truth.probe
    options = FinetuneOptions(regime=regime, group_size=3, epochs=5, groups_per_step=8, learning_rate=3e-3,
                              group_radius_px=8.0, lsqml_epochs=10, twin_steps=20, twin_batch=32)  # fmt: skip
    result = finetune_on_scan(scan, tmp_path / "start", tmp_path / "tuned", None, options)
    assert result.holdout_after < 0.8 * result.holdout_before
    tuned, card = load_model(tmp_path / "tuned")
    assert isinstance(tuned, GroupNet) and card["config"]["group_size"] == 3
    assert card["finetuned"]["regime"] == regime and card["finetuned"]["probe"] == "the scan file's illumination"
    inferred = infer_scan(scan, tmp_path / "tuned")
    assert inferred.product.object.shape[0] == 1 and np.isfinite(inferred.product.object).all()


def test_holdout_deviance_of_a_group_uses_the_groups(small_scan):
    """The deviance of the anchors only; a group model of the truth's probe scores a finite number."""
    model = GroupNet(SMALL, unit_probe(32))
    inputs = torch.rand(10, 1, 32, 32)
    groups = np.stack([np.arange(10)] + [np.roll(np.arange(10), 1)] * 3, 1)
    value = holdout_deviance(model, inputs, None, groups, np.zeros((10, 2)))
    assert np.isfinite(value) and value > 0


def test_a_mismatched_group_model_is_refused(tmp_path):
    edge = EdgeNet(ModelConfig("edge", 4, 3, 32))
    save_model(tmp_path / "m", edge, {"config": SMALL.to_dict()})  # edge weights, a group card
    with pytest.raises(ValueError, match="do not fit the group architecture"):
        load_model(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="corrupt weights"):
        load_model(tmp_path / "m")


def test_the_edge_runs_a_group_model_frame_by_frame(tmp_path):
    """A group model published to the edge inverts each frame as a group of one, through ONNX Runtime on counts."""
    from edgeray.stream.serving import LoadedModel

    torch.manual_seed(0)
    model = GroupNet(SMALL, unit_probe(32)).eval()
    for parameter in model.fuse.parameters():
        torch.nn.init.normal_(parameter, std=0.05)  # a fusion that does something
    save_model(tmp_path / "g", model, {"config": SMALL.to_dict()})
    loaded = LoadedModel(tmp_path / "g", "uint16")
    counts = np.random.default_rng(0).poisson(30.0, (6, 32, 32)).astype(np.uint16)
    loaded.validate(counts, 30.0)
    amplitude, phase = loaded.runtime(counts, 30.0)
    frames = torch.sqrt(torch.from_numpy(counts.astype(np.float32)) / 30.0)[:, None]
    with torch.no_grad():
        expected_amplitude, expected_phase = model(frames, torch.zeros(6, 1, 2))
    torch.testing.assert_close(amplitude, expected_amplitude, atol=1e-4, rtol=1e-4)
    assert float(torch.angle(torch.polar(torch.ones_like(phase), phase - expected_phase)).abs().max()) < 1e-3


def test_onnx_runs_the_group_model_as_torch_does_each_frame_once(tmp_path):
    """The exported pair of graphs (per-frame branch, fusion) gives torch's outputs for every group."""
    from edgeray.nn.export import OnnxGroupModel, export_group_onnx
    from edgeray.nn.finetune import predict_groups

    torch.manual_seed(0)
    model = GroupNet(SMALL, unit_probe(32)).eval()
    for parameter in model.fuse.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    runtime = OnnxGroupModel(export_group_onnx(model, tmp_path / "g.onnx", 32, 4), threads=1)
    positions = np.random.default_rng(0).uniform(0, 20, size=(40, 2))
    groups = group_indices(positions, 4, radius_px=8.0)
    inputs = torch.rand(40, 1, 32, 32) * 2
    onnx_amplitude, onnx_phase = predict_groups(runtime, inputs, groups[5:], positions, batch=16)
    torch_amplitude, torch_phase = predict_groups(model, inputs, groups[5:], positions, batch=16)
    torch.testing.assert_close(onnx_amplitude, torch_amplitude, atol=1e-4, rtol=1e-4)
    assert float(torch.angle(torch.polar(torch.ones_like(onnx_phase), onnx_phase - torch_phase)).abs().max()) < 1e-3
    with torch.no_grad():  # the one-pass path equals the model called group by group
        x = inputs[torch.from_numpy(groups[5:]).reshape(-1)].reshape(35, 4, 32, 32)
        direct, _ = model(x, torch.from_numpy(positions[groups[5:]] - positions[groups[5:, :1]]).float())
    torch.testing.assert_close(direct, torch_amplitude, atol=1e-5, rtol=1e-5)


def test_learning_that_does_not_help_hands_back_the_starting_model(tmp_path, small_scan):
    """A learning rate that wrecks the weights: every epoch scores worse on the held-out labels than the start, so
    the starting weights are what is written (the edge swaps only to a better model)."""
    torch.manual_seed(0)
    start = GroupNet(SMALL, unit_probe(32))
    save_model(tmp_path / "start", start, {"config": SMALL.to_dict()})
    scan = small_scan
    scan.probe = scan.ground_truth.probe
    options = FinetuneOptions(regime="labels", epochs=2, groups_per_step=8, learning_rate=50.0, group_radius_px=8.0,
                              lsqml_epochs=5)  # fmt: skip
    result = finetune_on_scan(scan, tmp_path / "start", tmp_path / "tuned", None, options)
    tuned, card = load_model(tmp_path / "tuned")
    assert card["finetuned"]["kept_epoch"] == 0 and card["finetuned"]["validation"] == "held-out label error"
    scores = card["finetuned"]["validation_by_epoch"]
    assert len(scores) == 3 and min(scores[1:]) > scores[0]
    start.set_probe(tuned.complex_probe())  # the probe is the scan's either way
    for name, value in start.state_dict().items():
        torch.testing.assert_close(tuned.state_dict()[name], value)
    assert result.holdout_after == pytest.approx(result.holdout_before)
