"""What a denoiser is worth on data it was not made from: SSIM and PSNR before and after, on held-out phantom
families and reconstructors (:mod:`edgeray.tomo.denoise_corpus`), on the low-dose simulation the first TomoGAN was
judged on, and on the real tooth (1/8 of the angles against its full-angle reconstruction).

Every simulated case is drawn from seeds no training in EdgeRay uses (5000 and up).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeray.metrics import psnr, ssim
from edgeray.tomo.classical import CLASSICAL

TOOTH_FILES = (
    Path(__file__).resolve().parents[3] / "tests" / "data" / "tooth.h5",
    Path(__file__).resolve().parents[4] / "shared" / "data" / "tooth.h5",
)
TOOTH_CENTER = 296.0


@dataclass
class Case:
    """One held-out case: ``n`` slices of ``family`` scanned with every ``stride``-th angle at ``photons``, and
    reconstructed by ``reconstructor``."""

    name: str
    family: str
    reconstructor: str
    stride: int
    photons: float
    n: int = 8


def cases(quick: bool = False) -> list[Case]:
    n = 4 if quick else 12
    return [
        Case("held-out family and reconstructor, 1/16 angles, low dose", "textured_shepp", "iradon", 16, 1e2, n),
        Case("held-out family, gridrec, 1/16 angles, low dose", "textured_shepp", "gridrec", 16, 1e2, n),
        Case("held-out reconstructor (iradon), rock, 1/8 angles", "rock", "iradon", 8, 1e3, n),
        Case("training family (cells), SIRT, 1/32 angles", "cells", "sirt", 32, 1e3, n),
    ]


def _scores(outputs: np.ndarray, inputs: np.ndarray, truth: np.ndarray) -> dict:
    def mean(metric, images):
        return float(np.mean([metric(a, b) for a, b in zip(images, truth, strict=True)]))

    scores = {"ssim_in": mean(ssim, inputs), "ssim_out": mean(ssim, outputs),
              "psnr_in": mean(psnr, inputs), "psnr_out": mean(psnr, outputs)}  # fmt: skip
    for method in CLASSICAL:  # the classical denoisers beside it, on the same slices
        from edgeray.tomo.classical import denoise_volume_classical

        scores[f"ssim_{method}"] = mean(ssim, denoise_volume_classical(inputs, method))
    return scores


def evaluate_case(model, case: Case, seed: int) -> dict:
    from edgeray.sim.families import phantom_slice
    from edgeray.tomo.denoise import denoise_volume
    from edgeray.tomo.denoise_corpus import Degradation, scan_and_reconstruct

    rng = np.random.default_rng(seed)
    truth = np.stack([phantom_slice(case.family, 128, rng) for _ in range(case.n)])
    degradation = Degradation(reconstructor=case.reconstructor, stride=case.stride, photons=case.photons,
                              filter_name="ramp")  # fmt: skip
    inputs = np.stack([scan_and_reconstruct(t, degradation, rng) for t in truth])
    outputs = np.stack([denoise_volume(one, model)[0] for one in inputs])  # each slice alone, as a user's slice
    return {"case": case.name, **_scores(outputs, inputs, truth)}


def evaluate_low_dose(model, quick: bool) -> dict:
    """The first TomoGAN's own benchmark case: 60 photons, 180 angles, foam and Shepp-Logan volumes of 8 slices."""
    from edgeray.tomo.denoise import denoise_volume, simulated_pairs

    test = simulated_pairs(n_volumes=2 if quick else 4, size=128, slices=8, angles=180, low_photons=60, seed=1000)
    outputs = np.concatenate([denoise_volume(test["noisy"][i : i + 8], model) for i in range(0, len(test["noisy"]), 8)])
    return {"case": "low dose (the first TomoGAN's held-out phantoms, 60 photons)",
            **_scores(outputs, test["noisy"], test["truth"])}  # fmt: skip


def evaluate_tooth(model) -> dict | None:
    """Both rows of the tooth from every 8th angle, against the full-angle reconstruction."""
    from edgeray.tomo.denoise import denoise_volume, tooth_pairs

    path = next((p for p in TOOTH_FILES if p.exists()), None)
    if path is None:
        return None
    pairs = tooth_pairs(path, stride=8, center=TOOTH_CENTER)
    outputs = denoise_volume(pairs["noisy"], model)
    return {"case": "real tooth, 1/8 of the angles vs all", **_scores(outputs, pairs["noisy"], pairs["clean"])}


