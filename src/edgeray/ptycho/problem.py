"""A scan made ready for the engines: amplitudes on the device, positions in object pixels, propagator, start."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from edgeray.io import Product, PtychoScan
from edgeray.ptycho.disk_frames import DiskAmplitudes, FramesOnDisk
from edgeray.ptycho.ops import Propagator, fresnel_kernel

PROPAGATIONS = ("far", "near")


@dataclass
class Geometry:
    """How the exit wave reaches the detector.

    Attributes:
        propagation: ``far`` (Fraunhofer: the detector records ``|FFT(exit wave)|^2``, fftshifted) or ``near``
            (Fresnel: the detector records ``|exit wave propagated over distance|^2`` in real space).
        focus_to_sample_m: near field only: distance from the beam focus to the sample for a magnified
            (point-projection) geometry; with it, the Fresnel scaling theorem gives object pixels of
            ``detector_pixel / M`` and an effective distance ``distance / M``, ``M = (z1 + z2) / z1``.
            None: flat illumination, object pixel = detector pixel, distance as in the file.
    """

    propagation: str = "far"
    focus_to_sample_m: float | None = None


@dataclass
class Problem:
    """Tensors an engine works on.

    Attributes:
        amplitudes: ``(N, H, W)`` float32 measured amplitudes ``sqrt(counts)``, scaled to the orthonormal
            propagator and laid out as the propagator returns them (far field: ifftshifted).
        valid: ``(H, W)`` float32, 1 where the detector pixel is good, 0 where masked.
        positions_px: ``(N, 2)`` float64 probe-centre positions ``[y, x]``, object pixels.
        object_shape: ``(Y, X)`` of the object array.
        pixel_size_m: ``(y, x)`` object pixel size, m.
        propagator: exit wave <-> detector.
        origin_m: ``(y, x)`` position in metres of object pixel ``(0, 0)``'s probe-centre coordinate origin, so
            ``positions_m = positions_px * pixel_size_m + origin_m``.
    """

    amplitudes: torch.Tensor | DiskAmplitudes
    valid: torch.Tensor
    positions_px: torch.Tensor
    object_shape: tuple[int, int]
    pixel_size_m: tuple[float, float]
    propagator: Propagator
    origin_m: tuple[float, float]
    geometry: Geometry
    energy_eV: float
    distance_m: float

    @property
    def n_frames(self) -> int:
        return int(self.amplitudes.shape[0])

    @property
    def frame_shape(self) -> tuple[int, int]:
        return int(self.amplitudes.shape[1]), int(self.amplitudes.shape[2])

    @property
    def device(self) -> torch.device:
        return self.amplitudes.device


def object_pixel_size(scan: PtychoScan, geometry: Geometry) -> tuple[tuple[float, float], float]:
    """Object pixel size ``(y, x)`` in m and the propagation distance (m) the engines use."""
    if geometry.propagation == "far":
        return scan.geometry.object_pixel_size_m, scan.geometry.distance_m
    if geometry.propagation != "near":
        raise ValueError(f"propagation must be one of {PROPAGATIONS}, not {geometry.propagation!r}")
    pixel = scan.geometry.detector_pixel_size_m
    if geometry.focus_to_sample_m is None:
        return pixel, scan.geometry.distance_m
    z1, z2 = geometry.focus_to_sample_m, scan.geometry.distance_m
    magnification = (z1 + z2) / z1
    return (pixel[0] / magnification, pixel[1] / magnification), z2 / magnification


@dataclass
class ObjectGrid:
    """Where a scan's frames fall on the object array.

    Attributes:
        positions_px: ``(N, 2)`` float64 probe centres [y, x], object pixels; object_shape: ``(Y, X)``;
        pixel_size_m: ``(y, x)``; origin_m: ``(y, x)`` so that ``positions_m = positions_px * pixel + origin``;
        distance_m: the propagation distance the engines use (effective distance in a magnified near field).
    """

    positions_px: np.ndarray
    object_shape: tuple[int, int]
    pixel_size_m: tuple[float, float]
    origin_m: tuple[float, float]
    distance_m: float

    @property
    def center_m(self) -> tuple[float, float]:
        """Position (m) of the object array's centre."""
        centre = np.asarray(self.object_shape) / 2 * np.asarray(self.pixel_size_m) + np.asarray(self.origin_m)
        return float(centre[0]), float(centre[1])


def object_grid(scan: PtychoScan, geometry: Geometry | None = None, margin_px: int = 4) -> ObjectGrid:
    """The object grid of ``scan``: every frame inside with ``margin_px`` to spare (no frame data is touched)."""
    geometry = geometry or Geometry()
    pixel, distance = object_pixel_size(scan, geometry)
    positions_m = np.asarray(scan.positions_m, dtype=np.float64)
    half = np.asarray(scan.frames.shape[-2:]) / 2
    low = positions_m.min(axis=0)
    positions_px = (positions_m - low) / np.asarray(pixel) + half + margin_px
    object_shape = tuple(int(v) for v in np.ceil(positions_px.max(axis=0) + half + margin_px) + 1)
    origin = low - (half + margin_px) * np.asarray(pixel)
    return ObjectGrid(
        positions_px, object_shape, (float(pixel[0]), float(pixel[1])), (float(origin[0]), float(origin[1])), distance
    )


