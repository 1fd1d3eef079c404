"""Parallel-beam tomography simulator: phantom -> exact projections -> detector counts with flats and darks."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import numpy as np

from edgeray.io.dxchange import TomoScan
from edgeray.sim.phantoms import make_phantom, project, rasterize


@dataclass
class TomoSimConfig:
    """Parameters of a simulated parallel-beam tomography scan.

    Attributes:
        phantom: ``shepp`` (3D Shepp-Logan) or ``foam`` (random voids in a cylinder).
        size: slice width and height = detector columns, pixels.
        slices: detector rows = reconstructed slices, centred on the phantom's middle.
        angles: projections, evenly spaced over [0, 180) degrees.
        photons: mean open-beam counts per detector pixel (sets the dose and the noise).
        max_attenuation: the largest line integral ``-log(transmission)``; the phantom is scaled to it.
        n_flats, n_darks: open-beam and beam-off images recorded.
        dark_counts: mean dark level, counts; read_noise: its standard deviation.
        rings: add a per-pixel response error not seen by the flats (the cause of ring artifacts).
        seed: seed of every random choice.
    """

    phantom: str = "shepp"
    size: int = 256
    slices: int = 8
    angles: int = 360
    photons: float = 1e4
    max_attenuation: float = 2.0
    n_flats: int = 10
    n_darks: int = 10
    dark_counts: float = 100.0
    read_noise: float = 2.0
    rings: bool = False
    seed: int = 0


def beam_profile(n_rows: int, n_cols: int, rng: np.random.Generator) -> np.ndarray:
    """Open-beam intensity shape ``(rows, cols)`` of mean 1: a smooth bump times a 2% pixel-gain pattern."""
    x = np.linspace(-1, 1, n_cols)
    bump = 0.85 + 0.15 * np.exp(-(x**2) / 0.5)
    gain = 1.0 + 0.02 * rng.standard_normal((n_rows, n_cols))
    profile = bump[None, :] * gain
    return profile / profile.mean()


def simulate_tomo(config: TomoSimConfig) -> TomoScan:
    """Simulate a tomography scan: exact line integrals, Beer-Lambert, Poisson counts, dark noise.

    ``projections = Poisson(photons * profile * exp(-p)) + dark``; the flats are the same without the sample.
    The ground truth volume ``(slices, size, size)`` holds attenuation per pixel on the same scale, so a
    perfect reconstruction of ``-log((data - dark) / (flat - dark))`` returns it.

    Returns:
        A :class:`~edgeray.io.TomoScan` with uint16 counts (uint32 when they would overflow).
    """
    rng = np.random.default_rng(config.seed)
    shapes = make_phantom(config.phantom, rng, z_extent=config.slices / config.size + 0.2)
    theta_deg = np.arange(config.angles) * (180.0 / config.angles)
    line_integrals = project(shapes, np.radians(theta_deg), config.size, config.slices)
    scale = config.max_attenuation / max(line_integrals.max(), 1e-12)
    line_integrals *= scale
    volume = rasterize(shapes, config.size, config.slices) * np.float32(scale)

    frame = (config.slices, config.size)
    profile = config.photons * beam_profile(*frame, rng)
    response = np.ones(frame)
    if config.rings:
        response += 0.01 * rng.standard_normal(frame)
        bad = rng.random(frame) < 0.02
        response[bad] += rng.choice([-0.08, 0.08], size=bad.sum())

    def dark(n: int) -> np.ndarray:
        return config.dark_counts + config.read_noise * rng.standard_normal((n, *frame))

    projections = rng.poisson(profile * response * np.exp(-line_integrals)) + dark(config.angles)
    flats = rng.poisson(np.broadcast_to(profile, (config.n_flats, *frame))) + dark(config.n_flats)
    darks = dark(config.n_darks)
    top = max(projections.max(), flats.max())
    dtype = np.uint16 if top < np.iinfo(np.uint16).max else np.uint32

    def counts(a: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(a), 0, None).astype(dtype)

    return TomoScan(
        projections=counts(projections),
        theta_deg=theta_deg,
        flats=counts(flats),
        darks=counts(darks),
        ground_truth=volume.astype(np.float32),
        attrs={"simulator": "edgeray.sim.simulate_tomo", "config": json.dumps(asdict(config))},
    )
