"""``edgeray simulate ptycho|tomo``: scans with ground truth."""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path

from edgeray.cli._common import config_from_args, console, progress_bar, write_summary
from edgeray.io import write_cxi, write_dxchange
from edgeray.io._h5util import COMPRESSIONS
from edgeray.sim import PHANTOMS, SCANS, PtychoSimConfig, TomoSimConfig, simulate_ptycho, simulate_tomo


def add_simulate_ptycho(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_simulate_ptycho``."""
    defaults = PtychoSimConfig()
    p = commands.add_parser(
        "ptycho", help="far-field ptychography scan -> CXI file", description=PtychoSimConfig.__doc__
    )
    p.add_argument("-o", "--output", type=Path, required=True, help="output CXI file")
    p.add_argument("--frame-size", type=int, default=defaults.frame_size, help="detector frame side, pixels")
    p.add_argument("--scan", choices=SCANS, default=defaults.scan, help="scan path")
    p.add_argument("--n-positions", type=int, default=defaults.n_positions, help="number of frames")
    p.add_argument("--step-px", type=float, default=defaults.step_px, help="step between points, object pixels")
    p.add_argument("--jitter-px", type=float, default=defaults.jitter_px, help="raster jitter, object pixels")
    p.add_argument("--photons", type=float, default=defaults.photons, help="mean photons per frame")
    p.add_argument(
        "--object", default=defaults.object, help="'random', IMAGE or AMP,PHASE (scikit-image names or files)"
    )
    p.add_argument(
        "--probe", default=defaults.probe, help="'focused', 'zoneplate', 'gaussian' or a file (.npy/.cxi/.h5)"
    )
    p.add_argument("--probe-diameter-px", type=float, default=None, help="beam diameter (default 0.35 frame)")
    p.add_argument("--energy-ev", type=float, default=defaults.energy_eV, help="photon energy, eV")
    p.add_argument("--distance-m", type=float, default=defaults.distance_m, help="sample-detector distance, m")
    p.add_argument("--detector-pixel-m", type=float, default=defaults.detector_pixel_m, help="pixel pitch, m")
    p.add_argument(
        "--beamstop-px", type=float, default=defaults.beamstop_px, help="central beamstop radius, pixels (masked)"
    )
    p.add_argument("--saturation", type=float, default=None, help="detector saturation level, counts")
    p.add_argument("--compression", choices=COMPRESSIONS, default="gzip", help="frame compression")
    p.add_argument("--seed", type=int, default=defaults.seed, help="random seed")
    p.add_argument("--preview", type=Path, default=None, help="also write a PNG preview here")
    p.set_defaults(func=cmd_simulate_ptycho)


def cmd_simulate_ptycho(args: argparse.Namespace) -> int:
    config = config_from_args(PtychoSimConfig, args)
    start = time.perf_counter()
    with progress_bar("simulating frames", config.n_positions) as update:
        scan = simulate_ptycho(config, progress=update)
    seconds = time.perf_counter() - start
    write_cxi(args.output, scan, compression=args.compression)
    summary = {
        "command": "simulate ptycho",
        "output": str(args.output),
        "seconds": seconds,
        "frames_per_s": config.n_positions / seconds,
        "n_frames": scan.n_frames,
        "frame_shape": list(scan.frames.shape[1:]),
        "dtype": str(scan.frames.dtype),
        "object_shape": list(scan.ground_truth.object.shape),
        "object_pixel_size_m": list(scan.geometry.object_pixel_size_m),
        "mean_counts_per_frame": float(scan.frames.sum(axis=(1, 2)).mean()),
        "config": asdict(config),
    }
    write_summary(args.output, summary)
    console.print(
        f"[green]wrote[/] {args.output}: {scan.n_frames} frames of {config.frame_size}x{config.frame_size}, "
        f"object {scan.ground_truth.object.shape[0]}x{scan.ground_truth.object.shape[1]} px "
        f"({seconds:.2f} s, {summary['frames_per_s']:.0f} frames/s)"
    )
    _maybe_preview(args)
    return 0


def add_simulate_tomo(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_simulate_tomo``."""
    tdefaults = TomoSimConfig()
    t = commands.add_parser(
        "tomo", help="parallel-beam tomography -> Data Exchange file", description=TomoSimConfig.__doc__
    )
    t.add_argument("-o", "--output", type=Path, required=True, help="output Data Exchange HDF5 file")
    t.add_argument("--phantom", choices=PHANTOMS, default=tdefaults.phantom, help="phantom")
    t.add_argument("--size", type=int, default=tdefaults.size, help="slice size = detector columns, pixels")
    t.add_argument("--slices", type=int, default=tdefaults.slices, help="detector rows = slices")
    t.add_argument("--angles", type=int, default=tdefaults.angles, help="projections over [0, 180) degrees")
    t.add_argument("--photons", type=float, default=tdefaults.photons, help="open-beam counts per pixel")
    t.add_argument("--max-attenuation", type=float, default=tdefaults.max_attenuation, help="largest -log(T)")
    t.add_argument("--rings", action="store_true", help="add pixel response errors (ring artifacts)")
    t.add_argument("--compression", choices=COMPRESSIONS, default="gzip", help="projection compression")
    t.add_argument("--seed", type=int, default=tdefaults.seed, help="random seed")
    t.add_argument("--preview", type=Path, default=None, help="also write a PNG preview here")
    t.set_defaults(func=cmd_simulate_tomo)


def cmd_simulate_tomo(args: argparse.Namespace) -> int:
    config = config_from_args(TomoSimConfig, args)
    start = time.perf_counter()
    with console.status("simulating projections"):
        scan = simulate_tomo(config)
    seconds = time.perf_counter() - start
    write_dxchange(args.output, scan, compression=args.compression)
    summary = {
        "command": "simulate tomo",
        "output": str(args.output),
        "seconds": seconds,
        "frames_per_s": config.angles / seconds,
        "projections_shape": list(scan.projections.shape),
        "dtype": str(scan.projections.dtype),
        "config": asdict(config),
    }
    write_summary(args.output, summary)
    console.print(
        f"[green]wrote[/] {args.output}: {config.angles} projections of {config.slices}x{config.size} "
        f"({config.phantom} phantom, {seconds:.2f} s)"
    )
    _maybe_preview(args)
    return 0


def _maybe_preview(args: argparse.Namespace) -> None:
    if getattr(args, "preview", None):
        from edgeray.viz import save_preview

        save_preview(args.output, args.preview)
        console.print(f"[green]wrote[/] {args.preview}")


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    simulate = groups.add_parser("simulate", help="simulate scans with ground truth (ptycho, tomo)")
    kinds = simulate.add_subparsers(dest="kind", metavar="KIND", required=True)
    add_simulate_ptycho(kinds)
    add_simulate_tomo(kinds)
