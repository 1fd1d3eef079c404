"""The ``edgeray`` command: one module per command group, each owning its arguments beside the function that runs
them (``add_*`` then ``cmd_*``).

Every command that computes writes a JSON summary beside its output (``-o scan.cxi`` -> ``scan.json``) with
``seconds`` of compute and ``frames_per_s`` where it applies. Errors in input files are reported as
``error: FILE: DATASET: what is wrong`` with exit status 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.markup import escape

from edgeray import __version__
from edgeray.cli import demo, files, loader, nn, ptycho, simulate, stream, tomo, workflow
from edgeray.cli._common import console
from edgeray.cli.config import apply_config, config_text
from edgeray.cli.limits import check_limits
from edgeray.io import EdgeRayFormatError

#: command groups in the order ``edgeray --help`` lists them
GROUPS = (simulate, files, ptycho, nn, tomo, loader, workflow, demo, stream)


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: each module of :data:`GROUPS` adds its own commands."""
    parser = argparse.ArgumentParser(
        prog="edgeray",
        description="EdgeRay: real-time analysis of synchrotron X-ray ptychography and tomography.",
    )
    parser.add_argument("--version", action="version", version=f"edgeray {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)
    for module in GROUPS:
        module.register(groups)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 validation problems, 2 bad input, 130 Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args = apply_config(parser, args, argv)
        check_limits(parser, args)  # every numeric option within its limits, before any work
        if getattr(args, "print_config", False):
            print(config_text(args), end="")
            return 0
        if isinstance(getattr(args, "device", None), str):
            from edgeray.device import resolve_device

            resolve_device(args.device)  # before any work: a GPU asked for and none here is said at once
        return args.func(args)
    except EdgeRayFormatError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except (ValueError, FileNotFoundError, TimeoutError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: files are written atomically, so none was left half-written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
