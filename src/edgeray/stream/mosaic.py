"""The live mosaic: predicted patches added at their scan positions into a running weighted mean that grows.

Each patch is placed at its sub-pixel position and turned by the constant phase that best matches the mosaic
where they overlap (:func:`edgeray.nn.stitch.accumulate`); pixels are weighted by where the probe lit them. At
whole-pixel positions (the default) the compiled kernel of :mod:`edgeray.stream.mosaic_kernel` does the work, with
the same result.

The scan's extent is not known when it starts, so the grid starts around the first position (on the pixel grid
through position 0) and grows (by whole
blocks, the content moved, never resampled) when a patch falls outside. Pixel ``[0, 0]`` of the grid is at
``origin_m`` ``[y, x]`` (m), with the probe-centre convention of the engines: a frame at position ``p`` covers
pixels from ``floor((p - origin) / pixel - (H/2, W/2))`` on.
"""

from __future__ import annotations

import numpy as np
import torch

from edgeray.nn.stitch import (
    ANCHORED,
    MAX_SWEEPS,
    TOLERANCE_RAD,
    accumulate,
    centre_weights,
    mean_image,
    support,
    synchronize,
    to_complex,
)
from edgeray.ptycho.ops import patch_indices
from edgeray.stream.mosaic_kernel import add_patches

GROW_PX = 128


