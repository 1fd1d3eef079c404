"""Continual learning at the edge: the learner swaps only to a model that fits held-out frames better, and the edge
that learns loses no frame."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeray.io import read_product
from edgeray.nn.checkpoint import load_model
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from edgeray.stream import EdgeOptions, EdgeService, connect, replay
from edgeray.stream.learn import LearnOptions, LiveLearner


@pytest.fixture(scope="module")
def scan():
    return simulate_ptycho(PtychoSimConfig(n_positions=600, step_px=5, seed=12))


def test_the_learner_swaps_only_to_a_model_that_fits_held_out_frames_better(scan):
    model, _ = load_model(None, "cpu")
    offered = []

    def swap(candidate, record):
        offered.append(record)
        return len(offered) > 1  # the first better model is refused (as a failed validation would): serving stays

    options = LearnOptions(start_frames=100, round_steps=8, holdout_every=5, learning_rate=1e-3)
    learner = LiveLearner(model, (64, 64), "uint16", options, swap)
    assert not learner.step()  # too few frames yet
    learner.add(scan.frames, scan.positions_m)
    torch.manual_seed(0)
    for _ in range(64):
        assert learner.step()
    rounds = learner.rounds
    assert len(rounds) == 8 and all(r["holdout_frames"] == 120 for r in rounds)
    for record in rounds:
        better = record["candidate"]["deviance"] < (1 - options.min_gain) * record["serving"]["deviance"]
        assert (record in offered) == better  # offered exactly when better on frames it never trained on
        assert not record["swapped"] or better
    assert offered and not offered[0]["swapped"]  # refused: the serving model did not change
    assert rounds[0]["serving"]["deviance"] == pytest.approx(offered[0]["serving"]["deviance"], rel=1e-6)
    assert learner.swaps >= 1 and rounds[-1]["serving"]["deviance"] < rounds[0]["serving"]["deviance"]
    held = np.arange(len(scan.frames)) % 5 == 4  # the held-out frames never trained: each is scored
    assert held.sum() == 120


def test_labels_from_a_reconstruction_are_used_and_scored(scan):
    """With labels (the live refinement's object at the frames' positions) the learner scores label error too."""
    model, _ = load_model(None, "cpu")
    truth = scan.ground_truth
    from edgeray.nn.trainset import object_patches, relative_to_transmission

    index = {tuple(np.round(p, 15)): k for k, p in enumerate(scan.positions_m)}

    def labels(positions_m):
        chosen = [index[tuple(np.round(p, 15))] for p in positions_m]
        patches = object_patches(truth.object, truth.positions_px[chosen], (64, 64))
        return torch.from_numpy(relative_to_transmission(patches, truth.probe))

    options = LearnOptions(start_frames=100, round_steps=8, holdout_every=5)
    learner = LiveLearner(model, (64, 64), "uint16", options, lambda candidate, record: True, labels)
    learner.add(scan.frames, scan.positions_m)
    for _ in range(16):
        learner.step()
    assert all(r["labels"] and "label_error" in r["candidate"] for r in learner.rounds)
    for record in learner.rounds:  # with labels, a swap needs a lower label error and a deviance not far above
        candidate, serving = record["candidate"], record["serving"]
        better = (candidate["label_error"] < (1 - options.min_gain) * serving["label_error"]
                  and candidate["deviance"] <= (1 + options.deviance_slack) * serving["deviance"])  # fmt: skip
        assert record["swapped"] == better
    assert learner.swaps >= 1


def test_an_edge_that_learns_loses_no_frame_and_swaps_to_better_models(tmp_path, scan):
    learn = LearnOptions(start_frames=200, round_steps=8, tail_s=4.0, learning_rate=1e-3)
    options = EdgeOptions(listen="tcp://127.0.0.1:0", out=tmp_path, publish=None, preview=False, scans=1, learn=learn)
    service = EdgeService(options).start()
    socket = connect(service.endpoint)
    replay(scan, socket, 2000, scan_id="learn")
    assert service.wait(60)
    service.join(10)
    socket.close()
    summary = json.loads((tmp_path / "learn.json").read_text())
    for key in ("frames_received", "frames_written", "frames_inferred"):
        assert summary[key] == scan.n_frames, key
    learning = summary["learning"]
    assert learning["steps"] > 0 and learning["rounds"] > 0
    swaps = [s for s in summary["model_swaps"] if s.get("source") == "learned at the edge"]
    assert len(swaps) == learning["swaps"] >= 1
    for record in learning["history"]:  # no labels here (no refinement): deviance decides
        assert not record["labels"]
        if record["swapped"]:
            assert record["candidate"]["deviance"] < record["serving"]["deviance"]
    learned = sorted((tmp_path / "learned").iterdir())
    assert len(learned) == len(swaps) and summary["model_version"] == swaps[-1]["to"]
    card = json.loads((learned[-1] / "model.json").read_text())
    assert card["learned_at_edge"]["scan_id"] == "learn"
    product = read_product(summary["files"]["product"])  # the mosaic made again with the learned model
    assert product.attrs["model"] == swaps[-1]["to"] and np.isfinite(product.object).all()
    assert Path(summary["files"]["product"]).exists()
