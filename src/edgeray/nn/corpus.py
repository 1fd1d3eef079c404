"""A procedural training corpus for ptychography surrogates, generated on the fly: no disk, no repeats.

Every batch is new: objects are drawn from several families (natural images under random zoom, rotation and
crop; random smooth fields; sharp binary features such as lithography, gratings and Siemens stars; foams and
cells), turned into complex transmission functions (amplitude ``amplitude_min``-1, phase range 0.05-3 rad,
amplitude and phase either from one thickness map or from two), lit by the model's probe and recorded as Poisson
counts at a dose drawn log-uniformly from ``photons``. Families are defined in continuous coordinates (random
sub-pixel placement), so the frames carry every sub-pixel offset between features and pixels.

Conventions (the network's, see :mod:`edgeray.nn.physics`): the probe ``p`` is centred on the frame and has unit
power; each object tile stands for a scan, and ``frames_per_object`` windows of it are its frames. The scan's
mean count per pixel ``scale`` normalizes the input (``sqrt(counts / scale)``) and defines the labels: the object
divided by the square root of the scan's mean transmitted fraction, so that ``counts / scale`` has expectation
``|fftshift(fft2(p * patch))|^2`` exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

#: scikit-image's bundled pictures the corpus may use. Kept out: every image EdgeRay scores models on
#: (:data:`edgeray.sim.HELD_OUT_IMAGES` and the demo's ``camera``, ``astronaut``).
TRAINING_IMAGES = ("coins", "moon", "text", "brick", "grass", "gravel", "cell", "page", "horse", "clock",
                   "logo", "microaneurysms", "retina", "colorwheel", "lfw_subset", "shepp_logan_phantom")  # fmt: skip
FAMILIES = ("natural", "smooth", "binary", "foam")


@dataclass
class CorpusConfig:
    """What the corpus draws from.

    Attributes:
        frame_size: frame side H = W, pixels.
        probe: the probe spec of :class:`edgeray.sim.PtychoSimConfig` (``focused``, ``zoneplate``, ``gaussian`` or a
            file); probe_diameter_px: its beam diameter (None: the simulator's default, 0.35 frame_size).
        photons: ``(low, high)`` mean total counts per frame, drawn log-uniformly per object.
        phase_range_rad: ``(low, high)`` phase range of an object, drawn uniformly.
        amplitude_min: ``(low, high)`` lowest amplitude of an object, drawn uniformly.
        families: relative weights of the object families (:data:`FAMILIES`).
        tile_px: side of an object tile; frames_per_object: windows taken from each tile (one "scan").
        correlated: probability that amplitude and phase come from one thickness map.
        seed: seed of every draw.
    """

    frame_size: int = 64
    probe: str = "focused"
    probe_diameter_px: float | None = None
    photons: tuple[float, float] = (1e2, 1e6)
    phase_range_rad: tuple[float, float] = (0.05, 3.0)
    amplitude_min: tuple[float, float] = (0.3, 1.0)
    families: dict = field(default_factory=lambda: {"natural": 0.35, "smooth": 0.2, "binary": 0.25, "foam": 0.2})
    tile_px: int = 96
    frames_per_object: int = 8
    correlated: float = 0.5
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CorpusBatch:
    """One batch of samples.

    Attributes:
        counts: ``(B, H, W)`` float32 Poisson counts (fftshifted, as a detector records them).
        scale: ``(B,)`` float32 mean count per pixel of each sample's scan (the input normalization).
        patch: ``(B, H, W)`` complex64 object window on the probe-centred grid, scaled as the labels are.
        photons: ``(B,)`` float32 mean total counts per frame of the sample's scan.
        family: ``(B,)`` int64 index into :data:`FAMILIES` of the amplitude map's family.
    """

    counts: torch.Tensor
    scale: torch.Tensor
    patch: torch.Tensor
    photons: torch.Tensor
    family: torch.Tensor


def unit_probe(frame_size: int, probe: str = "focused", diameter_px: float | None = None) -> torch.Tensor:
    """The probe of a corpus or model card, ``(H, W)`` complex64 with unit power, centred (first mode)."""
    from edgeray.sim.ptycho import PtychoSimConfig, make_probe

    config = PtychoSimConfig(frame_size=frame_size, probe=probe, probe_diameter_px=diameter_px)
    p = torch.from_numpy(make_probe(config)[0].astype(np.complex64))
    return p / torch.linalg.vector_norm(p)


def load_training_images(names: tuple[str, ...] = TRAINING_IMAGES, side: int = 384) -> torch.Tensor:
    """The corpus's natural images, grey in [0, 1], each resized to ``side``: ``(K, 1, side, side)`` float32.

    Multi-image entries (``lfw_subset``: faces) are tiled into one mosaic image.
    """
    from skimage import color, data, transform

    images = []
    for name in names:
        image = np.asarray(getattr(data, name)(), dtype=np.float64)
        if image.ndim == 3 and image.shape[-1] in (3, 4):
            image = color.rgb2gray(image[..., :3] / (255.0 if image.max() > 1 else 1.0))
        elif image.ndim == 3:  # a stack of small images: tile them
            n = math.isqrt(len(image))
            image = image[: n * n].reshape(n, n, *image.shape[1:]).transpose(0, 2, 1, 3).reshape(n * image.shape[1], -1)
        image = transform.resize(image, (side, side), anti_aliasing=True)
        low, high = image.min(), image.max()
        images.append((image - low) / (high - low if high > low else 1.0))
    return torch.from_numpy(np.stack(images)[:, None].astype(np.float32))


class Corpus:
    """An endless stream of :class:`CorpusBatch` es; every draw comes from ``config.seed`` (repeatable).

    Args:
        config: what to draw.
        images: natural images ``(K, 1, S, S)`` (default :func:`load_training_images`).
    """

    def __init__(self, config: CorpusConfig | None = None, images: torch.Tensor | None = None):
        self.config = config or CorpusConfig()
        self.probe = unit_probe(self.config.frame_size, self.config.probe, self.config.probe_diameter_px)
        self.images = load_training_images() if images is None and self.config.families.get("natural") else images
        self.generator = torch.Generator().manual_seed(self.config.seed)
        weights = torch.tensor([float(self.config.families.get(name, 0.0)) for name in FAMILIES])
        if weights.sum() <= 0:
            raise ValueError(f"corpus families {self.config.families}: give a positive weight to one of {FAMILIES}")
        self.family_weights = weights / weights.sum()

    # -- random helpers ----------------------------------------------------------------------------------------
    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def _log_uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.exp(self._uniform(n, math.log(low), math.log(high)))

    def _grid(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel-centre coordinates ``(n, S, S)`` ``y, x`` of tiles, in pixels, centred on 0."""
        side = self.config.tile_px
        axis = torch.arange(side, dtype=torch.float32) - (side - 1) / 2
        return axis[None, :, None].expand(n, side, side), axis[None, None, :].expand(n, side, side)

    # -- object families: (n, S, S) float32 maps in [0, 1] -------------------------------------------------------
    def natural(self, n: int) -> torch.Tensor:
        """Crops of the training images at a random zoom (0.3-3 image pixels per object pixel), angle and place."""
        side = self.config.tile_px
        zoom = self._log_uniform(n, 0.3, 3.0)
        angle = self._uniform(n, 0, 2 * math.pi)
        span = zoom * side / self.images.shape[-1]  # tile extent in the image's [-1, 1] coordinates, halved
        centre = (torch.rand(n, 2, generator=self.generator) * 2 - 1) * (1 - span[:, None]).clamp_min(0)
        flip = torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0)
        cos, sin = torch.cos(angle) * span, torch.sin(angle) * span
        rows = (torch.stack([cos * flip, -sin, centre[:, 0]], 1), torch.stack([sin * flip, cos, centre[:, 1]], 1))
        theta = torch.stack(rows, 1)
        which = torch.randint(len(self.images), (n,), generator=self.generator)
        grid = F.affine_grid(theta, (n, 1, side, side), align_corners=False)
        out = torch.empty(n, side, side)
        for k in torch.unique(which).tolist():  # one grid_sample per source image, not per sample
            rows = torch.nonzero(which == k)[:, 0]
            source = self.images[k : k + 1].expand(len(rows), -1, -1, -1)
            out[rows] = F.grid_sample(source, grid[rows], mode="bilinear", padding_mode="reflection",
                                      align_corners=False)[:, 0]  # fmt: skip
        invert = torch.rand(n, generator=self.generator) < 0.5
        return torch.where(invert[:, None, None], 1 - out, out)

    def smooth(self, n: int) -> torch.Tensor:
        """Gaussian random fields: a Gaussian spectrum (correlation 1-16 px) or a power law (exponent 1-4)."""
        side = self.config.tile_px
        noise = torch.randn(n, side, side, generator=self.generator)
        k = torch.fft.fftfreq(side)
        k2 = (k[:, None] ** 2 + k[None, :] ** 2)[None]
        sigma = self._log_uniform(n, 1.0, 16.0)[:, None, None]
        gaussian = torch.exp(-2 * math.pi**2 * k2 * sigma**2)
        exponent = self._uniform(n, 1.0, 4.0)[:, None, None]
        power_law = (k2 + (1 / side) ** 2) ** (-exponent / 4)
        use_power = (torch.rand(n, generator=self.generator) < 0.5)[:, None, None]
        field = torch.fft.ifft2(torch.fft.fft2(noise) * torch.where(use_power, power_law, gaussian)).real
        return _to_unit(field)

    def binary(self, n: int) -> torch.Tensor:
        """Sharp features: Siemens stars, lithographic rectangles, gratings and thresholded blobs, lightly blurred."""
        y, x = self._grid(n)
        side = self.config.tile_px
        kind = torch.randint(4, (n,), generator=self.generator)[:, None, None]
        # Siemens star: spokes around a centre anywhere within the tile's span
        centre = (torch.rand(n, 2, generator=self.generator) - 0.5) * side
        spokes = torch.randint(4, 41, (n,), generator=self.generator).float()[:, None, None]
        theta = torch.atan2(y - centre[:, 0, None, None], x - centre[:, 1, None, None])
        star = torch.sin(spokes * theta + self._uniform(n, 0, 2 * math.pi)[:, None, None]) > 0
        # lithography: up to 12 rectangles, sides 2-40 px, on a common random orientation
        count = 12
        angle = self._uniform(n, 0, math.pi)[:, None, None, None]
        u = x[:, None] * torch.cos(angle) + y[:, None] * torch.sin(angle)
        v = -x[:, None] * torch.sin(angle) + y[:, None] * torch.cos(angle)
        c = (torch.rand(n, count, 2, generator=self.generator) - 0.5) * side * 1.2
        half = torch.exp(torch.empty(n, count, 2).uniform_(math.log(1.0), math.log(20.0), generator=self.generator))
        used = torch.rand(n, count, generator=self.generator) < self._uniform(n, 0.2, 1.0)[:, None]
        inside = ((u - c[..., 0, None, None]).abs() < half[..., 0, None, None]) & (
            (v - c[..., 1, None, None]).abs() < half[..., 1, None, None]
        )
        litho = (inside & used[..., None, None]).any(dim=1)
        # grating: period 2-24 px, random orientation and duty cycle
        period = self._log_uniform(n, 2.0, 24.0)[:, None, None]
        direction = self._uniform(n, 0, math.pi)[:, None, None]
        wave = torch.sin(2 * math.pi * (x * torch.cos(direction) + y * torch.sin(direction)) / period
                         + self._uniform(n, 0, 2 * math.pi)[:, None, None])  # fmt: skip
        grating = wave > self._uniform(n, -0.6, 0.6)[:, None, None]
        # blobs: a smooth field thresholded at a random level
        blobs = self.smooth(n) > self._uniform(n, 0.3, 0.7)[:, None, None]
        sharp = torch.where(kind == 0, star, torch.where(kind == 1, litho, torch.where(kind == 2, grating, blobs)))
        return _blur(sharp.float(), self._uniform(n, 0.0, 1.0))

    def foam(self, n: int) -> torch.Tensor:
        """Foams and cells: Voronoi cell walls (1-4 px) with random cell fill, or random overlapping bubbles."""
        y, x = self._grid(n)
        side = self.config.tile_px
        count = 24
        seeds = (torch.rand(n, count, 2, generator=self.generator) - 0.5) * side * 1.3
        used = torch.arange(count)[None] < torch.randint(6, count + 1, (n, 1), generator=self.generator)
        distance = torch.hypot(y[:, None] - seeds[..., 0, None, None], x[:, None] - seeds[..., 1, None, None])
        distance = torch.where(used[..., None, None], distance, torch.full_like(distance, 1e6))
        nearest, order = torch.topk(distance, 2, dim=1, largest=False)
        wall_width = self._uniform(n, 1.0, 4.0)[:, None, None]
        walls = ((nearest[:, 1] - nearest[:, 0]) < wall_width).float()
        fill = torch.rand(n, count, generator=self.generator) * self._uniform(n, 0.0, 0.8)[:, None]
        cells = torch.maximum(walls, torch.gather(fill, 1, order[:, 0].reshape(n, -1)).reshape(walls.shape))
        radius = torch.exp(torch.empty(n, count).uniform_(math.log(2.0), math.log(16.0), generator=self.generator))
        bubbles = (distance < radius[..., None, None]).float().sum(dim=1).clamp(max=1)
        kind = (torch.rand(n, generator=self.generator) < 0.6)[:, None, None]
        return _blur(torch.where(kind, cells, 1 - bubbles), self._uniform(n, 0.0, 1.0))

    def maps(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` maps ``(n, S, S)`` in [0, 1], families drawn by weight, and the family index of each."""
        family = torch.multinomial(self.family_weights, n, replacement=True, generator=self.generator)
        out = torch.empty(n, self.config.tile_px, self.config.tile_px)
        for k, name in enumerate(FAMILIES):
            rows = torch.nonzero(family == k)[:, 0]
            if len(rows):
                out[rows] = getattr(self, name)(len(rows))
        return out, family

    def objects(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` object tiles ``(n, S, S)`` complex64 and the family of each amplitude map."""
        c = self.config
        amplitude_map, family = self.maps(n)
        phase_map, _ = self.maps(n)
        same = (torch.rand(n, generator=self.generator) < c.correlated)[:, None, None]
        phase_map = torch.where(same, amplitude_map, phase_map)
        amplitude_min = self._uniform(n, *c.amplitude_min)[:, None, None]
        sign = torch.where(torch.rand(n, generator=self.generator) < 0.5, -1.0, 1.0)[:, None, None]
        phase_range = self._uniform(n, *c.phase_range_rad)[:, None, None] * sign
        amplitude = 1 - (1 - amplitude_min) * amplitude_map
        return torch.polar(amplitude, phase_range * phase_map), family

    # -- samples -------------------------------------------------------------------------------------------------
    def batch(self, n_objects: int) -> CorpusBatch:
        """``n_objects * frames_per_object`` samples: windows of ``n_objects`` new objects, with their counts."""
        c = self.config
        size, per = c.frame_size, c.frames_per_object
        tiles, family = self.objects(n_objects)
        corner = torch.randint(c.tile_px - size + 1, (n_objects, per, 2), generator=self.generator)
        rows = corner[..., 0, None, None] + torch.arange(size)[:, None]
        cols = corner[..., 1, None, None] + torch.arange(size)[None, :]
        patch = tiles[torch.arange(n_objects)[:, None, None, None], rows, cols]  # (n, per, H, W)
        far = torch.fft.fftshift(torch.fft.fft2(self.probe * patch), dim=(-2, -1))
        intensity = far.real.square() + far.imag.square()  # expectation of counts / scale
        transmitted = intensity.sum(dim=(-2, -1)).mean(dim=1) / (size * size)  # scan's mean transmitted fraction
        photons = self._log_uniform(n_objects, *c.photons)
        scale = photons / (size * size)  # mean count per pixel of the scan
        counts = torch.poisson(intensity * (scale / transmitted)[:, None, None, None], generator=self.generator)
        patch = patch / torch.sqrt(transmitted)[:, None, None, None]
        return CorpusBatch(
            counts=counts.reshape(-1, size, size).float(),
            scale=scale.repeat_interleave(per).float(),
            patch=patch.reshape(-1, size, size).to(torch.complex64),
            photons=photons.repeat_interleave(per).float(),
            family=family.repeat_interleave(per),
        )


def _to_unit(maps: torch.Tensor) -> torch.Tensor:
    """Each map ``(n, S, S)`` stretched to [0, 1]."""
    low = maps.amin(dim=(-2, -1), keepdim=True)
    high = maps.amax(dim=(-2, -1), keepdim=True)
    return (maps - low) / (high - low).clamp_min(1e-12)


def _blur(maps: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of each map ``(n, S, S)`` by its own ``sigma_px`` ``(n,)`` (periodic, in Fourier space)."""
    side = maps.shape[-1]
    k = torch.fft.fftfreq(side)
    k2 = (k[:, None] ** 2 + k[None, :] ** 2)[None]
    kernel = torch.exp(-2 * math.pi**2 * k2 * sigma_px[:, None, None] ** 2)
    return torch.fft.ifft2(torch.fft.fft2(maps) * kernel).real.clamp(0, 1)
