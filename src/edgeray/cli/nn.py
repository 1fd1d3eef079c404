"""``edgeray nn ...``: the neural-network surrogates (training sets, training, inference, evaluation)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from edgeray.cli._common import add_cxi_flags, console, cxi_options, defaults_of, progress_bar, write_summary
from edgeray.sim import SCANS, PtychoSimConfig

SIM = PtychoSimConfig  # the simulations' defaults


def _given(**values):
    """The keyword arguments that were given (not None): the options' own defaults stand for the others."""
    return {name: value for name, value in values.items() if value is not None}


def add_nn_make_trainset(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_nn_make_trainset``."""
    m = commands.add_parser("make-trainset", help="build a training set (HDF5) from simulations or a reconstruction")
    m.add_argument("-o", "--output", type=Path, required=True, help="training-set HDF5 file")
    m.add_argument("--simulate", type=int, default=None, help="simulate this many frames (diverse objects, doses)")
    m.add_argument("--scan", type=Path, default=None, help="a measured scan (CXI) ...")
    m.add_argument("--labels", type=Path, default=None, help="... and its iterative reconstruction (product)")
    m.add_argument("--frame-size", type=int, default=SIM.frame_size)
    m.add_argument("--step-px", type=float, default=SIM.step_px)
    m.add_argument("--scan-path", dest="scan_kind", choices=SCANS, default=SIM.scan, help="scan path of simulations")
    m.add_argument("--probe", default=SIM.probe, help="probe of the simulations (focused, zoneplate, gaussian, FILE)")
    m.add_argument("--seed", type=int, default=SIM.seed)
    m.set_defaults(func=cmd_nn_make_trainset)


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
    from edgeray.nn.corpus_training import CorpusTrainOptions, train_on_corpus
    from edgeray.nn.models import ModelConfig
    from edgeray.nn.report import write_corpus_card

    if args.model not in (None, "edge"):
        raise ValueError(f"--corpus trains the edge model, not --model {args.model}")
    if args.threads:
        torch.set_num_threads(args.threads)
    low, high = (float(v) for v in args.photons.split(","))
    config = ModelConfig("edge", args.width, args.depth, args.frame_size, args.probe, args.probe_diameter_px,
                         args.dense)  # fmt: skip
    corpus = CorpusConfig(frame_size=args.frame_size, probe=args.probe, probe_diameter_px=args.probe_diameter_px,
                          photons=(low, high), seed=args.seed)  # fmt: skip
    options = CorpusTrainOptions(steps=args.steps, objects_per_step=args.objects_per_step,
                                 physics_weight=args.physics_weight, slope_weight=args.slope_weight,
                                 checkpoint_every=args.checkpoint_every, device=args.device,
                                 **_given(learning_rate=args.lr))  # fmt: skip
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


def add_nn_train(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_nn_train``."""
    from edgeray.nn.corpus import CorpusConfig
    from edgeray.nn.corpus_training import CorpusTrainOptions as C
    from edgeray.nn.models import ModelConfig as M
    from edgeray.nn.set_training import TrainOptions as T

    t = commands.add_parser("train", help="train a model on a training set, or the edge model on the corpus")
    t.add_argument("trainset", type=Path, nargs="?", default=None, help="training set (HDF5); omit with --corpus")
    t.add_argument("-o", "--output", type=Path, required=True, help="model directory")
    t.add_argument("--model", choices=("edge", "compact", "ptychonn"), default=None,
                   help="edge (with --corpus), compact or ptychonn (stored sets; default compact)")  # fmt: skip
    t.add_argument("--width", type=int, default=None, help="base channels (edge and compact 8, ptychonn 32)")
    t.add_argument("--corpus", action="store_true", help="train on the procedural corpus, generated as it trains")
    t.add_argument("--steps", type=int, default=C.steps, help="corpus: optimizer steps")
    t.add_argument(
        "--objects-per-step", type=int, default=C.objects_per_step, help="corpus: objects per step (8 frames each)"
    )
    t.add_argument(
        "--photons",
        default=",".join(f"{v:g}" for v in CorpusConfig.photons),
        help="corpus: range of mean counts per frame, LOW,HIGH",
    )
    t.add_argument(
        "--physics-weight", type=float, default=C.physics_weight, help="corpus: weight of the Poisson deviance"
    )
    t.add_argument("--slope-weight", type=float, default=C.slope_weight, help="corpus: weight of the phase-slope term")
    t.add_argument("--dense", type=int, default=M.dense, help="edge: width of a dense mixing layer (0: none)")
    t.add_argument("--probe", default=M.probe, help="edge: the probe (focused, zoneplate, gaussian, FILE)")
    t.add_argument("--probe-diameter-px", type=float, default=None, help="edge: beam diameter, object pixels")
    t.add_argument("--checkpoint-every", type=int, default=C.checkpoint_every, help="corpus: steps between checkpoints")
    t.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    t.add_argument("--depth", type=int, default=M.depth, help="U-Net levels")
    t.add_argument("--frame-size", type=int, default=M.frame_size, help="frame side, pixels")
    t.add_argument("--epochs", type=int, default=T.epochs, help="stored sets: passes over the set")
    t.add_argument("--batch", type=int, default=T.batch_size, help="stored sets: frames per batch")
    t.add_argument("--lr", type=float, default=None, help="peak learning rate (cosine; stored sets 5e-3, corpus 2e-3)")
    t.add_argument("--device", default=T.device, help="cpu, cuda or auto")
    t.add_argument("--workers", type=int, default=T.workers, help="loader processes")
    t.add_argument("--seed", type=int, default=T.seed)
    t.add_argument("--resume", action="store_true", help="continue from the model directory's last epoch")
    t.add_argument(
        "--loader",
        choices=("torch", "solar"),
        default=T.loader,
        help="torch DataLoader, or the SOLAR loader (same batches, buffer, coalesced reads)",
    )
    t.add_argument("--buffer-mb", type=float, default=T.buffer_bytes / 2**20, help="SOLAR loader buffer, MiB")
    t.set_defaults(func=cmd_nn_train)


def cmd_nn_train(args: argparse.Namespace) -> int:
    from edgeray.nn.models import ModelConfig
    from edgeray.nn.set_training import TrainOptions, train

    if args.corpus:
        return _train_on_corpus(args)
    if args.trainset is None:
        raise ValueError("give a training set (HDF5), or --corpus to train the edge model on the procedural corpus")
    if args.model == "edge":
        raise ValueError("the edge model trains on the corpus (--corpus); stored sets train compact or ptychonn")
    args.model = args.model or "compact"
    config = ModelConfig(args.model, args.width, args.depth, args.frame_size)
    options = TrainOptions(args.epochs, args.batch, seed=args.seed, device=args.device, **_given(learning_rate=args.lr),
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


def add_nn_publish(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_nn_publish``."""
    pub = commands.add_parser("publish", help="add a model to a registry (edges following it swap to it)")
    pub.add_argument("model_dir", type=Path)
    pub.add_argument("--registry", type=Path, required=True, help="registry directory")
    pub.add_argument("--provenance", default=None, help="JSON object: source scans, engine, epochs, metrics")
    pub.add_argument("--no-switch", action="store_true", help="publish without pointing CURRENT at it")
    pub.set_defaults(func=cmd_nn_publish)


def cmd_nn_publish(args: argparse.Namespace) -> int:
    from edgeray.nn.registry import Registry

    provenance = json.loads(args.provenance) if args.provenance else {}
    version = Registry(args.registry).publish(args.model_dir, provenance, make_current=not args.no_switch)
    state = "now CURRENT" if not args.no_switch else "not made current"
    console.print(f"[green]published[/] {args.model_dir} as {version} in {args.registry} ({state})")
    return 0


def add_nn_infer(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_nn_infer``."""
    from edgeray.nn.infer import infer_scan

    defaults = defaults_of(infer_scan)
    i = commands.add_parser("infer", help="invert a scan with a model and stitch the patches -> product")
    i.add_argument("scan", type=Path)
    i.add_argument("-o", "--output", type=Path, required=True, help="product HDF5 file")
    i.add_argument("--model", type=Path, default=None, help="model directory (default: the shipped edge model)")
    i.add_argument("--device", default=defaults["device"], help="cpu, cuda or auto")
    i.add_argument("--batch", type=int, default=defaults["batch_size"], help="frames per network call")
    i.add_argument("--backend", choices=("auto", "onnx", "torch"), default=defaults["backend"],
                   help="ONNX Runtime or torch (auto: ONNX Runtime on CPU where it is installed)")  # fmt: skip
    add_cxi_flags(i)
    i.set_defaults(func=cmd_nn_infer)


def cmd_nn_infer(args: argparse.Namespace) -> int:
    import warnings

    from edgeray.io import CXIFile, write_product
    from edgeray.nn.infer import infer_scan
    from edgeray.ptycho.evaluate import compare_on_scanned_region
    from edgeray.viz import save_preview

    with CXIFile(args.scan, **cxi_options(args)) as cxi:
        scan = cxi.load()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = infer_scan(scan, args.model, args.device, args.batch, args.backend)
        except ValueError as error:
            raise ValueError(f"{args.scan}: {error}") from None
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


def add_nn_finetune(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_nn_finetune``."""
    from edgeray.nn.finetune import REGIMES, FinetuneOptions

    d = FinetuneOptions()
    f = commands.add_parser("finetune", help="teach a model a scan's sample (labels from LSQML and/or physics)")
    f.add_argument("scan", type=Path, help="a scan (CXI)")
    f.add_argument("-o", "--output", type=Path, required=True, help="new model directory")
    f.add_argument("--model", type=Path, default=None, help="edge or group model to start from (default: shipped)")
    f.add_argument("--probe", type=Path, default=None,
                   help="probe (product, CXI, .npy) when the scan has none; else estimated from the data")  # fmt: skip
    f.add_argument("--regime", choices=REGIMES, default=d.regime,
                   help="physics (label-free), labels (LSQML of the frames), both, twin (frames simulated from that "
                   "LSQML reconstruction); auto: twin")  # fmt: skip
    f.add_argument("--group-size", type=int, default=d.group_size, help="frames per group (1: single-frame model)")
    f.add_argument("--epochs", type=int, default=d.epochs,
                   help=f"passes over the scan's frames (twin: rounds of {d.twin_steps} steps)")  # fmt: skip
    f.add_argument("--lr", type=float, default=d.learning_rate)
    f.add_argument("--overlap-weight", type=float, default=d.overlap_weight, help="weight of the overlap term")
    f.add_argument("--lsqml-epochs", type=int, default=d.lsqml_epochs, help="LSQML epochs for the labels")
    f.add_argument("--device", default=d.device)
    f.add_argument("--seed", type=int, default=d.seed)
    add_cxi_flags(f)
    f.set_defaults(func=cmd_nn_finetune)


def cmd_nn_finetune(args: argparse.Namespace) -> int:
    """Teach a model a scan's sample: LSQML labels of its frames and/or the physics of its frames."""
    from edgeray.io import CXIFile
    from edgeray.nn.finetune import FinetuneOptions, finetune_on_scan
    from edgeray.nn.report import write_corpus_card

    with CXIFile(args.scan, **cxi_options(args)) as cxi:
        scan = cxi.load()
    options = FinetuneOptions(regime=args.regime, group_size=args.group_size, epochs=args.epochs,
                              learning_rate=args.lr, overlap_weight=args.overlap_weight,
                              lsqml_epochs=args.lsqml_epochs, device=args.device, seed=args.seed)  # fmt: skip
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


def add_nn_evaluate(commands: argparse._SubParsersAction) -> None:
    """The arguments of ``cmd_nn_evaluate``."""
    from edgeray.nn.evaluate import EvaluationOptions as E

    e = commands.add_parser("evaluate", help="what a model is worth: phase SSIM on unseen scans beside LSQML")
    e.add_argument("model", type=Path, nargs="?", default=None, help="model directory (default: the shipped one)")
    e.add_argument("--scan", type=Path, default=None, help="also (or only, without --simulate) this scan (CXI)")
    e.add_argument("--simulate", action="store_true", help="the simulated cases (the default without --scan)")
    e.add_argument("--pairs", type=int, default=E.pairs, help="unseen object pairs at 1e5 photons")
    e.add_argument("--frames", type=int, default=E.frames, help="frames per simulated scan")
    e.add_argument("--lsqml-epochs", type=int, default=E.lsqml_epochs, help="LSQML epochs beside the network (0: none)")
    e.add_argument("--quick", action="store_true", help="only the unseen-object cases")
    e.add_argument("-o", "--output", type=Path, default=None, help="JSON file for the table")
    e.add_argument("--write-card", action="store_true", help="record the figures in the model's card")
    add_cxi_flags(e)
    e.set_defaults(func=cmd_nn_evaluate)


def cmd_nn_evaluate(args: argparse.Namespace) -> int:
    """Score a model on unseen simulated scans (and a given scan) beside LSQML; print and write the table."""
    from edgeray.io import CXIFile
    from edgeray.nn.evaluate import EvaluationOptions, evaluate_model

    args.simulate = args.simulate or args.scan is None
    scan = None
    if args.scan is not None:
        with CXIFile(args.scan, **cxi_options(args)) as cxi:
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


def register(groups: argparse._SubParsersAction) -> None:
    """Add this module's commands to ``edgeray``."""
    nn_group = groups.add_parser("nn", help="neural-network surrogates (PtychoNN, compact edge model)")
    nn_cmds = nn_group.add_subparsers(dest="action", metavar="ACTION", required=True)
    add_nn_make_trainset(nn_cmds)
    add_nn_train(nn_cmds)
    add_nn_publish(nn_cmds)
    add_nn_infer(nn_cmds)
    add_nn_finetune(nn_cmds)
    add_nn_evaluate(nn_cmds)
