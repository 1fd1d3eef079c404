"""Self-supervised denoising from the scan itself (Noise2Inverse, Hendriksen et al. 2020): no clean target, no
simulation.

The projections are split into ``k`` disjoint, interleaved angle subsets (each covers the half turn); each subset
is reconstructed on its own, so the noise of one sub-reconstruction is independent of the others' (disjoint
projections, Poisson counts) while the object is the same. A network trained to predict one sub-reconstruction
from the mean of the others can only learn the object: its expected loss is smallest at the clean image. At the
end the prediction is averaged over the ``k`` choices of the held-out subset. This is the paper's "X:1" strategy:
it denoises the full scan.

The "1:X" strategy turns the roles round: input one subset's reconstruction (``1/k`` of the angles), target the mean
of the others. For sparse angles this is what matters: a ``1/k``-angle reconstruction's streaks depend on its own
angles, so averaged over the choice of input the target is the full-angle reconstruction less a ``1/(k-1)`` share
of the input; ``(k-1)/k`` of the prediction plus ``1/k`` of the input is then the full-angle estimate
(``input_weight`` ``1/k`` in the model's config, applied wherever the model is used). Trained on a scan's
projections, it enhances ``1/k``-angle reconstructions of that sample: a streaming scan's early stages, or a sparse
rescan. No full-angle reconstruction is ever its target.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeray.tomo.tomogan import UNet

STRATEGIES = ("X:1", "1:X")
"""X:1: mean of the other subsets in, one out (denoise the full scan); 1:X: one in, the others' mean out (enhance
``1/k``-angle reconstructions)."""


def angle_splits(n_angles: int, k: int) -> list[np.ndarray]:
    """``k`` disjoint interleaved index sets covering ``range(n_angles)`` (set ``j``: ``j, j + k, ...``)."""
    if not 2 <= k <= n_angles:
        raise ValueError(f"splits must be between 2 and the number of angles ({n_angles}), not {k}")
    return [np.arange(j, n_angles, k) for j in range(k)]


def split_reconstructions(
    sinograms: np.ndarray, theta_rad: np.ndarray, k: int = 2, center: float | None = None
) -> np.ndarray:
    """``sinograms`` ``(S, A, D)`` of line integrals -> ``(k, S, D, D)`` float32: gridrec of each angle subset."""
    from edgeray.tomo.fbp import gridrec

    sinograms = np.asarray(sinograms)
    return np.stack([gridrec(sinograms[:, part], theta_rad[part], center) for part in angle_splits(len(theta_rad), k)])


def scan_sub_reconstructions(
    path: str | Path,
    k: int = 2,
    rows: tuple[int, int] | None = None,
    max_rows: int = 16,
    center: float | None = None,
    entry: str | None = None,
) -> tuple[np.ndarray, dict]:
    """A raw scan's (Data Exchange or NXtomo) sub-reconstructions ``(k, S, N, N)`` of up to ``max_rows`` detector
    rows spread over ``rows`` (default all), and what was done (rows, centre, how found)."""
    from edgeray.io import open_tomo
    from edgeray.tomo.recon import TomoOptions, find_center, preprocess_rows

    with open_tomo(path, entry) as data:
        first, last = rows or (0, data.frame_shape[0])
        if not 0 <= first < last <= data.frame_shape[0]:
            raise ValueError(f"rows {first}:{last} are outside the detector's {data.frame_shape[0]} rows")
        chosen = np.unique(np.linspace(first, last - 1, min(max_rows, last - first)).round().astype(int))
        if center is None:
            center, how = find_center(data, TomoOptions())
        else:
            how = "given"
        sinograms = np.concatenate([preprocess_rows(data, slice(r, r + 1), TomoOptions()) for r in chosen])
        theta = np.radians(data.theta_deg)
    return split_reconstructions(sinograms, theta, k, center), {"rows": chosen.tolist(), "center": float(center),
                                                                "center_method": how, "angles": len(theta)}  # fmt: skip


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown self-supervised strategy {strategy!r}; choose {' or '.join(STRATEGIES)}")


def training_pairs(sub: np.ndarray, strategy: str = "X:1") -> dict:
    """Pairs from ``(k, S, N, N)`` sub-reconstructions, one per choice ``t`` of subset: X:1 inputs the mean of the
    others and targets ``t``; 1:X inputs ``t`` and targets the mean of the others (``block`` S: each volume
    normalized as a whole, the target on its input's scale)."""
    _check_strategy(strategy)
    k, n_slices = sub.shape[:2]
    total = sub.sum(axis=0)
    others = [(total - sub[t]) / (k - 1) for t in range(k)]
    alone = [sub[t] for t in range(k)]
    noisy, clean = (others, alone) if strategy == "X:1" else (alone, others)
    return {"noisy": np.concatenate(noisy).astype(np.float32), "clean": np.concatenate(clean).astype(np.float32),
            "attrs": {"source": "noise2inverse", "block": n_slices, "splits": k, "strategy": strategy}}  # fmt: skip


def denoise(sub: np.ndarray, model: UNet, strategy: str = "X:1") -> np.ndarray:
    """The self-supervised estimate ``(S, N, N)`` of the scan: the network on each choice's input (X:1: the mean of
    the others; 1:X: the subset alone), averaged over the ``k`` choices."""
    from edgeray.tomo.denoise import denoise_volume

    _check_strategy(strategy)
    k = len(sub)
    total = sub.sum(axis=0)
    inputs = [(total - sub[t]) / (k - 1) if strategy == "X:1" else sub[t] for t in range(k)]
    return np.mean([denoise_volume(one, model) for one in inputs], axis=0)


def train(
    sub: np.ndarray,
    out_dir: str | Path,
    start_from: str | Path | None = None,
    steps: int = 1000,
    seed: int = 0,
    source: str = "",
    progress: Callable[[int], None] | None = None,
    strategy: str = "X:1",
) -> dict:
    """Fine-tune a denoiser (default: the shipped general one; ``"none"``: from scratch) on the ``strategy`` pairs of
    ``sub`` ``(k, S, N, N)``; writes the model directory ``out_dir`` and returns its card (1:X: ``input_weight``
    ``1/k`` in its config)."""
    from edgeray.tomo.denoise import (
        SHIPPED_GENERAL_DENOISER,
        DenoiserOptions,
        load_denoiser,
        save_denoiser,
        train_denoiser,
        write_pairs,
    )
    from edgeray.tomo.tomogan import TomoGANConfig, config_dict

    _check_strategy(strategy)
    start = None
    if str(start_from) != "none":
        start, _ = load_denoiser(start_from or SHIPPED_GENERAL_DENOISER)
        start.config = replace(start.config, input_weight=0.0)  # the network learns the target itself
    config = start.config if start is not None else TomoGANConfig(depth=3, width=16, in_slices=1)
    patch = int(min(64, *sub.shape[-2:]) // 8 * 8)
    options = DenoiserOptions(steps=steps, batch_size=8, patch=patch, learning_rate=3e-4 if start else 1e-3,
                              pixel_loss="l1", perceptual_weight=0.0, adversarial_weight=0.0, holdout=0.0,
                              seed=seed)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_pairs(Path(folder) / f"{Path(source).stem or 'scan'}_noise2inverse.h5",
                            training_pairs(sub, strategy))  # fmt: skip
        card = train_denoiser(pairs, out_dir, config, options, progress, start_from=start)
    card["self_supervised"] = {"strategy": strategy, "splits": len(sub), "scan": Path(source).name}
    if strategy == "1:X":  # (k-1)/k of the prediction of the others' mean plus 1/k of the input: all the angles
        model, _ = load_denoiser(out_dir)
        model.config = replace(model.config, input_weight=1.0 / len(sub))
        card["config"] = config_dict(model.config)
        save_denoiser(out_dir, model, card)
    return card
