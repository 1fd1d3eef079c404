"""Fine-tuning the edge model on a measured scan's own frames: no labels, only the physics.

Two terms, both Poisson deviances between the frames and the counts a predicted object implies
(:mod:`edgeray.nn.physics`):

- **single frame**: each frame against ``|FFT(probe x its predicted patch)|^2``;
- **overlap** (as PtychoPINN does): a frame and its nearest neighbours on the scan are inverted, their patches
  stitched into one local object (each turned by its constant phase), and every frame of the group must follow
  from that shared object. A single frame leaves its patch's low-order phase loose; neighbours that must agree
  pin it down, as in ptychography.

The probe is the scan file's illumination when it has one, else a file's (``--probe``: a product or CXI), else
estimated from the data as the engines do (a short LSQML run from EdgeRay's data-driven start). A random share of
the frames is held out: the command reports their deviance before and after, so a user sees what was gained.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree

from edgeray.device import resolve_device
from edgeray.io import PtychoScan
from edgeray.nn.checkpoint import load_model, save_model
from edgeray.nn.models import EdgeNet
from edgeray.nn.physics import far_field_intensity, poisson_deviance, probe_weights
from edgeray.nn.stitch import subpixel_shift
from edgeray.ptycho.ops import split_positions
from edgeray.ptycho.problem import object_grid


@dataclass
class FinetuneOptions:
    """Options of :func:`finetune_on_scan`.

    Attributes:
        epochs: passes over the training frames (each frame anchors one group per epoch).
        groups_per_step: groups per optimizer step; group_size: frames per group (the anchor and its nearest
            neighbours within ``group_radius_px``).
        learning_rate: AdamW's (a fine-tune: small).
        overlap_weight: weight of the overlap term (the single-frame term has weight 1).
        holdout_fraction: share of frames kept out of training, to measure the gain on.
        probe_epochs: LSQML epochs when the probe must be estimated from the data.
        seed: frame split, group order.
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    epochs: int = 3
    groups_per_step: int = 16
    group_size: int = 4
    group_radius_px: float = 16.0
    learning_rate: float = 3e-4
    overlap_weight: float = 1.0
    holdout_fraction: float = 0.1
    probe_epochs: int = 10
    seed: int = 0
    device: str = "cpu"


def scan_probe(scan: PtychoScan, probe_file: str | Path | None = None, epochs: int = 10) -> tuple[np.ndarray, str]:
    """The probe to fine-tune with, ``(H, W)`` complex64 (first mode), and where it came from.

    The scan's own illumination, else ``probe_file`` (a product, CXI or .npy), else a short LSQML reconstruction's.
    """
    from edgeray.sim.probes import probe_from_file

    shape = tuple(scan.frames.shape[-2:])
    if scan.probe is not None:
        return np.asarray(scan.probe, dtype=np.complex64).reshape(-1, *shape)[0], "the scan file's illumination"
    if probe_file is not None:
        return probe_from_file(probe_file, shape)[0], f"{Path(probe_file).name}"
    from edgeray.ptycho.reconstruct import run

    result = run(scan, "lsqml", epochs)
    return result.product.probe[0], f"estimated from the data ({epochs} LSQML epochs)"


def neighbour_groups(positions_px: np.ndarray, anchors: np.ndarray, size: int, radius_px: float) -> np.ndarray:
    """``(len(anchors), size)`` frame indices: each anchor and its ``size - 1`` nearest frames (an anchor repeats
    itself where fewer lie within ``radius_px``)."""
    tree = cKDTree(positions_px)
    distances, neighbours = tree.query(positions_px[anchors], k=min(size, len(positions_px)))
    neighbours = np.where(distances <= radius_px, neighbours, anchors[:, None])
    if neighbours.shape[1] < size:
        neighbours = np.concatenate([neighbours, np.repeat(anchors[:, None], size - neighbours.shape[1], 1)], 1)
    return neighbours


