"""Inference: a scan in, predicted patches stitched at the scan positions, a product out."""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeray.io import Product, PtychoScan
from edgeray.nn.checkpoint import load_model
from edgeray.nn.group import AloneGroup, GroupNet, group_indices
from edgeray.nn.models import EdgeNet, normalize_frames
from edgeray.nn.physics import probe_weights
from edgeray.nn.stitch import centre_weights, stitch, to_complex
from edgeray.ptycho.problem import ObjectGrid, object_grid


def predict(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``model`` over normalized ``inputs`` ``(N, 1, H, W)`` in batches -> ``(amplitude, phase)``."""
    amplitudes, phases = [], []
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            amplitude, phase = model(inputs[start : start + batch_size])
            amplitudes.append(amplitude)
            phases.append(phase)
    return torch.cat(amplitudes), torch.cat(phases)


def stitch_weights(model: nn.Module, frame_shape: tuple[int, int]) -> torch.Tensor:
    """``(H, W)`` weights of a model's patches when stitched: its probe's intensity for the edge model (where the
    frame says something), a centred Hann window for models without a probe."""
    if isinstance(model, EdgeNet | GroupNet | AloneGroup):
        return probe_weights(model.complex_probe())
    return centre_weights(frame_shape)


def geometry_mismatches(scan: PtychoScan, card: dict) -> list[str]:
    """How ``scan``'s geometry differs from the one the model was trained for (empty when it matches)."""
    valid = card.get("valid_for") or {}
    problems = []
    checks = [
        ("frame_size", scan.frames.shape[-1]),
        ("energy_eV", scan.geometry.energy_eV),
        ("distance_m", scan.geometry.distance_m),
        ("detector_pixel_m", scan.geometry.detector_pixel_size_m[1]),
    ]
    for key, value in checks:
        if key in valid and not np.isclose(float(valid[key]), float(value), rtol=1e-3):
            problems.append(f"{key} is {value:g} here, {valid[key]:g} in training")
    return problems


@dataclass
class InferenceResult:
    product: Product
    seconds: float
    frames_per_s: float
    mismatches: list[str]


def cpu_runtime(model: nn.Module, card: dict, model_dir: str | Path | None, backend: str):
    """The model to run on the CPU: ONNX Runtime (``onnx``; ``auto`` picks it, measured 2x faster than torch eager
    for the compact model on 2 cores) or torch (``torch``). Group models take ``(frames, offsets)``."""
    if backend == "torch":
        return model
    from edgeray.nn.export import OnnxGroupModel, OnnxModel, export_group_onnx, export_onnx

    config = card["config"]
    if isinstance(model, GroupNet):
        path = cached_onnx(
            model_dir, lambda to: export_group_onnx(model, to, config["frame_size"], config["group_size"])
        )
        return OnnxGroupModel(path, threads=torch.get_num_threads())
    path = cached_onnx(model_dir, lambda to: export_onnx(model, to, config["frame_size"]))
    return OnnxModel(path, threads=torch.get_num_threads())


def cached_onnx(model_dir: str | Path | None, export) -> Path:
    """The model's ONNX file beside its weights (default: the shipped model), named by the weights' SHA-256 and
    written by ``export(path)`` when missing (graphs of other weights are removed); in a temporary folder when the
    model's folder is read-only."""
    from edgeray.nn.checkpoint import SHIPPED, weights_digest
    from edgeray.nn.export import EXPORT_VERSION

    directory = Path(model_dir) if model_dir is not None else SHIPPED
    digest = weights_digest(directory)[:16]
    onnx_path = directory / f"model.export{EXPORT_VERSION}.{digest}.onnx"  # keyed by the weights, not by time
    if not onnx_path.exists():
        try:
            export(onnx_path)
            for stale in directory.glob("model.export*.onnx"):  # graphs of other weights (a restored checkpoint)
                if f".{digest}." not in stale.name:
                    stale.unlink(missing_ok=True)
        except OSError:  # a read-only install: export beside a temporary name instead
            import tempfile

            onnx_path = Path(tempfile.mkdtemp()) / onnx_path.name
            export(onnx_path)
    return onnx_path


def infer_scan(
    scan: PtychoScan,
    model_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 256,
    backend: str = "auto",
) -> InferenceResult:
    """Invert every frame of ``scan`` with a surrogate (default: the shipped model) and stitch the patches.

    Patches are stitched in scan order, each turned to agree with what is already there (a frame fixes its patch
    only up to a constant phase; :func:`edgeray.nn.stitch.accumulate`), weighted by the model's probe intensity.

    ``backend``: ``auto`` (ONNX Runtime on the CPU, torch on CUDA), ``onnx`` or ``torch``. Warns (and reports)
    when the scan's geometry differs from the model card's: a network is valid only for the probe and geometry it
    was trained with.
    """
    model, card = load_model(model_dir, device)
    size = card["config"]["frame_size"]
    if tuple(scan.frames.shape[-2:]) != (size, size):
        raise ValueError(f"the scan's frames are {scan.frames.shape[-2]}x{scan.frames.shape[-1]} pixels and the model "
                         f"{model_dir or 'shipped'} inverts {size}x{size} frames (crop or bin the frames, or fine-tune "
                         "a model of their size)")  # fmt: skip
    weights = stitch_weights(model, scan.frames.shape[-2:])
    grid = object_grid(scan)
    if isinstance(model, GroupNet):
        return infer_groups(scan, model, card, model_dir, grid, weights, batch_size, backend)
    if torch.device(device).type == "cpu":
        model = cpu_runtime(model, card, model_dir, backend)
    mismatches = geometry_mismatches(scan, card)
    if mismatches:
        warnings.warn("the model was trained for another geometry: " + "; ".join(mismatches), stacklevel=2)
    frames = torch.from_numpy(np.asarray(scan.frames, dtype=np.float32)).to(device)
    start = time.perf_counter()
    amplitude, phase = predict(model, normalize_frames(frames), batch_size)
    positions_px = torch.from_numpy(grid.positions_px).to(device)
    obj, _ = stitch(to_complex(amplitude, phase), positions_px, grid.object_shape, weights)
    seconds = time.perf_counter() - start
    product = mosaic_product(obj.cpu().numpy(), scan, grid, f"edgeray nn {card['config']['kind']}",
                             {"engine": "nn", "model": str(model_dir or "shipped"), "seconds": seconds})  # fmt: skip
    return InferenceResult(product, seconds, scan.n_frames / seconds, mismatches)


def infer_groups(
    scan: PtychoScan,
    model: GroupNet,
    card: dict,
    model_dir: str | Path | None,
    grid: ObjectGrid,
    weights: torch.Tensor,
    batch_size: int = 256,
    backend: str = "auto",
) -> InferenceResult:
    """:func:`infer_scan` for a multi-frame model: each frame with its nearest neighbours (the whole scan is
    known here), each group's output stitched at its anchor's position."""
    from edgeray.nn.finetune import predict_groups

    mismatches = geometry_mismatches(scan, card)
    config = card["config"]
    frames = torch.from_numpy(np.asarray(scan.frames, dtype=np.float32))
    start = time.perf_counter()
    groups = group_indices(grid.positions_px, config["group_size"], config["group_radius_px"])
    runtime = cpu_runtime(model, card, model_dir, backend)
    amplitude, phase = predict_groups(runtime, normalize_frames(frames), groups, grid.positions_px, batch_size)
    obj, _ = stitch(to_complex(amplitude, phase), torch.from_numpy(grid.positions_px), grid.object_shape, weights)
    seconds = time.perf_counter() - start
    product = mosaic_product(obj.numpy(), scan, grid, f"edgeray nn group of {config['group_size']}",
                             {"engine": "nn", "model": str(model_dir or "shipped"), "seconds": seconds})  # fmt: skip
    return InferenceResult(product, seconds, scan.n_frames / seconds, mismatches)


def mosaic_product(
    obj: np.ndarray, scan: PtychoScan, grid: ObjectGrid, name: str, attrs: dict | None = None
) -> Product:
    """A product holding a stitched object ``(Y, X)`` complex on ``scan``'s object ``grid`` (no probe: zeros)."""
    return Product(
        object=np.asarray(obj)[None],
        probe=np.zeros((1, *scan.frames.shape[-2:]), dtype=np.complex64),
        positions_m=scan.positions_m,
        object_pixel_size_m=grid.pixel_size_m,
        probe_pixel_size_m=grid.pixel_size_m,
        energy_eV=scan.geometry.energy_eV,
        distance_m=scan.geometry.distance_m,
        object_center_m=grid.center_m,
        name=name,
        attrs=attrs or {},
    )
