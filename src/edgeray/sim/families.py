"""Slices of many kinds of sample, for training and judging denoisers on more than one phantom family.

Each family draws one ``(size, size)`` float32 slice of attenuation per pixel (0 outside the sample) from a
``numpy.random.Generator``; every draw is a new object. Families: ``ellipses`` (overlapping ellipses of random
density), ``foam`` (a disk with random spherical pores), ``fibres`` (random straight fibres in a matrix), ``rock``
(two-phase grains from a thresholded smooth field, with dense inclusions), ``cells`` (cells with nuclei in a faint
medium), ``layers`` (layered / lithographic: bands and lines, rotated), ``smooth`` (a random smooth field) and
``textured_shepp`` (the Shepp-Logan head with a smooth texture: kept out of training by default, to judge transfer).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from edgeray.sim.phantoms import shepp_logan


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates ``(y, x)`` in ``[-1, 1]``, each ``(size, size)``."""
    axis = (np.arange(size) + 0.5) / size * 2 - 1
    return np.meshgrid(axis, axis, indexing="ij")


def _disk(size: int, radius: float = 0.9) -> np.ndarray:
    y, x = _grid(size)
    return (y**2 + x**2 <= radius**2).astype(np.float32)


def _ellipses(size: int, centres: np.ndarray, axes: np.ndarray, angles: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of filled ellipses: ``centres (K, 2)`` [y, x], ``axes (K, 2)`` semi-axes, ``angles (K,)`` rad, ``values``."""
    y, x = _grid(size)
    out = np.zeros((size, size), np.float32)
    for (cy, cx), (ay, ax), angle, value in zip(centres, axes, angles, values, strict=True):
        c, s = np.cos(angle), np.sin(angle)
        u, v = (x - cx) * c + (y - cy) * s, -(x - cx) * s + (y - cy) * c
        out += value * ((u / ax) ** 2 + (v / ay) ** 2 <= 1)
    return out


def _smooth_field(size: int, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal((size, size)), sigma * size, mode="wrap")
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def ellipses(size: int, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(6, 25))
    centres = rng.uniform(-0.6, 0.6, (k, 2))
    out = _ellipses(size, centres, rng.uniform(0.05, 0.35, (k, 2)), rng.uniform(0, np.pi, k), rng.uniform(-0.3, 1, k))
    return np.clip(out, 0, None) * _disk(size)


def foam(size: int, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(20, 120))
    radius = rng.uniform(0.02, 0.12, k)
    pores = _ellipses(size, rng.uniform(-0.8, 0.8, (k, 2)), np.stack([radius, radius], 1), np.zeros(k), np.ones(k))
    return (rng.uniform(0.5, 1.0) * _disk(size, rng.uniform(0.75, 0.9)) * (pores == 0)).astype(np.float32)


def fibres(size: int, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(10, 60))
    width = rng.uniform(0.01, 0.04, k)
    length = rng.uniform(0.3, 1.2, k)
    main = rng.uniform(0, np.pi)  # fibres share a direction, with spread
    angles = main + rng.normal(0, rng.uniform(0.05, 1.0), k)
    strands = _ellipses(size, rng.uniform(-0.7, 0.7, (k, 2)), np.stack([width, length], 1), angles,
                        rng.uniform(0.4, 1.0, k))  # fmt: skip
    return (np.minimum(strands, 1.2) + rng.uniform(0.05, 0.3)) * _disk(size)


def rock(size: int, rng: np.random.Generator) -> np.ndarray:
    field = _smooth_field(size, rng, rng.uniform(0.01, 0.04))
    grains = (field > rng.uniform(-0.5, 0.5)).astype(np.float32) * rng.uniform(0.5, 0.8)
    inclusions = (_smooth_field(size, rng, 0.008) > 2.3).astype(np.float32) * rng.uniform(0.5, 1.0)
    return (grains + inclusions) * _disk(size, rng.uniform(0.7, 0.92))


def cells(size: int, rng: np.random.Generator) -> np.ndarray:
    k = int(rng.integers(5, 30))
    centres = rng.uniform(-0.65, 0.65, (k, 2))
    axes = rng.uniform(0.06, 0.18, (k, 2))
    angles = rng.uniform(0, np.pi, k)
    body = _ellipses(size, centres, axes, angles, rng.uniform(0.3, 0.6, k))
    nuclei = _ellipses(size, centres + rng.normal(0, 0.02, (k, 2)), axes * rng.uniform(0.3, 0.5, (k, 1)), angles,
                       rng.uniform(0.3, 0.6, k))  # fmt: skip
    return (np.minimum(body, 0.9) + nuclei + 0.1) * _disk(size)


def layers(size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size)
    angle = rng.uniform(0, np.pi)
    u = x * np.cos(angle) + y * np.sin(angle)
    edges = np.sort(rng.uniform(-0.9, 0.9, int(rng.integers(3, 12))))
    values = rng.uniform(0.1, 1.0, len(edges) + 1)
    bands = values[np.searchsorted(edges, u)].astype(np.float32)
    v = -x * np.sin(angle) + y * np.cos(angle)
    period = rng.uniform(0.05, 0.2)
    lines = (np.mod(v, period) < period * rng.uniform(0.2, 0.6)) & (np.abs(u - rng.uniform(-0.5, 0.5)) < 0.2)
    box = (np.abs(u) < rng.uniform(0.5, 0.85)) & (np.abs(v) < rng.uniform(0.5, 0.85))
    return ((bands + rng.uniform(0.3, 1.0) * lines) * box).astype(np.float32)


def smooth(size: int, rng: np.random.Generator) -> np.ndarray:
    field = _smooth_field(size, rng, rng.uniform(0.02, 0.1))
    return np.clip(0.5 + 0.25 * field, 0, None) * _disk(size)


def textured_shepp(size: int, rng: np.random.Generator) -> np.ndarray:
    """The Shepp-Logan head's middle slice (randomly scaled, turned and shifted) times a smooth texture."""
    shapes = shepp_logan()
    turn, scale, shift = rng.uniform(0, 2 * np.pi), rng.uniform(0.75, 1.0), rng.uniform(-0.05, 0.05, 2)
    c, s = np.cos(turn), np.sin(turn)
    centres = np.array([[sh.center[1], sh.center[0]] for sh in shapes]) * scale
    centres = centres @ np.array([[c, s], [-s, c]]) + shift
    axes = np.array([[sh.axes[1], sh.axes[0]] for sh in shapes]) * scale
    angles = np.array([sh.angle_rad for sh in shapes]) - turn
    head = _ellipses(size, centres, axes, angles, np.array([sh.value for sh in shapes]))
    texture = 1 + 0.15 * _smooth_field(size, rng, 0.03)
    return np.clip(head * texture, 0, None).astype(np.float32)


FAMILIES: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "ellipses": ellipses,
    "foam": foam,
    "fibres": fibres,
    "rock": rock,
    "cells": cells,
    "layers": layers,
    "smooth": smooth,
    "textured_shepp": textured_shepp,
}
HELD_OUT_FAMILIES = ("textured_shepp",)
"""Families the shipped general denoiser never saw: what its transfer is judged on."""


def phantom_slice(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``(size, size)`` float32 slice of ``family`` (see :data:`FAMILIES`), scaled so its largest value is 1."""
    if family not in FAMILIES:
        raise ValueError(f"unknown phantom family {family!r}; choose from {', '.join(FAMILIES)}")
    image = FAMILIES[family](size, rng)
    return (image / max(float(image.max()), 1e-6)).astype(np.float32)
