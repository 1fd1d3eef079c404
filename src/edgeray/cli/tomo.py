"""``edgeray tomo ...``: tomography reconstruction and denoising."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from edgeray.cli._common import (
    add_tomo_path_flags,
    console,
    local_source,
    progress_bar,
    row_range,
    source_arg,
    summary_path,
    write_summary,
)
from edgeray.cli.config import add_config_flags
from edgeray.cli.files import add_tomo_info
from edgeray.tomo.classical import CLASSICAL


def _center(value: str) -> float | None:
    """``--center``: a column in pixels, or ``auto`` (None: found from the data)."""
    return None if value == "auto" else float(value)


def add_tomo_recon(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_tomo_recon``."""
    from edgeray.tomo.recon import TomoOptions as O

    tr = commands.add_parser("recon", help="raw scan (Data Exchange or NeXus NXtomo) -> reconstruction, PNG, JSON")
    tr.add_argument("input", type=source_arg,
                    help="Data Exchange (/exchange/data, theta...) or NXtomo file (image_key...), or a Tiled URI of a "
                    "run with those names")  # fmt: skip
    tr.add_argument("-o", "--output", type=Path, required=True, help="reconstruction file (Data Exchange)")
    tr.add_argument("--algorithm", "--algo", dest="algorithm", choices=("gridrec", "fbp", "sirt", "cgls"),
                    default=O.algorithm,
                    help="gridrec: FBP by NUFFT (fast, CPU); fbp: backprojection (CPU/CUDA); sirt; cgls")  # fmt: skip
    tr.add_argument("--center", type=_center, default=O.center,
                    help="rotation-axis column in pixels, or 'auto' (the default: found from the data)")  # fmt: skip
    tr.add_argument("--filter", dest="filter_name", default=O.filter_name,
                    help="ramp, shepp-logan, cosine, hann, hamming, parzen")  # fmt: skip
    tr.add_argument("--rings", action="store_true", help="remove stripes (ring artifacts) before reconstruction")
    tr.add_argument("--zingers", type=float, default=O.zingers, help="replace outliers above this relative deviation")
    tr.add_argument("--slices", default=None, help="detector rows FIRST:LAST (default: all)")
    tr.add_argument("--chunk-slices", "--chunk", dest="chunk_slices", type=int, default=O.chunk_slices,
                    help="slices read and reconstructed at once")  # fmt: skip
    tr.add_argument("--iterations", type=int, default=O.iterations, help="SIRT / CGLS iterations")
    tr.add_argument("--compression", choices=("none", "gzip", "lz4"), default=O.compression,
                    help="of the written slices (gzip: smaller files, a slower command)")  # fmt: skip
    tr.add_argument("--device", default=O.device, help="cpu or cuda (fbp, sirt)")
    tr.add_argument("--entry", default=None, help="NXtomo files: which entry (default: the first)")
    add_tomo_path_flags(tr)
    add_config_flags(tr)
    tr.set_defaults(func=cmd_tomo_recon)


