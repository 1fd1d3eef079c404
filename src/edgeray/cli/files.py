"""``edgeray info`` and ``edgeray view``: what a file holds, and a picture of it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeray.cli._common import add_cxi_flags, add_tomo_path_flags, console, cxi_options, progress_bar, tomo_paths
from edgeray.cli.config import add_config_flags
from edgeray.io import inspect


def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def add_info(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_info``."""
    info = commands.add_parser("info", help="summarize and validate a file (CXI, product, Data Exchange)")
    info.add_argument("file", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.add_argument("--no-scan", action="store_true", help="skip reading every frame for NaN/negative counts")
    add_cxi_flags(info)
    add_tomo_path_flags(info)
    info.set_defaults(func=cmd_info)


def add_tomo_info(commands: argparse._SubParsersAction) -> None:
    """``edgeray tomo info``: :func:`cmd_info` for raw tomography files, with their paths or layout."""
    info = commands.add_parser("info", help="how a raw tomography file is read: layout, datasets, angles, problems")
    info.add_argument("file", type=Path, help="Data Exchange, NXtomo or a facility layout (--layout, --data-path)")
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.add_argument("--no-scan", action="store_true", help="skip reading every frame for NaN/negative counts")
    add_tomo_path_flags(info)
    add_config_flags(info)
    info.set_defaults(func=cmd_info, translation="sample", ignore_basis=False)


def cmd_info(args: argparse.Namespace) -> int:
    paths = tomo_paths(args)
    if args.no_scan:
        info = inspect(args.file, scan_counts=False, cxi_options=cxi_options(args), tomo_paths=paths)
    else:
        with progress_bar("checking counts", None) as update:
            info = inspect(args.file, progress=update, cxi_options=cxi_options(args), tomo_paths=paths)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 1 if info["problems"] else 0
    out = Console(width=max(Console().width, 130))
    out.print(f"[bold]{args.file}[/]", soft_wrap=True)
    table = Table(show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if key in ("datasets", "assumptions", "problems", "file"):
            continue
        table.add_row(key, _format_value(value))
    out.print(table)
    if info.get("datasets"):
        ds_table = Table(title="datasets", title_justify="left")
        for column in ("path", "shape", "dtype", "filters"):
            ds_table.add_column(column)
        for name, meta in info["datasets"].items():
            ds_table.add_row(name, str(tuple(meta["shape"])), meta["dtype"], meta["filters"])
        out.print(ds_table)
    if info["assumptions"]:
        out.print("[bold]assumed:[/]")
        for line in info["assumptions"]:
            out.print(f"  - {escape(line)}", soft_wrap=True)
    if info["problems"]:
        out.print("[bold red]problems:[/]")
        for line in info["problems"]:
            out.print(f"  - [red]{escape(line)}[/]", soft_wrap=True)
        return 1
    out.print("[green]no validation problems[/]")
    return 0


def add_view(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_view``."""
    view = commands.add_parser("view", help="write a PNG preview of a file")
    view.add_argument("file", type=Path)
    view.add_argument("-o", "--output", type=Path, required=True, help="output PNG")
    view.add_argument("--frame", type=int, default=0, help="which diffraction frame to show (CXI)")
    add_cxi_flags(view)
    view.set_defaults(func=cmd_view)


def cmd_view(args: argparse.Namespace) -> int:
    from edgeray.viz import save_preview

    output = save_preview(args.file, args.output, frame_index=args.frame, cxi_options=cxi_options(args))
    console.print(f"[green]wrote[/] {output}")
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    add_info(groups)
    add_view(groups)