def extract_subpixel(canvas: torch.Tensor, corners: torch.Tensor, fractions: torch.Tensor, shape) -> torch.Tensor:
    """Windows ``(N, H, W)`` of ``canvas`` ``(N, C, C)`` read at sub-pixel positions (bilinear): the adjoint
    placement of :func:`edgeray.nn.stitch.subpixel_shift` (pixel ``(i, j)`` is the canvas at
    ``corner + fraction + (i, j)``)."""
    height, width = shape
    n, side = canvas.shape[0], canvas.shape[-1]
    rows = corners[:, 0, None] + torch.arange(height + 1)
    cols = corners[:, 1, None] + torch.arange(width + 1)
    flat = (torch.arange(n)[:, None, None] * side * side + rows[:, :, None] * side + cols[:, None, :]).reshape(-1)
    window = canvas.reshape(-1)[flat].reshape(n, height + 1, width + 1)
    fy = fractions[:, 0, None, None].to(torch.float32)
    fx = fractions[:, 1, None, None].to(torch.float32)
    rows_mixed = (1 - fy) * window[:, :-1] + fy * window[:, 1:]
    return (1 - fx) * rows_mixed[:, :, :-1] + fx * rows_mixed[:, :, 1:]


def overlap_deviance(
    patches: torch.Tensor,
    offsets_px: torch.Tensor,
    measured: torch.Tensor,
    probe: torch.Tensor,
    valid: torch.Tensor | None,
    radius_px: float,
) -> torch.Tensor:
    """``(G,)`` mean deviance of each group's frames against the group's shared local object.

    Args:
        patches: ``(G, K, H, W)`` complex predicted patches of ``G`` groups of ``K`` frames.
        offsets_px: ``(G, K, 2)`` float positions relative to each group's first frame, pixels ``[y, x]``.
        measured: ``(G, K, H, W)`` normalized intensities ``x^2``.
        probe: ``(H, W)`` unit-power probe; valid: ``(H, W)`` good-pixel map or None.
        radius_px: largest offset in a group (sets the local canvas).
    """
    groups, k, height, width = patches.shape
    pad = math.ceil(radius_px) + 2
    side = height + 2 * pad
    centre = torch.tensor([pad + height / 2, pad + width / 2], dtype=torch.float64)
    positions = offsets_px.reshape(-1, 2).to(torch.float64) + centre
    corners, fractions = split_positions(positions, (height, width))
    weights = probe_weights(probe)
    placed_weights = subpixel_shift(weights.expand(groups * k, -1, -1), fractions)
    placed = placed_weights * subpixel_shift(patches.reshape(-1, height, width), fractions)
    group_of = torch.arange(groups).repeat_interleave(k)
    rows = corners[:, 0, None] + torch.arange(height)
    cols = corners[:, 1, None] + torch.arange(width)
    index = (group_of[:, None, None] * side * side + rows[:, :, None] * side + cols[:, None, :]).reshape(-1)
    # each patch turned (constant phase, no gradient) to agree with its group's first patch
    anchor = torch.zeros(groups * side * side, dtype=placed.dtype)
    first = torch.arange(groups) * k
    anchor_index = index.reshape(groups * k, -1)[first].reshape(-1)
    anchor = anchor.index_add(0, anchor_index, placed.detach()[first].reshape(-1))
    turn = torch.angle((placed.detach().conj() * anchor[index].reshape(placed.shape)).sum(dim=(1, 2)))
    turn[first] = 0.0
    placed = placed * torch.polar(torch.ones_like(turn), turn)[:, None, None]
    numerator = torch.zeros(groups * side * side, dtype=placed.dtype).index_add(0, index, placed.reshape(-1))
    coverage = torch.zeros(groups * side * side).index_add(0, index, placed_weights.reshape(-1))
    local = numerator / coverage.clamp_min(1e-6)
    canvas = local.reshape(groups, side, side)[group_of]
    shared = extract_subpixel(canvas, corners, fractions, (height, width))
    intensity = far_field_intensity(shared, probe)
    deviance = poisson_deviance(intensity, measured.reshape(-1, height, width), valid)
    return deviance.reshape(groups, k).mean(dim=1)


@dataclass
class FinetuneResult:
    """A fine-tune's record: the new model card, the held-out deviance before and after, and the seconds."""

    card: dict
    holdout_before: float
    holdout_after: float
    seconds: float


def holdout_deviance(model: EdgeNet, inputs: torch.Tensor, valid: torch.Tensor | None, batch: int = 256) -> float:
    """Mean single-frame deviance of ``inputs`` ``(N, 1, H, W)`` under ``model``."""
    probe = model.complex_probe()
    total = 0.0
    with torch.inference_mode():
        for start in range(0, len(inputs), batch):
            x = inputs[start : start + batch]
            amplitude, phase = model(x)
            intensity = far_field_intensity(torch.polar(amplitude[:, 0], phase[:, 0]), probe)
            total += float(poisson_deviance(intensity, x[:, 0] ** 2, valid).sum())
    return total / max(len(inputs), 1)


