"""Example Parsl config for ALCF Polaris (PBS Pro): ``edgeray workflow run ... --config path/to/pbs_polaris.py``.

Two executors, named as the flow expects: ``reconstruct`` (one worker per GPU on up to two nodes: 4 A100s and 32
cores each, pinned with CUDA_VISIBLE_DEVICES) and ``train`` (one node, one worker: labels, fine-tuning,
deployment). Set the queue, project (account) and worker environment for your allocation.
"""

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher
from parsl.providers import PBSProProvider

WORKER_INIT = "module use /soft/modulefiles; module load conda; source /path/to/edgeray/.venv/bin/activate"


def make_config(run_dir):
    def provider(max_blocks: int) -> PBSProProvider:
        return PBSProProvider(
            queue="debug",  # or prod / preemptable
            account="MY_PROJECT",
            select_options="ngpus=4",
            scheduler_options="#PBS -l filesystems=home:eagle",
            nodes_per_block=1,
            init_blocks=1,
            max_blocks=max_blocks,
            walltime="01:00:00",
            worker_init=WORKER_INIT,
            launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1"),
        )

    reconstruct = HighThroughputExecutor(
        label="reconstruct", max_workers_per_node=4, available_accelerators=4, cpu_affinity="block-reverse",
        provider=provider(2),
    )  # fmt: skip
    train = HighThroughputExecutor(label="train", max_workers_per_node=1, provider=provider(1))
    return Config(executors=[reconstruct, train], retries=2, run_dir=str(run_dir))
