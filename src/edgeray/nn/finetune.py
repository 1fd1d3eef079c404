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

import copy
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import nn

from edgeray.device import resolve_device
from edgeray.io import Product, PtychoScan
from edgeray.nn.checkpoint import load_model, save_model
from edgeray.nn.group import GroupNet, group_indices
from edgeray.nn.models import EdgeNet
from edgeray.nn.physics import far_field_intensity, poisson_deviance, probe_weights, slope_loss, supervised_losses
from edgeray.nn.stitch import subpixel_shift
from edgeray.nn.twin import TwinFrames, twin_losses
from edgeray.ptycho.ops import split_positions
from edgeray.ptycho.problem import object_grid

REGIMES = ("auto", "physics", "labels", "both", "twin")


@dataclass
class FinetuneOptions:
    """Options of :func:`finetune_on_scan`.

    Attributes:
        regime: what the network learns the sample from: ``physics`` (label-free: each frame's Poisson deviance and
            the overlap of neighbours, as PtychoPINN), ``labels`` (an LSQML reconstruction of the training frames
            themselves, as edgePtychoNN), ``both`` (labels plus physics), ``twin`` (frames simulated from that LSQML
            reconstruction, :class:`TwinFrames`, beside the procedural corpus lit by the scan's probe), ``auto``
            (``twin``: measured best, see docs/benchmarks.md).
        group_size: frames per group of the multi-frame model made from the starting edge model (1, the default:
            keep the single-frame model, measured the better of the two in accuracy and far faster, see
            docs/benchmarks.md); a group model given as ``model_dir`` keeps its own.
        epochs: passes over the training frames (each frame anchors one group per epoch); ``twin``:
            ``twin_steps`` optimizer steps of ``twin_batch`` simulated frames each.
        groups_per_step: groups per optimizer step.
        group_radius_px: farthest neighbour in a group, object pixels.
        learning_rate: AdamW's peak (cosine to 0).
        overlap_weight: weight of the overlap term (physics regimes).
        physics_weight: weight of the Poisson terms when labels are used.
        lsqml_epochs: LSQML epochs on the training frames for the labels.
        twin_steps, twin_batch: ``twin`` only, see ``epochs``; twin_share: the share of each batch simulated from
            the scan's reconstruction (the rest from the procedural corpus).
        holdout_fraction: share of frames kept out of training, one region of the scan (:func:`holdout_region`):
            the gain is measured and the best epoch chosen on them.
        probe_epochs: LSQML epochs when the probe must be estimated from the data.
        seed: group order, initialization.
        device: ``cpu``, ``cuda`` or ``auto``.
    """

    regime: str = "auto"
    group_size: int = 1
    epochs: int = 40
    groups_per_step: int = 32
    group_radius_px: float = 16.0
    learning_rate: float = 1e-3
    overlap_weight: float = 1.0
    physics_weight: float = 0.1
    lsqml_epochs: int = 30
    twin_steps: int = 100
    twin_batch: int = 128
    twin_share: float = 0.75
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