def evaluate_denoiser(
    model_dir: str | Path | None = None, quick: bool = False, progress: Callable[[str], None] | None = None
) -> dict:
    """Every case for the denoiser at ``model_dir`` (default the shipped general one) -> ``{"model", "cases"}``."""
    from edgeray.tomo.denoise import denoiser_directory, load_denoiser

    directory = denoiser_directory(model_dir if model_dir is not None else "general")
    model, _ = load_denoiser(directory)
    results = []
    for k, case in enumerate(cases(quick)):
        results.append(evaluate_case(model, case, 5000 + 100 * k))
        if progress:
            progress(case.name)
    results.append(evaluate_low_dose(model, quick))
    tooth = evaluate_tooth(model)
    if tooth is not None:
        results.append(tooth)
    return {"model": directory.name, "quick": quick, "cases": results}


def record_transfer(directory: str | Path, evaluation: dict) -> None:
    """Put an evaluation in the model's card: ``model.json`` (``transfer``) and a table in ``MODEL_CARD.md``."""
    directory = Path(directory)
    card_path = directory / "model.json"
    card = json.loads(card_path.read_text())
    card["transfer"] = evaluation
    card_path.write_text(json.dumps(card, indent=1) + "\n")
    lines = ["", "## Transfer (`edgeray tomo evaluate-denoiser`)", "", "| case | SSIM in -> out | PSNR in -> out, dB |",
             "| --- | --- | --- |"]  # fmt: skip
    for row in evaluation["cases"]:
        lines.append(f"| {row['case']} | {row['ssim_in']:.3f} -> {row['ssim_out']:.3f} | "
                     f"{row['psnr_in']:.1f} -> {row['psnr_out']:.1f} |")  # fmt: skip
    text = (directory / "MODEL_CARD.md").read_text().split("\n## Transfer")[0].rstrip("\n")
    (directory / "MODEL_CARD.md").write_text(text + "\n" + "\n".join(lines) + "\n")


def split_halves(path: str | Path, rows: tuple[int, int] | None = None, center: float | None = None):
    """A raw scan's rows reconstructed twice, from its even and from its odd angles (in angle order): ``([even,
    odd] each (S, C, C) float32, (first, last), center)``; ``rows`` default the first 8, ``center`` default found."""
    from edgeray.io import open_tomo
    from edgeray.tomo.fbp import gridrec
    from edgeray.tomo.recon import TomoOptions, find_center, preprocess_rows

    with open_tomo(path) as data:
        first, last = rows or (0, min(data.frame_shape[0], 8))
        sinograms = preprocess_rows(data, slice(first, last), TomoOptions())
        theta = np.radians(data.theta_deg)
        center = center if center is not None else find_center(data, TomoOptions())[0]
    order = np.argsort(theta)  # even and odd of the angles in order: two interleaved halves of the turn
    halves = [gridrec(sinograms[:, order[k::2]], theta[order[k::2]], center) for k in (0, 1)]
    return halves, (first, last), center


def split_angle_check(path: str | Path, rows: tuple[int, int] | None = None, model_dir: str | Path | None = None,
                      center: float | None = None) -> dict:  # fmt: skip
    """Every method on a scan's own data, no truth needed: the raw scan's even and odd angles are reconstructed
    apart (one object, independent noise); each method denoises one half and is scored against the other.

    With ``B`` the other half's reconstruction, ``E|f(A) - B|^2 = E|f(A) - x|^2 + E|B - x|^2`` for the truth ``x``
    (B's noise has mean zero and is independent of A), so ordering methods by this split error orders them by
    their error against the truth (the check Noise2Inverse trains with). Returns ``{"case", "rows", "center",
    "split_mse": {method: mean square error}, "relative": {method: over the input's}}``; lower is better.
    """
    from edgeray.tomo.classical import denoise_volume_classical
    from edgeray.tomo.denoise import denoise_volume, load_denoiser

    halves, (first, last), center = split_halves(path, rows, center)
    model, _ = load_denoiser(model_dir)
    methods = {"input": lambda x: x, "tomogan": lambda x: denoise_volume(x, model)}
    methods |= {m: (lambda x, m=m: denoise_volume_classical(x, m)) for m in CLASSICAL}
    split = {}
    for name, method in methods.items():
        a, b = method(halves[0]), method(halves[1])
        split[name] = float((np.mean((a - halves[1]) ** 2) + np.mean((b - halves[0]) ** 2)) / 2)
    return {"case": f"split angles of {Path(path).name}, rows {first}:{last}", "rows": [first, last],
            "center": float(center), "split_mse": split,
            "relative": {name: value / split["input"] for name, value in split.items()}}  # fmt: skip
