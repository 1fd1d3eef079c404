"""TomoGAN: a U-Net generator that turns low-dose or sparse-view slices into clean ones, trained against a patch
discriminator with adversarial + MSE + perceptual loss (after Liu et al., J. Opt. Soc. Am. A 37, 2020).

Shapes: slices in and out are ``(B, C, H, W)`` float32, normalized to the training range (see
:func:`normalize_slices`); ``C = in_slices`` adjacent slices go in (the middle one is denoised), one comes out.
H and W must be multiples of ``2**depth``; other sizes are padded by reflection and cropped back.

The perceptual term compares feature maps of output and target. No pretrained weights can be downloaded here, so
the feature network is either one EdgeRay trains itself (:func:`train_feature_net`: the encoder of a small
autoencoder trained on clean slices) or VGG19's convolutional layers read from a local torchvision-layout weights
file (:func:`vgg19_features`), when the user has one. The feature network is frozen; gradients flow through it
into the generator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class TomoGANConfig:
    """Generator architecture: ``depth`` down/up levels, ``width`` channels at the first (doubling per level),
    ``in_slices`` adjacent slices as input channels (odd; the middle one is the target), ``input_weight`` the
    input's share of the output (``(1 - w) * network + w * input``; 0 for trained pairs, ``1 / k`` for a 1:X
    self-supervised model, :mod:`edgeray.tomo.noise2inverse`)."""

    depth: int = 3
    width: int = 16
    in_slices: int = 1
    input_weight: float = 0.0

    def __post_init__(self) -> None:
        if self.depth < 1 or self.width < 1:
            raise ValueError(f"depth and width must be >= 1, not {self.depth} and {self.width}")
        if self.in_slices < 1 or self.in_slices % 2 == 0:
            raise ValueError(f"in_slices must be odd (the middle slice is denoised), not {self.in_slices}")
        if not 0.0 <= self.input_weight < 1.0:
            raise ValueError(f"input_weight must be in [0, 1), not {self.input_weight}")


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.LeakyReLU(0.1),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.LeakyReLU(0.1),
    )  # fmt: skip


class UNet(nn.Module):
    """U-Net generator: ``(B, in_slices, H, W)`` -> ``(B, 1, H, W)``, the middle slice plus a learned correction."""

    def __init__(self, config: TomoGANConfig):
        super().__init__()
        self.config = config
        widths = [config.width * 2**level for level in range(config.depth + 1)]
        self.down = nn.ModuleList([_block(config.in_slices, widths[0])])
        self.down.extend(_block(widths[k], widths[k + 1]) for k in range(config.depth))
        self.up = nn.ModuleList(nn.ConvTranspose2d(widths[k + 1], widths[k], 2, stride=2) for k in range(config.depth))
        self.merge = nn.ModuleList(_block(2 * widths[k], widths[k]) for k in range(config.depth))
        self.head = nn.Conv2d(widths[0], 1, 1)

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        multiple = 2**self.config.depth
        height, width = slices.shape[-2:]
        pad_h, pad_w = (-height) % multiple, (-width) % multiple
        padded = F.pad(slices, (0, pad_w, 0, pad_h), mode="reflect") if pad_h or pad_w else slices
        x, skips = padded, []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for level in reversed(range(self.config.depth)):
            x = self.merge[level](torch.cat([self.up[level](x), skips[level]], dim=1))
        middle = self.config.in_slices // 2
        centre = padded[:, middle : middle + 1]
        out = self.head(x) + centre
        if self.config.input_weight:
            out = (1.0 - self.config.input_weight) * out + self.config.input_weight * centre
        return out[..., :height, :width]


class PatchDiscriminator(nn.Module):
    """Patch discriminator: ``(B, 1, H, W)`` -> ``(B, 1, H/8, W/8)`` logits, one per overlapping patch."""

    def __init__(self, width: int = 16):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for k in range(3):
            layers += [nn.Conv2d(channels, width * 2**k, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            channels = width * 2**k
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class FeatureNet(nn.Module):
    """EdgeRay's own feature network: three conv stages (``(B, 1, H, W)`` -> ``(B, 4w, H/4, W/4)``), the encoder of
    a small autoencoder trained on clean slices by :func:`train_feature_net`."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2), nn.ReLU(),
            nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.ReLU(), nn.Conv2d(width, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image)


