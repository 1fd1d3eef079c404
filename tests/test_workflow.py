"""The edge-to-HPC flow on a real Parsl HighThroughputExecutor, on this machine."""

from __future__ import annotations

import json

import numpy as np

from edgeray.cli import main
from edgeray.io import write_cxi
from edgeray.nn.checkpoint import load_model
from edgeray.nn.registry import Registry
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def test_flow_reconstructs_fine_tunes_and_deploys_with_overlap(tmp_path):
    scans = [
        write_cxi(tmp_path / f"scan{k}.cxi", simulate_ptycho(PtychoSimConfig(n_positions=150, seed=k, object="random")))
        for k in (1, 2)
    ]
    out = tmp_path / "work"
    status = main(["workflow", "run", *map(str, scans), "--registry", str(tmp_path / "registry"), "--out", str(out),
                   "--epochs", "4", "--finetune-epochs", "1"])  # fmt: skip
    assert status == 0
    report = json.loads((out / "timeline.json").read_text())
    tasks = {task["label"]: task for task in report["tasks"]}
    assert set(tasks) == {f"{name} {k}" for name in ("reconstruct", "labels", "finetune", "deploy") for k in (1, 2)}
    for k in (1, 2):  # every dependency respected
        assert tasks[f"labels {k}"]["start"] >= tasks[f"reconstruct {k}"]["end"]
        assert tasks[f"finetune {k}"]["start"] >= tasks[f"labels {k}"]["end"]
        assert tasks[f"deploy {k}"]["start"] >= tasks[f"finetune {k}"]["end"]
    assert tasks["finetune 2"]["start"] >= tasks["finetune 1"]["end"]  # warm start from the previous model
    assert tasks["reconstruct 2"]["start"] < tasks["finetune 1"]["end"]  # overlap: scan 2 does not wait for it
    registry = Registry(tmp_path / "registry")
    assert registry.versions() == ["v0001", "v0002", "v0003"] and registry.current() == "v0003"
    assert registry.provenance("v0003")["source_scans"] == [str(s) for s in scans]
    model, _ = load_model(registry.path("v0003"))  # a loadable network
    assert all(np.isfinite(p.detach().numpy()).all() for p in model.parameters())
    assert (out / "timeline.png").read_bytes()[:4] == b"\x89PNG"


def test_finetune_with_bounded_replay_trains_on_the_newest_set_plus_a_sample(tmp_path):
    import h5py

    from edgeray.nn.checkpoint import SHIPPED
    from edgeray.nn.trainset import samples_from_scan, write_trainset
    from edgeray.workflow import tasks

    sets = []
    for k, n in enumerate((120, 80, 60)):
        scan = simulate_ptycho(PtychoSimConfig(n_positions=n, seed=k, object="random"))
        sets.append(str(write_trainset(tmp_path / f"set{k}.h5", [samples_from_scan(scan)], {"source": "test"})))
    record = tasks.finetune(sets, str(SHIPPED), str(tmp_path / "model"), epochs=1, replay=50)
    with h5py.File(tmp_path / "model.trainset.h5") as h5:
        assert h5["frames"].shape[0] == 60 + 50  # the newest set whole, 30 + 20 drawn from the earlier two
    assert record["task"] == "finetune" and np.isfinite(record["val_loss"])
    load_model(tmp_path / "model")
