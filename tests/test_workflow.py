"""The edge-to-HPC flow on a real Parsl HighThroughputExecutor, on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

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
    assert registry.provenance("v0003")["source_scans"] == [Path(s).name for s in scans]
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


def _children(pid: int) -> list[int]:
    children = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _kill_busy_worker(pool_marker: str, killed: list, timeout: float = 120.0) -> None:
    """SIGKILL the worker process of the pool whose command line holds ``pool_marker`` once it has done a second of
    work inside its task (torch is loaded); record the time in ``killed``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if "process_worker_pool" not in command or pool_marker not in command:
                    continue
                for child in _children(int(proc.name)):
                    child_command = Path(f"/proc/{child}/cmdline").read_bytes()
                    if b"spawn_main" not in child_command or _cpu_seconds(child) <= 1.0:
                        continue
                    # the pool's multiprocessing manager is a spawned child too: the worker is the one running
                    # the reconstruction, so the one that has torch loaded
                    if "libtorch" in Path(f"/proc/{child}/maps").read_text():
                        killed.append(time.time())
                        os.kill(child, signal.SIGKILL)
                        return
            except (FileNotFoundError, ProcessLookupError, PermissionError):
                continue
        time.sleep(0.05)


def test_a_killed_worker_is_restarted_and_its_task_retried(tmp_path):
    from edgeray.workflow import FlowOptions, local_config, run_flow

    scan = write_cxi(tmp_path / "scan.cxi", simulate_ptycho(PtychoSimConfig(n_positions=300, seed=3, object="random")))
    parsl_dir = tmp_path / "parsl"
    killed: list[float] = []
    killer = threading.Thread(target=_kill_busy_worker, args=(f"{parsl_dir}/000/reconstruct", killed))
    killer.start()
    report = run_flow([scan], tmp_path / "registry", tmp_path / "work", local_config(parsl_dir, heartbeat_s=1),
                      FlowOptions(epochs=60, finetune_epochs=1))  # fmt: skip
    killer.join()
    assert len(killed) == 1, "no busy reconstruction worker was found to kill"
    tasks = {task["label"]: task for task in report["tasks"]}
    assert tasks["reconstruct 1"]["start"] > killed[0]  # the record is the retry's, begun after the kill
    assert Registry(tmp_path / "registry").versions() == ["v0001", "v0002"]  # and the flow went on to the end


def test_follow_reads_the_edge_run_folder_skipping_incomplete_and_older_scans(tmp_path):
    from edgeray.workflow import FollowRun

    def summary(name: str, complete: bool) -> None:
        raw = tmp_path / f"{name}.cxi"
        (tmp_path / f"{name}.json").write_text(json.dumps({"scan_id": name, "complete": complete,
                                                           "files": {"raw": str(raw)}}))  # fmt: skip

    summary("before", True)  # there before the flow started: not taken
    follow = FollowRun(tmp_path, n_scans=2, idle_timeout_s=20, poll_s=0.05)

    def edge_writes() -> None:
        time.sleep(0.3)
        summary("a", True)
        time.sleep(0.3)
        (tmp_path / "notes.json").write_text("[1, 2]")  # not a scan summary
        summary("cut", False)  # the scan ended with frames missing
        time.sleep(0.3)
        summary("b", True)
        summary("c", True)  # beyond n_scans

    writer = threading.Thread(target=edge_writes)
    writer.start()
    taken = [path.name for path in follow]
    writer.join()
    assert taken == ["a.cxi", "b.cxi"]
    assert sorted(follow.skipped) == ["cut.json: incomplete", "notes.json: not a scan summary"]
    started = time.monotonic()
    assert list(FollowRun(tmp_path, idle_timeout_s=0.5, poll_s=0.05)) == []  # nothing new: ends when idle
    assert time.monotonic() - started < 5


