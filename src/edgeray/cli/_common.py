"""What every command module shares: the console, progress bars, JSON summaries, CXI reading flags.

Every command that computes writes a JSON summary beside its output (``-o scan.cxi`` -> ``scan.json``) with
``seconds`` of compute and ``frames_per_s`` where it applies. Errors in input files are reported as
``error: FILE: DATASET: what is wrong`` with exit status 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from edgeray.io.tomo_layouts import LAYOUTS

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None):
    """A rich progress bar on stderr; yields ``update(done, total=None)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total=None: bar.update(task, completed=done, total=total or bar.tasks[0].total)


def source_arg(value: str) -> Path | str:
    """A command's input: a file path, or a Tiled URI (``http(s)://...``, kept as text)."""
    from edgeray.io.tiled import is_tiled_uri

    return value if is_tiled_uri(value) else Path(value)


@contextmanager
def local_source(source: Path | str, beside: Path):
    """Yield a local file for ``source``: the file itself, or a run read from a Tiled URI (its run file when the
    node names one on this machine, else a copy in a temporary folder beside ``beside``, removed afterwards).
    Format errors in a copy name the URI, not the temporary file."""
    from edgeray.io import EdgeRayFormatError
    from edgeray.io.tiled import is_tiled_uri, local_file

    if not is_tiled_uri(source):
        yield Path(source)
        return
    import shutil
    import tempfile

    Path(beside).parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".tiled-", dir=Path(beside).parent))
    try:
        with progress_bar(f"reading {source}", None) as update:
            path = local_file(str(source), folder, progress=lambda done, total: update(done, total))
        try:
            yield path
        except EdgeRayFormatError as error:
            if error.path != path:
                raise
            raise ValueError(f"{source}: {error.dataset}: {error.problem}") from error
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def summary_path(output: Path) -> Path:
    """``out.h5`` -> ``out.json``: where a command's JSON summary goes."""
    return output.with_suffix(".json")


def write_summary(output: Path, summary: dict) -> Path:
    """The command's JSON summary beside ``output``, written atomically as the output itself is."""
    from edgeray.io._h5util import write_text_atomic

    return write_text_atomic(summary_path(output), json.dumps(summary, indent=2, default=str) + "\n")


def config_from_args(cls: type, args: argparse.Namespace):
    """A config dataclass filled from the command line: each field from the option of the same (lower-case) name,
    the dataclass default where the command has no such option."""
    values = {f.name: getattr(args, f.name.lower()) for f in fields(cls) if hasattr(args, f.name.lower())}
    return cls(**values)


def defaults_of(function) -> dict:
    """A function's keyword defaults by parameter name: flags that fill its arguments take theirs from here."""
    import inspect

    parameters = inspect.signature(function).parameters.values()
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def add_cxi_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--translation",
        choices=("sample", "probe"),
        default="sample",
        help="CXI translation moves the sample (CXI definition: probe position = -translation) or is the probe's",
    )
    parser.add_argument(
        "--ignore-basis", action="store_true", help="keep CXI frames as stored instead of orienting by basis_vectors"
    )


def cxi_options(args: argparse.Namespace) -> dict:
    return {"translation": args.translation, "follow_basis": not args.ignore_basis}


def row_range(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    first, _, last = text.partition(":")
    try:
        return int(first), int(last)
    except ValueError:
        raise ValueError(f"--slices must be FIRST:LAST (detector rows), not {text!r}") from None


def add_tomo_path_flags(parser) -> None:
    """``--data-path``, ``--image-key-path``, ``--angles-path``: where a facility's tomography file keeps its
    datasets when not where Data Exchange or NXtomo say."""
    parser.add_argument("--data-path", default=None, help="HDF5 path of the frames (n_frames, rows, cols)")
    parser.add_argument(
        "--image-key-path",
        default=None,
        help="HDF5 path of the image keys (0 projection, 1 flat, 2 dark; default: all projections)",
    )
    parser.add_argument("--angles-path", default=None, help="HDF5 path of the rotation angles (degrees)")
    parser.add_argument("--layout", default=None, choices=tuple(LAYOUTS),
                        help="a known facility layout (default: found from the file; see docs/formats)")  # fmt: skip


def tomo_paths(args):
    """The :class:`~edgeray.io.nxtomo.TomoPaths` the flags of :func:`add_tomo_path_flags` give."""
    from edgeray.io.nxtomo import TomoPaths

    return TomoPaths(args.data_path, args.image_key_path, args.angles_path, args.layout)
