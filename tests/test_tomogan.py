"""TomoGAN (generator, discriminator, perceptual loss, training, CLI) and streaming tomography (orders, the
incremental update, the edge's tomography mode over real ZeroMQ sockets)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch

from edgeray.cli import main
from edgeray.device import resolve_device
from edgeray.metrics import ssim
from edgeray.sim import TomoSimConfig, simulate_tomo
from edgeray.tomo.denoise import (
    SHIPPED_DENOISER,
    SHIPPED_STREAM_DENOISER,
    DenoiserOptions,
    denoise_volume,
    load_denoiser,
    read_pairs,
    simulated_pairs,
    train_denoiser,
    write_pairs,
)
from edgeray.tomo.fbp import backproject, fbp
from edgeray.tomo.streaming import (
    StreamingSlices,
    acquisition_order,
    bit_reversed_order,
    golden_angles,
    interleaved_angles,
)
from edgeray.tomo.tomogan import FeatureNet, PatchDiscriminator, TomoGANConfig, UNet, freeze, perceptual_loss


# -- the networks -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth, in_slices, shape", [(2, 1, (32, 32)), (3, 3, (40, 52))])
def test_unet_shapes_and_padding(depth, in_slices, shape):
    model = UNet(TomoGANConfig(depth=depth, width=4, in_slices=in_slices))
    out = model(torch.rand(2, in_slices, *shape))
    assert out.shape == (2, 1, *shape)  # sizes not a multiple of 2**depth are padded and cropped back
    assert PatchDiscriminator(4)(out).shape == (2, 1, shape[0] // 8, shape[1] // 8)


def test_bad_configs():
    with pytest.raises(ValueError, match="odd"):
        TomoGANConfig(in_slices=2)
    with pytest.raises(ValueError, match="depth"):
        TomoGANConfig(depth=0)


def test_perceptual_loss_back_propagates_into_the_generator_through_a_frozen_feature_net():
    torch.manual_seed(0)
    model, features = UNet(TomoGANConfig(depth=2, width=4)), freeze(FeatureNet(4))
    inputs, target = torch.rand(2, 1, 32, 32), torch.rand(2, 1, 32, 32)
    perceptual_loss(features, model(inputs), target).backward()
    gradients = [p.grad for p in model.parameters()]
    assert all(g is not None for g in gradients)
    assert sum(float(g.abs().sum()) for g in gradients) > 0  # the term reaches the generator's weights
    assert all(p.grad is None for p in features.parameters())  # and leaves the feature network as it was


def test_a_tiny_unet_overfits_a_tiny_pair_set(tmp_path):
    rng = np.random.default_rng(0)
    clean = np.zeros((4, 32, 32), np.float32)
    clean[:, 8:24, 8:24] = 1.0  # squares
    clean[1, 12:20, 12:20] = 0.3
    noisy = clean + 0.3 * rng.standard_normal(clean.shape).astype(np.float32)
    pairs = write_pairs(tmp_path / "pairs.h5", {"noisy": noisy, "clean": clean, "attrs": {"source": "test"}})
    options = DenoiserOptions(steps=600, batch_size=4, patch=32, holdout=0.0, adversarial_weight=0.0,
                              perceptual_weight=0.0, learning_rate=3e-3)  # fmt: skip
    card = train_denoiser(pairs, tmp_path / "model", TomoGANConfig(depth=2, width=8), options)
    model, loaded_card = load_denoiser(tmp_path / "model")
    assert loaded_card["config"]["family"] == "tomogan" and card["parameters"] == loaded_card["parameters"]
    out = denoise_volume(noisy, model)
    error_in = np.mean((noisy - clean) ** 2)
    error_out = np.mean((out - clean) ** 2)
    assert error_out < 0.2 * error_in, (error_in, error_out)
    assert card["history"]["mse"][-1] < card["history"]["mse"][0]


def test_training_with_all_loss_terms_runs_and_records(tmp_path):
    pairs = simulated_pairs(n_volumes=1, size=32, slices=4, angles=60, low_photons=100)
    path = write_pairs(tmp_path / "pairs.h5", pairs)
    assert read_pairs(path)["noisy"].shape == (4, 32, 32)
    card = train_denoiser(path, tmp_path / "model", TomoGANConfig(depth=2, width=4, in_slices=3),
                          DenoiserOptions(steps=5, patch=16, batch_size=2))  # fmt: skip
    assert card["training"]["features"] == "own" and np.isfinite(card["history"]["loss"]).all()
    assert (tmp_path / "model" / "MODEL_CARD.md").read_text().startswith("# TomoGAN denoiser")
    import hashlib  # the card names its data by file name and checksum, not by this machine's folders

    assert card["training"]["pairs"] == "pairs.h5" and str(tmp_path) not in json.dumps(card)
    assert card["training"]["pairs_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_bad_pairs_and_models_are_named(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as h5:
        h5["noisy"] = np.zeros((2, 8, 8), np.float32)
    with pytest.raises(ValueError, match="no /clean"):
        read_pairs(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="not a denoiser directory"):
        load_denoiser(tmp_path)
    from edgeray.nn.checkpoint import SHIPPED

    with pytest.raises(ValueError, match="not a TomoGAN model"):  # the ptychography surrogate, say
        load_denoiser(SHIPPED)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_asking_for_a_gpu_without_one_is_a_clear_error_before_any_work(tmp_path):
    status = main(["tomo", "train-denoiser", "--simulate", "2", "--device", "cuda", "-o", str(tmp_path / "m")])
    assert status == 2 and not any(tmp_path.iterdir())  # no pairs simulated, no model directory
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")


@pytest.mark.parametrize("shipped", [SHIPPED_DENOISER, SHIPPED_STREAM_DENOISER])
def test_the_shipped_denoisers_improve_held_out_simulated_slices(shipped):
    model, _ = load_denoiser(shipped)
    if shipped == SHIPPED_DENOISER:  # low dose, new phantoms (seeds beyond the training ones)
        pairs = simulated_pairs(n_volumes=2, size=128, slices=4, angles=180, low_photons=60, seed=500)
    else:
        from edgeray.tomo.denoise import stream_pairs

        pairs = stream_pairs(n_volumes=2, size=128, slices=4, fractions=(0.25,), seed=500)
    out = denoise_volume(pairs["noisy"], model)
    before = np.mean([ssim(a, b) for a, b in zip(pairs["noisy"], pairs["truth"], strict=True)])
    after = np.mean([ssim(a, b) for a, b in zip(out, pairs["truth"], strict=True)])
    assert after > before + 0.2, (before, after)


def test_cli_denoise_writes_slices_picture_and_summary(tmp_path):
    from edgeray.io import read_reconstruction, write_reconstruction

    pairs = simulated_pairs(n_volumes=1, size=64, slices=3, angles=90, low_photons=60)
    write_reconstruction(tmp_path / "in.h5", pairs["noisy"] * 1000.0, {"algorithm": "gridrec"})  # any scale
    # 60 photons: the low-dose model's own regime (the general default reads dense parts 22 % low here)
    assert (
        main(["tomo", "denoise", str(tmp_path / "in.h5"), "-o", str(tmp_path / "out.h5"), "--model", "low-dose"]) == 0
    )
    volume, params = read_reconstruction(tmp_path / "out.h5")
    assert volume.shape == (3, 64, 64) and params["denoised_by"] == "low-dose"
    inside = pairs["truth"] > 0.5 * pairs["truth"].max()  # the phantom's dense parts: back on the input's scale
    assert abs(volume[inside].mean() / (1000.0 * pairs["truth"][inside].mean()) - 1) < 0.2
    assert json.loads((tmp_path / "out.json").read_text())["slices"] == 3
    assert (tmp_path / "out.png").read_bytes()[:4] == b"\x89PNG"


# -- streaming tomography ------------------------------------------------------------------------------------------
def test_orders_are_permutations_that_interleave():
    assert list(bit_reversed_order(8)) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(bit_reversed_order(12)) == list(range(12))
    golden = golden_angles(20)
    assert np.all((golden >= 0) & (golden < 180)) and len(np.unique(np.round(golden, 6))) == 20
    theta = np.arange(180) * 1.0
    for order in ("golden", "bit-reversed", "sequential"):
        sequence = acquisition_order(theta, order)
        assert sorted(sequence) == list(range(180))
    first = np.sort(theta[acquisition_order(theta, "golden")][:10])  # ten first angles spread over the half turn
    assert np.diff(np.r_[first, first[0] + 180]).max() < 36
    with pytest.raises(ValueError, match="order"):
        interleaved_angles(4, "random")


def test_incremental_updates_equal_a_full_reconstruction_of_the_buffer():
    rng = np.random.default_rng(1)
    rows, columns, capacity = 2, 48, 30
    stream = StreamingSlices(rows, columns, capacity, update_every=7)
    theta = interleaved_angles(100, "golden")
    for index, angle in enumerate(theta):  # more than three buffers' worth: many replacements
        stream.add(rng.random((rows, columns), dtype=np.float32), angle, index)
    stream.update()
    reference = stream.full_reconstruction()
    assert stream.n_in_buffer == capacity and sum(u["replaced"] for u in stream.updates) == 100 - capacity
    np.testing.assert_allclose(stream.slices, reference, rtol=0, atol=1e-6 * np.abs(reference).max())
    # and that reference is FBP of the buffer's projections with weight pi / n each (float64 by hand)
    held = stream.frame_index >= 0
    filtered = torch.from_numpy(np.swapaxes(stream.filtered[held], 0, 1).astype(np.float64))
    by_hand = backproject(filtered, stream.theta_rad[held], stream.center, columns).numpy() * np.pi / capacity
    np.testing.assert_allclose(reference, by_hand, rtol=0, atol=1e-6 * np.abs(by_hand).max())


def test_stream_of_a_full_half_turn_equals_fbp_and_handles_out_of_order_and_duplicates():
    scan = simulate_tomo(TomoSimConfig(size=48, slices=2, angles=60, photons=1e5))
    from edgeray.tomo.preprocess import minus_log, normalize

    line_integrals = minus_log(normalize(scan.projections, scan.flats, scan.darks))
    stream = StreamingSlices(2, 48, capacity=60, update_every=5)
    order = acquisition_order(scan.theta_deg, "bit-reversed")
    for which in order:
        stream.add(line_integrals[which], scan.theta_deg[which], int(which))
        stream.add(line_integrals[which], scan.theta_deg[which], int(which))  # a duplicate: ignored
    stream.update()
    assert stream.duplicates == 60 and stream.received == 60
    expected = fbp(np.swapaxes(line_integrals, 0, 1), np.radians(scan.theta_deg))  # sorted order, same set
    np.testing.assert_allclose(stream.slices, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_edge_tomo_mode_over_zeromq_writes_every_frame_and_updates_the_slices(tmp_path):
    from edgeray.io import read_dxchange
    from edgeray.stream import connect
    from edgeray.stream.tomo import TomoEdgeOptions, TomoEdgeService, replay_tomo

    scan = simulate_tomo(TomoSimConfig(size=64, slices=4, angles=90, photons=1e4, n_flats=3, n_darks=2))
    service = TomoEdgeService(TomoEdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path, update_every=10,
                                              scans=1)).start()  # fmt: skip
    socket = connect(service.endpoint)
    report = replay_tomo(scan, socket, rate_hz=0, order="golden", scan_id="tomo1")
    assert service.wait(60)
    service.join(10)
    socket.close()
    summary = json.loads((tmp_path / "tomo1.json").read_text())
    assert report.frames_sent == summary["frames_received"] == summary["frames_written"] == 90 + 3 + 2
    assert summary["complete"] and summary["projections_in_buffer"] == 90 and summary["enhanced"]
    run = read_dxchange(tmp_path / "tomo1.h5")
    assert run.projections.shape == (90, 4, 64) and run.flats.shape[0] == 3 and run.darks.shape[0] == 2
    np.testing.assert_array_equal(np.sort(run.theta_deg), np.sort(scan.theta_deg))
    with h5py.File(tmp_path / "tomo1_slices.h5") as h5:
        raw, enhanced = h5["exchange/data"][()], h5["exchange/data_enhanced"][()]
    truth = scan.ground_truth
    assert ssim(raw[2], truth[2]) > 0.3  # the full half turn, reconstructed from the stream
    assert enhanced.shape == raw.shape and np.isfinite(enhanced).all()  # (its quality: the shipped-model test)
    assert np.corrcoef(enhanced[2].ravel(), truth[2].ravel())[0, 1] > 0.8


def test_cli_tomo_edge_and_replay_of_a_data_exchange_file(tmp_path):
    import subprocess
    import sys

    from edgeray.io import write_dxchange

    scan_file = write_dxchange(tmp_path / "ct.h5", simulate_tomo(TomoSimConfig(size=64, slices=2, angles=60)))
    edge = subprocess.Popen([sys.executable, "-m", "edgeray", "edge", "--mode", "tomo", "--listen",
                             "tcp://127.0.0.1:0", "--out", str(tmp_path / "run"), "--http", "off", "--scans", "1",
                             "--enhancer", "off"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        endpoint = json.loads(edge.stdout.readline())["ready"]["listen"]
        sent = subprocess.run([sys.executable, "-m", "edgeray", "detector", "replay", str(scan_file), "--endpoint",
                               endpoint, "--order", "bit-reversed", "--rate", "0", "--scan-id", "ct"],
                              capture_output=True, text=True, check=True)  # fmt: skip
        assert json.loads(sent.stdout.strip().splitlines()[-1])["frames_sent"] == 60 + 10 + 10
        assert edge.wait(60) == 0
    finally:
        if edge.poll() is None:
            edge.kill()
    summary = json.loads((tmp_path / "run" / "ct.json").read_text())
    assert summary["frames_written"] == 80 and summary["projections_in_buffer"] == 60 and not summary["enhanced"]
