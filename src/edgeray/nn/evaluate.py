"""What a surrogate is worth: phase SSIM of its stitched image on scans it never saw, beside LSQML's.

Cases (simulated with the shipped probe and geometry, objects from images no EdgeRay model trains on):

- ``unseen``: 900 frames of 64 x 64 at 1e5 photons, step 8 px, one scan per object pair; the median is the headline;
- ``dose 1e4``, ``dose 1e3``, ``dose 1e2``: the same at lower doses (where LSQML fails first);
- ``sparse``: raster scans at 2x, 3x and 4x the dense step (overlap falling to none), where iterative engines lose
  their constraint: the regimes where a network is claimed to win (issue 32);
- ``speed``: frames/s of ONNX Runtime on this machine's cores.

A measured scan (``scan=``) with a ground truth is scored the same way; without one, the network's Poisson
deviance on the frames says how well its patches explain the data, and (with LSQML) the SSIM of the two images.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from edgeray.io import PtychoScan
from edgeray.sim import PtychoSimConfig, simulate_ptycho

#: (amplitude image, phase image, seed): unseen by every EdgeRay model (see edgeray.nn.corpus.TRAINING_IMAGES).
EVALUATION_PAIRS = (
    ("rocket", "hubble_deep_field", 5),
    ("chelsea", "coffee", 5),
    ("chelsea", "immunohistochemistry", 5),
    ("coffee", "rocket", 6),
    ("hubble_deep_field", "chelsea", 6),
    ("immunohistochemistry", "coffee", 6),
    ("camera", "astronaut", 7),
    ("astronaut", "camera", 7),
)


@dataclass
class EvaluationOptions:
    """Options of :func:`evaluate_model`.

    Attributes:
        pairs: how many of :data:`EVALUATION_PAIRS` to score at 1e5 photons (at least 6 for the headline).
        frames: frames per scan; lsqml_epochs: LSQML's epochs (0: no LSQML).
        low_dose, sparse: run those cases; doses: photons per frame of the low-dose cases; sparse_steps: multiples
            of the dense step of the sparse cases.
        threads: ONNX Runtime threads for the speed figure.
    """

    pairs: int = 8
    frames: int = 900
    lsqml_epochs: int = 30
    low_dose: bool = True
    sparse: bool = True
    doses: tuple[float, ...] = (1e4, 1e3, 1e2)
    sparse_steps: tuple[float, ...] = (2.0, 3.0, 4.0)
    threads: int = 2


def phase_ssim(product, scan: PtychoScan) -> float:
    from edgeray.ptycho.evaluate import compare_on_scanned_region

    return float(compare_on_scanned_region(product, scan.ground_truth, scan.positions_m)["ssim_phase"])


def score_scan(model_dir: str | Path | None, scan: PtychoScan, lsqml_epochs: int) -> dict:
    """Network (and LSQML, true probe start) phase SSIM on one simulated scan, and their seconds."""
    from edgeray.nn.infer import infer_scan
    from edgeray.ptycho.reconstruct import run

    result = infer_scan(scan, model_dir)
    record = {"nn_phase_ssim": phase_ssim(result.product, scan), "nn_seconds": result.seconds}
    if lsqml_epochs:
        start = time.perf_counter()
        lsqml = run(scan, "lsqml", lsqml_epochs, probe=scan.ground_truth.probe)
        record.update(lsqml_phase_ssim=phase_ssim(lsqml.product, scan), lsqml_seconds=time.perf_counter() - start)
    return record


def onnx_frames_per_s(model_dir: str | Path | None, threads: int = 2, batch: int = 256, repeats: int = 10) -> float:
    """Frames/s of the model through ONNX Runtime on ``threads`` CPU threads (input normalization included)."""
    from edgeray.nn.checkpoint import load_model
    from edgeray.nn.group import GroupNet
    from edgeray.nn.infer import cpu_runtime
    from edgeray.nn.models import normalize_frames

    model, card = load_model(model_dir)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size = card["config"]["frame_size"]
        counts = torch.poisson(torch.full((batch, size, size), 20.0))
        if isinstance(model, GroupNet):  # each frame inverted once, then fused with its neighbours
            from edgeray.nn.finetune import predict_groups
            from edgeray.nn.group import group_indices

            runtime = cpu_runtime(model, card, model_dir, "onnx")
            side = int(np.ceil(np.sqrt(batch)))
            positions = np.stack(np.divmod(np.arange(batch), side), 1) * 4.0  # a raster, 4 px apart
            groups = group_indices(positions, card["config"]["group_size"], card["config"]["group_radius_px"])

            def call() -> None:
                predict_groups(runtime, normalize_frames(counts), groups, positions, batch)
        else:
            runtime = cpu_runtime(model, card, model_dir, "onnx")

            def call() -> None:
                runtime(normalize_frames(counts))

        call()
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        return batch * repeats / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def evaluate_model(
    model_dir: str | Path | None,
    options: EvaluationOptions | None = None,
    scan: PtychoScan | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """The evaluation table of a model (see the module docstring) as a JSON-ready dict.

    Returns ``{"cases": [...], "median_unseen_nn", "median_unseen_lsqml", "frames_per_s"}``; each case has
    ``case``, ``nn_phase_ssim`` and, with LSQML, ``lsqml_phase_ssim``.
    """
    options = options or EvaluationOptions()
    say = progress or (lambda _: None)
    cases: list[dict] = []
    if scan is not None:
        say("the given scan")
        cases.append({"case": "given scan", **score_given_scan(model_dir, scan, options.lsqml_epochs)})
    base = PtychoSimConfig(n_positions=options.frames, photons=1e5)
    unseen = []
    for amplitude, phase, seed in EVALUATION_PAIRS[: options.pairs]:
        say(f"unseen objects {amplitude}, {phase}")
        config = replace(base, object=f"{amplitude},{phase}", seed=seed)
        record = {"case": f"unseen {amplitude}/{phase}, 1e5", **score_scan(model_dir, simulate_ptycho(config),
                                                                            options.lsqml_epochs)}  # fmt: skip
        unseen.append(record)
        cases.append(record)
    if options.low_dose:
        for photons in options.doses:
            for amplitude, phase, seed in EVALUATION_PAIRS[1:3]:
                say(f"dose {photons:g}, {amplitude}, {phase}")
                config = replace(base, object=f"{amplitude},{phase}", seed=seed, photons=photons)
                cases.append({"case": f"dose {photons:g} {amplitude}/{phase}",
                              **score_scan(model_dir, simulate_ptycho(config), options.lsqml_epochs)})  # fmt: skip
    if options.sparse:
        for multiple in options.sparse_steps:
            for amplitude, phase, seed in EVALUATION_PAIRS[1:3]:
                step = multiple * base.step_px
                say(f"sparse scan (step {step:g} px), {amplitude}, {phase}")
                n = max(36, round(options.frames / multiple**2))  # the same area as the dense scans
                config = replace(base, object=f"{amplitude},{phase}", seed=seed, step_px=step, scan="raster",
                                 n_positions=n)  # fmt: skip
                cases.append({"case": f"sparse (step {multiple:g}x, {step:g} px) {amplitude}/{phase}",
                              **score_scan(model_dir, simulate_ptycho(config), options.lsqml_epochs)})  # fmt: skip
    say("speed")
    result = {
        "cases": cases,
        "median_unseen_nn": float(np.median([c["nn_phase_ssim"] for c in unseen])) if unseen else None,
        "median_unseen_lsqml": (
            float(np.median([c["lsqml_phase_ssim"] for c in unseen])) if unseen and options.lsqml_epochs else None
        ),
        "frames_per_s": onnx_frames_per_s(model_dir, options.threads),
        "threads": options.threads,
        "date": time.strftime("%Y-%m-%d"),
    }
    return result


def score_given_scan(model_dir: str | Path | None, scan: PtychoScan, lsqml_epochs: int) -> dict:
    """A user's scan: ground-truth SSIM when the file has one; else the network's deviance on the frames and,
    with LSQML, the SSIM of the network's phase against LSQML's."""
    from edgeray.nn.checkpoint import load_model
    from edgeray.nn.finetune import holdout_deviance
    from edgeray.nn.infer import infer_scan

    if scan.ground_truth is not None:
        return score_scan(model_dir, scan, lsqml_epochs)
    model, _ = load_model(model_dir)
    counts = torch.from_numpy(np.asarray(scan.frames, dtype=np.float32))
    inputs = torch.sqrt(counts / counts.mean().clamp_min(1e-12))[:, None]
    valid = None if scan.mask is None else torch.from_numpy(~np.asarray(scan.mask, dtype=bool)).float()
    record = {"nn_deviance": holdout_deviance(model, inputs, valid), "nn_phase_ssim": float("nan")}
    if lsqml_epochs:
        from edgeray.metrics import compare
        from edgeray.ptycho.reconstruct import run

        nn_product = infer_scan(scan, model_dir).product
        lsqml = run(scan, "lsqml", lsqml_epochs).product
        record["nn_vs_lsqml_phase_ssim"] = float(compare(nn_product.object[0], lsqml.object[0])["ssim_phase"])
    return record
