"""Networks that invert one diffraction pattern to its object patch: PtychoNN and a compact edge model.

Both take normalized frames ``(B, 1, H, W)`` (see :func:`normalize_frames`) and return ``(amplitude, phase)``,
each ``(B, 1, H, W)``: amplitude in ``(0, 1)`` (sigmoid), phase in ``(-pi, pi)`` (``pi * tanh``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

MODELS = ("compact", "ptychonn")


def normalize_frames(counts: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Network input from detector counts: ``sqrt(counts / scale)``, ``(N, H, W)`` -> ``(N, 1, H, W)`` float32.

    ``scale`` is the scan's mean count per pixel (mean total per frame / (H W)) unless given, so inputs have a
    mean square of 1 whatever the dose, while frame-to-frame differences in total counts (the object's
    absorption) are kept. Streaming code passes the expected value so single frames normalize the same way.
    """
    counts = counts.to(torch.float32).clamp_min(0)
    if scale is None:
        scale = float(counts.mean())
    return torch.sqrt(counts / max(scale, 1e-12))[:, None]


def _heads(features: torch.Tensor, amplitude: nn.Module, phase: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.sigmoid(amplitude(features)), math.pi * torch.tanh(phase(features))


@dataclass
class ModelConfig:
    """Architecture of a surrogate network.

    Attributes:
        kind: ``compact`` or ``ptychonn``.
        width: channels of the first block (doubled at each level down).
        depth: encoder levels (each halves the image).
        frame_size: input (and output) side, pixels; must be divisible by ``2 ** depth``.
    """

    kind: str = "compact"
    width: int = 8
    depth: int = 3
    frame_size: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


class PtychoNN(nn.Module):
    """The original layout (Cherukara et al. 2020): encoder blocks of two 3x3 convolutions + ReLU and a 2x2
    max-pool; two decoders (amplitude, phase) of two 3x3 convolutions + ReLU and a 2x upsampling each."""

    def __init__(self, width: int = 32, depth: int = 3):
        super().__init__()
        encoder, channels = [], 1
        for level in range(depth):
            out = width * 2**level
            encoder += [nn.Conv2d(channels, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU()]
            encoder.append(nn.MaxPool2d(2))
            channels = out
        self.encoder = nn.Sequential(*encoder)

        def decoder() -> nn.Sequential:
            layers, c = [], channels
            for level in reversed(range(depth)):
                out = width * 2**level
                layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.Conv2d(out, out, 3, padding=1), nn.ReLU()]
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
                c = out
            layers.append(nn.Conv2d(c, 1, 3, padding=1))
            return nn.Sequential(*layers)

        self.amplitude, self.phase = decoder(), decoder()

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder(frames)
        return _heads(features, self.amplitude, self.phase)


class CompactNet(nn.Module):
    """An edge model built for throughput: stride-2 convolutions down, transposed convolutions up, one shared
    decoder trunk and two single-layer heads (amplitude, phase). 8 base channels: 16 k parameters."""

    def __init__(self, width: int = 8, depth: int = 3):
        super().__init__()
        down, channels = [], 1
        for level in range(depth):
            out = width * 2**level
            down += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.encoder = nn.Sequential(*down)
        up = []
        for level in reversed(range(depth - 1)):
            out = width * 2**level
            up += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.trunk = nn.Sequential(*up)
        self.amplitude = nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1)
        self.phase = nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1)

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.trunk(self.encoder(frames))
        return _heads(features, self.amplitude, self.phase)


def build_model(config: ModelConfig) -> nn.Module:
    """The network described by ``config``; raises ValueError for unknown kinds or sizes."""
    if config.frame_size % 2**config.depth:
        raise ValueError(f"frame_size {config.frame_size} is not divisible by 2 ** depth = {2**config.depth}")
    if config.kind == "compact":
        return CompactNet(config.width, config.depth)
    if config.kind == "ptychonn":
        return PtychoNN(config.width, config.depth)
    raise ValueError(f"unknown model {config.kind!r}; choose one of {', '.join(MODELS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
