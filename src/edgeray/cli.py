"""The ``edgeray`` command: one sub-command group per package.

Every command that computes writes a JSON summary beside its output (``-o scan.cxi`` -> ``scan.json``) with
``seconds`` of compute and ``frames_per_s`` where it applies. Errors in input files are reported as
``error: FILE: DATASET: what is wrong`` with exit status 2; nothing already written is lost.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgeray import __version__
from edgeray.io import EdgeRayFormatError, inspect, write_cxi, write_dxchange
from edgeray.io._h5util import COMPRESSIONS
from edgeray.sim import PHANTOMS, SCANS, PtychoSimConfig, TomoSimConfig, simulate_ptycho, simulate_tomo

console = Console(stderr=True)


@contextmanager
def progress_bar(description: str, total: int | None):
    """A rich progress bar on stderr; yields ``update(done, total=None)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done, total=None: bar.update(task, completed=done, total=total or bar.tasks[0].total)


def summary_path(output: Path) -> Path:
    """``out.h5`` -> ``out.json``: where a command's JSON summary goes."""
    return output.with_suffix(".json")


def write_summary(output: Path, summary: dict) -> Path:
    path = summary_path(output)
    path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return path


def config_from_args(cls: type, args: argparse.Namespace):
    """A config dataclass filled from the command line: each field from the option of the same (lower-case) name,
    the dataclass default where the command has no such option."""
    values = {f.name: getattr(args, f.name.lower()) for f in fields(cls) if hasattr(args, f.name.lower())}
    return cls(**values)


# ----------------------------------------------------------------------------------------------- simulate
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


# ---------------------------------------------------------------------------------------------- info, view
def _format_value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    return str(value)


def _cxi_options(args: argparse.Namespace) -> dict:
    return {"translation": args.translation, "follow_basis": not args.ignore_basis}


def cmd_info(args: argparse.Namespace) -> int:
    if args.no_scan:
        info = inspect(args.file, scan_counts=False, cxi_options=_cxi_options(args))
    else:
        with progress_bar("checking counts", None) as update:
            info = inspect(args.file, progress=update, cxi_options=_cxi_options(args))
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


def cmd_view(args: argparse.Namespace) -> int:
    from edgeray.viz import save_preview

    output = save_preview(args.file, args.output, frame_index=args.frame, cxi_options=_cxi_options(args))
    console.print(f"[green]wrote[/] {output}")
    return 0


# -------------------------------------------------------------------------------------------------- ptycho
def _ptycho_distributed(args: argparse.Namespace, options) -> int:
    """``--nproc N`` (this command starts the ranks) or ``--distributed`` (under torchrun): any engine across
    ranks (ML-CG is PtyGer's scheme)."""
    from edgeray.ptycho import distributed

    if args.position_correction:
        raise ValueError("--position-correction is not distributed yet: run it without --nproc/--distributed")
    if args.nproc and args.distributed:
        raise ValueError("--nproc starts its own ranks; --distributed is for torchrun: give one of the two")
    if not args.scan.is_file():
        raise FileNotFoundError(f"{args.scan}: no such scan file")
    if args.distributed:
        distributed.init_process_group(args.device)
        summary = distributed.run_rank(args.scan, args.output, args.epochs, options, args.device,
                                       engine=args.engine)  # fmt: skip
        if distributed.dist.get_rank() != 0:
            return 0
    else:
        backend = "nccl" if args.device.startswith("cuda") else "gloo"
        console.print(f"{args.engine} on {args.nproc} ranks ({backend}, 127.0.0.1), {args.epochs} epochs")
        summary = distributed.launch(args.nproc, args.scan, args.output, args.epochs, options, args.device,
                                     engine=args.engine)  # fmt: skip
    moved = sum(sum(e.get("halo_exchange", {}).get("bytes", 0) + e.get("all_reduce_probe", {}).get("bytes", 0)
                    for e in rank["epochs"]) for rank in summary["communication"])  # fmt: skip
    console.print(f"[green]wrote[/] {args.output} and {summary_path(args.output)}: {summary['ranks']} ranks, "
                  f"{summary['seconds']:.1f} s, final cost {summary['cost'][-1]:.4g}, "
                  f"{moved / 1e6:.1f} MB exchanged")  # fmt: skip
    return 0


def cmd_ptycho_reconstruct(args: argparse.Namespace) -> int:
    from rich.progress import TimeElapsedColumn

    from edgeray.io import CXIFile, write_product
    from edgeray.ptycho import Geometry
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
    if (args.nproc or args.distributed) and args.momentum is None:
        overrides["momentum"] = 0.0  # not distributed yet (it needs the whole object): off, as documented
    if args.noise and args.engine in ("lsqml", "mlcg"):
        overrides["noise"] = args.noise
    options = default_options(args.engine, **{k: v for k, v in overrides.items() if v is not None})
    if args.nproc or args.distributed:
        return _ptycho_distributed(args, options)
    geometry = Geometry("near" if args.near_field else "far", args.focus_to_sample_m)
    with CXIFile(args.scan, **_cxi_options(args)) as cxi:
        scan = cxi.load()
    probe = None
    if args.probe:
        from edgeray.sim import probe_from_file

        probe = probe_from_file(args.probe, scan.frames.shape[1:])
    elif args.true_probe:
        if scan.ground_truth is None:
            raise ValueError(f"{args.scan}: --true-probe needs a simulated file with a ground truth")
        probe = scan.ground_truth.probe
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


# ------------------------------------------------------------------------------------------------------ nn
def cmd_nn_make_trainset(args: argparse.Namespace) -> int:
    from edgeray.io import read_cxi, read_product
    from edgeray.nn.trainset import (
        probe_fingerprint,
        samples_from_reconstruction,
        samples_from_scan,
        simulate_scans,
        write_trainset,
    )

    start = time.perf_counter()
    if args.simulate:
        base = PtychoSimConfig(frame_size=args.frame_size, step_px=args.step_px, scan=args.scan_kind, probe=args.probe)
        with progress_bar("simulating training scans", args.simulate) as update:
            scans = simulate_scans(args.simulate, base, seed=args.seed, progress=update)
        samples = [samples_from_scan(scan) for scan in scans]
        attrs = {"source": "simulation", "valid_for": probe_fingerprint(base), "scans": len(scans)}
    else:
        if not (args.scan and args.labels):
            raise ValueError("give --simulate N, or --scan A.cxi with --labels A_product.h5")
        scan, product = read_cxi(args.scan), read_product(args.labels)
        samples = [samples_from_reconstruction(scan, product)]
        valid = {
            "frame_size": scan.frames.shape[-1],
            "energy_eV": scan.geometry.energy_eV,
            "distance_m": scan.geometry.distance_m,
            "detector_pixel_m": scan.geometry.detector_pixel_size_m[1],
        }
        attrs = {
            "source": f"{args.scan} + {args.labels}",
            "engine": product.attrs.get("engine", ""),
            "valid_for": valid,
        }
    path = write_trainset(args.output, samples, attrs)
    n = sum(len(s["frames"]) for s in samples)
    seconds = time.perf_counter() - start
    write_summary(
        path,
        {
            "command": "nn make-trainset",
            "output": str(path),
            "samples": n,
            "seconds": seconds,
            "frames_per_s": n / seconds,
            "attrs": attrs,
        },
    )
    console.print(f"[green]wrote[/] {path}: {n} samples ({seconds:.1f} s)")
    return 0


