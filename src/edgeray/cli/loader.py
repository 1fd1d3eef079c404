"""``edgeray loader simulate``: loader policies at scale."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.table import Table

from edgeray.cli._common import console, defaults_of, summary_path, write_summary


def add_loader_simulate(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_loader_simulate``."""
    from edgeray.loader.simulate import simulate_policies

    S = defaults_of(simulate_policies)
    ls = commands.add_parser("simulate", help="reads and hit rates of SOLAR, LRU, frequency and no buffer")
    ls.add_argument("--samples", type=int, default=100_000, help="training-set size, samples")
    ls.add_argument("--epochs", type=int, default=5, help="epochs of the schedule")
    ls.add_argument("--ranks", type=int, default=32, help="training ranks sharing the data set")
    ls.add_argument("--batch-per-rank", type=int, default=S["batch_per_rank"], help="even share of a global batch")
    ls.add_argument("--buffer-fraction", type=float, default=S["buffer_fraction"],
                    help="all ranks' buffers / data set size")  # fmt: skip
    ls.add_argument("--sample-bytes", type=int, default=S["sample_bytes"],
                    help="bytes per sample (64^2 frame + 2 labels)")  # fmt: skip
    ls.add_argument("--seed", type=int, default=S["seed"])
    ls.add_argument("--rows-per-chunk", type=int, default=S["rows_per_chunk"],
                    help="samples per HDF5 chunk (1: sample by sample)")  # fmt: skip
    ls.add_argument("-o", "--output", type=Path, default=Path("loader_policies.png"), help="figure (PNG)")
    ls.set_defaults(func=cmd_loader_simulate)


def cmd_loader_simulate(args: argparse.Namespace) -> int:
    from edgeray.loader.simulate import policies_figure, simulate_policies

    start = time.perf_counter()
    records = simulate_policies(args.samples, args.epochs, args.ranks, args.batch_per_rank, args.buffer_fraction,
                                args.sample_bytes, args.seed, rows_per_chunk=args.rows_per_chunk)  # fmt: skip
    table = Table(title=f"{args.samples:,} samples x {args.epochs} epochs on {args.ranks} ranks; baseline: the "
                  "DataLoader on its best layout (one sample per chunk, no buffer)")  # fmt: skip
    for column in (
        "policy",
        "chunk reads",
        "hit rate",
        "Belady",
        "GB read",
        "x fewer than DataLoader",
        "share min-max",
    ):
        table.add_column(column)
    for r in records:
        table.add_row(r["policy"], f"{r['chunk_reads']:,}", f"{r['hit_rate']:.3f}", f"{r['belady_hit_rate']:.3f}",
                      f"{r['bytes_read'] / 1e9:.1f}", f"{r['bytes_vs_dataloader']:.2f}",
                      f"{r['min_share']}-{r['max_share']}")  # fmt: skip
    console.print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    policies_figure(records, args.output)
    write_summary(args.output, {"seconds": time.perf_counter() - start, "policies": records})
    console.print(f"[green]wrote[/] {args.output} and {summary_path(args.output)}")
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    loader = groups.add_parser("loader", help="training-data loader: policies at scale (plans only, no data)")
    loader_cmds = loader.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_loader_simulate(loader_cmds)