def prepare(
    scan: PtychoScan, geometry: Geometry | None = None, device: str | torch.device = "cpu", margin_px: int = 4
) -> Problem:
    """Check a scan and move it to ``device`` in the engines' layout.

    Raises:
        ValueError: mismatched shapes, all-zero frames, or non-finite/negative counts or positions.
    """
    geometry = geometry or Geometry()
    if isinstance(scan.frames, FramesOnDisk):
        return _prepare_on_disk(scan, geometry, torch.device(device), margin_px)
    frames = np.asarray(scan.frames)
    if frames.ndim != 3:
        raise ValueError(f"frames must be (N, H, W), got shape {frames.shape}")
    n, height, width = frames.shape
    positions_m = np.asarray(scan.positions_m, dtype=np.float64)
    if positions_m.shape != (n, 2):
        raise ValueError(f"positions_m must be ({n}, 2) to match {n} frames, got {positions_m.shape}")
    if not np.isfinite(positions_m).all():
        raise ValueError("positions hold NaN or inf")
    if tuple(scan.geometry.frame_shape) != (height, width):
        raise ValueError(f"geometry frame shape {scan.geometry.frame_shape} differs from frames' {(height, width)}")
    totals = frames.reshape(n, -1).sum(axis=1, dtype=np.float64)
    if not np.isfinite(totals).all() or (frames.min() < 0 if frames.dtype.kind in "if" else False):
        raise ValueError("frames hold NaN, inf or negative counts")
    if (totals <= 0).all():
        raise ValueError("every frame is zero: no photons were recorded")
    if scan.mask is not None and np.asarray(scan.mask).shape != (height, width):
        raise ValueError(f"mask shape {np.asarray(scan.mask).shape} differs from frames' {(height, width)}")

    device = torch.device(device)
    # one float32 copy of the frames besides them (a large scan is several times its counts' size in float32)
    if geometry.propagation == "far":
        intensities = np.fft.ifftshift(frames, axes=(-2, -1)).astype(np.float32, copy=False)
        intensities /= np.float32(height * width)
    else:
        intensities = frames.astype(np.float32)
    np.maximum(intensities, 0.0, out=intensities)
    amplitudes = torch.from_numpy(np.sqrt(intensities, out=intensities)).to(device)
    return _problem(scan, geometry, device, margin_px, amplitudes)


def _problem(scan: PtychoScan, geometry: Geometry, device: torch.device, margin_px: int, amplitudes) -> Problem:
    """The problem around ``amplitudes`` (a tensor, or frames read from disk): grid, valid pixels, propagator."""
    height, width = scan.frames.shape[1:]
    grid = object_grid(scan, geometry, margin_px)
    valid = np.ones((height, width), dtype=np.float32)
    if scan.mask is not None:
        valid[np.asarray(scan.mask, dtype=bool)] = 0.0
    if geometry.propagation == "far":
        valid, propagator = np.fft.ifftshift(valid), Propagator()
    else:
        kernel = fresnel_kernel((height, width), grid.pixel_size_m, scan.geometry.wavelength_m, grid.distance_m, device)
        propagator = Propagator(kernel)
    return Problem(
        amplitudes=amplitudes,
        valid=torch.from_numpy(valid).to(device),
        positions_px=torch.from_numpy(grid.positions_px).to(device),
        object_shape=grid.object_shape,
        pixel_size_m=grid.pixel_size_m,
        propagator=propagator,
        origin_m=grid.origin_m,
        geometry=geometry,
        energy_eV=scan.geometry.energy_eV,
        distance_m=scan.geometry.distance_m,
    )


def power_sum(amplitudes: torch.Tensor | DiskAmplitudes) -> torch.Tensor:
    """``sum over frames of amplitude^2`` ``(H, W)`` float64 (in any order of frames: float64)."""
    if isinstance(amplitudes, DiskAmplitudes):
        return torch.from_numpy(amplitudes.power_sum).to(amplitudes.device)
    total = torch.zeros(amplitudes.shape[1:], dtype=torch.float64, device=amplitudes.device)
    for block in torch.split(amplitudes, 4096):  # a few frames at a time: no float64 copy of a large scan
        total += (block.double() ** 2).sum(dim=0)
    return total


def _prepare_on_disk(scan: PtychoScan, geometry: Geometry, device: torch.device, margin_px: int) -> Problem:
    """:func:`prepare` for frames left in their file: amplitudes read per batch (:class:`DiskAmplitudes`)."""
    amplitudes = DiskAmplitudes(scan.frames, geometry.propagation == "far", device)
    return _problem(scan, geometry, device, margin_px, amplitudes)


