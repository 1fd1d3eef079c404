"""Training a surrogate on a training set: plain torch DataLoader, validation split, cosine LR, checkpoints."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from edgeray.device import resolve_device
from edgeray.nn.checkpoint import load_model, load_training_state, save_model, save_training_state
from edgeray.nn.models import EdgeNet, ModelConfig, build_model, count_parameters
from edgeray.nn.physics import probe_weights, supervised_losses
from edgeray.nn.trainset import DATASETS


class TrainsetDataset(Dataset):
    """Samples of a training-set file: ``(input (1, H, W), amplitude (1, H, W), phase (1, H, W))`` float32.

    The file is opened lazily in each worker; the input is ``sqrt(frames / scale)`` (see ``normalize_frames``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        with h5py.File(self.path, "r") as h5:
            missing = [k for k in DATASETS if k not in h5]
            if missing:
                raise ValueError(f"{self.path}: not a training set (missing {', '.join(missing)})")
            self.length, *self.frame_shape = h5["frames"].shape
            self.attrs = dict(h5.attrs)
        self._h5: h5py.File | None = None

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._h5 is None:
            self._h5 = h5py.File(self.path, "r")
        frame = torch.from_numpy(self._h5["frames"][index].astype(np.float32))  # counts may be stored as uint16
        scale = float(self._h5["scale"][index])
        x = torch.sqrt(frame.clamp_min(0) / max(scale, 1e-12))[None]
        amplitude = torch.from_numpy(self._h5["amplitude"][index])[None]
        phase = torch.from_numpy(self._h5["phase"][index])[None]
        return x, amplitude, phase


@dataclass
class TrainOptions:
    """Training options.

    Attributes:
        epochs, batch_size, learning_rate: the usual; the learning rate follows a cosine schedule to 1% of it.
        val_fraction: share of samples held out for validation (chosen with ``seed``).
        seed: seed of the split, the initialization and the batch order (runs are repeatable on the CPU).
        device: ``cpu`` or ``cuda``; on CUDA the forward pass runs in bfloat16 autocast (AMP).
        workers: DataLoader worker processes.
        loader: ``torch`` (DataLoader, shuffled) or ``solar`` (:class:`edgeray.loader.SolarLoader`: the same
            batches, epochs reordered for reuse, a buffer of ``buffer_bytes``, coalesced reads).
        buffer_bytes: the SOLAR loader's buffer.
        init_from: a model directory whose weights start the training (fine-tuning); its architecture wins.
    """

    epochs: int = 20
    batch_size: int = 64
    learning_rate: float = 5e-3
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "cpu"
    workers: int = 0
    loader: str = "torch"
    buffer_bytes: int = 1 << 30
    init_from: str | None = None


def _loss(model: nn.Module, batch, device, amp: bool) -> tuple[torch.Tensor, float, float]:
    """Training loss of a batch and its amplitude and phase parts. The edge model is scored as on the corpus
    (probe-weighted, phase up to a constant: :func:`edgeray.nn.physics.supervised_losses`); the others by plain
    L1 over the frame."""
    x, amplitude, phase = (t.to(device, non_blocking=True) for t in batch)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=amp):
        predicted_amplitude, predicted_phase = model(x)
    if isinstance(model, EdgeNet):
        weights = probe_weights(model.complex_probe())
        target = torch.polar(amplitude[:, 0], phase[:, 0])
        loss_amplitude, loss_phase = supervised_losses(predicted_amplitude[:, 0].float(), predicted_phase[:, 0].float(),
                                                       target, weights)  # fmt: skip
        loss_amplitude, loss_phase = loss_amplitude.mean(), loss_phase.mean()
    else:
        loss_amplitude = (predicted_amplitude.float() - amplitude).abs().mean()
        loss_phase = (predicted_phase.float() - phase).abs().mean()
    return loss_amplitude + loss_phase, float(loss_amplitude.detach()), float(loss_phase.detach())


