"""Preview pictures of every EdgeRay file: what a person would rather look at than read."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import hsv_to_rgb

from edgeray.io import (
    CXIFile,
    detect_kind,
    open_tomo,
    read_product,
    read_reconstruction,
)
from edgeray.io._h5util import atomic_path


def complex_to_rgb(field: np.ndarray) -> np.ndarray:
    """Colour picture of a complex array: hue = phase, brightness = amplitude (scaled to its maximum).

    Returns ``(..., 3)`` float RGB in ``[0, 1]``.
    """
    amplitude = np.abs(field)
    hue = (np.angle(field) + np.pi) / (2 * np.pi)
    value = amplitude / (amplitude.max() or 1.0)
    return hsv_to_rgb(np.stack([hue, np.ones_like(hue), value], axis=-1))


def _show(ax: plt.Axes, image: np.ndarray, title: str, cmap: str = "gray", label: str = "") -> None:
    im = ax.imshow(image, cmap=cmap, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    if image.ndim == 2:
        bar = plt.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
        bar.ax.tick_params(labelsize=7)
        if label:
            bar.set_label(label, fontsize=7)


def _log_counts(frame: np.ndarray) -> np.ndarray:
    return np.log10(np.asarray(frame, dtype=np.float64) + 1.0)


def scan_figure(path: str | Path, frame_index: int = 0, cxi_options: dict | None = None) -> plt.Figure:
    """Preview of a CXI scan: ground-truth object (when simulated), probe, a frame, the mean frame, the path."""
    with CXIFile(path, **(cxi_options or {})) as cxi:
        frame_index = min(max(frame_index, 0), cxi.n_frames - 1)
        frame = cxi.read_frames(frame_index, frame_index + 1, validate=False)[0]
        mean = np.zeros(cxi.frame_shape)
        for _, block in cxi.iter_frames(validate=False):
            mean += block.sum(axis=0)
        mean /= max(cxi.n_frames, 1)
        truth, positions_um = cxi.ground_truth(), cxi.positions_m * 1e6
        probe = truth.probe[0] if truth is not None else (cxi.probe[0] if cxi.probe is not None else None)
        name, n_frames, mask = Path(path).name, cxi.n_frames, cxi.mask

    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    axes = axes.ravel()
    if truth is not None:
        _show(axes[0], np.abs(truth.object), "object amplitude (ground truth)", label="|O|")
        pos = truth.positions_px
        axes[0].plot(pos[:, 1], pos[:, 0], ".", color="tab:orange", ms=1.5, alpha=0.6)
        _show(axes[1], np.angle(truth.object), "object phase (ground truth)", cmap="twilight", label="rad")
    else:
        _show(axes[0], mask.astype(float) if mask is not None else np.zeros(frame.shape), "detector mask (1 = bad)")
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "measured data:\nno ground truth", ha="center", va="center", fontsize=11)
    if probe is not None:
        axes[2].imshow(complex_to_rgb(probe), interpolation="nearest")
        axes[2].set_title("probe (hue = phase, brightness = amplitude)", fontsize=9)
        axes[2].set_xticks([])
        axes[2].set_yticks([])
    else:
        axes[2].axis("off")
        axes[2].text(0.5, 0.5, "no probe in file", ha="center", va="center")
    _show(axes[3], _log_counts(frame), f"frame {frame_index} (log10 counts+1)", cmap="magma", label="log10")
    _show(axes[4], _log_counts(mean), f"mean of {n_frames} frames (log10)", cmap="magma", label="log10")
    ax = axes[5]
    points = ax.scatter(positions_um[:, 1], positions_um[:, 0], c=np.arange(n_frames), s=4, cmap="viridis")
    ax.plot(positions_um[:, 1], positions_um[:, 0], "-", color="0.7", lw=0.3, zorder=0)
    ax.set_aspect("equal")
    ax.invert_yaxis()
    ax.set_xlabel("x (um)", fontsize=8)
    ax.set_ylabel("y (um)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title("probe positions (colour = order)", fontsize=9)
    plt.colorbar(points, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=7)
    fig.suptitle(f"{name}: {n_frames} frames of {frame.shape[0]}x{frame.shape[1]}", fontsize=11)
    fig.tight_layout()
    return fig


PREVIEW_SIDE = 2048  # pixels a preview shows an object with at most, per side (more is memory, not detail)


def product_figure(path: str | Path) -> plt.Figure:
    """Preview of a reconstruction product: amplitude, phase, probe, cost curve."""
    product = read_product(path)
    obj = product.object[0]
    stride = -(-max(obj.shape) // PREVIEW_SIDE)  # a preview of a huge object: every stride-th pixel
    obj = obj[::stride, ::stride]
    mosaic_only = not np.any(product.probe) and not len(product.loss_values)  # a surrogate's: no probe, no cost
    fig, axes = plt.subplots(1, 2 if mosaic_only else 4, figsize=(9, 4.2) if mosaic_only else (16, 4.2))
    _show(axes[0], np.abs(obj), "object amplitude", label="|O|")
    _show(axes[1], np.angle(obj), "object phase", cmap="twilight", label="rad")
    if mosaic_only:
        fig.suptitle(f"{Path(path).name}: {product.name}", fontsize=11)
        fig.tight_layout()
        return fig
    axes[2].imshow(complex_to_rgb(product.probe[0]), interpolation="nearest")
    axes[2].set_title(f"probe mode 1 of {len(product.probe)}", fontsize=9)
    axes[2].set_xticks([])
    axes[2].set_yticks([])
    if len(product.loss_values):
        epochs = product.loss_epochs if len(product.loss_epochs) else np.arange(len(product.loss_values))
        axes[3].semilogy(epochs, product.loss_values, "-o", ms=2)
        axes[3].set_xlabel("epoch")
        axes[3].set_title("cost", fontsize=9)
    else:
        axes[3].axis("off")
        axes[3].text(0.5, 0.5, "no cost recorded", ha="center", va="center")
    fig.suptitle(f"{Path(path).name}: {product.name}", fontsize=11)
    fig.tight_layout()
    return fig


def tomo_figure(path: str | Path) -> plt.Figure:
    """Preview of raw tomography: a normalized projection, the middle sinogram, a flat, the ground truth."""
    with open_tomo(path) as dx:
        rows = dx.frame_shape[0]
        first = dx.read_projections(0, 1, validate=False)[0].astype(np.float64)
        sino = dx.read_sinograms(rows // 2, rows // 2 + 1, validate=False)[:, 0].astype(np.float64)
        flats, darks = dx.flats(), dx.darks()
        truth, theta, name = dx.ground_truth(), dx.theta_deg, Path(path).name
    flat = flats.mean(axis=0) if flats is not None else np.ones(first.shape) * max(first.max(), 1)
    dark = darks.mean(axis=0) if darks is not None else np.zeros(first.shape)
    span = np.maximum(flat - dark, 1e-6)
    transmission = np.clip((first - dark) / span, 1e-6, None)
    attenuation = -np.log(np.clip((sino - dark[rows // 2]) / span[rows // 2], 1e-6, None))
    fig, axes = plt.subplots(1, 4 if truth is not None else 3, figsize=(16, 4.2))
    aspect = "auto" if rows < 16 else "equal"
    im = axes[0].imshow(transmission, cmap="gray", aspect=aspect, interpolation="nearest")
    axes[0].set_title(f"projection at {theta[0]:.1f} deg (flat-corrected)", fontsize=9)
    plt.colorbar(im, ax=axes[0], fraction=0.046, pad=0.03)
    im = axes[1].imshow(attenuation, cmap="gray", aspect="auto", extent=(0, attenuation.shape[1], theta[-1], theta[0]))
    axes[1].set_title(f"sinogram, row {rows // 2} (-log transmission)", fontsize=9)
    axes[1].set_ylabel("theta (deg)")
    plt.colorbar(im, ax=axes[1], fraction=0.046, pad=0.03)
    im = axes[2].imshow(flat, cmap="gray", aspect=aspect, interpolation="nearest")
    axes[2].set_title("mean flat field (counts)", fontsize=9)
    plt.colorbar(im, ax=axes[2], fraction=0.046, pad=0.03)
    if truth is not None:
        _show(axes[3], truth[len(truth) // 2], "ground truth, middle slice", label="1/pixel")
    fig.suptitle(f"{name}: {len(theta)} projections of {rows}x{first.shape[1]}", fontsize=11)
    fig.tight_layout()
    return fig


def recon_figure(path: str | Path) -> plt.Figure:
    """Preview of a tomographic reconstruction: its middle slice."""
    volume, _ = read_reconstruction(path)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    _show(ax, volume[len(volume) // 2], f"slice {len(volume) // 2} of {len(volume)}", label="1/pixel")
    fig.suptitle(Path(path).name, fontsize=11)
    fig.tight_layout()
    return fig


def save_preview(path: str | Path, output: str | Path, frame_index: int = 0, cxi_options: dict | None = None) -> Path:
    """Write a PNG preview of any EdgeRay file (kind detected from its layout); returns the PNG path."""
    kind = detect_kind(path)
    if kind == "cxi":
        fig = scan_figure(path, frame_index, cxi_options)
    elif kind == "product":
        fig = product_figure(path)
    elif kind == "tomo-raw":
        fig = tomo_figure(path)
    elif kind == "tomo-recon":
        fig = recon_figure(path)
    else:
        raise ValueError(f"{path}: no preview for files of kind {kind!r} yet")
    output = Path(output)
    with atomic_path(output, keep_suffix=True) as tmp:  # beside its product, as atomically as the product
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return output


def slice_panels(panels: dict[str, np.ndarray], path: str | Path, title: str) -> Path:
    """Slices side by side on one grey scale (the first panel's 0.5/99.5 percentiles) -> PNG at ``path``."""
    first = next(iter(panels.values()))
    low, high = np.percentile(first, [0.5, 99.5])
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.4))
    for ax, (label, image) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.set_title(label, fontsize=10)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_path(path, keep_suffix=True) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return Path(path)