def test_flow_follows_a_live_edge_run_and_the_edge_swaps_to_its_models(tmp_path):
    from edgeray.stream import EdgeOptions, EdgeService, connect, replay

    registry = Registry(tmp_path / "registry")
    run_dir = tmp_path / "run"
    service = EdgeService(EdgeOptions(listen="tcp://127.0.0.1:0", out=run_dir, publish=None, preview=False, scans=3,
                                      registry=registry.root, registry_poll_s=0.05)).start()  # fmt: skip
    flow = subprocess.Popen(
        [sys.executable, "-m", "edgeray", "workflow", "run", "--follow", str(run_dir), "--n-scans", "2",
         "--registry", str(registry.root), "--out", str(tmp_path / "work"), "--epochs", "4", "--finetune-epochs",
         "1", "--idle-timeout", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    socket = connect(service.endpoint)
    try:
        for line in flow.stdout:  # scans that ended before the flow began following are not taken: wait for it
            if "following" in line:
                break
        for k in (1, 2):  # two scans at the beamline while the flow follows the run folder
            replay(simulate_ptycho(PtychoSimConfig(n_positions=150, seed=k, object="random")), socket, 0,
                   scan_id=f"scan{k}")  # fmt: skip
        output, _ = flow.communicate(timeout=300)
        assert flow.returncode == 0, output
        deadline = time.monotonic() + 30
        while registry.current() != "v0003" or len(service.swaps) < 2:  # the edge follows the registry
            assert time.monotonic() < deadline, f"edge at {service.model_version}, swaps {service.swaps}"
            time.sleep(0.05)
        replay(simulate_ptycho(PtychoSimConfig(n_positions=150, seed=9, object="random")), socket, 0, scan_id="next")
        assert service.wait(60)
        service.join(10)
    finally:
        socket.close()
        if flow.poll() is None:
            flow.kill()
        service.stop()
    report = json.loads((tmp_path / "work" / "timeline.json").read_text())
    assert report["scans"] == [str((run_dir / f"scan{k}.cxi").resolve()) for k in (1, 2)]
    assert registry.provenance("v0003")["source_scans"] == [Path(s).name for s in report["scans"]]
    last = service.summaries[-1]
    assert last["scan_id"] == "next" and last["frames_inferred"] == 150
    assert list(last["model_versions"]) == [service.model_version] and service.model_version.startswith("v0003@")


def test_cluster_configs_load_with_the_two_executors_the_flow_expects(tmp_path):
    import edgeray.workflow
    from edgeray.workflow import load_config

    for name in ("slurm.py", "pbs_polaris.py"):
        config = load_config(str(Path(edgeray.workflow.__file__).parent / "configs" / name), tmp_path)
        assert {executor.label for executor in config.executors} == {"reconstruct", "train"}
    with pytest.raises(FileNotFoundError, match=r"no-such\.py"):
        load_config("no-such.py", tmp_path)


def test_flow_learns_the_sample_as_the_edge_does_from_its_reconstruction(tmp_path):
    """``--labels sample``: the fine-tuning learns from frames simulated from the flow's reconstruction, one frame at
    a time, and keeps the round that scores best on a region it held out."""
    scan = write_cxi(tmp_path / "scan1.cxi", simulate_ptycho(PtychoSimConfig(n_positions=200, step_px=5, seed=3)))
    out = tmp_path / "work"
    status = main(["workflow", "run", str(scan), "--registry", str(tmp_path / "registry"), "--out", str(out),
                   "--epochs", "8", "--finetune-epochs", "2", "--labels", "sample"])  # fmt: skip
    assert status == 0
    tasks = {task["label"] for task in json.loads((out / "timeline.json").read_text())["tasks"]}
    assert tasks == {"reconstruct 1", "finetune 1", "deploy 1"}  # labels come from the product itself
    registry = Registry(tmp_path / "registry")
    _, card = load_model(registry.path(registry.current()))
    learned = card["finetuned"]
    assert learned["regime"] == "twin" and learned["validation"] == "held-out label error"
    assert learned["options"]["group_size"] == 1 and card["config"]["kind"] == "edge"  # the edge's own kind
    scores = learned["validation_by_epoch"]
    assert len(scores) == 3 and scores[learned["kept_epoch"]] == min(scores)