def _train_on_corpus(args: argparse.Namespace) -> int:
    """``edgeray nn train --corpus``: the edge model on the procedural corpus, with a progress bar."""
    import torch

    from edgeray.nn.corpus import CorpusConfig
    from edgeray.nn.learn import CorpusTrainOptions, train_on_corpus
    from edgeray.nn.models import ModelConfig
    from edgeray.nn.report import write_corpus_card

    if args.model not in (None, "edge"):
        raise ValueError(f"--corpus trains the edge model, not --model {args.model}")
    if args.threads:
        torch.set_num_threads(args.threads)
    low, high = (float(v) for v in args.photons.split(","))
    config = ModelConfig("edge", args.width or 8, args.depth, args.frame_size, args.probe, args.probe_diameter_px,
                         args.dense)  # fmt: skip
    corpus = CorpusConfig(frame_size=args.frame_size, probe=args.probe, probe_diameter_px=args.probe_diameter_px,
                          photons=(low, high), seed=args.seed)  # fmt: skip
    options = CorpusTrainOptions(steps=args.steps, objects_per_step=args.objects_per_step,
                                 learning_rate=args.lr or 2e-3, physics_weight=args.physics_weight,
                                 slope_weight=args.slope_weight,
                                 checkpoint_every=args.checkpoint_every, device=args.device)  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("val phase L1 {task.fields[phase]:.4f} rad"))  # fmt: skip
    start = time.perf_counter()
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("training edge on the corpus", total=args.steps, phase=float("nan"))
        card = train_on_corpus(args.output, config, corpus, options, resume=args.resume,
                               progress=lambda s, m: bar.update(task, completed=s, phase=m["phase_l1"]))  # fmt: skip
    write_corpus_card(args.output, card)
    seconds = time.perf_counter() - start
    write_summary(args.output / "train.h5", {"command": "nn train --corpus", "seconds": seconds,
                                             "samples": card["training"]["samples"], **card["validation"]})  # fmt: skip
    console.print(f"[green]wrote[/] {args.output}: model.safetensors, model.json, MODEL_CARD.md ({seconds:.0f} s)")
    return 0


def cmd_nn_train(args: argparse.Namespace) -> int:
    from edgeray.nn.models import ModelConfig
    from edgeray.nn.train import TrainOptions, train

    if args.corpus:
        return _train_on_corpus(args)
    if args.trainset is None:
        raise ValueError("give a training set (HDF5), or --corpus to train the edge model on the procedural corpus")
    if args.model == "edge":
        raise ValueError("the edge model trains on the corpus (--corpus); stored sets train compact or ptychonn")
    args.model = args.model or "compact"
    config = ModelConfig(args.model, args.width or (8 if args.model == "compact" else 32), args.depth, args.frame_size)
    options = TrainOptions(args.epochs, args.batch, args.lr or 5e-3, seed=args.seed, device=args.device,
                           workers=args.workers, loader=args.loader,
                           buffer_bytes=int(args.buffer_mb * 2**20))  # fmt: skip
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("train {task.fields[train]:.4f}  val {task.fields[val]:.4f}"),
    )
    start = time.perf_counter()
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"training {args.model}", total=args.epochs, train=float("nan"), val=float("nan"))
        card = train(
            args.trainset,
            args.output,
            config,
            options,
            resume=args.resume,
            progress=lambda e, m: bar.update(task, completed=e, train=m["train_loss"], val=m["val_loss"]),
        )
    seconds = time.perf_counter() - start
    write_summary(
        args.output / "train.h5",
        {"command": "nn train", "seconds": seconds, **card["validation"], "samples": card["training"]["samples"]},
    )
    console.print(
        f"[green]wrote[/] {args.output}: model.safetensors, model.json, MODEL_CARD.md, loss.png ({seconds:.0f} s)"
    )
    return 0


def cmd_nn_publish(args: argparse.Namespace) -> int:
    from edgeray.nn.registry import Registry

    provenance = json.loads(args.provenance) if args.provenance else {}
    version = Registry(args.registry).publish(args.model_dir, provenance, make_current=not args.no_switch)
    state = "now CURRENT" if not args.no_switch else "not made current"
    console.print(f"[green]published[/] {args.model_dir} as {version} in {args.registry} ({state})")
    return 0


def cmd_nn_infer(args: argparse.Namespace) -> int:
    import warnings

    from edgeray.io import CXIFile, write_product
    from edgeray.nn.infer import infer_scan
    from edgeray.ptycho.evaluate import compare_on_scanned_region
    from edgeray.viz import save_preview

    with CXIFile(args.scan, **_cxi_options(args)) as cxi:
        scan = cxi.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = infer_scan(scan, args.model, args.device, args.batch, args.backend)
    for line in result.mismatches:
        console.print(f"[yellow]warning:[/] the model was trained for another geometry: {escape(line)}")
    write_product(args.output, result.product)
    save_preview(args.output, args.output.with_suffix(".png"))
    summary = {
        "command": "nn infer",
        "scan": str(args.scan),
        "output": str(args.output),
        "model": str(args.model),
        "seconds": result.seconds,
        "frames_per_s": result.frames_per_s,
        "geometry_mismatches": result.mismatches,
    }
    if scan.ground_truth is not None:
        summary["vs_ground_truth"] = compare_on_scanned_region(result.product, scan.ground_truth, scan.positions_m)
    write_summary(args.output, summary)
    console.print(f"[green]wrote[/] {args.output}: {scan.n_frames} frames at {result.frames_per_s:.0f} frames/s")
    return 0


def cmd_nn_finetune(args: argparse.Namespace) -> int:
    """Fine-tune an edge model on a scan's own frames (physics only, no labels)."""
    from edgeray.io import CXIFile
    from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan
    from edgeray.nn.report import write_corpus_card

    with CXIFile(args.scan, **_cxi_options(args)) as cxi:
        scan = cxi.load()
    options = FinetuneOptions(epochs=args.epochs, learning_rate=args.lr, overlap_weight=args.overlap_weight,
                              device=args.device, seed=args.seed)  # fmt: skip
    with progress_bar(f"fine-tuning on {args.scan.name}'s frames", None) as update:
        result = finetune_on_scan(scan, args.model, args.output, args.probe, options,
                                  progress=lambda step, total, loss: update(step, total))  # fmt: skip
    write_corpus_card(args.output, result.card)
    gain = 1 - result.holdout_after / max(result.holdout_before, 1e-30)
    write_summary(args.output / "finetune.h5", {"command": "nn finetune", "scan": str(args.scan),
                                                "model": str(args.model or "shipped"), "seconds": result.seconds,
                                                "frames_per_s": scan.n_frames * args.epochs / result.seconds,
                                                **result.card["finetuned"]})  # fmt: skip
    console.print(f"[green]wrote[/] {args.output}: held-out frames' Poisson deviance {result.holdout_before:.4g} -> "
                  f"{result.holdout_after:.4g} ({gain:.0%} lower); probe: {result.card['finetuned']['probe']} "
                  f"({result.seconds:.0f} s)", soft_wrap=True)  # fmt: skip
    return 0


