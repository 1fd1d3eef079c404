"""``edgeray ptycho reconstruct``: iterative reconstruction of a scan."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from edgeray.cli._common import (
    add_cxi_flags,
    console,
    cxi_options,
    defaults_of,
    local_source,
    source_arg,
    summary_path,
    write_summary,
)
from edgeray.cli.config import add_config_flags


def _ptycho_distributed(args: argparse.Namespace, options, scan_file: Path) -> int:
    """``--nproc N`` (this command starts the ranks) or ``--distributed`` (under torchrun): any engine across
    ranks (ML-CG is PtyGer's scheme)."""
    from edgeray.ptycho import distributed

    if args.nproc and args.distributed:
        raise ValueError("--nproc starts its own ranks; --distributed is for torchrun: give one of the two")
    if not scan_file.is_file():
        raise FileNotFoundError(f"{scan_file}: no such scan file")
    if args.distributed:
        distributed.init_process_group(args.device)
        summary = distributed.run_rank(scan_file, args.output, args.epochs, options, args.device,
                                       engine=args.engine, frames_on_disk=args.frames_on_disk)  # fmt: skip
        if distributed.dist.get_rank() != 0:
            return 0
    else:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        console.print(f"{args.engine} on {args.nproc} ranks ({backend}, 127.0.0.1), {args.epochs} epochs")
        summary = distributed.launch(args.nproc, scan_file, args.output, args.epochs, options, args.device,
                                     engine=args.engine, frames_on_disk=args.frames_on_disk)  # fmt: skip
    moved = sum(sum(e.get("halo_exchange", {}).get("bytes", 0) + e.get("all_reduce_probe", {}).get("bytes", 0)
                    for e in rank["epochs"]) for rank in summary["communication"])  # fmt: skip
    console.print(f"[green]wrote[/] {args.output} and {summary_path(args.output)}: {summary['ranks']} ranks, "
                  f"{summary['seconds']:.1f} s, final cost {summary['cost'][-1]:.4g}, "
                  f"{moved / 1e6:.1f} MB exchanged")  # fmt: skip
    return 0


def add_ptycho_reconstruct(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_ptycho_reconstruct``."""
    from edgeray.ptycho.reconstruct import DEFAULT_ENGINE, DEFAULT_EPOCHS, ENGINES, run

    r = commands.add_parser("reconstruct", help="reconstruct a CXI scan -> product HDF5, PNG, JSON")
    r.add_argument("scan", type=source_arg, help="CXI file, or the Tiled URI of a run with CXI names")
    r.add_argument("-o", "--output", type=Path, required=True, help="product HDF5 file")
    r.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE, help="engine")
    r.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS, help="passes over the data")
    r.add_argument("--device", default=defaults_of(run)["device"], help="cpu, cuda, cuda:N or auto")
    r.add_argument("--batch-size", type=int, default=None, help="frames per update (engine default)")
    r.add_argument("--probe-modes", type=int, default=None, help="incoherent probe modes (default 1)")
    r.add_argument("--fixed-probe", action="store_true", help="do not refine the probe")
    r.add_argument("--position-correction", action="store_true", help="refine scan positions (lsqml, rpie, epie)")
    r.add_argument("--noise", choices=("gaussian", "poisson"), default=None, help="noise model (lsqml, mlcg)")
    r.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="low-pass momentum after each epoch, 0 off (lsqml default 0.8; others 0)",
    )
    r.add_argument("--near-field", action="store_true", help="Fresnel (near-field) propagation")
    r.add_argument(
        "--focus-to-sample-m", type=float, default=None, help="near field: focus-sample distance (magnified geometry)"
    )
    r.add_argument(
        "--probe", type=Path, default=None, help="start probe file (.npy, CXI, EdgeRay or ptychodus product)"
    )
    r.add_argument(
        "--object", type=Path, default=None, help="start object: a product (EdgeRay, ptychodus), placed by its centre"
    )
    r.add_argument("--true-probe", action="store_true", help="start from a simulated file's ground-truth probe")
    r.add_argument("--nproc", type=int, default=None, help="run across N local ranks (gloo; NCCL on cuda)")
    r.add_argument("--distributed", action="store_true", help="run as one rank of torchrun's process group")
    r.add_argument("--frames-on-disk", choices=("auto", "always", "never"), default="auto",
                   help="read frames from the file per batch, overlapped with compute (auto: when they would take "
                   "over half the memory available)")  # fmt: skip
    add_cxi_flags(r)
    add_config_flags(r)
    r.set_defaults(func=cmd_ptycho_reconstruct)


def cmd_ptycho_reconstruct(args: argparse.Namespace) -> int:
    with local_source(args.scan, args.output) as scan_file:
        return _reconstruct(args, scan_file)


def _reconstruct(args: argparse.Namespace, scan_file: Path) -> int:
    """``ptycho reconstruct`` of the local file ``scan_file`` (``args.scan`` names the source: a file or URI)."""
    from rich.progress import TimeElapsedColumn

    from edgeray.io import CXIFile, write_product
    from edgeray.ptycho import Geometry
    from edgeray.ptycho.disk_frames import keep_on_disk
    from edgeray.ptycho.evaluate import compare_on_scanned_region
    from edgeray.ptycho.reconstruct import default_options, run
    from edgeray.viz import save_preview

    overrides = {
        "batch_size": args.batch_size,
        "n_probe_modes": args.probe_modes,
        "probe_refine": not args.fixed_probe,
        "position_correction": args.position_correction,
        "momentum": args.momentum,
    }
    if args.noise and args.engine in ("lsqml", "mlcg"):
        overrides["noise"] = args.noise
    options = default_options(args.engine, **{k: v for k, v in overrides.items() if v is not None})
    if args.nproc or args.distributed:
        from edgeray.ptycho.distributed import refuse_undistributed

        refuse_undistributed(options)  # before any rank starts
        return _ptycho_distributed(args, options, scan_file)
    geometry = Geometry("near" if args.near_field else "far", args.focus_to_sample_m)
    with CXIFile(scan_file, **cxi_options(args)) as cxi:
        scan = cxi.lazy() if keep_on_disk(cxi.frames_on_disk(), args.frames_on_disk) else cxi.load()
        if not isinstance(scan.frames, np.ndarray):
            console.print(f"frames stay in {args.scan} ({scan.frames.nbytes / 2**30:.1f} GiB): read per batch")
    probe = None
    if args.probe:
        from edgeray.sim import probe_from_file

        probe = probe_from_file(args.probe, scan.frames.shape[1:])
    elif args.true_probe:
        if scan.ground_truth is None:
            raise ValueError(f"{args.scan}: --true-probe needs a simulated file with a ground truth")
        probe = scan.ground_truth.probe
    start_object = None
    if args.object:
        from edgeray.io import read_product

        start_object = read_product(args.object)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cost {task.fields[cost]:.4g}  {task.fields[rate]:.0f} frames/s"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"{args.engine} on {args.device}", total=args.epochs, cost=float("nan"), rate=0.0)
        result = run(
            scan,
            args.engine,
            args.epochs,
            args.device,
            geometry=geometry,
            probe=probe,
            obj=start_object,
            options=options,
            callback=lambda epoch, cost, rate: bar.update(task, completed=epoch, cost=cost, rate=rate),
        )
    product = result.product
    product.attrs["source"] = str(args.scan)
    write_product(args.output, product)
    preview = args.output.with_suffix(".png")
    save_preview(args.output, preview)
    epochs_done = len(result.history.cost)
    summary = {
        "command": "ptycho reconstruct",
        "scan": str(args.scan),
        "output": str(args.output),
        "engine": args.engine,
        "device": args.device,
        "epochs": epochs_done,
        "seconds": result.seconds,
        "frames_per_s": scan.n_frames * epochs_done / result.seconds if result.seconds > 0 else None,
        "final_cost": result.history.cost[-1] if result.history.cost else None,
        "cost": result.history.cost,
        "propagation": geometry.propagation,
        "object_pixel_size_m": list(product.object_pixel_size_m),
        "options": json.loads(product.attrs["options"]),
        "stopped": result.history.stopped,
        "frames_on_disk": not isinstance(scan.frames, np.ndarray),
        "bytes_read": getattr(result.problem.amplitudes, "bytes_read", None),
    }
    if scan.ground_truth is not None:
        summary["vs_ground_truth"] = compare_on_scanned_region(product, scan.ground_truth, scan.positions_m)
    write_summary(args.output, summary)
    if result.history.stopped:
        console.print(f"[yellow]warning:[/] {escape(result.history.stopped)}", soft_wrap=True)
    line = f"[green]wrote[/] {args.output}, {preview}: {epochs_done} epochs in {result.seconds:.2f} s"
    if "vs_ground_truth" in summary:
        line += f", error vs ground truth {summary['vs_ground_truth']['rel_error']:.3f}"
    console.print(line)
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    ptycho = groups.add_parser("ptycho", help="iterative ptychography reconstruction")
    ptycho_cmds = ptycho.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_ptycho_reconstruct(ptycho_cmds)