def typical_step_px(positions_px: torch.Tensor, sample: int = 2000) -> float:
    """Median distance from a scan point to its nearest neighbour, pixels (on a sample of the points)."""
    points = positions_px[:: max(1, len(positions_px) // sample)].to(torch.float64)
    if len(points) < 2:
        return 0.0
    distances = torch.cdist(points, points)
    distances.fill_diagonal_(float("inf"))
    return float(distances.min(dim=1).values.median())


def initial_probe(problem: Problem, n_modes: int = 1) -> torch.Tensor:
    """A probe guess from the mean measured pattern and the scan geometry: ``(modes, H, W)`` complex64.

    Far field: the mean measured amplitude is taken as the probe's far field (the optic's pupil), given the
    quadratic (defocus) phase that makes the beam at the sample 2.5 scan steps wide (capped at half the frame),
    the usual overlap of a ptychography scan; a flat phase would give a focused spot far smaller than the
    illuminated area. Near field: the mean amplitude propagated back to the sample. Extra modes are the first
    one times ``y``, ``x``, ``xy``... (orthogonalized), each holding 5% of the power.
    """
    mean_amplitude = torch.sqrt(power_sum(problem.amplitudes) / problem.n_frames).to(torch.complex64)
    if problem.geometry.propagation == "near":
        return add_probe_modes(problem.propagator.backward(mean_amplitude[None]), n_modes)
    height, width = problem.frame_shape
    n = min(height, width)
    ky = torch.fft.fftfreq(height, device=problem.device) * height
    kx = torch.fft.fftfreq(width, device=problem.device) * width
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    power = mean_amplitude.abs() ** 2
    order = torch.argsort(k2.reshape(-1))
    cumulative = torch.cumsum(power.reshape(-1)[order], 0)
    radius = float(torch.sqrt(k2.reshape(-1)[order][torch.searchsorted(cumulative, 0.95 * cumulative[-1])])) + 1.0
    diameter = min(max(2.5 * typical_step_px(problem.positions_px), 4.0), 0.5 * n)
    phase = torch.pi * diameter * k2 / (2 * radius * n)
    first = torch.fft.fftshift(
        torch.fft.ifft2(mean_amplitude * torch.polar(torch.ones_like(phase), -phase), norm="ortho")
    )
    return add_probe_modes(first[None], n_modes)


def add_probe_modes(probe: torch.Tensor, n_modes: int, power_fraction: float = 0.05) -> torch.Tensor:
    """Extend ``probe`` ``(m, H, W)`` to ``n_modes`` incoherent modes by polynomial weighting of the first mode."""
    if n_modes <= probe.shape[0]:
        return probe[:n_modes].clone()
    height, width = probe.shape[-2:]
    y = torch.linspace(-1, 1, height, device=probe.device)[:, None]
    x = torch.linspace(-1, 1, width, device=probe.device)[None, :]
    weights = [y, x, y * x, y**2 - x**2, y**2 + x**2]
    modes = [m for m in probe]
    power = (probe[0].abs() ** 2).sum()
    for k in range(n_modes - probe.shape[0]):
        mode = probe[0] * weights[k % len(weights)] * (1 + k // len(weights))
        for other in modes:
            mode = mode - (other.conj() * mode).sum() / (other.abs() ** 2).sum() * other
        mode = mode * torch.sqrt(power_fraction * power / (mode.abs() ** 2).sum())
        modes.append(mode)
    return torch.stack(modes).to(torch.complex64)


def initial_object(problem: Problem) -> torch.Tensor:
    """An object of ones ``(Y, X)`` complex64: full transmission, no phase."""
    return torch.ones(problem.object_shape, dtype=torch.complex64, device=problem.device)


def object_on_grid(product: Product, problem: Problem, *, source: str = "start object") -> np.ndarray:
    """A product's object ``(Y, X)`` complex64 placed on ``problem``'s object grid by its centre and pixel size
    (whole pixels), ones where it does not reach: a reconstruction (EdgeRay's or ptychodus's) to continue from.

    Raises:
        ValueError: a pixel size other than the scan's (by more than 0.1 %), more than one slice, or no overlap.
    """
    pixel = np.asarray(problem.pixel_size_m)
    theirs = np.asarray(product.object_pixel_size_m)
    if np.any(np.abs(theirs / pixel - 1) > 1e-3):
        raise ValueError(f"{source}: object pixel {theirs.tolist()} m differs from the scan's {pixel.tolist()} m")
    if len(product.object) != 1:
        raise ValueError(f"{source}: {len(product.object)} object slices; one (2D) object is supported")
    obj = product.object[0]
    their_origin = np.asarray(product.object_center_m) - np.asarray(obj.shape) / 2 * pixel
    offset = np.round((their_origin - np.asarray(problem.origin_m)) / pixel).astype(int)  # their (0,0) on our grid
    shape = np.asarray(problem.object_shape)
    low, high = np.maximum(offset, 0), np.minimum(offset + obj.shape, shape)
    if np.any(high <= low):
        raise ValueError(f"{source}: its object does not overlap the scan's field of view")
    placed = np.ones(problem.object_shape, dtype=np.complex64)
    placed[low[0] : high[0], low[1] : high[1]] = obj[
        low[0] - offset[0] : high[0] - offset[0], low[1] - offset[1] : high[1] - offset[1]
    ]
    return placed