def cmd_nn_evaluate(args: argparse.Namespace) -> int:
    """Score a model on unseen simulated scans (and a given scan) beside LSQML; print and write the table."""
    from edgeray.io import CXIFile
    from edgeray.nn.evaluate import EvaluationOptions, evaluate_model

    args.simulate = args.simulate or args.scan is None
    scan = None
    if args.scan is not None:
        with CXIFile(args.scan, **_cxi_options(args)) as cxi:
            scan = cxi.load()
    options = EvaluationOptions(pairs=0 if args.scan and not args.simulate else args.pairs, frames=args.frames,
                                lsqml_epochs=args.lsqml_epochs, low_dose=args.simulate and not args.quick,
                                sparse=args.simulate and not args.quick)  # fmt: skip
    start = time.perf_counter()
    with console.status("evaluating") as status:
        result = evaluate_model(args.model, options, scan, progress=lambda text: status.update(f"evaluating: {text}"))
    result["seconds"] = time.perf_counter() - start
    table = Table(title=f"{args.model or 'shipped model'}: phase SSIM against the ground truth")
    for column in ("case", "network", "LSQML"):
        table.add_column(column)
    for case in result["cases"]:
        lsqml = case.get("lsqml_phase_ssim")
        nn_value = case["nn_phase_ssim"]
        shown = f"{nn_value:.3f}" if np.isfinite(nn_value) else f"deviance {case.get('nn_deviance', 0):.4g}"
        table.add_row(case["case"], shown, "-" if lsqml is None else f"{lsqml:.3f}")
    if result["median_unseen_nn"] is not None:
        lsqml = result["median_unseen_lsqml"]
        table.add_row("[bold]median, unseen objects", f"[bold]{result['median_unseen_nn']:.3f}",
                      "-" if lsqml is None else f"[bold]{lsqml:.3f}")  # fmt: skip
    table.add_row("ONNX Runtime frames/s", f"{result['frames_per_s']:,.0f} ({result['threads']} threads)", "")
    console.print(table)
    if args.output is not None:
        args.output.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"[green]wrote[/] {args.output}")
    if args.write_card:
        from edgeray.nn.checkpoint import SHIPPED
        from edgeray.nn.report import record_evaluation

        card_path = record_evaluation(args.model or SHIPPED, result)
        console.print(f"[green]wrote[/] the figures into {card_path} and its model.json")
    return 0


# ------------------------------------------------------------------------------------------------ tomography
def _slices(text: str | None) -> tuple[int, int] | None:
    if not text:
        return None
    first, _, last = text.partition(":")
    try:
        return int(first), int(last)
    except ValueError:
        raise ValueError(f"--slices must be FIRST:LAST (detector rows), not {text!r}") from None


def cmd_tomo_recon(args: argparse.Namespace) -> int:

    from edgeray.io import read_reconstruction
    from edgeray.tomo import TomoOptions, reconstruct_file

    center = None if args.center == "auto" else float(args.center)
    options = TomoOptions(algorithm=args.algo, center=center, filter_name=args.filter, rings=args.rings,
                          zingers=args.zingers, slices=_slices(args.slices), chunk_slices=args.chunk,
                          iterations=args.iterations, device=args.device)  # fmt: skip
    with progress_bar(f"{args.algo} reconstruction", None) as update:
        summary = reconstruct_file(args.input, args.output, options, progress=lambda done, total: update(done, total))
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
    fig.savefig(args.output.with_suffix(".png"), dpi=100, bbox_inches="tight")
    plt.close(fig)
    write_summary(args.output, {**summary, "options": asdict(options)})
    console.print(f"[green]wrote[/] {args.output}: {summary['slices']} slices, centre {summary['center']:.2f} "
                  f"({summary['center_method']}), {summary['slices_per_s']:.1f} slices/s")  # fmt: skip
    return 0


def cmd_tomo_train_denoiser(args: argparse.Namespace) -> int:
    from edgeray.device import resolve_device
    from edgeray.nn.denoise import (
        DenoiserOptions,
        simulated_pairs,
        stream_pairs,
        tooth_pairs,
        train_denoiser,
        write_pairs,
    )
    from edgeray.nn.tomogan import TomoGANConfig

    device = str(resolve_device(args.device))  # before any work: a missing GPU is said at once
    started = time.perf_counter()
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
                              learning_rate=args.lr, device=device)  # fmt: skip
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


def cmd_tomo_denoise(args: argparse.Namespace) -> int:
    from edgeray.device import resolve_device
    from edgeray.io import read_reconstruction, write_reconstruction
    from edgeray.nn.denoise import denoise_volume, load_denoiser

    volume, params = read_reconstruction(args.input)
    model, card = load_denoiser(args.model)
    model = model.to(resolve_device(args.device))
    started = time.perf_counter()
    with progress_bar("denoising", len(volume)) as update:
        done = [0]

        def tick(n: int) -> None:
            done[0] += n
            update(done[0])

        denoised = denoise_volume(volume, model, progress=tick)
    seconds = time.perf_counter() - started
    model_name = str(args.model) if args.model is not None else "shipped TomoGAN"
    write_reconstruction(args.output, denoised, {**params, "denoised_by": model_name, "denoised_from": str(args.input)})
    middle = len(volume) // 2
    from edgeray.viz import slice_panels

    slice_panels({"input": volume[middle], "TomoGAN": denoised[middle]}, args.output.with_suffix(".png"),
                 f"{args.input.name}: slice {middle} of {len(volume)}")  # fmt: skip
    write_summary(args.output, {"seconds": seconds, "slices": len(volume), "slices_per_s": len(volume) / seconds,
                                "model": model_name, "parameters": card.get("parameters")})  # fmt: skip
    console.print(f"[green]wrote[/] {args.output}, its PNG and JSON: {len(volume)} slices, "
                  f"{len(volume) / seconds:.1f} slices/s")  # fmt: skip
    return 0


# -------------------------------------------------------------------------------------------------- workflow
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
    replay = None if args.replay == "all" else int(args.replay)
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


# ---------------------------------------------------------------------------------------------------- loader
def cmd_loader_simulate(args: argparse.Namespace) -> int:
    from edgeray.loader.simulate import policies_figure, simulate_policies

    start = time.perf_counter()
    records = simulate_policies(args.samples, args.epochs, args.ranks, args.batch_per_rank, args.buffer_fraction,
                                args.sample_bytes, args.seed, rows_per_chunk=args.rows_per_chunk)  # fmt: skip
    table = Table(title=f"{args.samples:,} samples x {args.epochs} epochs on {args.ranks} ranks")
    for column in ("policy", "chunk reads", "hit rate", "Belady", "GB read", "share min-max"):
        table.add_column(column)
    for r in records:
        table.add_row(r["policy"], f"{r['chunk_reads']:,}", f"{r['hit_rate']:.3f}", f"{r['belady_hit_rate']:.3f}",
                      f"{r['bytes_read'] / 1e9:.1f}", f"{r['min_share']}-{r['max_share']}")  # fmt: skip
    console.print(table)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    policies_figure(records, args.output)
    write_summary(args.output, {"seconds": time.perf_counter() - start, "policies": records})
    console.print(f"[green]wrote[/] {args.output} and {summary_path(args.output)}")
    return 0


# ------------------------------------------------------------------------------------------------ streaming
def _replay_scan(args: argparse.Namespace):
    """The scan a replay sends: a CXI file (read lazily) or a simulation of the command's options."""
    if args.scan_file is not None:
        from edgeray.io import CXIFile

        return _LazyScan(CXIFile(args.scan_file, **_cxi_options(args)))
    from edgeray.sim import simulate_ptycho_lazy

    config = PtychoSimConfig(n_positions=args.n_positions, step_px=args.step_px, photons=args.photons,
                             object=args.object, seed=args.seed)  # fmt: skip
    return simulate_ptycho_lazy(config)  # frames made block by block as they are sent: any length


