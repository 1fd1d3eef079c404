"""Networks that invert one diffraction pattern to its object patch: the edge model, PtychoNN and a compact net.

All take normalized frames ``(B, 1, H, W)`` (see :func:`normalize_frames`) and return ``(amplitude, phase)``,
each ``(B, 1, H, W)``.

- ``edge`` (:class:`EdgeNet`, the shipped kind) follows :mod:`edgeray.nn.physics`: it carries its probe, predicts
  the patch on the probe-centred grid with the amplitude relative to the scan's mean transmission (softplus,
  ``>= 0``) and the phase up to a constant (unbounded, rad).
- ``compact`` and ``ptychonn`` (trained on stored sets, e.g. LSQML labels) predict amplitude in ``(0, 1)``
  (sigmoid) and phase in ``(-pi, pi)`` (``pi * tanh``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

MODELS = ("edge", "group", "compact", "ptychonn")


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
        kind: ``edge``, ``compact`` or ``ptychonn``.
        width: channels of the first block (doubled at each level down); None: the kind's, 32 for ``ptychonn`` (the
            published layout), else 8.
        depth: encoder levels (each halves the image).
        frame_size: input (and output) side, pixels; must be divisible by ``2 ** depth``.
        probe, probe_diameter_px: ``edge`` only: the probe the model is made for, as
            :class:`edgeray.sim.PtychoSimConfig` names it (a model fine-tuned to a measured probe carries that probe
            in its weights; these then only record where it started).
        dense: ``edge`` only: width of a dense layer that mixes the whole encoded frame (0: none).
        group_size: ``group`` only: frames per group (the anchor and its nearest neighbours; 1 allowed).
        group_radius_px: ``group`` only: farthest neighbour, object pixels.
        fusion_width: ``group`` only: channels of the real-space network that fuses the group's patches.
    """

    kind: str = "compact"
    width: int | None = None
    depth: int = 3
    frame_size: int = 64
    probe: str = "focused"
    probe_diameter_px: float | None = None
    dense: int = 0
    group_size: int = 4
    group_radius_px: float = 16.0
    fusion_width: int = 16

    def __post_init__(self) -> None:
        if self.width is None:
            self.width = 32 if self.kind == "ptychonn" else 8

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


