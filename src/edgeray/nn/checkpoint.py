"""Model directories: weights in safetensors (no pickle), architecture and model card in JSON.

``DIR/model.safetensors`` (weights), ``DIR/model.json`` (architecture, input normalization, what the model is
valid for, training data and metrics), ``DIR/MODEL_CARD.md`` (the same for people), ``DIR/loss.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from edgeray.nn.group import GroupNet
from edgeray.nn.models import ModelConfig, build_model

SHIPPED = Path(__file__).parent / "shipped" / "edge"


def weights_digest(directory: str | Path | None) -> str:
    """SHA-256 (hex) of a model folder's ``model.safetensors`` (None: the shipped model): which weights these are."""
    import hashlib

    folder = Path(directory) if directory is not None else SHIPPED
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def save_model(directory: str | Path, model: nn.Module, card: dict) -> Path:
    """Write weights and card; the card must hold ``config`` (a :class:`ModelConfig` dict)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = directory / ".model.safetensors.tmp"
    save_file(weights, str(tmp))
    tmp.chmod(0o644)
    tmp.replace(directory / "model.safetensors")
    (directory / "model.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    return directory


def read_model_files(directory: Path, kind: str = "model") -> tuple[dict, dict[str, torch.Tensor]]:
    """``(card, weights)`` of a model directory, read without pickle; ValueError names the file at fault."""
    card_path, weights_path = directory / "model.json", directory / "model.safetensors"
    for path in (card_path, weights_path):
        if not path.is_file():
            raise ValueError(f"{directory}: not a {kind} directory (no {path.name})")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{card_path}: unreadable model card ({exc})") from exc
    if not isinstance(card, dict) or not isinstance(card.get("config"), dict):
        raise ValueError(f"{card_path}: unreadable model card (no 'config' object)")
    try:
        weights = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{weights_path}: corrupt weights file ({exc})") from exc
    return card, weights


def load_model(directory: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a model directory (default: the shipped edge model) -> ``(model in eval mode, card)``.

    Raises:
        ValueError: a missing or corrupt file, or weights that do not fit the architecture in the card.
    """
    directory = Path(directory) if directory is not None else SHIPPED
    card, weights = read_model_files(directory)
    try:
        config = ModelConfig(**card["config"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{directory / 'model.json'}: unreadable model card ({exc})") from exc
    model = fit_weights(GroupNet(config) if config.kind == "group" else build_model(config), weights, directory,
                        config.kind)  # fmt: skip
    return model.to(device).eval(), card


def fit_weights(model: nn.Module, weights: dict[str, torch.Tensor], directory: Path, architecture: str) -> nn.Module:
    """Load ``weights`` into ``model`` (strict); ValueError names the file when they do not fit."""
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        path = directory / "model.safetensors"
        raise ValueError(f"{path}: weights do not fit the {architecture} architecture in the card: {first}") from exc
    return model


def save_training_state(path: Path, optimizer: torch.optim.Optimizer, epoch: int, history: dict) -> None:
    """Optimizer state and progress for ``--resume`` (tensors and plain values only: loads with weights_only)."""
    torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "history": history}, path)


def load_training_state(path: Path) -> dict:
    return torch.load(path, weights_only=True)