class Mosaic:
    """Running ``sum(w * patch) / sum(w)`` on a growing object grid.

    Args:
        frame_shape: ``(H, W)`` of a patch.
        pixel_size_m: object pixel size ``(dy, dx)`` in m.
        weights: ``(H, W)`` weights of a patch's pixels (default: a centred Hann window); the edge passes the
            model's probe intensity (:func:`edgeray.nn.physics.probe_weights`).
        align: how each patch is turned to agree with the mosaic (:func:`edgeray.nn.stitch.accumulate`).
        fraction: share of the weights' sum a patch's stitched window holds (speed against the far tails).
        subpixel: place patches at their sub-pixel positions (else at the nearest pixel: half the work).
        compiled: at whole pixels, stitch with the compiled kernel (False: the tensor code of
            :func:`~edgeray.nn.stitch.accumulate`, the reference it is tested against).
    """

    def __init__(
        self,
        frame_shape: tuple[int, int],
        pixel_size_m: tuple[float, float],
        weights: torch.Tensor | None = None,
        align: str = "phase",
        fraction: float = 0.99,
        subpixel: bool = False,
        compiled: bool = True,
    ):
        self.frame_shape = tuple(frame_shape)
        self.pixel_size_m = np.asarray(pixel_size_m, dtype=np.float64)
        self.weights = centre_weights(self.frame_shape) if weights is None else weights.to(torch.float32)
        self.align = align
        self.fraction, self.subpixel, self.compiled = fraction, subpixel, compiled
        self.window = support(self.weights, fraction)
        self.origin_m: np.ndarray | None = None
        self.numerator = torch.zeros((0, 0), dtype=torch.complex64)
        self.coverage = torch.zeros((0, 0), dtype=torch.float32)
        self.n_patches = 0

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.coverage.shape)

    def _corners(self, positions_m: np.ndarray) -> np.ndarray:
        """Integer top-left corners ``(N, 2)`` of the patches at ``positions_m`` on the current grid."""
        half = np.asarray(self.frame_shape) / 2
        return np.floor((positions_m - self.origin_m) / self.pixel_size_m - half).astype(np.int64)

    def _fit(self, positions_m: np.ndarray) -> np.ndarray:
        """Grow the grid so every patch at ``positions_m`` lies inside; return their corners."""
        if self.origin_m is None:
            # on the grid through position 0, so every scan of a session shares one pixel grid
            first_px = np.floor(positions_m[0] / self.pixel_size_m - np.asarray(self.frame_shape) / 2 - GROW_PX)
            self.origin_m = first_px * self.pixel_size_m
        corners = self._corners(positions_m)
        low = corners.min(axis=0)
        high = corners.max(axis=0) + self.frame_shape
        before = np.where(low < 0, -low + GROW_PX, 0)
        size = np.asarray(self.shape)
        after = np.where(high > size, high - size + GROW_PX, 0)
        if before.any() or after.any():
            new_shape = tuple(int(v) for v in size + before + after)
            numerator = torch.zeros(new_shape, dtype=torch.complex64)
            coverage = torch.zeros(new_shape, dtype=torch.float32)
            rows = slice(int(before[0]), int(before[0] + size[0]))
            cols = slice(int(before[1]), int(before[1] + size[1]))
            numerator[rows, cols], coverage[rows, cols] = self.numerator, self.coverage
            self.numerator, self.coverage = numerator, coverage
            self.origin_m = self.origin_m - before * self.pixel_size_m
            corners = corners + before
        return corners

    def positions_px(self, positions_m: np.ndarray) -> np.ndarray:
        """Probe positions ``(N, 2)`` in m -> probe centres on the current grid, pixels ``[y, x]``."""
        return (np.asarray(positions_m, dtype=np.float64) - self.origin_m) / self.pixel_size_m

    @torch.inference_mode()
    def add(self, patches: torch.Tensor, positions_m: np.ndarray) -> None:
        """Add complex ``patches (N, H, W)`` at probe positions ``positions_m (N, 2)`` ``[y, x]`` m."""
        self._fit(np.asarray(positions_m, dtype=np.float64))
        if self.subpixel or not self.compiled:
            positions_px = torch.from_numpy(self.positions_px(positions_m))
            accumulate(self.numerator, self.coverage, patches, positions_px, self.weights, self.align,
                       subpixel=self.subpixel, window=self.window)  # fmt: skip
        else:
            rows, cols = self.window
            self._add_windows(patches[:, rows, cols].to(torch.complex64), positions_m)
        self.n_patches += len(patches)

    @torch.inference_mode()
    def add_polar(self, amplitude: torch.Tensor, phase: torch.Tensor, positions_m: np.ndarray) -> None:
        """Add the network's patches as ``amplitude`` and ``phase`` ``(N, 1, H, W)`` or ``(N, H, W)``: only the
        stitched window of each is made complex."""
        if self.subpixel or not self.compiled:
            self.add(to_complex(amplitude, phase), positions_m)
            return
        self._fit(np.asarray(positions_m, dtype=np.float64))
        rows, cols = self.window
        shape = (-1, *self.frame_shape)
        values = torch.polar(
            amplitude.reshape(shape)[:, rows, cols].float(), phase.reshape(shape)[:, rows, cols].float()
        )
        self._add_windows(values, positions_m)
        self.n_patches += len(values)

    def _add_windows(self, values: torch.Tensor, positions_m: np.ndarray) -> None:
        """Patches' stitched windows ``values`` ``(N, h, w)`` complex64 at the nearest whole pixel of their
        positions, through the compiled kernel (as :func:`~edgeray.nn.stitch.accumulate` places and turns them)."""
        rows, cols = self.window
        half = np.asarray(self.frame_shape) / 2
        offset = np.array([rows.start, cols.start])
        corners = np.floor(self.positions_px(positions_m) - half + 0.5).astype(np.int64) + offset
        values = values.contiguous()
        weights = self.weights[rows, cols].contiguous()
        turns, loose = add_patches(self.numerator.numpy(), self.coverage.numpy(), values.numpy(), corners,
                                   weights.numpy(), self.align == "phase", ANCHORED)  # fmt: skip
        if self.align == "phase" and len(values) > 1 and loose.any():  # too little in place: synchronize them
            chosen = np.nonzero(loose)[0]
            size = (rows.stop - rows.start, cols.stop - cols.start)
            index = patch_indices(torch.from_numpy(corners[chosen]), size, self.shape[1]).reshape(len(chosen), -1)
            turned = weights * values[chosen] * torch.from_numpy(turns[chosen])[:, None, None]
            synchronize(self.numerator.view(-1), index, turned.reshape(len(chosen), -1), MAX_SWEEPS, TOLERANCE_RAD)

    def image(self) -> tuple[np.ndarray, np.ndarray]:
        """``(object (Y, X) complex64, coverage (Y, X) float32)``; 1 where nothing was added."""
        return mean_image(self.numerator, self.coverage).numpy(), self.coverage.clone().numpy()

    def center_m(self) -> tuple[float, float]:
        """Position (m) of the grid's centre, for a product's ``object_center_m``."""
        centre = self.origin_m + np.asarray(self.shape) / 2 * self.pixel_size_m
        return float(centre[0]), float(centre[1])


def detail_sums(numerator: torch.Tensor, coverage: torch.Tensor, width_px: float) -> torch.Tensor:
    """A mosaic's sums ``numerator`` ``(Y, X)`` complex with their large-scale phase taken out (the phase of a
    Gaussian low-pass of width ``width_px`` of the unit phasors, weighted by ``coverage``): what one frame fixes well
    (the detail), without what it fixes poorly (the phase across many beams)."""
    from edgeray.ptycho.ops import gaussian_lowpass

    unit = torch.where(coverage > 0, numerator / numerator.abs().clamp_min(1e-30), torch.zeros_like(numerator))
    low = gaussian_lowpass(unit * coverage, width_px)
    return numerator * torch.polar(torch.ones_like(coverage), -torch.angle(low))
