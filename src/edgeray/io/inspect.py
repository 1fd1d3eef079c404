"""What a file holds, in a JSON-ready dict: the engine behind ``edgeray info``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from edgeray.io._h5util import count_problems, describe_filters
from edgeray.io.cxi import CXIFile
from edgeray.io.detect import detect_kind
from edgeray.io.dxchange import read_reconstruction
from edgeray.io.errors import EdgeRayFormatError
from edgeray.io.nxtomo import TomoPaths, open_tomo
from edgeray.io.product import read_product


def _datasets(path: Path) -> dict:
    """Every dataset's shape, dtype and filters, keyed by HDF5 path."""
    found = {}

    def visit(name: str, obj: object) -> None:
        if isinstance(obj, h5py.Dataset):
            found["/" + name] = {"shape": list(obj.shape), "dtype": str(obj.dtype), "filters": describe_filters(obj)}

    with h5py.File(path, "r") as h5:
        h5.visititems(visit)
    return found


def inspect(
    path: str | Path,
    *,
    scan_counts: bool = True,
    progress: Callable[[int, int], None] | None = None,
    cxi_options: dict | None = None,
    tomo_paths: TomoPaths | None = None,
) -> dict:
    """Summarize any EdgeRay file: kind, datasets, geometry, the reader's assumptions and validation problems.

    Args:
        path: the file.
        scan_counts: read every frame (in chunks) to look for NaN/inf and negative counts.
        progress: called with ``(frames_done, frames_total)`` while scanning.
        cxi_options: keywords for :class:`~edgeray.io.CXIFile` (``translation``, ``follow_basis``).
        tomo_paths: where a raw tomography file keeps its datasets, or its layout (given: the file is read as one).

    Returns:
        ``{"file", "kind", "datasets", "geometry", "assumptions", "problems", ...}``; a file that cannot be read
        at all comes back with ``kind`` None and the reason in ``problems``.
    """
    path = Path(path)
    out: dict = {"file": str(path), "kind": None, "assumptions": [], "problems": []}
    try:
        out["kind"] = "tomo-raw" if tomo_paths is not None and tomo_paths.given() else detect_kind(path)
    except EdgeRayFormatError as exc:
        out["problems"].append(str(exc))
        return out
    out["datasets"] = _datasets(path)
    try:
        if out["kind"] == "cxi":
            _inspect_cxi(path, out, scan_counts, progress, cxi_options or {})
        elif out["kind"] == "tomo-raw":
            _inspect_tomo(path, out, scan_counts, tomo_paths)
        elif out["kind"] == "product":
            product = read_product(path)
            out.update(
                object_shape=list(product.object.shape),
                probe_modes=len(product.probe),
                n_positions=len(product.positions_m),
                energy_eV=product.energy_eV,
                object_pixel_size_m=list(product.object_pixel_size_m),
                epochs=len(product.loss_values),
            )
        elif out["kind"] == "tomo-recon":
            volume, params = read_reconstruction(path)
            out.update(volume_shape=list(volume.shape), parameters={k: str(v) for k, v in params.items()})
    except EdgeRayFormatError as exc:
        out["problems"].append(str(exc))
    return out


def _inspect_cxi(path: Path, out: dict, scan_counts: bool, progress: Callable | None, options: dict) -> None:
    with CXIFile(path, **options) as cxi:
        out.update(
            n_frames=cxi.n_frames,
            frame_shape=list(cxi.frame_shape),
            dtype=str(cxi.dtype),
            compression=cxi.compression(),
            geometry=cxi.geometry.to_dict() | {"wavelength_m": cxi.geometry.wavelength_m},
            scan_extent_m=(np.ptp(cxi.positions_m, axis=0).tolist() if cxi.n_frames else [0, 0]),
            mask_bad_pixels=int(cxi.mask.sum()) if cxi.mask is not None else None,
            has_probe_guess=cxi.probe is not None,
            has_ground_truth=cxi.has_ground_truth,
        )
        out["assumptions"] += cxi.assumptions
        if cxi.n_frames == 0:
            out["problems"].append(f"{path}: {cxi.frames_dataset}: holds no frames: nothing to reconstruct")
        if scan_counts:
            total = np.zeros(cxi.frame_shape)
            for start, block in cxi.iter_frames(validate=False):
                out["problems"] += count_problems(block, start)
                total += block.sum(axis=0, dtype=np.float64)
                if progress:
                    progress(start + len(block), cxi.n_frames)
            out["mean_counts_per_frame"] = float(total.sum() / max(cxi.n_frames, 1))


def _inspect_tomo(path: Path, out: dict, scan_counts: bool, paths: TomoPaths | None) -> None:
    with open_tomo(path, paths=paths) as dx:
        out.update(
            layout=getattr(dx, "layout", "dxchange"),
            sources=getattr(dx, "sources", None) or {"frames": "/exchange/data", "angles": "/exchange/theta"},
            n_angles=dx.n_angles,
            frame_shape=list(dx.frame_shape),
            dtype=str(dx.dtype),
            theta_range_deg=[float(dx.theta_deg.min()), float(dx.theta_deg.max())] if dx.n_angles else [],
            n_flats=dx.n_flats,
            n_darks=dx.n_darks,
            has_ground_truth=dx.has_ground_truth,
        )
        out["assumptions"] += dx.assumptions
        flats, darks = dx.flats(), dx.darks()
        if flats is not None and darks is not None and len(flats) and len(darks) and flats.shape[1:] == darks.shape[1:]:
            span = flats.astype(np.float32).mean(axis=0) - darks.astype(np.float32).mean(axis=0)
            if np.mean(span <= 0) > 0.5:
                out["problems"].append("the flat fields are no brighter than the darks over most pixels: flats and "
                                       "darks swapped?")  # fmt: skip
        if dx.n_angles < 2 or np.ptp(dx.theta_deg) == 0:
            out["problems"].append(f"{dx.n_angles} projections at {np.unique(dx.theta_deg).size} distinct angle(s): "
                                   "nothing to reconstruct a slice from")  # fmt: skip
        if scan_counts:
            out["problems"] += dx.problems()
