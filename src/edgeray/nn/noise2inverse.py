"""Self-supervised denoising from the scan itself (Noise2Inverse, Hendriksen et al. 2020): no clean target, no
simulation.

The projections are split into ``k`` disjoint, interleaved angle subsets (each covers the half turn); each subset
is reconstructed on its own, so the noise of one sub-reconstruction is independent of the others' (disjoint
projections, Poisson counts) while the object is the same. A network trained to predict one sub-reconstruction
from the mean of the others can only learn the object: its expected loss is smallest at the clean image. At the
end the prediction is averaged over the ``k`` choices of the held-out subset.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgeray.nn.tomogan import UNet


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


def training_pairs(sub: np.ndarray) -> dict:
    """Pairs from ``(k, S, N, N)`` sub-reconstructions: for each ``t``, input the mean of the others, target ``t``
    (``block`` S: each volume normalized as a whole, the target on its input's scale)."""
    k, n_slices = sub.shape[:2]
    total = sub.sum(axis=0)
    noisy = np.concatenate([(total - sub[t]) / (k - 1) for t in range(k)])
    clean = np.concatenate([sub[t] for t in range(k)])
    return {"noisy": noisy.astype(np.float32), "clean": clean.astype(np.float32),
            "attrs": {"source": "noise2inverse", "block": n_slices, "splits": k}}  # fmt: skip


def denoise(sub: np.ndarray, model: UNet) -> np.ndarray:
    """The self-supervised estimate ``(S, N, N)``: the network on each mean-of-the-others, averaged over ``t``."""
    from edgeray.nn.denoise import denoise_volume

    k = len(sub)
    total = sub.sum(axis=0)
    return np.mean([denoise_volume((total - sub[t]) / (k - 1), model) for t in range(k)], axis=0)


def train(
    sub: np.ndarray,
    out_dir: str | Path,
    start_from: str | Path | None = None,
    steps: int = 1000,
    seed: int = 0,
    source: str = "",
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune a denoiser (default: the shipped general one; ``"none"``: from scratch) on the pairs of ``sub``
    ``(k, S, N, N)``; writes the model directory ``out_dir`` and returns its card."""
    from edgeray.nn.denoise import SHIPPED_GENERAL_DENOISER, DenoiserOptions, load_denoiser, train_denoiser, write_pairs
    from edgeray.nn.tomogan import TomoGANConfig

    start = None
    if str(start_from) != "none":
        start, _ = load_denoiser(start_from or SHIPPED_GENERAL_DENOISER)
    config = start.config if start is not None else TomoGANConfig(depth=3, width=16, in_slices=1)
    patch = int(min(64, *sub.shape[-2:]) // 8 * 8)
    options = DenoiserOptions(steps=steps, batch_size=8, patch=patch, learning_rate=3e-4 if start else 1e-3,
                              pixel_loss="l1", perceptual_weight=0.0, adversarial_weight=0.0, holdout=0.0,
                              seed=seed)  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        pairs = write_pairs(Path(folder) / f"{Path(source).stem or 'scan'}_noise2inverse.h5", training_pairs(sub))
        card = train_denoiser(pairs, out_dir, config, options, progress, start_from=start)
    return card