def cmd_tomo_recon(args: argparse.Namespace) -> int:
    from edgeray.io import read_reconstruction
    from edgeray.tomo import TomoOptions, reconstruct_file

    center = args.center
    options = TomoOptions(algorithm=args.algorithm, center=center, filter_name=args.filter_name, rings=args.rings,
                          zingers=args.zingers, slices=row_range(args.slices), chunk_slices=args.chunk_slices,
                          iterations=args.iterations, device=args.device, entry=args.entry,
                          data_path=args.data_path, image_key_path=args.image_key_path,
                          angles_path=args.angles_path, layout=args.layout,
                          compression=args.compression)  # fmt: skip
    with local_source(args.input, args.output) as raw, progress_bar(f"{args.algorithm} reconstruction", None) as update:
        summary = reconstruct_file(raw, args.output, options, progress=lambda done, total: update(done, total))
    if raw != args.input:
        summary["source"] = str(args.input)
    for warning in summary["warnings"]:
        console.print(f"[yellow]warning:[/] {args.input}: {warning}", soft_wrap=True)
    volume, _ = read_reconstruction(args.output)
    middle = volume[len(volume) // 2]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 6))
    low, high = np.percentile(middle, [0.5, 99.5])
    ax.imshow(middle, cmap="gray", vmin=low, vmax=high)
    ax.set_title(f"{args.output.name}: slice {len(volume) // 2} of {len(volume)}, centre {summary['center']:.2f}")
    ax.axis("off")
    from edgeray.io._h5util import atomic_path

    with atomic_path(args.output.with_suffix(".png"), keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_summary(args.output, {**summary, "options": asdict(options)})
    console.print(f"[green]wrote[/] {args.output}: {summary['slices']} slices, centre {summary['center']:.2f} "
                  f"({summary['center_method']}), {summary['slices_per_s']:.1f} slices/s")  # fmt: skip
    return 0


def add_tomo_train_denoiser(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_tomo_train_denoiser``."""
    from edgeray.tomo.denoise import DenoiserOptions as D
    from edgeray.tomo.tomogan import TomoGANConfig as G

    td = commands.add_parser("train-denoiser", help="train a TomoGAN denoiser (pairs: a file, simulation or tooth)")
    td.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    source = td.add_mutually_exclusive_group()
    source.add_argument("--pairs", type=Path, default=None, help="pairs file (/noisy, /clean)")
    source.add_argument("--simulate", type=int, default=16, help="simulated phantom volumes (default source)")
    source.add_argument("--tooth", type=Path, default=None, help="Data Exchange scan: sparse vs. all angles")
    source.add_argument("--stream", type=int, default=None,
                        help="simulated streams of N phantoms: early (sparse) stream slices vs. the truth")  # fmt: skip
    source.add_argument("--self-supervised", type=Path, default=None, metavar="SCAN",
                        help="Noise2Inverse on a raw scan's own projections (no clean target)")  # fmt: skip
    td.add_argument("--splits", type=int, default=2, help="self-supervised: disjoint angle subsets")
    td.add_argument("--strategy", choices=("X:1", "1:X"), default="X:1",
                    help="self-supervised: X:1 denoises the full scan; 1:X (with --splits K) learns to enhance "
                    "1/K-angle reconstructions of the sample (sparse or early streaming stages)")  # fmt: skip
    td.add_argument("--rows", default=None, help="self-supervised: rows FIRST:LAST to learn from (16 of them)")
    td.add_argument(
        "--start-from", default=None, help="self-supervised: weights to fine-tune ('none', or the shipped general)"
    )
    td.add_argument("--size", type=int, default=128, help="simulated slice side, pixels")
    td.add_argument("--angles", type=int, default=180, help="simulated projections over 180 degrees")
    td.add_argument("--photons", type=float, default=60.0, help="simulated low dose, photons per pixel")
    td.add_argument("--sparse-stride", type=int, default=1, help="simulated: keep every Nth angle in the input")
    td.add_argument("--stride", type=int, default=8, help="tooth: keep every Nth angle in the input")
    td.add_argument("--center", default="auto", help="tooth: rotation axis column, or 'auto' (the middle)")
    td.add_argument("--depth", type=int, default=G.depth, help="U-Net levels")
    td.add_argument("--width", type=int, default=G.width, help="channels at the first level")
    td.add_argument("--in-slices", type=int, default=G.in_slices, help="adjacent slices in (odd)")
    td.add_argument("--steps", type=int, default=D.steps, help="generator updates")
    td.add_argument("--batch-size", type=int, default=D.batch_size, help="patches per step")
    td.add_argument("--patch", type=int, default=D.patch, help="patch side, pixels")
    td.add_argument(
        "--perceptual-weight", type=float, default=D.perceptual_weight, help="perceptual loss weight (0: off)"
    )
    td.add_argument(
        "--adversarial-weight", type=float, default=D.adversarial_weight, help="adversarial loss weight (0: off)"
    )
    td.add_argument("--features", default=D.features, help="perceptual features: own, none, or a VGG19 weights file")
    td.add_argument("--pixel-loss", choices=("mse", "l1"), default=D.pixel_loss, help="the pixel term of the loss")
    td.add_argument(
        "--lr",
        dest="learning_rate",
        type=float,
        default=D.learning_rate,
        help="Adam learning rate (cosine schedule down to 1/20)",
    )
    td.add_argument("--device", default=D.device, help="cpu, cuda or auto (CUDA when there is one)")
    td.add_argument("--seed", type=int, default=D.seed)
    td.set_defaults(func=cmd_tomo_train_denoiser)


def cmd_tomo_train_denoiser(args: argparse.Namespace) -> int:
    from edgeray.device import resolve_device
    from edgeray.tomo.denoise import (
        DenoiserOptions,
        simulated_pairs,
        stream_pairs,
        tooth_pairs,
        train_denoiser,
        write_pairs,
    )
    from edgeray.tomo.tomogan import TomoGANConfig

    device = str(resolve_device(args.device))  # before any work: a missing GPU is said at once
    started = time.perf_counter()
    if args.self_supervised is not None:
        return _self_supervised(args, started)
    pairs_path = args.pairs
    if pairs_path is None:
        pairs_path = args.output.with_name(args.output.name + "_pairs.h5")
        if args.tooth is not None:
            console.print(f"making pairs from {args.tooth}: every {args.stride}th angle vs. all angles")
            pairs = tooth_pairs(args.tooth, args.stride, center=None if args.center == "auto" else float(args.center))
        elif args.stream is not None:
            with progress_bar("simulating streams", args.stream) as update:
                done = [0]

                def streamed(n: int) -> None:
                    done[0] += n
                    update(done[0])

                pairs = stream_pairs(args.stream, args.size, angles=args.angles, seed=args.seed, progress=streamed)
        else:
            with progress_bar("simulating pairs", args.simulate) as update:
                done = [0]

                def step(n: int) -> None:
                    done[0] += n
                    update(done[0])

                pairs = simulated_pairs(args.simulate, args.size, angles=args.angles, low_photons=args.photons,
                                        sparse_stride=args.sparse_stride, seed=args.seed, progress=step)  # fmt: skip
        write_pairs(pairs_path, pairs)
    elif not pairs_path.is_file():
        raise FileNotFoundError(f"{pairs_path}: no such pairs file")
    config = TomoGANConfig(depth=args.depth, width=args.width, in_slices=args.in_slices)
    options = DenoiserOptions(steps=args.steps, batch_size=args.batch_size, patch=args.patch,
                              perceptual_weight=args.perceptual_weight, adversarial_weight=args.adversarial_weight,
                              features=args.features, pixel_loss=args.pixel_loss, seed=args.seed,
                              learning_rate=args.learning_rate, device=device)  # fmt: skip
    with progress_bar(f"training TomoGAN ({device})", args.steps) as update:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            update(done[0])

        card = train_denoiser(pairs_path, args.output, config, options, progress=tick)
    summary = {"seconds": time.perf_counter() - started, "model": str(args.output), "pairs": str(pairs_path),
               "val_mse": card["history"]["val_mse"][-1] if card["history"]["val_mse"] else None}  # fmt: skip
    write_summary(args.output, summary)
    console.print(f"[green]wrote[/] {args.output} (model, card) and {summary_path(args.output)}; "
                  f"held-out MSE {summary['val_mse']:.4g}")  # fmt: skip
    return 0


def _self_supervised(args: argparse.Namespace, started: float) -> int:
    """``train-denoiser --self-supervised SCAN``: Noise2Inverse on the scan's own projections."""
    from edgeray.tomo import noise2inverse

    center = None if args.center == "auto" else float(args.center)
    console.print(f"reconstructing {args.splits} disjoint angle subsets of {args.self_supervised}")
    sub, info = noise2inverse.scan_sub_reconstructions(args.self_supervised, args.splits, row_range(args.rows),
                                                       center=center)  # fmt: skip
    steps = args.steps if args.steps != 3000 else 1000  # a fine-tune: the generic default would be long
    with progress_bar("self-supervised fine-tune", steps) as update:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            update(done[0])

        card = noise2inverse.train(sub, args.output, args.start_from, steps, args.seed, args.self_supervised.name,
                                   progress=tick, strategy=args.strategy)  # fmt: skip
    summary = {"seconds": time.perf_counter() - started, "model": args.output.name, "scan": args.self_supervised.name,
               "splits": args.splits, "strategy": args.strategy, **info, "steps": steps,
               "start_from": card["training"]["start_from"]}  # fmt: skip
    write_summary(args.output, summary)
    console.print(f"[green]wrote[/] {args.output} and {summary_path(args.output)}: {len(info['rows'])} rows, "
                  f"{args.splits} splits ({args.strategy}), {summary['seconds']:.0f} s")  # fmt: skip
    return 0


def add_tomo_evaluate_denoiser(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_tomo_evaluate_denoiser``."""
    te = commands.add_parser("evaluate-denoiser", help="SSIM/PSNR in and out: held-out families, codes, the tooth")
    te.add_argument("model", nargs="?", default=None, help="denoiser directory or shipped name (default: general)")
    te.add_argument("-o", "--output", type=Path, default=None, help="also write the results here (JSON)")
    te.add_argument("--quick", action="store_true", help="fewer slices per case")
    te.add_argument("--record", action="store_true", help="write the results into the model's card")
    te.add_argument("--scan", type=Path, default=None,
                    help="also a raw scan's own data: even vs odd angles, no truth needed")  # fmt: skip
    te.add_argument("--rows", default=None, help="--scan: detector rows FIRST:LAST (default the first 8)")
    te.add_argument("--center", type=float, default=None, help="--scan: rotation axis column (default: found)")
    te.set_defaults(func=cmd_tomo_evaluate_denoiser)


def cmd_tomo_evaluate_denoiser(args: argparse.Namespace) -> int:
    from rich.table import Table

    from edgeray.tomo.denoise_eval import cases, evaluate_denoiser, record_transfer

    started = time.perf_counter()
    with progress_bar("evaluating", len(cases(args.quick)) + 2) as update:
        done = [0]

        def tick(_: str) -> None:
            done[0] += 1
            update(done[0])

        evaluation = evaluate_denoiser(args.model, args.quick, progress=tick)
    evaluation["seconds"] = time.perf_counter() - started
    table = Table(title=f"{evaluation['model']} beside BM3D and TV (noise estimated): held-out cases, each slice alone")
    for column in ("case", "SSIM in", "SSIM out", *(f"SSIM {m.upper()}" for m in CLASSICAL), "PSNR in", "PSNR out"):
        table.add_column(column, justify="left" if column == "case" else "right")
    for row in evaluation["cases"]:
        classical = [f"{row[f'ssim_{m}']:.3f}" for m in CLASSICAL]
        table.add_row(row["case"], f"{row['ssim_in']:.3f}", f"{row['ssim_out']:.3f}", *classical,
                      f"{row['psnr_in']:.1f}", f"{row['psnr_out']:.1f}")  # fmt: skip
    console.print(table)
    if args.scan is not None:
        from edgeray.tomo.denoise_eval import split_angle_check

        check = split_angle_check(args.scan, row_range(args.rows), args.model, args.center)
        evaluation["scan"] = check
        split = Table(title=f"{check['case']}: each method's half against the other half (lower is better)")
        for column in ("method", "split error", "vs input"):
            split.add_column(column, justify="left" if column == "method" else "right")
        for name, value in sorted(check["split_mse"].items(), key=lambda item: item[1]):
            split.add_row(name, f"{value:.4g}", f"{check['relative'][name]:.3f}")
        console.print(split)
    if args.output is not None:
        args.output.write_text(json.dumps(evaluation, indent=2) + "\n")
    if args.record:
        from edgeray.tomo.denoise import denoiser_directory

        directory = denoiser_directory(args.model if args.model is not None else "general")
        record_transfer(directory, evaluation)
        console.print(f"[green]recorded[/] in {directory.name}'s card")
    print(json.dumps(evaluation), flush=True)
    return 0


def add_tomo_denoise(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_tomo_denoise``."""
    tn = commands.add_parser("denoise", help="denoise reconstructed slices (/exchange/data): TomoGAN, BM3D or TV")
    tn.add_argument("input", type=Path, help="reconstruction file, /exchange/data (slices, Y, X)")
    tn.add_argument("-o", "--output", type=Path, required=True, help="denoised reconstruction file")
    tn.add_argument("--method", choices=("tomogan", *CLASSICAL), default="tomogan",
                    help="tomogan (learned; fast), bm3d or tv (classical, no training; noise level estimated from "
                    "each slice)")  # fmt: skip
    tn.add_argument("--model", default=None,
                    help="tomogan: a model directory, or shipped: general (default), low-dose, stream")  # fmt: skip
    tn.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when there is one)")
    tn.set_defaults(func=cmd_tomo_denoise)


def cmd_tomo_denoise(args: argparse.Namespace) -> int:
    from edgeray.device import resolve_device
    from edgeray.io import read_reconstruction, write_reconstruction
    from edgeray.tomo.classical import denoise_volume_classical
    from edgeray.tomo.denoise import denoise_volume, load_denoiser

    volume, params = read_reconstruction(args.input)
    card: dict = {}
    if args.method == "tomogan":
        model, card = load_denoiser(args.model)
        model = model.to(resolve_device(args.device))
    started = time.perf_counter()
    with progress_bar(f"denoising ({args.method})", len(volume)) as update:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            update(done[0])

        if args.method == "tomogan":
            denoised = denoise_volume(volume, model, progress=tick)
        else:
            denoised = denoise_volume_classical(volume, args.method, progress=tick)
    seconds = time.perf_counter() - started
    if args.method == "tomogan":
        model_name = str(args.model) if args.model is not None else "shipped TomoGAN (general)"
    else:
        model_name = f"{args.method} (noise estimated from each slice)"
    write_reconstruction(args.output, denoised, {**params, "denoised_by": model_name, "denoised_from": str(args.input)})
    middle = len(volume) // 2
    from edgeray.viz import slice_panels

    slice_panels({"input": volume[middle], args.method: denoised[middle]}, args.output.with_suffix(".png"),
                 f"{args.input.name}: slice {middle} of {len(volume)}")  # fmt: skip
    write_summary(args.output, {"seconds": seconds, "slices": len(volume), "slices_per_s": len(volume) / seconds,
                                "method": args.method, "model": model_name,
                                "parameters": card.get("parameters")})  # fmt: skip
    console.print(f"[green]wrote[/] {args.output}, its PNG and JSON: {len(volume)} slices, "
                  f"{len(volume) / seconds:.1f} slices/s")  # fmt: skip
    return 0


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    tomo = groups.add_parser("tomo", help="tomography: reconstruct raw scans (Data Exchange, NXtomo), denoise slices")
    tomo_cmds = tomo.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_tomo_info(tomo_cmds)
    add_tomo_recon(tomo_cmds)
    add_tomo_train_denoiser(tomo_cmds)
    add_tomo_evaluate_denoiser(tomo_cmds)
    add_tomo_denoise(tomo_cmds)
