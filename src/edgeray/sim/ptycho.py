"""Far-field ptychography simulator: probe x object patch -> fftshifted diffraction intensities -> counts."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from edgeray.io.cxi import GroundTruth, PtychoScan
from edgeray.io.geometry import PtychoGeometry
from edgeray.sim.objects import DEFAULT_OBJECT, make_object
from edgeray.sim.probes import focused_probe, gaussian_probe, probe_from_file
from edgeray.sim.scan import make_scan, place_in_object

CHUNK_FRAMES = 256


@dataclass
class PtychoSimConfig:
    """Parameters of a simulated far-field ptychography scan (defaults: a 64x64 Eiger-like scan at 10 keV).

    Attributes:
        frame_size: detector frame side H = W, pixels.
        scan: ``spiral`` (Fermat), ``raster`` (with ``jitter_px``) or ``concentric``.
        n_positions: number of scan points (frames).
        step_px: distance between neighbouring points, object pixels.
        photons: mean total photon count per frame.
        object: ``random``, an image, or ``AMPLITUDE,PHASE`` images (scikit-image names or paths).
        probe: ``focused`` (defocused beam of a circular lens), ``zoneplate`` (the same with a 30% central stop,
            as a Fresnel zone plate with its central stop), ``gaussian`` or a file (.npy, CXI, product).
        probe_diameter_px: beam diameter at the sample, object pixels (default 0.35 frame_size).
        amplitude_min, phase_range_rad: object transmission ranges.
        energy_eV, distance_m, detector_pixel_m: geometry.
        beamstop_px: radius of a central beamstop (masked, zero counts); 0 for none.
        saturation: counts at which detector pixels saturate (clipped); None for an ideal detector.
        seed: seed of every random choice.
    """

    frame_size: int = 64
    scan: str = "spiral"
    n_positions: int = 900
    step_px: float = 8.0
    jitter_px: float = 0.5
    photons: float = 1e5
    object: str = DEFAULT_OBJECT
    probe: str = "focused"
    probe_diameter_px: float | None = None
    amplitude_min: float = 0.6
    phase_range_rad: float = 1.5
    energy_eV: float = 10_000.0
    distance_m: float = 2.0
    detector_pixel_m: float = 75e-6
    beamstop_px: float = 0.0
    saturation: float | None = None
    seed: int = 0


def shifted_probes(probe: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """The probe moved by sub-pixel ``shift_px`` (Fourier shift; exact for a band-limited probe).

    Args:
        probe: ``(modes, H, W)`` complex.
        shift_px: ``(n, 2)`` float ``[y, x]`` shifts, pixels.

    Returns:
        ``(n, modes, H, W)`` complex64.
    """
    height, width = probe.shape[-2:]
    ky = np.fft.fftfreq(height)[None, :, None]
    kx = np.fft.fftfreq(width)[None, None, :]
    ramp = np.exp(-2j * np.pi * (shift_px[:, 0, None, None] * ky + shift_px[:, 1, None, None] * kx))
    spectrum = np.fft.fft2(probe)
    return np.fft.ifft2(spectrum[None] * ramp[:, None]).astype(np.complex64)


def frame_windows(positions_px: np.ndarray, frame_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Object pixel indices of each frame's window: ``(rows (N, H, 1), cols (N, 1, W))`` int64, broadcastable.

    Frame ``n`` covers object pixels from ``floor(p_n - (H/2, W/2))`` on (``positions_px``: probe centres [y, x]).
    """
    height, width = frame_shape
    first = np.floor(np.asarray(positions_px) - np.array([height / 2, width / 2])).astype(np.int64)
    rows = first[:, 0, None, None] + np.arange(height)[None, :, None]
    cols = first[:, 1, None, None] + np.arange(width)[None, None, :]
    return rows, cols


def exit_waves(obj: np.ndarray, probe: np.ndarray, positions_px: np.ndarray) -> np.ndarray:
    """Exit waves ``probe(r - p) * object(r)`` on each frame's window of the object.

    Frame ``n`` covers object pixels from ``floor(p_n - (H/2, W/2))``; the sub-pixel remainder moves the probe.

    Args:
        obj: ``(Y, X)`` complex object.
        probe: ``(modes, H, W)`` complex, centred.
        positions_px: ``(n, 2)`` probe-centre positions ``[y, x]``, object pixels.

    Returns:
        ``(n, modes, H, W)`` complex64.
    """
    height, width = probe.shape[-2:]
    rows, cols = frame_windows(positions_px, (height, width))
    if rows.min() < 0 or cols.min() < 0 or rows.max() >= obj.shape[0] or cols.max() >= obj.shape[1]:
        raise ValueError("a frame reaches outside the object: enlarge the object or move the scan")
    patches = obj[rows, cols]
    corner = positions_px - np.array([height / 2, width / 2])
    first = np.stack([rows[:, 0, 0], cols[:, 0, 0]], axis=1)
    return shifted_probes(probe, corner - first) * patches[:, None]


