"""Example Parsl config for a Slurm cluster: ``edgeray workflow run ... --config path/to/slurm.py``.

Edit the partition, account, walltime and worker environment for your site. Each block is one node; tasks run
one per core. The edge and the registry directory must both be reachable (a shared file system).
"""

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider


def make_config(run_dir):
    provider = SlurmProvider(
        partition="gpu",  # your partition
        account="my-allocation",  # your account
        nodes_per_block=1,
        init_blocks=1,
        max_blocks=4,
        walltime="01:00:00",
        worker_init="source /path/to/edgeray/.venv/bin/activate",
        launcher=SrunLauncher(),
    )
    executor = HighThroughputExecutor(label="slurm", max_workers_per_node=8, provider=provider)
    return Config(executors=[executor], retries=2, run_dir=str(run_dir))
