"""Edge-to-HPC workflow on Parsl: reconstruct, label, fine-tune and deploy while the scans go on."""

from edgeray.workflow.flow import FlowOptions, FollowRun, gantt, load_config, local_config, run_flow

__all__ = ["FlowOptions", "FollowRun", "gantt", "load_config", "local_config", "run_flow"]