def far_field(waves: np.ndarray) -> np.ndarray:
    """Far-field wave ``fftshift(fft2(wave))`` (numpy's unnormalized forward FFT, zero frequency at the centre).

    Detector row ``H/2 + k`` holds spatial frequency ``k / H`` cycles per object pixel along y; columns likewise x.
    """
    return np.fft.fftshift(np.fft.fft2(waves), axes=(-2, -1))


def far_field_intensity(waves: np.ndarray) -> np.ndarray:
    """``sum_modes |fftshift(fft2(wave))|^2``: the intensities a detector records.

    Args:
        waves: ``(..., modes, H, W)`` complex exit waves.

    Returns:
        ``(..., H, W)`` float64 intensities; by Parseval their sum is ``H * W * sum |wave|^2``.
    """
    far = far_field(waves)
    return (far.real**2 + far.imag**2).sum(axis=-3)


def make_probe(config: PtychoSimConfig) -> np.ndarray:
    """The configured probe, ``(modes, H, W)`` complex64 with unit total intensity."""
    shape = (config.frame_size, config.frame_size)
    diameter = config.probe_diameter_px or 0.35 * config.frame_size
    if config.probe == "focused":
        return focused_probe(shape, diameter)[None]
    if config.probe == "zoneplate":
        return focused_probe(shape, diameter, central_stop=0.3)[None]
    if config.probe == "gaussian":
        return gaussian_probe(shape, diameter / 2)[None]
    probe = probe_from_file(config.probe, shape)
    return (probe / np.linalg.norm(probe)).astype(np.complex64)


def simulate_ptycho(config: PtychoSimConfig, progress: Callable[[int], None] | None = None) -> PtychoScan:
    """Simulate a far-field ptychography scan with Poisson counting noise.

    The probe is scaled so that the noise-free intensities ``|fftshift(fft2(probe * patch))|^2`` have a mean
    total of ``config.photons`` per frame; the ground truth keeps that scaled probe, the object and the
    positions. Frames are computed in vectorized chunks of :data:`CHUNK_FRAMES`.

    Args:
        config: simulation parameters.
        progress: called with the number of frames finished after each chunk.

    Returns:
        A :class:`~edgeray.io.PtychoScan` with uint16 counts (uint32 when a pixel exceeds 65535).
    """
    rng = np.random.default_rng(config.seed)
    frame_shape = (config.frame_size, config.frame_size)
    offsets = make_scan(config.scan, config.n_positions, config.step_px, config.jitter_px, rng)
    positions_px, object_shape = place_in_object(offsets, frame_shape)
    obj = make_object(config.object, object_shape, rng, config.amplitude_min, config.phase_range_rad)
    probe = make_probe(config)

    intensity = np.empty((config.n_positions, *frame_shape), dtype=np.float64)
    for start in range(0, config.n_positions, CHUNK_FRAMES):
        stop = min(start + CHUNK_FRAMES, config.n_positions)
        intensity[start:stop] = far_field_intensity(exit_waves(obj, probe, positions_px[start:stop]))
        if progress:
            progress(stop)
    scale = config.photons / intensity.sum(axis=(1, 2)).mean()
    intensity *= scale
    probe = (probe * np.sqrt(scale)).astype(np.complex64)

    mask = None
    if config.beamstop_px > 0:
        yy, xx = np.indices(frame_shape) - np.array(frame_shape)[:, None, None] // 2
        mask = yy**2 + xx**2 <= config.beamstop_px**2
        intensity[:, mask] = 0.0
    counts = rng.poisson(intensity).astype(np.float64)
    if config.saturation is not None:
        counts = np.minimum(counts, config.saturation)
    dtype = np.uint16 if counts.max() <= np.iinfo(np.uint16).max else np.uint32

    geometry = PtychoGeometry(
        config.energy_eV, config.distance_m, (config.detector_pixel_m, config.detector_pixel_m), frame_shape
    )
    pixel = np.asarray(geometry.object_pixel_size_m)
    positions_m = (positions_px - np.asarray(object_shape) / 2) * pixel
    return PtychoScan(
        frames=counts.astype(dtype),
        positions_m=positions_m,
        geometry=geometry,
        mask=mask,
        probe=None,
        ground_truth=GroundTruth(obj, probe, positions_px),
        attrs={"simulator": "edgeray.sim.simulate_ptycho", "config": json.dumps(asdict(config))},
    )