def finetune_on_scan(
    scan: PtychoScan,
    model_dir: str | Path | None,
    output: str | Path,
    probe_file: str | Path | None = None,
    options: FinetuneOptions | None = None,
    progress: Callable[[int, int, float], None] | None = None,
) -> FinetuneResult:
    """Fine-tune an edge model on ``scan``'s frames (no labels) and write it to ``output``.

    ``progress(step, steps, loss)`` after each optimizer step. Raises ValueError for a model that is not an edge
    model or a scan whose frames it does not take.
    """
    options = options or FinetuneOptions()
    device = resolve_device(options.device)
    model, card = load_model(model_dir, device)
    if not isinstance(model, EdgeNet):
        raise ValueError(f"{model_dir}: fine-tuning on frames needs an edge model (physics conventions), this is "
                         f"{card['config']['kind']}")  # fmt: skip
    size = card["config"]["frame_size"]
    if tuple(scan.frames.shape[-2:]) != (size, size):
        raise ValueError(f"the scan's frames are {tuple(scan.frames.shape[-2:])}, the model takes ({size}, {size})")
    started = time.perf_counter()
    probe, probe_source = scan_probe(scan, probe_file, options.probe_epochs)
    model.set_probe(torch.from_numpy(probe))
    model.to(device)
    probe_t = model.complex_probe()
    counts = torch.from_numpy(np.asarray(scan.frames, dtype=np.float32))
    inputs = torch.sqrt(counts / counts.mean().clamp_min(1e-12))[:, None].to(device)
    valid = None if scan.mask is None else torch.from_numpy(~np.asarray(scan.mask, dtype=bool)).float().to(device)
    positions_px = object_grid(scan).positions_px
    rng = np.random.default_rng(options.seed)
    order = rng.permutation(scan.n_frames)
    n_holdout = round(options.holdout_fraction * scan.n_frames)
    holdout, train_frames = np.sort(order[:n_holdout]), order[n_holdout:]
    model.eval()
    before = holdout_deviance(model, inputs[holdout], valid)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.0)
    train_positions = positions_px[train_frames]
    steps_per_epoch = max(1, len(train_frames) // options.groups_per_step)
    total_steps = options.epochs * steps_per_epoch
    history = []
    model.train()
    step = 0
    for _ in range(options.epochs):
        anchors = rng.permutation(len(train_frames))
        for start in range(0, steps_per_epoch * options.groups_per_step, options.groups_per_step):
            chosen = anchors[start : start + options.groups_per_step]
            groups = neighbour_groups(train_positions, chosen, options.group_size, options.group_radius_px)
            frames = torch.from_numpy(train_frames[groups])  # (G, K) scan frame indices
            x = inputs[frames.reshape(-1)]
            amplitude, phase = model(x)
            patches = torch.polar(amplitude[:, 0], phase[:, 0])
            single = poisson_deviance(far_field_intensity(patches, probe_t), x[:, 0] ** 2, valid).mean()
            offsets = torch.from_numpy(train_positions[groups] - train_positions[groups[:, :1]])
            measured = (x[:, 0] ** 2).reshape(*groups.shape, size, size)
            shared = overlap_deviance(patches.reshape(*groups.shape, size, size), offsets, measured, probe_t, valid,
                                      options.group_radius_px).mean()  # fmt: skip
            loss = single + options.overlap_weight * shared
            for group in optimizer.param_groups:
                group["lr"] = options.learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            history.append({"step": step, "single": float(single.detach()), "overlap": float(shared.detach())})
            if progress:
                progress(step, total_steps, float(loss.detach()))
    model.eval()
    after = holdout_deviance(model, inputs[holdout], valid)
    seconds = time.perf_counter() - started
    new_card = {
        **{k: v for k, v in card.items() if k not in ("history", "evaluation", "recipe")},
        "finetuned": {
            "from": Path(model_dir).name if model_dir is not None else "shipped",
            "scan_frames": scan.n_frames,
            "probe": probe_source,
            "options": asdict(options),
            "holdout_frames": int(n_holdout),
            "holdout_deviance_before": before,
            "holdout_deviance_after": after,
            "seconds": seconds,
            "history": history[:: max(1, len(history) // 200)],
        },
    }
    new_card["valid_for"] = {**(card.get("valid_for") or {}), "probe": f"fine-tuned: {probe_source}"}
    save_model(output, model.cpu(), new_card)
    return FinetuneResult(new_card, before, after, seconds)