def predict_groups(
    model: nn.Module, inputs: torch.Tensor, groups: np.ndarray, positions_px: np.ndarray, batch: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(amplitude, phase)`` ``(len(groups), 1, H, W)`` of each group's anchor: ``inputs`` ``(N, 1, H, W)``,
    ``groups`` ``(G, K)`` indices into them (anchor first), ``positions_px`` ``(N, 2)``. A group model (or its ONNX
    runtime) inverts each frame once, then fuses each group; a single-frame model takes the anchors alone."""
    amplitudes, phases = [], []
    with torch.inference_mode():
        if getattr(model, "takes_groups", False):  # GroupNet and its ONNX runtime
            used, inverse = np.unique(groups, return_inverse=True)  # only the frames the groups hold, each once
            groups = inverse.reshape(groups.shape)
            frames = inputs[torch.from_numpy(used)]
            patches = torch.cat([model.frame_patches(frames[start : start + batch, 0][:, None])[:, 0]
                                 for start in range(0, len(frames), batch)])  # fmt: skip
            positions_px = positions_px[used]
        for start in range(0, len(groups), batch):
            chosen = groups[start : start + batch]
            if getattr(model, "takes_groups", False):
                offsets = torch.from_numpy(positions_px[chosen] - positions_px[chosen[:, :1]]).float()
                amplitude, phase = model.fuse_patches(patches[torch.from_numpy(chosen)], offsets)
            else:
                amplitude, phase = model(inputs[torch.from_numpy(chosen[:, 0])])
            amplitudes.append(amplitude)
            phases.append(phase)
    return torch.cat(amplitudes), torch.cat(phases)


def holdout_deviance(
    model: nn.Module,
    inputs: torch.Tensor,
    valid: torch.Tensor | None,
    groups: np.ndarray | None = None,
    positions_px: np.ndarray | None = None,
) -> float:
    """Mean single-frame Poisson deviance of the anchors of ``groups`` (default: every frame of ``inputs``
    ``(N, 1, H, W)`` alone) under ``model``."""
    if groups is None:
        groups = np.arange(len(inputs))[:, None]
        positions_px = np.zeros((len(inputs), 2))
    amplitude, phase = predict_groups(model, inputs, groups, positions_px)
    probe = model.complex_probe()
    intensity = far_field_intensity(torch.polar(amplitude[:, 0], phase[:, 0]), probe)
    measured = inputs[torch.from_numpy(groups[:, 0])][:, 0] ** 2
    return float(poisson_deviance(intensity, measured, valid).mean()) if len(groups) else 0.0


def lsqml_product(scan: PtychoScan, frames: np.ndarray, probe: np.ndarray, epochs: int) -> Product:
    """An LSQML reconstruction (``epochs``, starting from ``probe``) of the scan's ``frames`` alone."""
    from edgeray.ptycho.reconstruct import run

    part = PtychoScan(frames=np.asarray(scan.frames[frames]), positions_m=scan.positions_m[frames],
                      geometry=scan.geometry, mask=scan.mask)  # fmt: skip
    return run(part, "lsqml", epochs, probe=probe).product


def product_labels(scan: PtychoScan, product: Product) -> torch.Tensor:
    """``(N, H, W)`` complex64 labels of the scan's frames: the patches of ``product`` (a reconstruction of all of
    them), relative to the mean transmission, mean phase removed."""
    from edgeray.nn.trainset import samples_from_reconstruction

    samples = samples_from_reconstruction(scan, product)
    return torch.polar(torch.from_numpy(samples["amplitude"]), torch.from_numpy(samples["phase"]))


def model_frame(model: nn.Module) -> EdgeNet:
    """The per-frame edge model: ``model`` itself, or a group model's per-frame branch."""
    return model.frame if isinstance(model, GroupNet) else model


def start_model(model_dir: str | Path | None, group_size: int, device) -> tuple[nn.Module, dict]:
    """The model to fine-tune: ``model_dir``'s (an edge or group model); an edge model becomes a group model of
    ``group_size`` frames (its weights the per-frame branch) unless ``group_size`` is 1."""
    from edgeray.nn.models import ModelConfig

    model, card = load_model(model_dir, device)
    if isinstance(model, EdgeNet) and group_size > 1:
        config = ModelConfig(**{**card["config"], "kind": "group", "group_size": group_size})
        grouped = GroupNet(config, model.complex_probe())
        grouped.frame.load_state_dict(model.state_dict())
        card = {**card, "config": config.to_dict()}
        model = grouped.to(device)
    if not isinstance(model, EdgeNet | GroupNet):
        raise ValueError(f"{model_dir}: fine-tuning on frames needs an edge or group model (physics conventions), "
                         f"this is {card['config']['kind']}")  # fmt: skip
    return model, card


def finetune_on_scan(
    scan: PtychoScan,
    model_dir: str | Path | None,
    output: str | Path,
    probe_file: str | Path | None = None,
    options: FinetuneOptions | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    labels_from: Product | None = None,
) -> FinetuneResult:
    """Teach a model ``scan``'s sample (see :class:`FinetuneOptions` for the regimes) and write it to ``output``.

    After each epoch the held-out frames are scored (their label error where labels exist, else their deviance); the
    weights of the best epoch are written, the starting model's among them: learning never hands back a model that
    scores worse on frames it did not train on.

    ``labels_from``: a reconstruction of the whole scan (as the edge-to-HPC flow makes one): its patches are the
    labels, instead of an LSQML run here. ``progress(step, steps, loss)`` after each optimizer step. Raises
    ValueError for a model that is not an edge or
    group model, a scan whose frames it does not take, or an unknown regime.
    """
    options = options or FinetuneOptions()
    if options.regime not in REGIMES:
        raise ValueError(f"regime must be one of {', '.join(REGIMES)}, not {options.regime!r}")
    regime = "twin" if options.regime == "auto" else options.regime
    device = resolve_device(options.device)
    model, card = start_model(model_dir, options.group_size, device)
    size = card["config"]["frame_size"]
    if tuple(scan.frames.shape[-2:]) != (size, size):
        raise ValueError(f"the scan's frames are {tuple(scan.frames.shape[-2:])}, the model takes ({size}, {size})")
    group_size = card["config"]["group_size"] if isinstance(model, GroupNet) else 1
    started = time.perf_counter()
    probe, probe_source = scan_probe(scan, probe_file, options.probe_epochs)
    model.set_probe(torch.from_numpy(probe))
    model.to(device)
    probe_t = model.complex_probe()
    weights = probe_weights(probe_t)
    counts = torch.from_numpy(np.asarray(scan.frames, dtype=np.float32))
    inputs = torch.sqrt(counts / counts.mean().clamp_min(1e-12))[:, None].to(device)
    valid = None if scan.mask is None else torch.from_numpy(~np.asarray(scan.mask, dtype=bool)).float().to(device)
    positions_px = object_grid(scan).positions_px
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    n_holdout = round(options.holdout_fraction * scan.n_frames)
    holdout, train_frames = holdout_region(positions_px, n_holdout)
    train_positions = positions_px[train_frames]
    train_groups = group_indices(train_positions, group_size, options.group_radius_px)  # into train_frames
    holdout_groups = _holdout_groups(positions_px, holdout, train_frames, group_size, options.group_radius_px)
    model.eval()
    before = holdout_deviance(model, inputs, valid, holdout_groups, positions_px)
    labels = holdout_labels = None
    twin = None
    if regime in ("labels", "both", "twin"):  # one reconstruction of every frame; held-out frames' labels only score
        if labels_from is not None:
            all_labels = product_labels(scan, labels_from)
        else:
            labels_from = lsqml_product(scan, np.arange(scan.n_frames), probe, options.lsqml_epochs)
            all_labels = product_labels(scan, labels_from)
        all_labels = all_labels.to(device)
        if regime == "twin":
            twin = TwinFrames(labels_from, scan, train_frames, model_frame(model).complex_probe(), options.seed)
        labels, holdout_labels = all_labels[train_frames], all_labels[holdout]
    radius = float(torch.sqrt((weights * _radius_sq(size)).sum() / weights.sum()))

    def validation() -> float:
        """The held-out frames' score, lower is better: their label error where there are labels, else their
        Poisson deviance (which falls also where the image does not improve; labels are the better guide)."""
        if holdout_labels is None or not len(holdout):
            return holdout_deviance(model, inputs, valid, holdout_groups, positions_px)
        amplitude, phase = predict_groups(model, inputs, holdout_groups, positions_px)
        errors = supervised_losses(amplitude[:, 0], phase[:, 0], holdout_labels, weights)
        slope = slope_loss(amplitude[:, 0], phase[:, 0], holdout_labels, weights, radius)
        return float((errors[0] + errors[1] + slope).mean())

    scores = [validation()]  # epoch 0: the starting model, kept unless learning beats it
    best_state = copy.deepcopy(model.state_dict())
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate, weight_decay=0.0)
    steps_per_epoch = max(1, len(train_frames) // options.groups_per_step)
    if twin is not None:
        steps_per_epoch = options.twin_steps
        corpus = twin.corpus(model_frame(model).complex_probe().cpu(), options.seed)
    total_steps = options.epochs * steps_per_epoch
    history = []
    model.train()
    step = 0
    for _ in range(options.epochs):
        anchors = rng.permutation(len(train_frames))
        for start in range(0, steps_per_epoch * options.groups_per_step, options.groups_per_step):
            if twin is not None:
                terms = twin_losses(model_frame(model), twin, corpus, options, device)
                loss = terms.pop("total")
            else:
                groups = train_groups[anchors[start : start + options.groups_per_step]]  # (G, K) into train_frames
                terms = _group_loss(model, inputs, train_frames, train_positions, groups, labels, probe_t, weights,
                                    valid, radius, regime, options)  # fmt: skip
                loss = sum(terms.values())
            for group in optimizer.param_groups:
                group["lr"] = options.learning_rate * 0.5 * (1 + math.cos(math.pi * step / max(total_steps, 1)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            history.append({"step": step, **{name: float(value.detach()) for name, value in terms.items()}})
            if progress:
                progress(step, total_steps, float(loss.detach()))
        model.eval()
        scores.append(validation())
        if scores[-1] == min(scores):
            best_state = copy.deepcopy(model.state_dict())
        model.train()
    model.load_state_dict(best_state)
    model.eval()
    after = holdout_deviance(model, inputs, valid, holdout_groups, positions_px)
    seconds = time.perf_counter() - started
    new_card = {
        **{k: v for k, v in card.items() if k not in ("history", "evaluation", "recipe")},
        "finetuned": {
            "from": Path(model_dir).name if model_dir is not None else "shipped",
            "regime": regime,
            "scan_frames": scan.n_frames,
            "probe": probe_source,
            "options": asdict(options),
            "holdout_frames": int(n_holdout),
            "holdout_deviance_before": before,
            "holdout_deviance_after": after,
            "validation": "held-out label error" if holdout_labels is not None else "held-out Poisson deviance",
            "validation_by_epoch": scores,
            "kept_epoch": int(np.argmin(scores)),
            "seconds": seconds,
            "history": history[:: max(1, len(history) // 200)],
        },
    }
    new_card["valid_for"] = {**(card.get("valid_for") or {}), "probe": f"fine-tuned: {probe_source}"}
    save_model(output, model.cpu(), new_card)
    return FinetuneResult(new_card, before, after, seconds)


def holdout_region(positions_px: np.ndarray, n_holdout: int) -> tuple[np.ndarray, np.ndarray]:
    """``(held-out, training)`` sorted frame indices: the ``n_holdout`` frames farthest along the scan's rows
    (largest y, ties by x), one region the training never sees, as the rest of a scan is when a network images it;
    frames scattered among the training ones would be scored on what their neighbours taught."""
    order = np.lexsort((positions_px[:, 1], positions_px[:, 0]))[::-1]
    return np.sort(order[:n_holdout]), np.sort(order[n_holdout:])


def _radius_sq(size: int) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float32) - size // 2
    return axis[:, None] ** 2 + axis[None, :] ** 2


def _holdout_groups(
    positions_px: np.ndarray, holdout: np.ndarray, train_frames: np.ndarray, group_size: int, radius_px: float
) -> np.ndarray:
    """Groups ``(len(holdout), K)`` (scan frame indices) of the held-out frames, neighbours from the training frames."""
    if group_size == 1 or not len(holdout):
        return holdout[:, None]
    pool = np.concatenate([holdout, train_frames])
    local = np.stack([np.arange(len(holdout))] + [np.zeros(len(holdout), int)] * (group_size - 1), 1)
    distances, neighbours = cKDTree(positions_px[train_frames]).query(positions_px[holdout], k=group_size - 1)
    neighbours = neighbours.reshape(len(holdout), -1) + len(holdout)
    near = distances.reshape(len(holdout), -1) <= radius_px
    local[:, 1:] = np.where(near, neighbours, local[:, :1])
    return pool[local]


def _group_loss(model, inputs, train_frames, train_positions, groups, labels, probe, weights, valid, radius,
                regime, options) -> dict[str, torch.Tensor]:  # fmt: skip
    """The loss terms of one step over ``groups`` ``(G, K)`` (indices into ``train_frames``)."""
    size = inputs.shape[-1]
    frames = torch.from_numpy(train_frames[groups])  # (G, K) scan frame indices
    x = inputs[frames.reshape(-1)]
    measured = x[:, 0] ** 2
    offsets = torch.from_numpy(train_positions[groups] - train_positions[groups[:, :1]]).float()
    if isinstance(model, GroupNet):
        parts = model.frame_patches(x.reshape(*groups.shape, size, size))  # (G, K, 2, H, W)
        patches = torch.complex(parts[:, :, 0], parts[:, :, 1]).reshape(-1, size, size)
        amplitude, phase = model.fuse_patches(parts, offsets)
    else:
        amplitude, phase = model(x)
        patches = torch.polar(amplitude[:, 0], phase[:, 0])
        amplitude, phase = amplitude.reshape(*groups.shape, size, size)[:, :1], phase.reshape(*groups.shape, size,
                                                                                             size)[:, :1]  # fmt: skip
    anchor = torch.polar(amplitude[:, 0], phase[:, 0])
    anchor_measured = measured.reshape(*groups.shape, size, size)[:, 0]
    single = poisson_deviance(far_field_intensity(patches, probe), measured, valid).mean()
    grouped = poisson_deviance(far_field_intensity(anchor, probe), anchor_measured, valid).mean()
    terms = {}
    if regime == "physics":
        terms["single"] = single
        if isinstance(model, GroupNet):
            terms["group"] = grouped
        if groups.shape[1] > 1:
            shared = overlap_deviance(patches.reshape(*groups.shape, size, size), offsets.double(),
                                      measured.reshape(*groups.shape, size, size), probe, valid,
                                      options.group_radius_px).mean()  # fmt: skip
            terms["overlap"] = options.overlap_weight * shared
        return terms
    target = labels[torch.from_numpy(groups[:, 0])]
    loss_amplitude, loss_phase = supervised_losses(amplitude[:, 0], phase[:, 0], target, weights)
    terms["amplitude"] = loss_amplitude.mean()
    terms["phase"] = loss_phase.mean()
    terms["slope"] = slope_loss(amplitude[:, 0], phase[:, 0], target, weights, radius).mean()
    member_target = labels[torch.from_numpy(groups.reshape(-1))]
    member_amplitude, member_phase = supervised_losses(patches.abs(), torch.angle(patches), member_target, weights)
    terms["members"] = 0.5 * (member_amplitude + member_phase).mean()
    if regime == "both":
        terms["physics"] = options.physics_weight * (single + grouped)
    return terms
