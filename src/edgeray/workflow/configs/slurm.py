"""Example Parsl config for a Slurm cluster: ``edgeray workflow run ... --config path/to/slurm.py``.

Two executors, named as the flow expects: ``reconstruct`` (CPU nodes, eight workers each) and ``train`` (one GPU
node: labels, fine-tuning, deployment), built by :func:`edgeray.workflow.flow.slurm_config`, the same function the
tests run against a real Slurm. Edit the partitions, account, walltime and worker environment for your site. The
edge's run folder and the registry directory must both be reachable (a shared file system).
"""

from edgeray.workflow.flow import slurm_config

WORKER_INIT = "source /path/to/edgeray/.venv/bin/activate"


def make_config(run_dir):
    return slurm_config(run_dir, partition="cpu", train_partition="gpu", account="my-allocation",
                        worker_init=WORKER_INIT, walltime="01:00:00")  # fmt: skip
