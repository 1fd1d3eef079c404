"""What users bring, generated: slices of many phantom families (:mod:`edgeray.sim.families`) scanned sparsely at
low dose, with rings and zingers at times, reconstructed by one of several codes and filters; each paired with its
truth. For training a denoiser that transfers, and for judging transfer on families and reconstructors kept out.

A slice is scanned over ``full_angles`` projections on a half turn, of which every ``stride``-th is kept (a random
offset), at ``photons`` per detector pixel of open beam, the largest line integral scaled to ``attenuation``;
counts are Poisson; rings are a fixed gain error per detector column, zingers single bright pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from edgeray.sim.families import FAMILIES, HELD_OUT_FAMILIES, phantom_slice

RECONSTRUCTORS = ("gridrec", "fbp", "sirt", "iradon")
HELD_OUT_RECONSTRUCTORS = ("iradon",)
"""Reconstructors the shipped general denoiser never saw (scikit-image's ``iradon``)."""
FILTERS = ("ramp", "shepp-logan", "hann", "cosine")


@dataclass
class Degradation:
    """How one slice is scanned and reconstructed (see the module's text)."""

    reconstructor: str = "gridrec"
    filter_name: str = "shepp-logan"
    stride: int = 1
    photons: float = 1e3
    attenuation: float = 2.0
    rings: float = 0.0  # standard deviation of the per-column gain error (0: none)
    zingers: float = 0.0  # fraction of sinogram pixels that are zingers
    sirt_iterations: int = 30
    full_angles: int = 180


def scan_and_reconstruct(truth: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    """``truth`` ``(N, N)`` (largest value 1) -> its reconstruction ``(N, N)`` float32, in the truth's units."""
    from edgeray.tomo.fbp import fbp, gridrec
    from edgeray.tomo.project import project
    from edgeray.tomo.sirt import sirt

    d = degradation
    size = truth.shape[0]
    centre = size / 2
    offset = int(rng.integers(d.stride))
    theta_deg = (np.arange(d.full_angles) * 180.0 / d.full_angles)[offset :: d.stride]
    theta = np.radians(theta_deg)
    integrals = project(torch.from_numpy(truth[None].astype(np.float64)), theta, centre, size)[0].numpy()
    scale = d.attenuation / max(float(integrals.max()), 1e-9)  # attenuation per pixel of the truth's 1
    gain = 1 + d.rings * rng.standard_normal(size) if d.rings else 1.0
    counts = rng.poisson(d.photons * gain * np.exp(-integrals * scale)).astype(np.float64)
    if d.zingers:
        hits = rng.random(counts.shape) < d.zingers
        counts[hits] += d.photons * rng.uniform(0.5, 3.0, int(hits.sum()))
    sinogram = -np.log(np.maximum(counts, 0.5) / d.photons) / scale  # back in the truth's units
    if d.reconstructor == "gridrec":
        out = gridrec(sinogram[None], theta, centre, filter_name=d.filter_name)[0]
    elif d.reconstructor == "fbp":
        out = fbp(sinogram[None], theta, centre, filter_name=d.filter_name)[0]
    elif d.reconstructor == "sirt":
        out = sirt(sinogram[None], theta, centre, iterations=d.sirt_iterations)[0]
    elif d.reconstructor == "iradon":
        from skimage.transform import iradon

        # scikit-image's projection of a slice at angle a is EdgeRay's at -a, columns in the same order
        filter_name = {"shepp-logan": "shepp-logan", "hann": "hann", "cosine": "cosine"}.get(d.filter_name, "ramp")
        out = iradon(sinogram.T, theta=-theta_deg, filter_name=filter_name, circle=True, output_size=size)
    else:
        raise ValueError(f"unknown reconstructor {d.reconstructor!r}; choose from {', '.join(RECONSTRUCTORS)}")
    return np.asarray(out, dtype=np.float32)


@dataclass
class CorpusSpec:
    """What a pool of pairs draws from: families, reconstructors, strides (1/stride of the angles), photons (log-
    uniform between the two), how often rings and zingers appear."""

    families: tuple[str, ...] = tuple(f for f in FAMILIES if f not in HELD_OUT_FAMILIES)
    reconstructors: tuple[str, ...] = tuple(r for r in RECONSTRUCTORS if r not in HELD_OUT_RECONSTRUCTORS)
    strides: tuple[int, ...] = (4, 8, 16, 32)
    photons: tuple[float, float] = (1e2, 1e4)
    rings_probability: float = 0.2
    zingers_probability: float = 0.2
    size: int = 128
    extra: dict = field(default_factory=dict)


def draw_degradation(spec: CorpusSpec, rng: np.random.Generator) -> Degradation:
    low, high = np.log10(spec.photons[0]), np.log10(spec.photons[1])
    return Degradation(
        reconstructor=str(rng.choice(spec.reconstructors)),
        filter_name=str(rng.choice(FILTERS)),
        stride=int(rng.choice(spec.strides)),
        photons=float(10 ** rng.uniform(low, high)),
        attenuation=float(rng.uniform(0.5, 3.0)),
        rings=float(rng.uniform(0.005, 0.03)) if rng.random() < spec.rings_probability else 0.0,
        zingers=float(rng.uniform(1e-4, 1e-3)) if rng.random() < spec.zingers_probability else 0.0,
        sirt_iterations=int(rng.integers(10, 60)),
    )


def make_pairs(
    n: int, spec: CorpusSpec | None = None, seed: int = 0, progress: Callable[[int], None] | None = None
) -> dict:
    """``n`` pairs drawn from ``spec`` -> a pairs dict (``noisy``, ``clean`` = ``truth`` ``(n, size, size)``;
    ``block`` 1: each slice normalized on its own, as a single slice is) for
    :func:`~edgeray.tomo.denoise.write_pairs`."""
    spec = spec or CorpusSpec()
    rng = np.random.default_rng(seed)
    noisy = np.empty((n, spec.size, spec.size), np.float32)
    truth = np.empty_like(noisy)
    for k in range(n):
        family = str(rng.choice(spec.families))
        truth[k] = phantom_slice(family, spec.size, rng)
        noisy[k] = scan_and_reconstruct(truth[k], draw_degradation(spec, rng), rng)
        if progress:
            progress(1)
    attrs = {"source": "denoise corpus", "block": 1, "seed": seed, "spec": str(asdict(spec))}
    return {"noisy": noisy, "clean": truth, "truth": truth, "attrs": attrs}
