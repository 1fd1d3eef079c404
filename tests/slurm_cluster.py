"""A real one-node Slurm cluster on 127.0.0.1 for the tests: munged, slurmctld and slurmd from Debian's packages,
started in a folder of their own (no cgroups: proctrack/linuxproc, task/none), stopped at the end.

:func:`cannot_start` says why a machine cannot run it (packages missing, not root); the tests then fail in CI
(``CI`` set) and are skipped elsewhere, with that reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def cannot_start() -> str | None:
    """Why Slurm cannot be started here (None: it can)."""
    missing = [name for name in PROGRAMS if _which(name) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): `make slurm` installs Debian's slurmctld, "
                "slurmd, slurm-client and munge")  # fmt: skip
    if os.geteuid() != 0:
        return "the test cluster runs slurmd as root (it starts jobs as their user); run the tests as root"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class SlurmCluster:
    """One node (``localhost``, this machine's CPUs) in one partition ``debug``; ``env`` has ``SLURM_CONF`` for
    the client commands and for Parsl's SlurmProvider."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self, timeout_s: float = 60.0) -> SlurmCluster:
        folder = self.folder
        for sub in ("state", "spool", "munge"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (folder / "munge").chmod(0o700)
        key = folder / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = folder / "munge" / "munge.socket"
        munge = folder / "munge"
        subprocess.run([_which("munged"), f"--key-file={key}", f"--socket={socket_path}", "--force",
                        f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
                        f"--seed-file={munge / 'munge.seed'}"], check=True, timeout=30)  # fmt: skip
        cpus = os.cpu_count() or 1
        self.conf.write_text(
            "\n".join([
                "ClusterName=edgeray-test", "SlurmctldHost=localhost(127.0.0.1)",
                f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "SlurmUser=root", "SlurmdUser=root",
                "AuthType=auth/munge", f"AuthInfo=socket={socket_path}", "CredType=cred/munge",
                f"StateSaveLocation={folder / 'state'}", f"SlurmdSpoolDir={folder / 'spool'}",
                f"SlurmctldPidFile={folder / 'slurmctld.pid'}", f"SlurmdPidFile={folder / 'slurmd.pid'}",
                f"SlurmctldLogFile={folder / 'slurmctld.log'}", f"SlurmdLogFile={folder / 'slurmd.log'}",
                "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2", "MpiDefault=none",
                "KillWait=2", "InactiveLimit=0", "MinJobAge=600",  # ended jobs stay in squeue: how Parsl sees them end
                f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN",
                "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4",
            ]) + "\n"
        )  # fmt: skip
        subprocess.run([_which("slurmctld"), "-i"], check=True, env=self.env, timeout=30)
        subprocess.run([_which("slurmd"), "-N", "localhost"], check=True, env=self.env, timeout=30)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-o", "%T").stdout.strip()
            if state in ("idle", "mixed", "allocated"):
                return self
            time.sleep(0.5)
        raise RuntimeError(f"the test Slurm node did not come up: sinfo says {state!r}; see {folder}/slurm*.log")

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run([_which(command[0]), *command[1:]], capture_output=True, text=True, env=self.env,
                              timeout=30)  # fmt: skip

    def jobs(self) -> list[dict]:
        """Jobs in the queue: ``{"id", "name", "state"}``."""
        lines = self.run("squeue", "-h", "-o", "%i|%j|%T").stdout.split()
        return [dict(zip(("id", "name", "state"), line.split("|"), strict=True)) for line in lines]

    def stop(self) -> None:
        self.run("scancel", "--full", "--user", "root")
        for pid_file in ("slurmd.pid", "slurmctld.pid", "munge/munged.pid"):
            path = self.folder / pid_file
            if path.exists():
                try:
                    os.kill(int(path.read_text().split()[0]), signal.SIGTERM)
                except (ProcessLookupError, ValueError):
                    pass
        time.sleep(1)
