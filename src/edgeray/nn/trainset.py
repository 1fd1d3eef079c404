"""Training sets (HDF5): frames with their amplitude and phase patches, from simulations or reconstructions.

Layout (docs/formats.md, plus ``scale``): ``frames (N, H, W)`` raw counts (uint16 when whole counts, else float32),
``amplitude``/``phase`` ``(N, H, W)`` float32 labels on the frame's object window, ``scale (N,)`` float32 the
mean count per pixel of each frame's scan (the network input is ``sqrt(frames / scale)``), chunked in row blocks
of about 1 MiB; attributes describe the provenance (source, probe, geometry).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np

from edgeray.io import Product, PtychoScan
from edgeray.io._h5util import atomic_h5, frames_per_chunk
from edgeray.sim import BUNDLED_IMAGES, PtychoSimConfig, simulate_ptycho
from edgeray.sim.ptycho import make_probe

DATASETS = ("frames", "amplitude", "phase", "scale")


def object_patches(obj: np.ndarray, positions_px: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """The object on each frame's probe-centred grid, ``(N, H, W)``: pixel ``(i, j)`` is the object at
    ``p - (H/2, W/2) + (i, j)`` (bilinear between pixels), the networks' convention (:mod:`edgeray.nn.physics`)."""
    corner = np.asarray(positions_px, dtype=np.float64) - np.array(frame_shape) / 2
    first = np.floor(corner).astype(np.int64)
    rows = np.clip(first[:, 0, None, None] + np.arange(frame_shape[0] + 1)[None, :, None], 0, obj.shape[0] - 1)
    cols = np.clip(first[:, 1, None, None] + np.arange(frame_shape[1] + 1)[None, None, :], 0, obj.shape[1] - 1)
    window = obj[rows, cols]
    fy, fx = (corner - first)[:, 0, None, None], (corner - first)[:, 1, None, None]
    mixed = (1 - fy) * window[:, :-1] + fy * window[:, 1:]
    return ((1 - fx) * mixed[:, :, :-1] + fx * mixed[:, :, 1:]).astype(np.complex64)


def relative_to_transmission(patches: np.ndarray, probe: np.ndarray | None) -> np.ndarray:
    """``patches`` divided by the square root of the scan's mean transmitted fraction under ``probe`` (the edge
    model's amplitude convention); without a (nonzero) probe, scaled so the 99th-percentile amplitude is 1."""
    if probe is not None and np.abs(probe).max() > 0:
        power = np.abs(np.asarray(probe).reshape(-1, *patches.shape[-2:])[0]) ** 2
        transmitted = float((power / power.sum() * np.abs(patches) ** 2).sum(axis=(1, 2)).mean())
        return patches / np.sqrt(max(transmitted, 1e-12))
    return patches / max(np.percentile(np.abs(patches), 99), 1e-12)


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
    patches = relative_to_transmission(object_patches(obj, truth.positions_px, scan.frames.shape[1:]), truth.probe)
    frames = scan.frames.astype(np.float32)
    scale = np.full(len(frames), frames.mean(), dtype=np.float32)
    return {"frames": frames, "amplitude": np.abs(patches), "phase": np.angle(patches), "scale": scale}


def samples_from_reconstruction(scan: PtychoScan, product: Product) -> dict[str, np.ndarray]:
    """Training samples from a measured scan and its iterative reconstruction, as the beamline workflow makes them.

    Labels are the reconstructed object on each frame's probe-centred grid at the product's positions, relative to
    the scan's mean transmission under the product's probe (a reconstruction's amplitude scale is arbitrary; see
    :func:`relative_to_transmission`), with the mean phase over them removed.
    """
    if len(product.positions_m) != scan.n_frames:
        raise ValueError(f"product has {len(product.positions_m)} positions for {scan.n_frames} frames")
    pixel = np.asarray(product.object_pixel_size_m)
    obj = product.object[0]
    origin = np.asarray(product.object_center_m) - np.asarray(obj.shape) / 2 * pixel
    positions_px = (product.positions_m - origin) / pixel
    patches = object_patches(obj, positions_px, scan.frames.shape[1:])
    patches = relative_to_transmission(remove_phase_offset(patches), product.probe)
    frames = scan.frames.astype(np.float32)
    scale = np.full(len(frames), frames.mean(), dtype=np.float32)
    return {"frames": frames, "amplitude": np.abs(patches), "phase": np.angle(patches), "scale": scale}


def write_trainset(
    path: str | Path, samples: list[dict[str, np.ndarray]], attrs: dict, rows_per_chunk: int | None = None
) -> Path:
    """Concatenate sample dicts and write them as a training set (atomically), the chunks of frames, amplitude and
    phase side by side (:func:`write_interleaved`).

    Frames that are whole counts from 0 to 65535 are stored as uint16 (half the bytes of float32; readers
    convert), other frames as float32. ``rows_per_chunk``: samples per HDF5 chunk (default: chunks of
    about 1 MiB; 1 suits random access one sample at a time).
    """
    data = {key: np.concatenate([s[key] for s in samples]) for key in DATASETS}
    frames = data.pop("frames")
    counts = frames.size and np.all(frames >= 0) and np.all(frames <= 65535) and np.all(frames == np.round(frames))
    data = {key: value.astype(np.float32) for key, value in data.items()}
    data["frames"] = frames.astype(np.uint16 if counts else np.float32)
    n, height, width = data["frames"].shape
    rows = min(max(n, 1), rows_per_chunk or frames_per_chunk((height, width), 4))
    with atomic_h5(path) as h5:
        chunked = {
            key: h5.create_dataset(key, shape=data[key].shape, dtype=data[key].dtype, chunks=(rows, height, width))
            for key in ("frames", "amplitude", "phase")
        }
        write_interleaved(chunked, 0, {key: data[key] for key in chunked})
        h5["scale"] = data["scale"]
        for key, value in attrs.items():
            h5.attrs[key] = value if isinstance(value, str | int | float) else json.dumps(value)
    return Path(path)


def write_interleaved(datasets: dict[str, h5py.Dataset], start: int, rows: dict[str, np.ndarray]) -> None:
    """Write ``rows[key]`` ``(n, ...)`` into ``datasets[key]`` (unfiltered h5py datasets chunked alike, whole rows
    per chunk) from row ``start`` (a chunk boundary), chunk by chunk, taking the datasets in turn: HDF5 places chunks
    in the order they are written, so a sample's rows of every dataset lie side by side in the file and a reader by
    byte offset (:mod:`edgeray.loader.direct`) fetches the whole sample in one read."""
    filtered = [key for key, ds in datasets.items() if ds.chunks is None or ds.id.get_create_plist().get_nfilters()]
    if filtered:
        raise ValueError(f"write_interleaved writes unfiltered chunked datasets only; not {', '.join(filtered)}")
    per_chunk = {ds.chunks[0] for ds in datasets.values()}
    if len(per_chunk) != 1 or start % next(iter(per_chunk)):
        raise ValueError(
            f"datasets must share a chunk row count and start on a chunk (chunks {per_chunk}, start {start})"
        )
    step = per_chunk.pop()
    n = len(next(iter(rows.values())))
    for first in range(0, n, step):
        for key, ds in datasets.items():
            block = np.ascontiguousarray(rows[key][first : first + step], dtype=ds.dtype)
            if len(block) < step:  # the last chunk: HDF5 stores chunks whole
                block = np.concatenate([block, np.zeros((step - len(block), *block.shape[1:]), ds.dtype)])
            ds.id.write_direct_chunk((start + first, *[0] * (ds.ndim - 1)), block.tobytes())


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