class SimulatedFrames:
    """The frames of a simulated scan, made only when a block is sliced out: any length in bounded memory.

    ``frames[a:b]`` returns ``(b - a, H, W)`` counts; the same block gives the same counts (each block of
    :data:`CHUNK_FRAMES` frames draws its noise from its own seed). The dose is scaled so the mean total of the
    first block's noise-free frames is ``config.photons`` (the whole scan is never held to average over).
    """

    def __init__(self, config: PtychoSimConfig, obj: np.ndarray, probe: np.ndarray, positions_px: np.ndarray):
        self.config, self.obj, self.positions_px = config, obj, positions_px
        first = far_field_intensity(exit_waves(obj, probe, positions_px[:CHUNK_FRAMES]))
        self.scale = config.photons / first.sum(axis=(1, 2)).mean()
        self.probe = (probe * np.sqrt(self.scale)).astype(np.complex64)
        peak = first.max() * self.scale
        self.dtype = np.dtype(np.uint16 if peak * 1.5 < np.iinfo(np.uint16).max else np.uint32)
        self.shape = (len(positions_px), config.frame_size, config.frame_size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, block: slice) -> np.ndarray:
        start, stop, _ = block.indices(len(self))
        out = np.empty((max(stop - start, 0), *self.shape[1:]), dtype=self.dtype)
        for chunk in range(start // CHUNK_FRAMES, -(-stop // CHUNK_FRAMES)):
            first, last = chunk * CHUNK_FRAMES, min((chunk + 1) * CHUNK_FRAMES, len(self))
            rng = np.random.default_rng([self.config.seed, chunk])
            counts = rng.poisson(far_field_intensity(exit_waves(self.obj, self.probe, self.positions_px[first:last])))
            if self.config.saturation is not None:
                counts = np.minimum(counts, self.config.saturation)
            low, high = max(start, first), min(stop, last)
            out[low - start : high - start] = np.minimum(counts[low - first : high - first], np.iinfo(self.dtype).max)
        return out


def simulate_ptycho_lazy(config: PtychoSimConfig) -> PtychoScan:
    """A simulated scan whose frames are made as they are read (:class:`SimulatedFrames`): for streams of any
    length (``edgeray detector replay --simulate``). Positions, object and probe are made at once; the ground
    truth is kept. No beamstop (its mask is the simulator's business for stored scans)."""
    rng = np.random.default_rng(config.seed)
    frame_shape = (config.frame_size, config.frame_size)
    offsets = make_scan(config.scan, config.n_positions, config.step_px, config.jitter_px, rng)
    positions_px, object_shape = place_in_object(offsets, frame_shape)
    obj = make_object(config.object, object_shape, rng, config.amplitude_min, config.phase_range_rad)
    frames = SimulatedFrames(config, obj, make_probe(config), positions_px)
    geometry = PtychoGeometry(
        config.energy_eV, config.distance_m, (config.detector_pixel_m, config.detector_pixel_m), frame_shape
    )
    positions_m = (positions_px - np.asarray(object_shape) / 2) * np.asarray(geometry.object_pixel_size_m)
    return PtychoScan(
        frames=frames,
        positions_m=positions_m,
        geometry=geometry,
        ground_truth=GroundTruth(obj, frames.probe, positions_px),
        attrs={"simulator": "edgeray.sim.simulate_ptycho_lazy", "config": json.dumps(asdict(config))},
    )


def positions_m_to_px(
    positions_m: np.ndarray, pixel_size_m: tuple[float, float], object_shape: tuple[int, int]
) -> np.ndarray:
    """Inverse of the simulator's placement: probe positions (m, object centre at 0) -> object pixels ``[y, x]``."""
    return np.asarray(positions_m) / np.asarray(pixel_size_m) + np.asarray(object_shape) / 2