VGG19_LAYERS = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"]


class VGG19Features(nn.Module):
    """VGG19's convolutional layers up to ``relu{stage}_{k}`` (TomoGAN used the output of the last conv stage);
    single-channel input is repeated to RGB and scaled to ImageNet statistics."""

    def __init__(self, last_layer: int = 26):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in VGG19_LAYERS:
            if spec == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(channels, int(spec), 3, padding=1), nn.ReLU()]
                channels = int(spec)
        self.features = nn.Sequential(*layers[: last_layer + 1])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.features((image.repeat(1, 3, 1, 1) - self.mean) / self.std)


def vgg19_features(weights_path: str | Path, last_layer: int = 26) -> VGG19Features:
    """VGG19 features from a local torchvision-layout weights file (``features.N.weight``; ``.pth`` read with
    ``weights_only=True``, or ``.safetensors``); frozen."""
    path = Path(weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VGG19 weights file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    net = VGG19Features(last_layer)
    wanted = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) <= last_layer}
    missing = set(net.state_dict()) - {"mean", "std"} - set(wanted)
    if missing:
        raise ValueError(f"{path}: not VGG19 weights (missing {sorted(missing)[:3]} ...)")
    net.load_state_dict(wanted, strict=False)
    return freeze(net)


def freeze(net: nn.Module) -> nn.Module:
    """Eval mode, no parameter gradients (gradients still flow through it to its input)."""
    net.eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def train_feature_net(clean: np.ndarray, width: int = 16, steps: int = 300, seed: int = 0) -> FeatureNet:
    """Train :class:`FeatureNet` as an autoencoder on clean normalized slices ``(N, H, W)`` (H, W multiples of 4)
    and return it frozen."""
    torch.manual_seed(seed)
    net = FeatureNet(width)
    data = torch.from_numpy(np.ascontiguousarray(clean, dtype=np.float32))[:, None]
    optimizer = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = data[torch.randint(len(data), (min(16, len(data)),), generator=generator)]
        loss = F.mse_loss(net.decoder(net.encoder(batch)), batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return freeze(net)


def perceptual_loss(features: nn.Module, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the feature maps of ``output`` and ``target`` ``(B, 1, H, W)``."""
    return F.mse_loss(features(output), features(target).detach())


def normalize_slices(slices: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Slices of any intensity scale -> ``(normalized float32, low, high)`` with the 0.5 and 99.5 percentiles
    mapped to 0 and 1 (undo with ``x * (high - low) + low``)."""
    low, high = np.percentile(slices, [0.5, 99.5])
    scale = max(float(high - low), 1e-12)
    return ((slices - low) / scale).astype(np.float32), float(low), float(low + scale)


def stack_neighbours(slices: np.ndarray, in_slices: int) -> np.ndarray:
    """``(N, H, W)`` -> ``(N, in_slices, H, W)``: each slice with its neighbours (edges repeated)."""
    half = in_slices // 2
    index = np.clip(np.arange(len(slices))[:, None] + np.arange(-half, half + 1)[None, :], 0, len(slices) - 1)
    return slices[index]


def single_slice_copy(model: UNet) -> UNet:
    """A one-slice generator that gives on a slice exactly what ``model`` gives on that slice repeated as all its
    ``in_slices`` neighbours (the first convolution's weights summed over its inputs): the start for fine-tuning a
    multi-slice model into one that needs no neighbours."""
    single = UNet(replace(model.config, in_slices=1))
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    first = "down.0.0.weight"
    weights[first] = weights[first].sum(dim=1, keepdim=True)
    single.load_state_dict(weights)
    return single


def config_dict(config: TomoGANConfig) -> dict:
    return {"family": "tomogan", **asdict(config)}