class _LazyFrames:
    """A CXI file's frames, read (oriented and checked) only when a block is sliced out."""

    def __init__(self, cxi):
        self.cxi, self.dtype = cxi, cxi._frames.dtype
        self.shape = (cxi.n_frames, *cxi.frame_shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, block: slice):
        start, stop, _ = block.indices(len(self))
        return self.cxi.read_frames(start, stop)


class _LazyScan:
    """A CXI file seen as a scan whose frames are read block by block while they are sent."""

    def __init__(self, cxi):
        self.frames, self.positions_m, self.geometry = _LazyFrames(cxi), cxi.positions_m, cxi.geometry


def _is_dxchange(path: Path) -> bool:
    """Whether ``path`` is a Data Exchange tomography file (else it is taken as CXI)."""
    import h5py

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such scan file")
    try:
        with h5py.File(path, "r") as h5:
            return "exchange/data" in h5 and "entry_1" not in h5
    except OSError as error:
        raise EdgeRayFormatError(f"{path}: not an HDF5 file ({error})") from error


def _replay_tomo(args: argparse.Namespace) -> int:
    from edgeray.io import read_dxchange
    from edgeray.stream import connect
    from edgeray.stream.tomo import replay_tomo

    scan = read_dxchange(args.scan_file)
    socket = connect(args.endpoint, curve_keys=args.curve_keys)
    rate = args.rate if args.rate != 2000.0 else 500.0  # a tomography detector's default pace
    console.print(f"sending {len(scan.theta_deg)} projections of {args.scan_file} in {args.order} order at "
                  f"{rate:g} Hz")  # fmt: skip
    for k in range(args.repeat):
        scan_id = args.scan_id if args.repeat == 1 else f"{args.scan_id or 'tomo'}-{k + 1}"
        report = replay_tomo(scan, socket, rate, args.order, scan_id, _slices_or_all(args.rows))
        print(json.dumps(report.as_dict()), flush=True)
    return _disconnect_or_warn(socket)


def _disconnect_or_warn(socket) -> int:
    """Wait for the queued messages to leave (:func:`edgeray.stream.detector.disconnect`); 1 (and an error) when
    some could not."""
    from edgeray.stream import disconnect
    from edgeray.stream.detector import LINGER_MS

    if disconnect(socket):
        return 0
    console.print(f"[red]error:[/] {LINGER_MS / 1e3:g} s after the last send, messages were still queued (the edge is "
                  "that far behind, or gone); they and the end message were dropped")  # fmt: skip
    return 1


def _slices_or_all(spec: str | None) -> slice | None:
    rows = _slices(spec)
    return None if rows is None else slice(*rows)


def cmd_detector_replay(args: argparse.Namespace) -> int:
    from edgeray.stream import connect, replay

    if (args.scan_file is None) == (not args.simulate):
        raise ValueError("give a CXI file to replay or --simulate (not both)")
    if args.scan_file is not None and _is_dxchange(args.scan_file):
        return _replay_tomo(args)
    scan = _replay_scan(args)
    socket = connect(args.endpoint, curve_keys=args.curve_keys)
    reports = []
    for k in range(args.repeat):
        scan_id = args.scan_id if args.repeat == 1 else f"{args.scan_id or 'scan'}-{k + 1}"
        with progress_bar(f"sending at {args.rate:g} Hz", len(scan.frames) * args.cycles) as update:
            report = replay(scan, socket, args.rate, scan_id=scan_id, progress=update, cycles=args.cycles)
        reports.append(report.as_dict())
        print(json.dumps(report.as_dict()), flush=True)
    return _disconnect_or_warn(socket)