def train(
    trainset: str | Path,
    output: str | Path,
    config: ModelConfig,
    options: TrainOptions,
    resume: bool = False,
    progress: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train a model on ``trainset`` and write its directory ``output`` (weights, card, loss curve).

    ``progress(epoch, metrics)`` is called after each epoch. Returns the model card (also ``output/model.json``).
    """
    output = Path(output)
    torch.manual_seed(options.seed)
    dataset = TrainsetDataset(trainset)
    if dataset.frame_shape != [config.frame_size, config.frame_size]:
        raise ValueError(f"{trainset}: frames are {dataset.frame_shape}, the model takes {config.frame_size}^2")
    order = np.random.default_rng(options.seed).permutation(len(dataset))
    n_val = max(1, round(options.val_fraction * len(dataset)))
    val_set, train_set = Subset(dataset, order[:n_val].tolist()), Subset(dataset, order[n_val:].tolist())
    generator = torch.Generator().manual_seed(options.seed)
    loader = DataLoader(train_set, batch_size=options.batch_size, shuffle=True, generator=generator,
                        num_workers=options.workers, drop_last=len(train_set) > options.batch_size)  # fmt: skip
    val_loader = DataLoader(val_set, batch_size=256, num_workers=options.workers)
    if options.loader not in ("torch", "solar"):
        raise ValueError(f"loader must be 'torch' or 'solar', not {options.loader!r}")
    device = resolve_device(options.device)
    amp = device.type == "cuda"
    if resume and (output / "model.json").exists():
        model, _ = load_model(output, device)
        model.train()
    elif options.init_from is not None:  # fine-tuning: start from another model's weights
        model, _ = load_model(options.init_from, device)
        model.train()
    else:
        model = build_model(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=options.learning_rate)
    history: dict = {"train_loss": [], "val_loss": [], "val_amplitude_l1": [], "val_phase_l1": [], "seconds": []}
    first_epoch = 0
    state_path = output / "training_state.pt"
    if resume and state_path.exists():
        state = load_training_state(state_path)
        optimizer.load_state_dict(state["optimizer"])
        first_epoch, history = state["epoch"], state["history"]
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", options.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, options.epochs, eta_min=options.learning_rate / 100, last_epoch=first_epoch - 1
    )
    output.mkdir(parents=True, exist_ok=True)
    if "initial_train_loss" not in history:  # the untrained model's loss: the baseline every figure is read against
        model.eval()
        with torch.inference_mode():
            losses = [(float(_loss(model, b, device, amp)[0]), len(b[0])) for b in loader]
        history["initial_train_loss"] = sum(v * n for v, n in losses) / max(sum(n for _, n in losses), 1)
    solar_batches = None
    if options.loader == "solar" and first_epoch < options.epochs:
        from edgeray.loader import SolarLoader

        solar = SolarLoader(trainset, options.batch_size, options.epochs - first_epoch, seed=options.seed + first_epoch,
                            buffer_bytes=options.buffer_bytes, indices=order[n_val:])  # fmt: skip
        per_epoch, solar_batches = solar.schedule.batches_per_epoch, iter(solar)

    def epoch_batches():
        if solar_batches is None:
            yield from loader
            return
        for _ in range(per_epoch):
            share = next(solar_batches)
            yield share.inputs, share.amplitude, share.phase

    for epoch in range(first_epoch, options.epochs):
        start = time.perf_counter()
        model.train()
        total, count = 0.0, 0
        for batch in epoch_batches():
            loss, _, _ = _loss(model, batch, device, amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(batch[0])
            count += len(batch[0])
        scheduler.step()
        model.eval()
        val = np.zeros(3)
        with torch.inference_mode():
            for batch in val_loader:
                loss, la, lp = _loss(model, batch, device, amp)
                val += np.array([float(loss), la, lp]) * len(batch[0])
        val /= len(val_set)
        history["train_loss"].append(total / max(count, 1))
        history["val_loss"].append(float(val[0]))
        history["val_amplitude_l1"].append(float(val[1]))
        history["val_phase_l1"].append(float(val[2]))
        history["seconds"].append(time.perf_counter() - start)
        card = _card(config, options, dataset, model, history, trainset)
        save_model(output, model, card)
        save_training_state(state_path, optimizer, epoch + 1, history)
        if progress:
            progress(epoch + 1, {k: v[-1] for k, v in history.items() if isinstance(v, list)})
    card = _card(config, options, dataset, model, history, trainset)
    save_model(output, model, card)
    write_model_card(output, card)
    loss_figure(history, output / "loss.png")
    return card


def file_names_only(value):
    """``value`` with every file path in its strings cut to the file's name: a model card must not carry the
    folders of the machine it was made on."""
    if isinstance(value, str):
        return re.sub(r"(?:[\w.~-]*/)+([\w.-]+)", r"\1", value)
    if isinstance(value, dict):
        return {k: file_names_only(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [file_names_only(v) for v in value]
    return value


def _card(config, options, dataset, model, history, trainset) -> dict:
    attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in dataset.attrs.items()}
    attrs = file_names_only(attrs)
    valid_for = attrs.get("valid_for")
    return {
        "config": config.to_dict(),
        "parameters": count_parameters(model),
        "input": "sqrt(counts / scale), scale = the scan's mean count per pixel; shape (N, 1, H, W) float32",
        "outputs": "amplitude and phase (rad) on the frame's probe-centred grid",
        "training": file_names_only(asdict(options)) | {"trainset": Path(trainset).name, "samples": len(dataset)},
        "data": {k: v for k, v in attrs.items() if k != "valid_for"},
        "valid_for": json.loads(valid_for) if isinstance(valid_for, str) else valid_for,
        "history": history,
        "validation": {
            "amplitude_l1": history["val_amplitude_l1"][-1] if history["val_loss"] else None,
            "phase_l1_rad": history["val_phase_l1"][-1] if history["val_loss"] else None,
        },
    }


def write_model_card(directory: Path, card: dict) -> Path:
    """The model card in Markdown beside ``model.json``."""
    valid = card.get("valid_for") or {}
    lines = [
        "# EdgeRay surrogate: {kind} (width {width}, depth {depth})".format(**card["config"]),
        "",
        f"- Parameters: {card['parameters']:,}",
        f"- Input: {card['input']}",
        f"- Outputs: {card['outputs']}",
        f"- Trained on: {card['training']['trainset']} ({card['training']['samples']} samples), "
        f"{card['training']['epochs']} epochs, batch {card['training']['batch_size']}, "
        f"learning rate {card['training']['learning_rate']} (cosine), seed {card['training']['seed']}",
        f"- Validation (held-out {card['training']['val_fraction']:.0%}): amplitude L1 "
        f"{card['validation']['amplitude_l1']:.4f}, phase L1 {card['validation']['phase_l1_rad']:.4f} rad",
        "",
        "## Valid for",
        "",
        "A network inverts diffraction only for the probe and geometry it was trained with:",
        "",
        *[f"- {k}: {v}" for k, v in valid.items()],
        "",
        "## Data",
        "",
        *[f"- {k}: {v}" for k, v in card["data"].items()],
        "",
    ]
    path = directory / "MODEL_CARD.md"
    path.write_text("\n".join(lines))
    return path


def loss_figure(history: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = np.arange(1, len(history["train_loss"]) + 1)
    ax.semilogy(epochs, history["train_loss"], "-o", ms=3, label="training")
    ax.semilogy(epochs, history["val_loss"], "-o", ms=3, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("L1 loss (amplitude + phase)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
