"""Example Parsl config for ALCF Polaris (PBS Pro): ``edgeray workflow run ... --config path/to/pbs_polaris.py``.

One block = one Polaris node (4 A100 GPUs, 32 cores); one worker per GPU, pinned with CUDA_VISIBLE_DEVICES.
Set the queue, project (account) and worker environment for your allocation.
"""

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.launchers import MpiExecLauncher
from parsl.providers import PBSProProvider


def make_config(run_dir):
    provider = PBSProProvider(
        queue="debug",  # or prod / preemptable
        account="MY_PROJECT",
        select_options="ngpus=4",
        scheduler_options="#PBS -l filesystems=home:eagle",
        nodes_per_block=1,
        init_blocks=1,
        max_blocks=2,
        walltime="01:00:00",
        worker_init="module use /soft/modulefiles; module load conda; source /path/to/edgeray/.venv/bin/activate",
        launcher=MpiExecLauncher(bind_cmd="--cpu-bind", overrides="--depth=64 --ppn 1"),
    )
    executor = HighThroughputExecutor(
        label="polaris", max_workers_per_node=4, available_accelerators=4, cpu_affinity="block-reverse",
        provider=provider,
    )  # fmt: skip
    return Config(executors=[executor], retries=2, run_dir=str(run_dir))