def _serve(service, view_class, args: argparse.Namespace, label: str) -> int:
    """Run a started edge service (and its live view unless ``--http off``) until it stops: SIGTERM or Ctrl-C
    closes the open scan with every received frame written; print the ready line and the summaries as JSON."""
    import signal
    import threading

    dashboard = None
    if args.http != "off":
        host, _, port = args.http.rpartition(":")
        dashboard = view_class(service, host or "127.0.0.1", int(port), max_fps=args.view_fps).start()
    ready = {"listen": service.endpoint, "view": dashboard.url if dashboard else None, "out": str(args.out)}
    print(json.dumps({"ready": ready}), flush=True)
    console.print(f"[bold]{label}[/] listening on {service.endpoint}; live view {ready['view']}; writing to {args.out}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: service.stop())
    try:
        while not service.wait(0.5):
            pass
    except KeyboardInterrupt:
        console.print("[yellow]stopping[/]: closing the open scan with every received frame written")
        service.stop()
        service.wait(60)
    if getattr(args, "hold", 0) > 0 and dashboard is not None:
        time.sleep(args.hold)
    service.join(10)
    if dashboard is not None:
        dashboard.close()
    for summary in service.summaries:
        print(json.dumps({"summary": summary}), flush=True)
        _print_headroom(summary)
    return 0


def _print_headroom(summary: dict) -> None:
    """One line per scan for people: frames, latency, and the highest rate the edge could have kept (from the CPU
    time of each stage: none above one core, all within the machine's cores)."""
    cpu = summary.get("stage_cpu_fraction") or {}
    if not cpu or not summary.get("max_rate_hz"):
        return
    stage = max(cpu, key=cpu.get)
    console.print(
        f"[bold]{summary['scan_id']}[/]: {summary['frames_received']:,} received, {summary['frames_written']:,} "
        f"written, {summary['frames_inferred']:,} inverted at {summary['frames_per_s']:,.0f} frames/s, p99 latency "
        f"{summary['latency_ms_p99']:.0f} ms; the stream used {summary['stream_cpu_cores']:.2f} cores (busiest: "
        f"{stage}, {cpu[stage]:.2f}): the edge could have kept ~{summary['max_rate_hz']:,.0f} frames/s",
        soft_wrap=True,  # one line, whatever the terminal's width: scripts grep it
    )


def _edge_tomo(args: argparse.Namespace) -> int:
    from edgeray.stream.tomo import TomoEdgeOptions, TomoEdgeService
    from edgeray.stream.tomo_view import TomoDashboard

    enhancer = "off" if args.enhancer == "off" else (None if args.enhancer == "shipped" else Path(args.enhancer))
    options = TomoEdgeOptions(listen=args.listen, out=args.out, update_every=args.update_every,
                              capacity=args.capacity, enhancer=enhancer, scans=args.scans,
                              curve_keys=args.curve_keys)  # fmt: skip
    return _serve(TomoEdgeService(options).start(), TomoDashboard, args, "edge (tomo)")


def cmd_edge(args: argparse.Namespace) -> int:
    from edgeray.stream import Dashboard, EdgeOptions, EdgeService
    from edgeray.stream.refine import RefineOptions

    if args.mode == "tomo":
        return _edge_tomo(args)
    refine = None
    if args.refine:
        refine = RefineOptions(engine=args.refine_engine, tail_s=args.refine_tail_s, seed=args.refine_seed)
    options = EdgeOptions(
        listen=args.listen, out=args.out, model=args.model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
        publish=None if args.publish == "off" else args.publish, scans=args.scans, curve_keys=args.curve_keys,
        infer_threads=args.infer_threads, infer_workers=args.infer_workers, registry=args.registry, refine=refine,
        refine_probe=args.refine_probe, ring_frames=args.ring_frames,
    )  # fmt: skip
    return _serve(EdgeService(options).start(), Dashboard, args, "edge")


def cmd_keys(args: argparse.Namespace) -> int:
    from edgeray.stream import make_keys

    folder = make_keys(args.folder)
    console.print(f"[green]wrote[/] CurveZMQ keys in {folder}: give server.key, client.key and client.key_secret to "
                  "the detector; server.key_secret stays on the edge")  # fmt: skip
    return 0


# ---------------------------------------------------------------------------------------------------- demo
def _free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    import socket

    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: an edge service in its own process, a simulated detector streaming to it at ``--rate``, the
    live view while it runs, and the final image, run file and summary in ``--out``."""
    import subprocess

    from edgeray.io import read_product
    from edgeray.ptycho.evaluate import compare_on_scanned_region
    from edgeray.stream import connect, replay

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = PtychoSimConfig(n_positions=args.frames, step_px=args.step_px, photons=args.photons, seed=args.seed)
    with progress_bar("simulating the scan", config.n_positions) as update:
        scan = simulate_ptycho(config, progress=update)
    listen = f"tcp://127.0.0.1:{_free_port()}"
    http = f"127.0.0.1:{_free_port(args.port)}"  # the preferred port, or any free one if it is taken
    command = [sys.executable, "-m", "edgeray", "edge", "--listen", listen, "--out", str(out), "--http", http,
               "--publish", "off", "--scans", "1", "--hold", str(args.hold)]  # fmt: skip
    if not args.no_refine:
        command += ["--refine", "--refine-tail-s", str(args.refine_tail_s)]
    if args.model is not None:
        command += ["--model", str(args.model)]
    edge = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        ready = json.loads(edge.stdout.readline() or "{}").get("ready")
        if not ready:
            raise RuntimeError(f"the edge service did not start (exit status {edge.wait()})")
        console.print(f"[bold]live view:[/] {ready['view']}  (open it in a browser while the scan runs)")
        socket = connect(ready["listen"])
        with progress_bar(f"detector at {args.rate:g} frames/s", scan.n_frames) as update:
            report = replay(scan, socket, args.rate, scan_id="scan", progress=update)
        socket.close()
        lines = edge.communicate(timeout=120 + args.hold + args.refine_tail_s)[0].splitlines()
    finally:
        if edge.poll() is None:
            edge.terminate()
            edge.wait(30)
    summary = next(json.loads(line)["summary"] for line in lines if line.startswith('{"summary"'))
    product = read_product(summary["files"]["product"])
    quality = compare_on_scanned_region(product, scan.ground_truth, np.asarray(scan.positions_m))
    result = {"detector": report.as_dict(), "edge": summary, "vs_ground_truth": quality}
    refined_quality = None
    if "refined" in summary["files"]:
        refined = read_product(summary["files"]["refined"])
        refined_quality = compare_on_scanned_region(refined, scan.ground_truth, np.asarray(scan.positions_m))
        result["refined_vs_ground_truth"] = refined_quality
    (out / "demo.json").write_text(json.dumps(result, indent=2, default=float) + "\n")
    table = Table(title="EdgeRay live demo", show_header=False)
    for key, value in [
        ("frames sent / received / written / inferred", f"{report.frames_sent} / {summary['frames_received']} / "
         f"{summary['frames_written']} / {summary['frames_inferred']}"),
        ("detector rate, jitter p99", f"{report.rate_hz:,.0f} frames/s, {report.jitter_us_p99:,.0f} us"),
        ("latency to mosaic p50 / p99", f"{summary['latency_ms_p50']:.1f} / {summary['latency_ms_p99']:.1f} ms"),
        ("phase SSIM vs ground truth, network", f"{quality['ssim_phase']:.2f}"),
        *([("phase SSIM vs ground truth, refined",
            f"{refined_quality['ssim_phase']:.2f} ({summary['refinement']['epochs']:.1f} epochs of live "
            f"{summary['refinement']['engine']}, {summary['refinement']['seconds_after_last_frame']:.1f} s after "
            "the last frame)"),
           ("refined image", summary["files"].get("refined_preview", ""))] if refined_quality else []),
        ("network image", summary["files"].get("preview", "")),
        ("raw frames (CXI)", summary["files"]["raw"]),
    ]:  # fmt: skip
        table.add_row(key, value)
    console.print(table)
    lost = report.frames_sent - summary["frames_written"]
    return 0 if lost == 0 else 1


# -------------------------------------------------------------------------------------------------- parser
def _add_cxi_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--translation",
        choices=("sample", "probe"),
        default="sample",
        help="CXI translation moves the sample (CXI definition: probe position = -translation) or is the probe's",
    )
    parser.add_argument(
        "--ignore-basis", action="store_true", help="keep CXI frames as stored instead of orienting by basis_vectors"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgeray",
        description="EdgeRay: real-time analysis of synchrotron X-ray ptychography and tomography.",
    )
    parser.add_argument("--version", action="version", version=f"edgeray {__version__}")
    groups = parser.add_subparsers(dest="group", metavar="GROUP", required=True)

    simulate = groups.add_parser("simulate", help="simulate scans with ground truth (ptycho, tomo)")
    kinds = simulate.add_subparsers(dest="kind", metavar="KIND", required=True)
    defaults = PtychoSimConfig()
    p = kinds.add_parser("ptycho", help="far-field ptychography scan -> CXI file", description=PtychoSimConfig.__doc__)
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
    p.add_argument("--beamstop-px", type=float, default=0.0, help="central beamstop radius, pixels (masked)")
    p.add_argument("--saturation", type=float, default=None, help="detector saturation level, counts")
    p.add_argument("--compression", choices=COMPRESSIONS, default="gzip", help="frame compression")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--preview", type=Path, default=None, help="also write a PNG preview here")
    p.set_defaults(func=cmd_simulate_ptycho)

    tdefaults = TomoSimConfig()
    t = kinds.add_parser(
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
    t.add_argument("--seed", type=int, default=0, help="random seed")
    t.add_argument("--preview", type=Path, default=None, help="also write a PNG preview here")
    t.set_defaults(func=cmd_simulate_tomo)

    info = groups.add_parser("info", help="summarize and validate a file (CXI, product, Data Exchange)")
    info.add_argument("file", type=Path)
    info.add_argument("--json", action="store_true", help="print JSON instead of tables")
    info.add_argument("--no-scan", action="store_true", help="skip reading every frame for NaN/negative counts")
    _add_cxi_flags(info)
    info.set_defaults(func=cmd_info)

    view = groups.add_parser("view", help="write a PNG preview of a file")
    view.add_argument("file", type=Path)
    view.add_argument("-o", "--output", type=Path, required=True, help="output PNG")
    view.add_argument("--frame", type=int, default=0, help="which diffraction frame to show (CXI)")
    _add_cxi_flags(view)
    view.set_defaults(func=cmd_view)

    ptycho = groups.add_parser("ptycho", help="iterative ptychography reconstruction")
    ptycho_cmds = ptycho.add_subparsers(dest="action", metavar="ACTION", required=True)
    r = ptycho_cmds.add_parser("reconstruct", help="reconstruct a CXI scan -> product HDF5, PNG, JSON")
    r.add_argument("scan", type=Path, help="CXI file")
    r.add_argument("-o", "--output", type=Path, required=True, help="product HDF5 file")
    r.add_argument("--engine", choices=("lsqml", "rpie", "epie", "mlcg"), default="lsqml", help="engine")
    r.add_argument("--epochs", type=int, default=50, help="passes over the data")
    r.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    r.add_argument("--batch-size", type=int, default=None, help="frames per update (engine default)")
    r.add_argument("--probe-modes", type=int, default=None, help="incoherent probe modes (default 1)")
    r.add_argument("--fixed-probe", action="store_true", help="do not refine the probe")
    r.add_argument("--position-correction", action="store_true", help="refine scan positions (lsqml, rpie, epie)")
    r.add_argument("--noise", choices=("gaussian", "poisson"), default=None, help="noise model (lsqml, mlcg)")
    r.add_argument(
        "--momentum",
        type=float,
        default=None,
        help="low-pass momentum after each epoch, 0 off (lsqml default 0.8; others 0; not with --nproc)",
    )
    r.add_argument("--near-field", action="store_true", help="Fresnel (near-field) propagation")
    r.add_argument(
        "--focus-to-sample-m", type=float, default=None, help="near field: focus-sample distance (magnified geometry)"
    )
    r.add_argument("--probe", type=Path, default=None, help="start probe file (.npy, CXI, product)")
    r.add_argument("--true-probe", action="store_true", help="start from a simulated file's ground-truth probe")
    r.add_argument("--nproc", type=int, default=None, help="run across N local ranks (gloo; NCCL on cuda)")
    r.add_argument("--distributed", action="store_true", help="run as one rank of torchrun's process group")
    _add_cxi_flags(r)
    r.set_defaults(func=cmd_ptycho_reconstruct)

    nn_group = groups.add_parser("nn", help="neural-network surrogates (PtychoNN, compact edge model)")
    nn_cmds = nn_group.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = nn_cmds.add_parser("make-trainset", help="build a training set (HDF5) from simulations or a reconstruction")
    m.add_argument("-o", "--output", type=Path, required=True, help="training-set HDF5 file")
    m.add_argument("--simulate", type=int, default=None, help="simulate this many frames (diverse objects, doses)")
    m.add_argument("--scan", type=Path, default=None, help="a measured scan (CXI) ...")
    m.add_argument("--labels", type=Path, default=None, help="... and its iterative reconstruction (product)")
    m.add_argument("--frame-size", type=int, default=64)
    m.add_argument("--step-px", type=float, default=8.0)
    m.add_argument("--scan-path", dest="scan_kind", choices=SCANS, default="spiral", help="scan path of simulations")
    m.add_argument("--probe", default="focused", help="probe of the simulations (focused, zoneplate, gaussian, FILE)")
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(func=cmd_nn_make_trainset)
    t = nn_cmds.add_parser("train", help="train a model on a training set, or the edge model on the corpus")
    t.add_argument("trainset", type=Path, nargs="?", default=None, help="training set (HDF5); omit with --corpus")
    t.add_argument("-o", "--output", type=Path, required=True, help="model directory")
    t.add_argument("--model", choices=("edge", "compact", "ptychonn"), default=None,
                   help="edge (with --corpus), compact or ptychonn (stored sets; default compact)")  # fmt: skip
    t.add_argument("--width", type=int, default=None, help="base channels (edge and compact 8, ptychonn 32)")
    t.add_argument("--corpus", action="store_true", help="train on the procedural corpus, generated as it trains")
    t.add_argument("--steps", type=int, default=20000, help="corpus: optimizer steps")
    t.add_argument("--objects-per-step", type=int, default=16, help="corpus: objects per step (8 frames each)")
    t.add_argument("--photons", default="1e2,1e6", help="corpus: range of mean counts per frame, LOW,HIGH")
    t.add_argument("--physics-weight", type=float, default=0.1, help="corpus: weight of the Poisson deviance")
    t.add_argument("--slope-weight", type=float, default=1.0, help="corpus: weight of the phase-slope term")
    t.add_argument("--dense", type=int, default=0, help="edge: width of a dense mixing layer (0: none)")
    t.add_argument("--probe", default="focused", help="edge: the probe (focused, zoneplate, gaussian, FILE)")
    t.add_argument("--probe-diameter-px", type=float, default=None, help="edge: beam diameter, object pixels")
    t.add_argument("--checkpoint-every", type=int, default=500, help="corpus: steps between checkpoints")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    t.add_argument("--depth", type=int, default=3)
    t.add_argument("--frame-size", type=int, default=64)
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (cosine; stored sets 5e-3, corpus 2e-3)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", action="store_true", help="continue from the model directory's last epoch")
    t.add_argument(
        "--loader",
        choices=("torch", "solar"),
        default="torch",
        help="torch DataLoader, or the SOLAR loader (same batches, buffer, coalesced reads)",
    )
    t.add_argument("--buffer-mb", type=float, default=1024, help="SOLAR loader buffer, MiB")
    t.set_defaults(func=cmd_nn_train)
    pub = nn_cmds.add_parser("publish", help="add a model to a registry (edges following it swap to it)")
    pub.add_argument("model_dir", type=Path)
    pub.add_argument("--registry", type=Path, required=True, help="registry directory")
    pub.add_argument("--provenance", default=None, help="JSON object: source scans, engine, epochs, metrics")
    pub.add_argument("--no-switch", action="store_true", help="publish without pointing CURRENT at it")
    pub.set_defaults(func=cmd_nn_publish)

    i = nn_cmds.add_parser("infer", help="invert a scan with a model and stitch the patches -> product")
    i.add_argument("scan", type=Path)
    i.add_argument("-o", "--output", type=Path, required=True, help="product HDF5 file")
    i.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped edge model)")
    i.add_argument("--device", default="cpu")
    i.add_argument("--batch", type=int, default=256)
    i.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto")
    _add_cxi_flags(i)
    i.set_defaults(func=cmd_nn_infer)
    f = nn_cmds.add_parser("finetune", help="fine-tune an edge model on a scan's own frames (no labels)")
    f.add_argument("scan", type=Path, help="a scan (CXI)")
    f.add_argument("-o", "--output", type=Path, required=True, help="new model directory")
    f.add_argument("--model", type=Path, default=None, help="edge model to start from (default: the shipped one)")
    f.add_argument("--probe", type=Path, default=None,
                   help="probe (product, CXI, .npy) when the scan has none; else estimated from the data")  # fmt: skip
    f.add_argument("--epochs", type=int, default=3, help="passes over the scan's frames")
    f.add_argument("--lr", type=float, default=3e-4)
    f.add_argument("--overlap-weight", type=float, default=1.0, help="weight of the neighbours' overlap term")
    f.add_argument("--device", default="cpu")
    f.add_argument("--seed", type=int, default=0)
    _add_cxi_flags(f)
    f.set_defaults(func=cmd_nn_finetune)
    e = nn_cmds.add_parser("evaluate", help="what a model is worth: phase SSIM on unseen scans beside LSQML")
    e.add_argument("model", type=Path, nargs="?", default=None, help="model directory (default: the shipped one)")
    e.add_argument("--scan", type=Path, default=None, help="also (or only, without --simulate) this scan (CXI)")
    e.add_argument("--simulate", action="store_true", help="the simulated cases (the default without --scan)")
    e.add_argument("--pairs", type=int, default=8, help="unseen object pairs at 1e5 photons")
    e.add_argument("--frames", type=int, default=900, help="frames per simulated scan")
    e.add_argument("--lsqml-epochs", type=int, default=30, help="LSQML epochs beside the network (0: none)")
    e.add_argument("--quick", action="store_true", help="only the unseen-object cases")
    e.add_argument("-o", "--output", type=Path, default=None, help="JSON file for the table")
    e.add_argument("--write-card", action="store_true", help="record the figures in the model's card")
    _add_cxi_flags(e)
    e.set_defaults(func=cmd_nn_evaluate)

    tomo = groups.add_parser("tomo", help="tomography: reconstruct Data Exchange scans, denoise slices")
    tomo_cmds = tomo.add_subparsers(dest="action", metavar="ACTION", required=True)
    tr = tomo_cmds.add_parser("recon", help="Data Exchange raw scan -> reconstruction (HDF5), PNG, JSON")
    tr.add_argument("input", type=Path, help="Data Exchange file with /exchange/data, data_white, data_dark, theta")
    tr.add_argument("-o", "--output", type=Path, required=True, help="reconstruction file (Data Exchange)")
    tr.add_argument("--algo", choices=("gridrec", "fbp", "sirt", "cgls"), default="gridrec",
                    help="gridrec: FBP by NUFFT (fast, CPU); fbp: backprojection (CPU/CUDA); sirt; cgls")  # fmt: skip
    tr.add_argument("--center", default="auto", help="rotation-axis column in pixels, or 'auto'")
    tr.add_argument("--filter", default="shepp-logan", help="ramp, shepp-logan, cosine, hann, hamming, parzen")
    tr.add_argument("--rings", action="store_true", help="remove stripes (ring artifacts) before reconstruction")
    tr.add_argument("--zingers", type=float, default=0.0, help="replace outliers above this relative deviation")
    tr.add_argument("--slices", default=None, help="detector rows FIRST:LAST (default: all)")
    tr.add_argument("--chunk", type=int, default=16, help="slices read and reconstructed at once")
    tr.add_argument("--iterations", type=int, default=100, help="SIRT / CGLS iterations")
    tr.add_argument("--device", default="cpu", help="cpu or cuda (fbp, sirt)")
    tr.set_defaults(func=cmd_tomo_recon)

    td = tomo_cmds.add_parser("train-denoiser", help="train a TomoGAN denoiser (pairs: a file, simulation or tooth)")
    td.add_argument("-o", "--output", type=Path, required=True, help="model directory to write")
    source = td.add_mutually_exclusive_group()
    source.add_argument("--pairs", type=Path, default=None, help="pairs file (/noisy, /clean)")
    source.add_argument("--simulate", type=int, default=16, help="simulated phantom volumes (default source)")
    source.add_argument("--tooth", type=Path, default=None, help="Data Exchange scan: sparse vs. all angles")
    source.add_argument("--stream", type=int, default=None,
                        help="simulated streams of N phantoms: early (sparse) stream slices vs. the truth")  # fmt: skip
    td.add_argument("--size", type=int, default=128, help="simulated slice side, pixels")
    td.add_argument("--angles", type=int, default=180, help="simulated projections over 180 degrees")
    td.add_argument("--photons", type=float, default=60.0, help="simulated low dose, photons per pixel")
    td.add_argument("--sparse-stride", type=int, default=1, help="simulated: keep every Nth angle in the input")
    td.add_argument("--stride", type=int, default=8, help="tooth: keep every Nth angle in the input")
    td.add_argument("--center", default="auto", help="tooth: rotation axis column, or 'auto' (the middle)")
    td.add_argument("--depth", type=int, default=3, help="U-Net levels")
    td.add_argument("--width", type=int, default=16, help="channels at the first level")
    td.add_argument("--in-slices", type=int, default=1, help="adjacent slices in (odd)")
    td.add_argument("--steps", type=int, default=3000, help="generator updates")
    td.add_argument("--batch-size", type=int, default=8, help="patches per step")
    td.add_argument("--patch", type=int, default=64, help="patch side, pixels")
    td.add_argument("--perceptual-weight", type=float, default=0.1, help="perceptual loss weight (0: off)")
    td.add_argument("--adversarial-weight", type=float, default=1e-3, help="adversarial loss weight (0: off)")
    td.add_argument("--features", default="own", help="perceptual features: own, none, or a VGG19 weights file")
    td.add_argument("--pixel-loss", choices=("mse", "l1"), default="mse", help="the pixel term of the loss")
    td.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine schedule down to 1/20)")
    td.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when there is one)")
    td.add_argument("--seed", type=int, default=0)
    td.set_defaults(func=cmd_tomo_train_denoiser)

    tn = tomo_cmds.add_parser("denoise", help="denoise reconstructed slices (/exchange/data) with TomoGAN")
    tn.add_argument("input", type=Path, help="reconstruction file, /exchange/data (slices, Y, X)")
    tn.add_argument("-o", "--output", type=Path, required=True, help="denoised reconstruction file")
    tn.add_argument("--model", type=Path, default=None, help="denoiser directory (default: the shipped one)")
    tn.add_argument("--device", default="auto", help="cpu, cuda or auto (CUDA when there is one)")
    tn.set_defaults(func=cmd_tomo_denoise)

    loader = groups.add_parser("loader", help="training-data loader: policies at scale (plans only, no data)")
    loader_cmds = loader.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = loader_cmds.add_parser("simulate", help="reads and hit rates of SOLAR, LRU, frequency and no buffer")
    ls.add_argument("--samples", type=int, default=100_000, help="training-set size, samples")
    ls.add_argument("--epochs", type=int, default=5)
    ls.add_argument("--ranks", type=int, default=32)
    ls.add_argument("--batch-per-rank", type=int, default=32, help="even share of a global batch")
    ls.add_argument("--buffer-fraction", type=float, default=0.25, help="all ranks' buffers / data set size")
    ls.add_argument("--sample-bytes", type=int, default=49156, help="bytes per sample (64^2 frame + 2 labels)")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--rows-per-chunk", type=int, default=1, help="samples per HDF5 chunk (1: sample by sample)")
    ls.add_argument("-o", "--output", type=Path, default=Path("loader_policies.png"), help="figure (PNG)")
    ls.set_defaults(func=cmd_loader_simulate)

    workflow = groups.add_parser("workflow", help="edge-to-HPC flow on Parsl: reconstruct, label, fine-tune, deploy")
    workflow_cmds = workflow.add_subparsers(dest="action", metavar="ACTION", required=True)
    wr = workflow_cmds.add_parser("run", help="run the flow over scans (CXI files), stages overlapped")
    wr.add_argument("scans", type=Path, nargs="*", help="scan files, in acquisition order")
    wr.add_argument(
        "--follow",
        type=Path,
        default=None,
        help="instead of scan files: an edge service's --out folder; each scan is taken as it ends",
    )
    wr.add_argument("--n-scans", type=int, default=None, help="with --follow: stop after this many scans")
    wr.add_argument("--idle-timeout", type=float, default=600.0,
                    help="with --follow: stop when no scan has ended for this long, s")  # fmt: skip
    wr.add_argument("--registry", type=Path, required=True, help="model registry the edge follows")
    wr.add_argument("--out", type=Path, default=Path("workflow"), help="work folder (products, labels, models)")
    wr.add_argument("--config", default="local", help="'local' or a Parsl config file (see workflow/configs/)")
    wr.add_argument("--epochs", type=int, default=30, help="LSQML epochs per scan")
    wr.add_argument("--finetune-epochs", type=int, default=5, help="fine-tuning epochs per new label set")
    wr.add_argument("--sequential", action="store_true", help="run the tasks one after another (no overlap)")
    wr.add_argument("--replay", default="all",
                    help="'all' labels in every fine-tuning, or N frames of earlier scans with the newest")  # fmt: skip
    wr.add_argument("--labels", choices=("lsqml", "physics"), default="lsqml",
                    help="learn from LSQML's patches, or from the scan's own frames (physics, no labels)")  # fmt: skip
    wr.set_defaults(func=cmd_workflow_run)

    demo = groups.add_parser("demo", help="the main job: live streaming on a simulated scan, all local")
    demo.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    demo.add_argument("--frames", type=int, default=16000, help="frames in the simulated scan")
    demo.add_argument("--rate", type=float, default=2000.0, help="detector frame rate, Hz")
    demo.add_argument("--step-px", type=float, default=4.0, help="scan step, object pixels")
    demo.add_argument("--photons", type=float, default=1e5, help="mean photons per frame")
    demo.add_argument("--seed", type=int, default=3)
    demo.add_argument("--port", type=int, default=8765, help="live-view port on 127.0.0.1 (0: any free port)")
    demo.add_argument("--hold", type=float, default=5.0, help="seconds the live view stays up after the scan")
    demo.add_argument("--model", type=Path, default=None, help="edge model directory (default: the shipped one)")
    demo.add_argument("--no-refine", action="store_true", help="the network's image only (no live refinement)")
    demo.add_argument("--refine-tail-s", type=float, default=60.0, help="seconds of refinement after the last frame")
    demo.set_defaults(func=cmd_demo)

    detector = groups.add_parser("detector", help="detector stand-in: stream a scan to an edge service")
    detector_cmds = detector.add_subparsers(dest="action", metavar="ACTION", required=True)
    d = detector_cmds.add_parser("replay", help="send a CXI or Data Exchange file (or --simulate) at a steady rate")
    d.add_argument("scan_file", type=Path, nargs="?", help="CXI file to replay")
    d.add_argument("--simulate", action="store_true", help="simulate the scan instead (options below)")
    d.add_argument("--n-positions", type=int, default=4000, help="frames to simulate")
    d.add_argument("--step-px", type=float, default=4.0, help="simulated scan step, object pixels")
    d.add_argument("--photons", type=float, default=1e5, help="simulated mean photons per frame")
    d.add_argument("--object", default=PtychoSimConfig().object, help="simulated object (see simulate ptycho)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--rate", type=float, default=2000.0, help="frames per second (0: as fast as possible)")
    d.add_argument("--endpoint", default="tcp://127.0.0.1:5555", help="the edge service's --listen endpoint")
    d.add_argument("--scan-id", default=None, help="scan name (default: random)")
    d.add_argument("--repeat", type=int, default=1, help="send the scan this many times, as separate scans")
    d.add_argument("--cycles", type=int, default=1, help="send the frames this many times over, as one scan")
    d.add_argument(
        "--order",
        choices=("golden", "bit-reversed", "sequential"),
        default="golden",
        help="tomography files: the angle order projections are sent in",
    )
    d.add_argument("--rows", default=None, help="tomography files: detector rows FIRST:LAST to send (default all)")
    d.add_argument("--curve-keys", type=Path, default=None, help="CurveZMQ key folder (edgeray keys)")
    _add_cxi_flags(d)
    d.set_defaults(func=cmd_detector_replay)

    e = groups.add_parser("edge", help="the edge service: receive, write, infer, stitch, live view")
    e.add_argument(
        "--mode",
        choices=("ptycho", "tomo"),
        default="ptycho",
        help="ptycho: invert frames, stitch a mosaic; tomo: streaming slices of interleaved projections",
    )
    e.add_argument("--update-every", type=int, default=16, help="tomo: projections between slice updates")
    e.add_argument("--capacity", type=int, default=None, help="tomo: projections in the buffer (default: a half turn)")
    e.add_argument("--enhancer", default="shipped", help="tomo: 'shipped' stream TomoGAN, a model directory, or 'off'")
    e.add_argument("--listen", default="tcp://127.0.0.1:5555", help="PULL endpoint detectors connect to")
    e.add_argument("--out", type=Path, default=Path("run"), help="folder for run files, products and summaries")
    e.add_argument("--model", type=Path, default=None, help="surrogate folder (default: the shipped edge model)")
    e.add_argument("--max-batch", type=int, default=64, help="largest inference batch, frames")
    e.add_argument("--max-wait-ms", type=float, default=5.0, help="longest a frame waits for its batch, ms")
    e.add_argument("--infer-threads", type=int, default=1, help="threads for the network (others need a core)")
    e.add_argument("--ring-frames", type=int, default=8192,
                   help="frames held in shared memory per scan: how long a stalled stage costs nothing")  # fmt: skip
    e.add_argument("--infer-workers", type=int, default=1,
                   help="network calls at once, each on --infer-threads threads (for cores to spare)")  # fmt: skip
    e.add_argument("--registry", type=Path, default=None,
                   help="model registry to follow: run CURRENT, swap to new versions between batches")  # fmt: skip
    e.add_argument("--http", default="127.0.0.1:8765", help="live view HOST:PORT, or 'off'")
    e.add_argument("--view-fps", type=float, default=3.0,
                   help="live view updates per second (10 beside a browser on 2 cores: p99 latency 114-846 ms; "
                        "3: 74-77 ms)")  # fmt: skip
    e.add_argument("--publish", default="tcp://127.0.0.1:5556", help="PUB endpoint for mosaic and stats, or 'off'")
    e.add_argument("--scans", type=int, default=None, help="exit after this many scans (default: run until stopped)")
    e.add_argument("--hold", type=float, default=0.0, help="keep the live view up this many seconds at exit")
    e.add_argument("--curve-keys", type=Path, default=None, help="CurveZMQ key folder; needed off loopback")
    e.add_argument("--refine", action="store_true",
                   help="refine the live image in the spare CPU time (writes <scan>_refined.h5)")  # fmt: skip
    e.add_argument("--refine-engine", choices=("lsqml", "rpie"), default="lsqml", help="engine of the refinement")
    e.add_argument("--refine-tail-s", type=float, default=10.0, help="seconds of refinement after a scan's end")
    e.add_argument("--refine-probe", type=Path, default=None, help="probe for refinement (default: the model's)")
    e.add_argument("--refine-seed", choices=("network-detail", "network", "flat"), default="network-detail",
                   help="where the refinement starts: the mosaic without its large-scale phase (default), "
                   "the mosaic, or a flat object")  # fmt: skip
    e.set_defaults(func=cmd_edge)

    k = groups.add_parser("keys", help="make CurveZMQ keys for an edge service and its detectors")
    k.add_argument("folder", type=Path)
    k.set_defaults(func=cmd_keys)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 validation problems, 2 bad input, 130 Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        if isinstance(getattr(args, "device", None), str):
            from edgeray.device import resolve_device

            resolve_device(args.device)  # before any work: a GPU asked for and none here is said at once
        return args.func(args)
    except EdgeRayFormatError as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: files are written atomically, so none was left half-written")
        return 130


if __name__ == "__main__":
    sys.exit(main())
