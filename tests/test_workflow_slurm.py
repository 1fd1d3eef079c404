"""The edge-to-HPC flow through a real batch scheduler: a one-node Slurm on 127.0.0.1 (tests/slurm_cluster.py),
Parsl's SlurmProvider submitting the flow's workers as jobs, one of them cancelled under its task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from edgeray.io import read_product, write_cxi
from edgeray.nn.checkpoint import load_model
from edgeray.sim import PtychoSimConfig, simulate_ptycho
from slurm_cluster import SlurmCluster, cannot_start

CONFIG = """
from edgeray.workflow.flow import slurm_config

def make_config(run_dir):
    return slurm_config(run_dir, partition="debug", worker_init={worker_init!r}, walltime="00:20:00",
                        reconstruct_workers=1, reconstruct_blocks=1, exclusive=False, address="127.0.0.1", poll_s=3)
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    reason = cannot_start()
    if reason is not None:
        if os.environ.get("EDGERAY_REQUIRE_SLURM"):  # CI: the scheduler tests must run, not vanish
            pytest.fail(f"Slurm cannot start here: {reason}")
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def scans(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scans")
    made = [simulate_ptycho(PtychoSimConfig(n_positions=150, seed=k, object="random")) for k in (1, 2)]
    return [write_cxi(folder / f"scan{k}.cxi", scan) for k, scan in zip((1, 2), made, strict=True)]


def _flow(scans: list[Path], out: Path, config: str, env: dict | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "edgeray", "workflow", "run", *map(str, scans), "--registry",
               str(out / "registry"), "--out", str(out / "work"), "--epochs", "20", "--finetune-epochs", "1",
               "--config", config]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _reconstruct_job_in_a_task(cluster: SlurmCluster, parsl_dir: Path, timeout_s: float = 180.0) -> str:
    """The Slurm job of the reconstruct executor, once one of its workers has received a task (its log says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        logs = parsl_dir.glob("*/reconstruct/block-*/*/worker_*.log")
        if any("Received executor task" in log.read_text(errors="replace") for log in logs):
            jobs = [job for job in cluster.jobs() if "reconstruct" in job["name"] and job["state"] == "RUNNING"]
            if jobs:
                return jobs[0]["id"]
        time.sleep(0.2)
    raise TimeoutError(f"no reconstruct worker received a task; jobs: {cluster.jobs()}")


def test_the_flow_runs_through_slurm_a_cancelled_job_is_retried_and_the_products_equal_the_local_run(
    slurm, scans, tmp_path
):
    config = tmp_path / "slurm_config.py"
    config.write_text(CONFIG.format(worker_init=f"export PATH={Path(sys.executable).parent}:$PATH"))
    flow = _flow(scans, tmp_path / "slurm", str(config), slurm.env)
    try:
        job = _reconstruct_job_in_a_task(slurm, tmp_path / "slurm" / "work" / "parsl")
        time.sleep(0.5)  # inside the task
        assert slurm.run("scancel", job).returncode == 0
        cancelled_at = time.monotonic()
        output, _ = flow.communicate(timeout=900)
    finally:
        if flow.poll() is None:
            flow.kill()
    assert flow.returncode == 0, output[-3000:]
    assert time.monotonic() - cancelled_at < 600
    report = json.loads((tmp_path / "slurm" / "work" / "timeline.json").read_text())
    stages = ("reconstruct", "labels", "finetune", "deploy")
    assert {task["label"] for task in report["tasks"]} == {f"{name} {k}" for name in stages for k in (1, 2)}
    local = _flow(scans, tmp_path / "local", "local")
    local_output, _ = local.communicate(timeout=900)
    assert local.returncode == 0, local_output[-3000:]
    for k in (1, 2):  # the reconstructions equal; the fine-tuned networks load and agree
        ours = read_product(tmp_path / "slurm" / "work" / f"scan{k}_product.h5")
        theirs = read_product(tmp_path / "local" / "work" / f"scan{k}_product.h5")
        np.testing.assert_allclose(ours.object, theirs.object, rtol=0, atol=1e-5 * np.abs(theirs.object).max())
        model, _ = load_model(tmp_path / "slurm" / "work" / f"model{k}")
        reference, _ = load_model(tmp_path / "local" / "work" / f"model{k}")
        for a, b in zip(model.parameters(), reference.parameters(), strict=True):
            np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-3, atol=1e-5)


def test_the_shipped_cluster_configs_load_and_validate_in_parsl(tmp_path):
    """The Slurm and PBS (Polaris) examples load through the flow's loader into Parsl configs with the executors
    the flow needs and their schedulers' providers."""
    from parsl.providers import PBSProProvider, SlurmProvider

    from edgeray.workflow.flow import RECONSTRUCT, TRAIN, load_config

    folder = Path(__file__).parents[1] / "src" / "edgeray" / "workflow" / "configs"
    for name, provider in (("slurm.py", SlurmProvider), ("pbs_polaris.py", PBSProProvider)):
        config = load_config(str(folder / name), tmp_path / name)
        labels = {executor.label: executor for executor in config.executors}
        assert set(labels) == {RECONSTRUCT, TRAIN}, name
        assert all(isinstance(executor.provider, provider) for executor in config.executors), name
        assert config.retries >= 1
        script = labels[RECONSTRUCT].provider.launcher("process_worker_pool.py", 1, 1)
        assert "process_worker_pool.py" in script
