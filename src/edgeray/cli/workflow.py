"""``edgeray workflow run``: the edge-to-HPC flow."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from edgeray.cli._common import console, defaults_of, write_summary


def add_workflow_run(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_workflow_run``."""
    from edgeray.workflow.flow import FlowOptions as F
    from edgeray.workflow.flow import FollowRun

    wr = commands.add_parser("run", help="run the flow over scans (CXI files), stages overlapped")
    wr.add_argument("scans", type=Path, nargs="*", help="scan files, in acquisition order")
    wr.add_argument(
        "--follow",
        type=Path,
        default=None,
        help="instead of scan files: an edge service's --out folder; each scan is taken as it ends",
    )
    wr.add_argument("--n-scans", type=int, default=None, help="with --follow: stop after this many scans")
    wr.add_argument("--idle-timeout", type=float, default=defaults_of(FollowRun)["idle_timeout_s"],
                    help="with --follow: stop when no scan has ended for this long, s")  # fmt: skip
    wr.add_argument("--registry", type=Path, required=True, help="model registry the edge follows")
    wr.add_argument("--out", type=Path, default=Path("workflow"), help="work folder (products, labels, models)")
    wr.add_argument("--config", default="local", help="'local' or a Parsl config file (see workflow/configs/)")
    wr.add_argument("--epochs", type=int, default=F.epochs, help="LSQML epochs per scan")
    wr.add_argument(
        "--finetune-epochs", type=int, default=F.finetune_epochs, help="fine-tuning epochs per new label set"
    )
    wr.add_argument("--sequential", action="store_true", help="run the tasks one after another (no overlap)")
    wr.add_argument("--replay", default=None,
                    help="frames of earlier scans mixed into each fine-tuning: N, or 'all' (the default)")  # fmt: skip
    wr.add_argument("--labels", choices=("lsqml", "physics", "sample"), default=F.labels,
                    help="learn from LSQML's patches, from the scan's own frames (physics, no labels), or from "
                    "frames simulated from the reconstruction (sample: nn finetune's default)")  # fmt: skip
    wr.set_defaults(func=cmd_workflow_run)


def cmd_workflow_run(args: argparse.Namespace) -> int:
    from edgeray.workflow import FlowOptions, FollowRun, load_config, run_flow

    if bool(args.scans) == (args.follow is not None):
        raise ValueError("give scan files or --follow RUN_FOLDER (one of the two)")
    for scan in args.scans:
        if not scan.exists():
            raise FileNotFoundError(f"{scan}: no such scan file")
    if args.follow is not None and not args.follow.is_dir():
        raise FileNotFoundError(f"{args.follow}: no such run folder (the edge service's --out)")
    config = load_config(args.config, args.out / "parsl")
    replay = None if args.replay in (None, "all") else int(args.replay)
    options = FlowOptions(args.epochs, args.finetune_epochs, overlap=not args.sequential, replay=replay,
                          labels=args.labels)  # fmt: skip
    if args.follow is not None:
        scans = FollowRun(args.follow, args.n_scans, args.idle_timeout)
        what = f"following {args.follow} ({args.n_scans or 'all'} scans, idle timeout {args.idle_timeout:g} s)"
    else:
        scans, what = args.scans, f"{len(args.scans)} scans"
    console.print(f"[bold]workflow[/]: {what}, Parsl config {args.config}, registry {args.registry}")
    report = run_flow(scans, args.registry, args.out, config, options)
    table = Table(title=f"edge-to-HPC flow: {report['end_to_end_s']:.1f} s end to end")
    for column in ("task", "start (s)", "end (s)", "host"):
        table.add_column(column)
    for task in report["tasks"]:
        table.add_row(task["label"], f"{task['start'] - report['began']:.1f}", f"{task['end'] - report['began']:.1f}",
                      task["host"])  # fmt: skip
    console.print(table)
    write_summary(args.out / "workflow.h5", {"seconds": report["end_to_end_s"], **report})
    console.print(f"[green]wrote[/] {args.out}/timeline.json, timeline.png, workflow.json; registry now "
                  f"{', '.join(report['registry_versions'])}")  # fmt: skip
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    workflow = groups.add_parser("workflow", help="edge-to-HPC flow on Parsl: reconstruct, label, fine-tune, deploy")
    workflow_cmds = workflow.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_workflow_run(workflow_cmds)
