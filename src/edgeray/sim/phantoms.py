"""Tomography phantoms made of ellipsoids, so that their projections are exact (analytic chord lengths).

Coordinates are normalized: the volume spans ``[-1, 1]`` along x and y (``size`` pixels); slices are
stacked along z at the same pixel pitch, centred on ``z = 0``. Image axes follow EdgeRay: ``[slice, y, x]``
with y growing down the rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PHANTOMS = ("shepp", "foam")


@dataclass(frozen=True)
class Ellipsoid:
    """One ellipsoid of a phantom, normalized coordinates.

    Attributes:
        center: ``(x, y, z)``; axes: semi-axes ``(a, b, c)`` along the ellipsoid's own x, y, z;
        angle_rad: rotation about z (x towards y); value: density added inside (attenuation, arbitrary units).
    """

    center: tuple[float, float, float]
    axes: tuple[float, float, float]
    angle_rad: float
    value: float


# The 3D Shepp-Logan head (Kak & Slaney) with the higher-contrast densities of Toft's modified version.
# Rows: x0, y0, z0, a, b, c, angle (deg), density; y is negated from the textbook's y-up convention.
_SHEPP_LOGAN = np.array(
    [
        [0.0, 0.0, 0.0, 0.69, 0.92, 0.81, 0.0, 1.0],
        [0.0, 0.0184, 0.0, 0.6624, 0.874, 0.78, 0.0, -0.8],
        [0.22, 0.0, 0.0, 0.11, 0.31, 0.22, 18.0, -0.2],
        [-0.22, 0.0, 0.0, 0.16, 0.41, 0.28, -18.0, -0.2],
        [0.0, -0.35, -0.15, 0.21, 0.25, 0.41, 0.0, 0.1],
        [0.0, -0.1, 0.25, 0.046, 0.046, 0.05, 0.0, 0.1],
        [0.0, 0.1, 0.25, 0.046, 0.046, 0.05, 0.0, 0.1],
        [-0.08, 0.605, 0.0, 0.046, 0.023, 0.05, 0.0, 0.1],
        [0.0, 0.606, 0.0, 0.023, 0.023, 0.02, 0.0, 0.1],
        [0.06, 0.605, 0.0, 0.023, 0.046, 0.02, 0.0, 0.1],
    ]
)


def shepp_logan() -> list[Ellipsoid]:
    """The 3D Shepp-Logan head phantom (densities 0 to 1)."""
    return [Ellipsoid((x, y, z), (a, b, c), np.radians(deg), value) for x, y, z, a, b, c, deg, value in _SHEPP_LOGAN]


def foam(
    rng: np.random.Generator,
    n_voids: int = 150,
    radius_range: tuple[float, float] = (0.02, 0.12),
    z_extent: float = 1.0,
) -> list[Ellipsoid]:
    """A random foam: a cylinder of density 1 (radius 0.9, along z) with non-overlapping spherical voids.

    Voids are drawn largest first and rejected where they would overlap another or leave the cylinder;
    ``z_extent`` bounds the void centres' ``|z|`` (normalized units).
    """
    shapes = [Ellipsoid((0.0, 0.0, 0.0), (0.9, 0.9, 1e6), 0.0, 1.0)]
    radii = np.sort(rng.uniform(*radius_range, size=8 * n_voids))[::-1]
    centres = rng.uniform(-1, 1, size=(len(radii), 3)) * [0.9, 0.9, z_extent]
    placed_c, placed_r = np.zeros((0, 3)), np.zeros(0)
    for centre, radius in zip(centres, radii, strict=True):
        if np.hypot(centre[0], centre[1]) + radius > 0.88:
            continue
        if len(placed_r) and (np.linalg.norm(placed_c - centre, axis=1) < placed_r + radius + 0.005).any():
            continue
        placed_c = np.vstack([placed_c, centre])
        placed_r = np.append(placed_r, radius)
        if len(placed_r) == n_voids:
            break
    shapes += [Ellipsoid(tuple(c), (r, r, r), 0.0, -1.0) for c, r in zip(placed_c, placed_r, strict=True)]
    return shapes


def make_phantom(name: str, rng: np.random.Generator, z_extent: float = 1.0) -> list[Ellipsoid]:
    """Ellipsoids of phantom ``name`` in :data:`PHANTOMS`."""
    if name == "shepp":
        return shepp_logan()
    if name == "foam":
        return foam(rng, z_extent=z_extent)
    raise ValueError(f"unknown phantom {name!r}; choose one of {', '.join(PHANTOMS)}")


def slice_z(size: int, n_slices: int) -> np.ndarray:
    """Normalized z of ``n_slices`` slices at the in-plane pixel pitch ``2 / size``, centred on 0."""
    return (np.arange(n_slices) - (n_slices - 1) / 2) * (2.0 / size)


def pixel_coords(size: int) -> np.ndarray:
    """Normalized coordinates of ``size`` pixel centres spanning ``[-1, 1]``."""
    return (np.arange(size) - (size - 1) / 2) * (2.0 / size)


def _bounds(shape: Ellipsoid) -> np.ndarray:
    """Half-extents ``(x, y, z)`` of the ellipsoid's axis-aligned bounding box, normalized units."""
    (a, b, c), cos, sin = shape.axes, np.cos(shape.angle_rad), np.sin(shape.angle_rad)
    return np.array([np.hypot(a * cos, b * sin), np.hypot(a * sin, b * cos), c])


