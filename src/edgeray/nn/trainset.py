"""Training sets (HDF5): frames with their amplitude and phase patches, from simulations or reconstructions.

Layout (DESIGN.md, plus ``scale``): ``frames (N, H, W)`` float32 raw counts, ``amplitude``/``phase`` ``(N, H, W)``
float32 labels on the frame's object window, ``scale (N,)`` float32 the mean count per pixel of each frame's scan
(the network input is ``sqrt(frames / scale)``), chunked in row blocks of about 1 MiB; attributes describe the
provenance (source, probe, geometry).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgeray.io import Product, PtychoScan
from edgeray.io._h5util import atomic_h5, frames_per_chunk
from edgeray.sim import BUNDLED_IMAGES, PtychoSimConfig, simulate_ptycho
from edgeray.sim.ptycho import frame_windows, make_probe

DATASETS = ("frames", "amplitude", "phase", "scale")


def object_patches(obj: np.ndarray, positions_px: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """The object window of every frame, ``(N, H, W)``: pixels from ``floor(p - (H/2, W/2))`` on."""
    return obj[frame_windows(positions_px, frame_shape)]


def remove_phase_offset(obj: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """``obj`` times ``exp(-i mean phase)``, the mean taken as the (weighted) angle of the object's sum."""
    total = (obj if weights is None else obj * weights).sum()
    return obj * np.exp(-1j * np.angle(total))


def simulate_scans(
    n_frames: int,
    base: PtychoSimConfig,
    seed: int = 0,
    photons_range: tuple[float, float] = (1e2, 1e6),
    frames_per_scan: int = 300,
    progress: Callable[[int], None] | None = None,
) -> list[PtychoScan]:
    """Scans for training: the probe and geometry of ``base``; for each scan a new object (a random pair of
    bundled images for amplitude and phase, random absorption and phase range), a new dose (log-uniform in
    ``photons_range``) and new positions."""
    rng = np.random.default_rng(seed)
    scans, done = [], 0
    while done < n_frames:
        amplitude_image, phase_image = rng.choice(BUNDLED_IMAGES, size=2, replace=False)
        config = replace(
            base,
            n_positions=min(frames_per_scan, n_frames - done),
            photons=float(np.exp(rng.uniform(*np.log(photons_range)))),
            object=f"{amplitude_image},{phase_image}",
            amplitude_min=float(rng.uniform(0.3, 0.95)),
            phase_range_rad=float(rng.uniform(0.3, 3.0)),
            seed=int(rng.integers(2**31)),
        )
        scans.append(simulate_ptycho(config))
        done += config.n_positions
        if progress:
            progress(done)
    return scans


def samples_from_scan(scan: PtychoScan) -> dict[str, np.ndarray]:
    """Training samples of a simulated scan: its frames and its ground-truth patches (phase offset removed)."""
    truth = scan.ground_truth
    obj = remove_phase_offset(truth.object)
    patches = object_patches(obj, truth.positions_px, scan.frames.shape[1:])
    frames = scan.frames.astype(np.float32)
    scale = np.full(len(frames), frames.mean(), dtype=np.float32)
    return {"frames": frames, "amplitude": np.abs(patches), "phase": np.angle(patches), "scale": scale}


def samples_from_reconstruction(scan: PtychoScan, product: Product) -> dict[str, np.ndarray]:
    """Training samples from a measured scan and its iterative reconstruction, as the beamline workflow makes them.

    Labels are the reconstructed object's windows at the product's positions; the object is scaled so its
    99th-percentile amplitude over the scanned windows is 1 (a reconstruction's amplitude scale is arbitrary) and
    its mean phase over them is removed.
    """
    if len(product.positions_m) != scan.n_frames:
        raise ValueError(f"product has {len(product.positions_m)} positions for {scan.n_frames} frames")
    pixel = np.asarray(product.object_pixel_size_m)
    obj = product.object[0]
    origin = np.asarray(product.object_center_m) - np.asarray(obj.shape) / 2 * pixel
    positions_px = (product.positions_m - origin) / pixel
    patches = object_patches(obj, positions_px, scan.frames.shape[1:])
    patches = remove_phase_offset(patches)
    patches = patches / max(np.percentile(np.abs(patches), 99), 1e-12)
    frames = scan.frames.astype(np.float32)
    scale = np.full(len(frames), frames.mean(), dtype=np.float32)
    return {"frames": frames, "amplitude": np.clip(np.abs(patches), 0, 1), "phase": np.angle(patches), "scale": scale}


def write_trainset(path: str | Path, samples: list[dict[str, np.ndarray]], attrs: dict) -> Path:
    """Concatenate sample dicts and write them as a training set (atomically)."""
    data = {key: np.concatenate([s[key] for s in samples]).astype(np.float32) for key in DATASETS}
    n, height, width = data["frames"].shape
    rows = min(n, frames_per_chunk((height, width), 4))
    with atomic_h5(path) as h5:
        for key in ("frames", "amplitude", "phase"):
            h5.create_dataset(key, data=data[key], chunks=(rows, height, width))
        h5["scale"] = data["scale"]
        for key, value in attrs.items():
            h5.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    return Path(path)


def probe_fingerprint(config: PtychoSimConfig) -> dict:
    """What a model trained on simulations of ``config`` is valid for: probe and geometry."""
    probe = make_probe(config)
    return {
        "frame_size": config.frame_size,
        "probe": config.probe,
        "probe_diameter_px": config.probe_diameter_px or 0.35 * config.frame_size,
        "energy_eV": config.energy_eV,
        "distance_m": config.distance_m,
        "detector_pixel_m": config.detector_pixel_m,
        "probe_power_fraction_in_centre": float((np.abs(probe[0, 16:-16, 16:-16]) ** 2).sum()),
    }
