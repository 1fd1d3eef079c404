"""The edge-to-HPC flow on Parsl: reconstruct -> labels -> fine-tune -> deploy, per scan, stages overlapped.

For scans ``1..K`` (as they finish at the beamline): ``reconstruct(k)`` and ``labels(k)`` depend only on scan
``k``; ``finetune(k)`` takes every label set so far and starts from ``finetune(k-1)``'s model (or the registry's
current one); ``deploy(k)`` publishes it to the registry the edge follows. Parsl runs a task as soon as its inputs
exist, so scan ``k+1`` is reconstructed while the network is fine-tuned on scan ``k``. ``overlap=False`` runs the
same tasks one after another (the comparison). The same code runs on this machine (:func:`local_config`) or on a
cluster (``configs/slurm.py``, ``configs/pbs_polaris.py``): only the Parsl config changes.

Parsl moves task arguments between its own processes with pickle; that stays inside one user's processes (and,
on a cluster, one user's jobs), never across the edge's network boundary, where only JSON and raw bytes travel.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from edgeray.workflow import tasks

log = logging.getLogger(__name__)


RECONSTRUCT, TRAIN = "reconstruct", "train"
# labels go with the training: a short task on its input, never queued behind the next reconstruction
STAGE_EXECUTOR = {"reconstruct": RECONSTRUCT, "make_labels": TRAIN, "finetune": TRAIN, "finetune_physics": TRAIN,
                  "finetune_sample": TRAIN, "deploy": TRAIN}  # fmt: skip
LABELS = ("lsqml", "physics", "sample")


def local_config(run_dir: str | Path, retries: int = 2, background: bool = True, heartbeat_s: float = 2.0):
    """Parsl config for this machine: two HighThroughputExecutors of one worker each, ``reconstruct`` (iterative
    reconstruction: the CPU nodes of an HPC site) and ``train`` (labels, fine-tuning and deployment: its GPU
    node); failed tasks are retried ``retries`` times, and a worker that dies (killed, out of memory) is found
    within ``heartbeat_s`` seconds, restarted, and its task retried.

    ``background``: the workers run under the idle scheduling class (``chrt --idle``; ``nice -n 19`` where chrt is
    missing), so that an edge service on the same machine gets the cores first. That does not keep the edge's
    latency when the flow and the edge share 2 cores (benchmarks/workflow.py: nothing lost, p99 in the hundreds of
    ms while both workers are busy): give the edge its own machine or cores, as at a beamline.
    """
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
    from parsl.providers import LocalProvider

    prefix = ""
    if background:
        prefix = "chrt --idle 0 " if shutil.which("chrt") else "nice -n 19 "
    executors = [
        HighThroughputExecutor(
            label=label,
            max_workers_per_node=1,
            cores_per_worker=1,
            address="127.0.0.1",
            launch_cmd=prefix + DEFAULT_LAUNCH_CMD,
            heartbeat_period=max(1, round(heartbeat_s)),
            heartbeat_threshold=max(10, round(5 * heartbeat_s)),
            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
        )
        for label in (RECONSTRUCT, TRAIN)
    ]
    return Config(executors=executors, retries=retries, run_dir=str(run_dir), strategy="none")


def slurm_config(
    run_dir: str | Path,
    *,
    partition: str | None = None,
    account: str | None = None,
    worker_init: str = "",
    walltime: str = "01:00:00",
    reconstruct_workers: int = 8,
    reconstruct_blocks: int = 4,
    train_partition: str | None = None,
    exclusive: bool = True,
    address: str | None = None,
    retries: int = 2,
    heartbeat_s: float = 2.0,
    poll_s: int = 60,
):
    """Parsl config for a Slurm cluster: ``reconstruct`` (up to ``reconstruct_blocks`` nodes of
    ``reconstruct_workers`` workers) and ``train`` (one node, one worker; ``train_partition``, e.g. a GPU one), each
    node a Slurm job (``sbatch``, workers started with ``srun``). A job that ends under a task (cancelled,
    pre-empted, out of time) is found within ``5 * heartbeat_s`` seconds; its task is retried ``retries`` times on
    a new job. ``exclusive=False`` lets the two executors' jobs share a node. ``address``: where workers reach this
    process (default: Parsl's guess of this host's address). ``poll_s``: seconds between the scheduler's job status
    queries (how soon a job that ended is replaced)."""
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SrunLauncher
    from parsl.providers import SlurmProvider

    class PolledSlurmProvider(SlurmProvider):
        status_polling_interval = poll_s  # Parsl's SlurmProvider fixes it at 60 s

    def executor(label: str, workers: int, blocks: int, queue: str | None) -> HighThroughputExecutor:
        provider = PolledSlurmProvider(partition=queue, account=account, nodes_per_block=1, init_blocks=1, min_blocks=0,
                                 max_blocks=blocks, walltime=walltime, worker_init=worker_init, exclusive=exclusive,
                                 launcher=SrunLauncher(), cmd_timeout=30)  # fmt: skip
        extra = {"address": address} if address else {}
        return HighThroughputExecutor(label=label, max_workers_per_node=workers, provider=provider,
                                      heartbeat_period=max(1, round(heartbeat_s)),
                                      heartbeat_threshold=max(10, round(5 * heartbeat_s)), **extra)  # fmt: skip

    executors = [executor(RECONSTRUCT, reconstruct_workers, reconstruct_blocks, partition),
                 executor(TRAIN, 1, 1, train_partition or partition)]  # fmt: skip
    return Config(executors=executors, retries=retries, run_dir=str(run_dir), strategy="htex_auto_scale",
                  strategy_period=2, max_idletime=30)  # fmt: skip


def load_config(spec: str, run_dir: str | Path):
    """``local`` or a Python file defining ``config`` (a ``parsl.config.Config``) or ``make_config(run_dir)``."""
    if spec == "local":
        return local_config(run_dir)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such Parsl config file (or say 'local')")
    module_spec = importlib.util.spec_from_file_location("edgeray_parsl_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if hasattr(module, "make_config"):
        return module.make_config(run_dir)
    if hasattr(module, "config"):
        return module.config
    raise ValueError(f"{spec}: defines neither `config` nor `make_config(run_dir)`")


@dataclass
class FlowOptions:
    """Flow settings: LSQML ``epochs`` per scan, fine-tuning ``finetune_epochs``, ``overlap`` the stages,
    ``replay``: frames from earlier scans mixed into each fine-tuning (None: all of them, so each run takes longer
    than the last), and ``labels``: what the network learns from, ``lsqml`` (the reconstruction's patches),
    ``physics`` (the scan's own frames with the reconstruction's probe, no labels: edge models only) or ``sample``
    (frames simulated from the reconstruction, as ``nn finetune``'s default:
    :func:`edgeray.workflow.tasks.finetune_sample`; edge models only)."""

    epochs: int = 30
    finetune_epochs: int = 5
    overlap: bool = True
    replay: int | None = None
    labels: str = "lsqml"


class FollowRun:
    """The scans an edge service finishes in its ``--out`` folder, as they finish (an iterable of raw-file paths).

    The edge writes ``<scan>.json`` once a scan has ended and its frames are all in ``<scan>.cxi``; scans whose
    summary was there before this object was made, and incomplete scans (frames missing), are skipped.
    Iteration ends after ``n_scans`` scans, or once no new scan has finished for ``idle_timeout_s`` seconds.
    """

    def __init__(self, folder: str | Path, n_scans: int | None = None, idle_timeout_s: float = 600.0,
                 poll_s: float = 0.5):  # fmt: skip
        self.folder = Path(folder)
        self.n_scans, self.idle_timeout_s, self.poll_s = n_scans, idle_timeout_s, poll_s
        self.seen = set(self.folder.glob("*.json")) if self.folder.exists() else set()
        self.skipped: list[str] = []

    def _finished(self, summary_path: Path) -> Path | None:
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None  # being written: look again next time
        self.seen.add(summary_path)
        raw = (summary.get("files") or {}).get("raw") if isinstance(summary, dict) else None
        if raw is None or not summary.get("complete"):
            self.skipped.append(f"{summary_path.name}: " + ("not a scan summary" if raw is None else "incomplete"))
            return None
        return Path(raw)

    def __iter__(self):
        yielded, last_news = 0, time.monotonic()
        while self.n_scans is None or yielded < self.n_scans:
            new = sorted(set(self.folder.glob("*.json")) - self.seen, key=lambda path: path.stat().st_mtime)
            for summary_path in new:
                raw = self._finished(summary_path)
                if raw is not None:
                    yielded, last_news = yielded + 1, time.monotonic()
                    yield raw
                    if self.n_scans is not None and yielded >= self.n_scans:
                        return
            if time.monotonic() - last_news > self.idle_timeout_s:
                return
            time.sleep(self.poll_s)


def run_flow(scans: Iterable[str | Path], registry: str | Path, work_dir: str | Path, config,
             options: FlowOptions) -> dict:  # fmt: skip
    """Run the flow over ``scans`` (CXI files, or a :class:`FollowRun` that yields them as they finish) with Parsl
    ``config``; returns the timeline report (also ``work_dir/timeline.json``; ``timeline.png`` is its Gantt chart).

    Reconstruction goes to the executor labelled ``reconstruct``; labels, fine-tuning and deployment to ``train``
    when the config has them (:func:`local_config` does), else to any executor.
    """
    import parsl
    from parsl import python_app

    from edgeray.nn.registry import Registry

    if options.labels not in LABELS:
        raise ValueError(f"labels must be one of {LABELS}, not {options.labels!r}")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    registry = Registry(registry)
    if registry.current() is None:
        from edgeray.nn.checkpoint import SHIPPED

        registry.publish(SHIPPED, {"source": "shipped model (flow start)"})
    start_model = str(registry.path(registry.current()))
    labels = {executor.label for executor in config.executors}
    apps = {
        name: python_app(getattr(tasks, name), executors=[executor] if executor in labels else "all")
        for name, executor in STAGE_EXECUTOR.items()
    }
    # the fine-tuning chain is the critical path: its tasks go first (lower value, higher priority), then the
    # reconstructions in scan order (HighThroughputExecutor honours priorities; other executors run FIFO)
    priority_ok = all(type(e).__name__ == "HighThroughputExecutor" for e in config.executors)
    submitted: list[tuple[str, float, object]] = []

    def submit(label: str, name: str, *args, priority: int = 0, **kwargs):
        if priority_ok:
            kwargs["parsl_resource_specification"] = {"priority": priority}
        future = apps[name](*args, **kwargs)
        submitted.append((label, time.time(), future))
        if not options.overlap:
            future.result()
        return future

    # Parsl starts its interchange and worker pool as scripts found on PATH: make sure this Python's are found
    # even when the virtual environment is not activated (as under `make test`)
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")
    parsl.load(config)
    began = time.time()
    scan_paths: list[str] = []
    try:
        label_sets, model_dir, previous = [], start_model, []
        for k, scan in enumerate(scans, start=1):
            scan = str(Path(scan).resolve())
            scan_paths.append(scan)
            log.info("scan %d: %s", k, scan)
            product = str(work / f"scan{k}_product.h5")
            trainset = str(work / f"scan{k}_labels.h5")
            recon = submit(f"reconstruct {k}", "reconstruct", scan, product, options.epochs, priority=10 + k)
            new_dir = str(work / f"model{k}")
            if options.labels in ("physics", "sample"):
                task = "finetune_physics" if options.labels == "physics" else "finetune_sample"
                tuned = submit(f"finetune {k}", task, scan, product, model_dir, new_dir, options.finetune_epochs,
                               inputs=[recon, *previous])  # fmt: skip
            else:
                labelled = submit(f"labels {k}", "make_labels", scan, product, trainset, inputs=[recon])
                label_sets.append((trainset, labelled))
                tuned = submit(f"finetune {k}", "finetune", [path for path, _ in label_sets], model_dir, new_dir,
                               options.finetune_epochs, replay=options.replay,
                               inputs=[f for _, f in label_sets] + previous)  # fmt: skip
            provenance = {"source_scans": [Path(s).name for s in scan_paths], "engine": "lsqml",
                          "epochs": options.epochs, "finetune_epochs": options.finetune_epochs,
                          "replay": options.replay, "labels": options.labels}  # fmt: skip
            submit(f"deploy {k}", "deploy", new_dir, str(registry.root), provenance, inputs=[tuned])
            model_dir, previous = new_dir, [tuned]
        if not scan_paths:
            raise RuntimeError("no scans to process (a followed run folder had no new complete scan)")
        records = []
        for label, submit_time, future in submitted:
            result = future.result()
            records.append({"label": label, "submit": submit_time, **result})
    finally:
        parsl.dfk().cleanup()
        parsl.clear()
    first_start = min(task["start"] for task in records)
    last_end = max(task["end"] for task in records)
    # end to end: first task started to last task ended; the executor's start-up (workers importing torch) is
    # reported apart, since at a beamline the executor lives for the whole experiment
    report = {"overlap": options.overlap, "scans": scan_paths, "end_to_end_s": last_end - first_start,
              "executor_startup_s": first_start - began, "began": began, "tasks": records,
              "registry_versions": registry.versions()}  # fmt: skip
    (work / "timeline.json").write_text(json.dumps(report, indent=2, default=str))
    gantt(report, work / "timeline.png")
    return report


def gantt(report: dict, path: str | Path) -> Path:
    """Gantt chart of the report's tasks: one bar per task from start to end, a tick at submission."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks_ = report["tasks"]
    t0 = report["began"]
    colours = {"reconstruct": "tab:blue", "labels": "tab:green", "finetune": "tab:orange", "deploy": "tab:red"}
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(tasks_) + 1.2))
    for row, task in enumerate(tasks_):
        ax.barh(row, task["end"] - task["start"], left=task["start"] - t0, color=colours.get(task["task"], "grey"))
        ax.plot([task["submit"] - t0], [row], "k|", markersize=10)
    ax.set_yticks(range(len(tasks_)), [t["label"] for t in tasks_], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds since the flow started")
    mode = "overlapped" if report["overlap"] else "one after another"
    ax.set_title(f"edge-to-HPC flow, {mode}: {report['end_to_end_s']:.1f} s end to end", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