def rasterize(shapes: list[Ellipsoid], size: int, n_slices: int, supersample: int = 2) -> np.ndarray:
    """The phantom sampled on a ``(n_slices, size, size)`` float32 grid.

    Each voxel averages ``supersample^2`` in-plane sub-samples, so edges are partial-volume like a detector's.
    Each ellipsoid is evaluated only inside its bounding box.
    """
    n_sub = size * supersample
    sub_coords = (np.arange(n_sub) - (n_sub - 1) / 2) * (2.0 / n_sub)
    z_all = slice_z(size, n_slices)
    volume = np.zeros((n_slices, n_sub, n_sub), dtype=np.float32)
    for shape in shapes:
        half = _bounds(shape)
        cx, cy, cz = shape.center
        zs = np.flatnonzero(np.abs(z_all - cz) <= half[2])
        ys = np.flatnonzero(np.abs(sub_coords - cy) <= half[1])
        xs = np.flatnonzero(np.abs(sub_coords - cx) <= half[0])
        if not (len(zs) and len(ys) and len(xs)):
            continue
        z0, z1, y0, y1, x0, x1 = zs[0], zs[-1] + 1, ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
        dz = z_all[z0:z1, None, None] - cz
        dy = sub_coords[None, y0:y1, None] - cy
        dx = sub_coords[None, None, x0:x1] - cx
        cos, sin = np.cos(shape.angle_rad), np.sin(shape.angle_rad)
        u = (dx * cos + dy * sin) / shape.axes[0]
        v = (-dx * sin + dy * cos) / shape.axes[1]
        inside = u**2 + v**2 + (dz / shape.axes[2]) ** 2 <= 1.0
        volume[z0:z1, y0:y1, x0:x1] += np.float32(shape.value) * inside
    return volume.reshape(n_slices, size, supersample, size, supersample).mean(axis=(2, 4))


def project(shapes: list[Ellipsoid], theta_rad: np.ndarray, size: int, n_slices: int) -> np.ndarray:
    """Exact parallel-beam projections (line integrals) of the phantom, in pixel units.

    At angle theta, detector column coordinate ``s`` and slice ``z``, the ray is
    ``(x, y) = s (cos theta, sin theta) + t (-sin theta, cos theta)``; the value is the sum over ellipsoids of
    ``density * chord length`` (chord from the ray/ellipsoid quadratic), times ``size / 2`` pixels per unit.

    Args:
        shapes: the phantom.
        theta_rad: ``(n_angles,)`` rotation angles, radians.
        size: detector columns (= volume width), pixels.
        n_slices: detector rows (= slices).

    Returns:
        ``(n_angles, n_slices, size)`` float64 line integrals.
    """
    theta = np.asarray(theta_rad, dtype=np.float64)[:, None, None]
    s = pixel_coords(size)[None, None, :]
    z_all = slice_z(size, n_slices)
    sino = np.zeros((len(theta), n_slices, size))
    for shape in shapes:
        (a, b, c), (cx, cy, cz), phi = shape.axes, shape.center, shape.angle_rad
        rows = np.flatnonzero(np.abs(z_all - cz) < c)
        if not len(rows):
            continue
        z = z_all[rows][None, :, None]
        eu, ev = np.sin(phi - theta) / a, np.cos(theta - phi) / b
        u0 = (s * np.cos(theta - phi) - (cx * np.cos(phi) + cy * np.sin(phi))) / a
        v0 = (s * np.sin(theta - phi) + cx * np.sin(phi) - cy * np.cos(phi)) / b
        alpha = eu**2 + ev**2
        beta = u0 * eu + v0 * ev
        gamma = u0**2 + v0**2 + ((z - cz) / c) ** 2
        disc = np.maximum(beta**2 - alpha * (gamma - 1.0), 0.0)
        sino[:, rows[0] : rows[-1] + 1, :] += shape.value * 2.0 * np.sqrt(disc) / alpha
    return sino * (size / 2.0)
