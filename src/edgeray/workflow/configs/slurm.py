"""Example Parsl config for a Slurm cluster: ``edgeray workflow run ... --config path/to/slurm.py``.

Two executors, named as the flow expects: ``reconstruct`` (CPU nodes, one task per core group) and ``train``
(one GPU node: labels, fine-tuning, deployment). Edit the partitions, account, walltime and worker environment for
your site. The edge's run folder and the registry directory must both be reachable (a shared file system).
"""

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import SrunLauncher
from parsl.providers import SlurmProvider

WORKER_INIT = "source /path/to/edgeray/.venv/bin/activate"


def make_config(run_dir):
    def provider(partition: str, max_blocks: int) -> SlurmProvider:
        return SlurmProvider(
            partition=partition,  # your partition
            account="my-allocation",  # your account
            nodes_per_block=1,
            init_blocks=1,
            max_blocks=max_blocks,
            walltime="01:00:00",
            worker_init=WORKER_INIT,
            launcher=SrunLauncher(),
        )

    reconstruct = HighThroughputExecutor(label="reconstruct", max_workers_per_node=8, provider=provider("cpu", 4))
    train = HighThroughputExecutor(label="train", max_workers_per_node=1, provider=provider("gpu", 1))
    return Config(executors=[reconstruct, train], retries=2, run_dir=str(run_dir))