def low_order_basis(size: int, radius_px: float) -> torch.Tensor:
    """``(7, H, W)`` low-order phase modes about the frame's centre, ``r`` in units of ``radius_px``: tilt y, tilt x,
    defocus ``r^2``, two astigmatisms, two comas."""
    axis = (torch.arange(size, dtype=torch.float32) - size // 2) / radius_px
    y, x = axis[:, None].expand(size, size), axis[None, :].expand(size, size)
    r2 = y * y + x * x
    return torch.stack([y, x, r2, y * y - x * x, 2 * x * y, r2 * y, r2 * x])


class EdgeNet(nn.Module):
    """The edge model: a compact encoder-decoder made for the physics of one frame (see the module docstring).

    - Its input has a second channel, the measured amplitude minus the probe's own far field (scaled to the
      frame's transmission): what the object changed, where the beam's bright disc moved or deformed.
    - A dense head on the encoded frame predicts the patch's low-order phase (tilt, defocus, astigmatism, coma:
      what the disc's shape measures and what stitching needs right), added to the decoder's detail.
    - The probe ``(H, W)`` complex with unit power is kept in the weights (``probe`` buffer, real and imaginary
      parts), so a model fine-tuned to a measured probe carries it.

    Args:
        config: the architecture (``width``, ``depth``, ``frame_size``, ``dense``).
        probe: ``(H, W)`` complex probe (scaled to unit power here); default the one ``config`` names.
    """

    def __init__(self, config: ModelConfig, probe: torch.Tensor | None = None):
        super().__init__()
        size = config.frame_size
        if probe is None:
            from edgeray.nn.corpus import unit_probe

            probe = unit_probe(size, config.probe, config.probe_diameter_px)
        self.register_buffer("probe", torch.zeros(2, size, size))
        self.register_buffer("far_amplitude", torch.zeros(1, 1, size, size))
        self.register_buffer("basis", torch.zeros(7, size, size))
        self.set_probe(probe)
        down, channels = [], 2
        for level in range(config.depth):
            out = config.width * 2**level
            down += [nn.Conv2d(channels, out, 3, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.encoder = nn.Sequential(*down)
        self.side = size // 2**config.depth
        encoded = channels * self.side**2
        self.low_order = nn.Sequential(nn.Flatten(), nn.Linear(encoded, 64), nn.ReLU(), nn.Linear(64, 7))
        self.mix = None
        if config.dense:
            self.mix = nn.Sequential(nn.Flatten(), nn.Linear(encoded, config.dense), nn.ReLU(),
                                     nn.Linear(config.dense, encoded), nn.ReLU())  # fmt: skip
        up = []
        for level in reversed(range(config.depth - 1)):
            out = config.width * 2**level
            up += [nn.ConvTranspose2d(channels, out, 4, stride=2, padding=1), nn.ReLU()]
            channels = out
        self.trunk = nn.Sequential(*up)
        self.amplitude = nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1)
        self.phase = nn.ConvTranspose2d(channels, 1, 4, stride=2, padding=1)

    def set_probe(self, probe: torch.Tensor) -> None:
        """Make the model's probe ``probe`` ``(H, W)`` complex (scaled to unit power), with what depends on it."""
        probe = probe.detach().to(torch.complex64).cpu()
        probe = probe / torch.linalg.vector_norm(probe)
        far = torch.fft.fftshift(torch.fft.fft2(probe)).abs()
        power = probe.real.square() + probe.imag.square()
        radius = float(torch.sqrt(2 * (power * self._radius_sq(probe.shape[-1])).sum()))  # rms beam radius x sqrt2
        self.probe.copy_(torch.stack([probe.real, probe.imag]))
        self.far_amplitude.copy_(far[None, None])
        self.basis.copy_(low_order_basis(probe.shape[-1], max(radius, 1.0)))

    @staticmethod
    def _radius_sq(size: int) -> torch.Tensor:
        axis = torch.arange(size, dtype=torch.float32) - size // 2
        return axis[:, None] ** 2 + axis[None, :] ** 2

    def complex_probe(self) -> torch.Tensor:
        """The model's probe, ``(H, W)`` complex64 with unit power."""
        return torch.complex(self.probe[0], self.probe[1])

    def forward(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        far = self.far_amplitude
        transmission = torch.sqrt((frames * frames).mean(dim=(2, 3), keepdim=True) / (far * far).mean())
        features = self.encoder(torch.cat([frames, frames - transmission * far], dim=1))
        coefficients = self.low_order(features)
        if self.mix is not None:
            features = self.mix(features).reshape(features.shape)
        detail = self.trunk(features)
        low = (coefficients @ self.basis.flatten(1)).reshape(-1, 1, *self.basis.shape[-2:])
        return softplus(self.amplitude(detail)), self.phase(detail) + low


def softplus(values: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))``, as torch computes it; in an ONNX export written as ``relu(x) + log(1 + exp(-|x|))``
    (the same function), because ONNX Runtime's own Softplus kernel is scalar code: it took 27 % of the edge
    model's time on the CPU, the rewritten form ~4 % (the model 10-20 % faster in all)."""
    if torch.onnx.is_in_onnx_export():
        return torch.relu(values) + torch.log1p(torch.exp(-torch.abs(values)))
    return nn.functional.softplus(values)


def build_model(config: ModelConfig) -> nn.Module:
    """The network described by ``config``; raises ValueError for unknown kinds or sizes."""
    if config.frame_size % 2**config.depth:
        raise ValueError(f"frame_size {config.frame_size} is not divisible by 2 ** depth = {2**config.depth}")
    if config.kind == "edge":
        return EdgeNet(config)
    if config.kind == "group":
        raise ValueError("group models are built by edgeray.nn.group.GroupNet (load_model builds any kind)")
    if config.kind == "compact":
        return CompactNet(config.width, config.depth)
    if config.kind == "ptychonn":
        return PtychoNN(config.width, config.depth)
    raise ValueError(f"unknown model {config.kind!r}; choose one of {', '.join(MODELS)}")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
