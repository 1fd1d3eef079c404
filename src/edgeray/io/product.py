"""Ptychography reconstruction products (HDF5, ptychodus-compatible keys): reader and atomic writer."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from edgeray.io._h5util import atomic_h5, require_dataset
from edgeray.io.errors import EdgeRayFormatError


@dataclass
class Product:
    """A ptychography reconstruction.

    Attributes:
        object: ``(layers, Y, X)`` complex64 object transmission.
        probe: ``(modes, H, W)`` complex64 probe modes.
        positions_m: ``(N, 2)`` float64 probe positions ``[y, x]``, m.
        object_pixel_size_m: ``(y, x)`` object pixel size, m.
        probe_pixel_size_m: ``(y, x)`` probe pixel size, m (equal to the object's for far field).
        energy_eV: photon energy, eV.
        distance_m: detector-object distance, m.
        object_center_m: ``(y, x)`` position of the object array's centre, m.
        loss_values: ``(E,)`` cost per recorded epoch; ``loss_epochs``: ``(E,)`` their epoch numbers.
        position_indexes: ``(N,)`` index of each position in the raw scan.
        name: free text; ``attrs``: further provenance written as attributes.
    """

    object: np.ndarray
    probe: np.ndarray
    positions_m: np.ndarray
    object_pixel_size_m: tuple[float, float]
    probe_pixel_size_m: tuple[float, float]
    energy_eV: float
    distance_m: float
    object_center_m: tuple[float, float] = (0.0, 0.0)
    loss_values: np.ndarray = field(default_factory=lambda: np.zeros(0))
    loss_epochs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    position_indexes: np.ndarray | None = None
    name: str = ""
    attrs: dict = field(default_factory=dict)


def write_product(path: str | Path, product: Product) -> Path:
    """Write ``product`` atomically (temporary name, then rename); returns ``path``."""
    obj = np.asarray(product.object, dtype=np.complex64)
    obj = obj[None] if obj.ndim == 2 else obj
    probe = np.asarray(product.probe, dtype=np.complex64)
    probe = probe[None] if probe.ndim == 2 else probe
    positions = np.asarray(product.positions_m, dtype=np.float64).reshape(-1, 2)
    indexes = product.position_indexes
    indexes = np.arange(len(positions)) if indexes is None else np.asarray(indexes, dtype=np.int64)
    with atomic_h5(path) as h5:
        h5["object"] = obj
        h5["probe"] = probe
        h5["probe_position_y_m"] = positions[:, 0]
        h5["probe_position_x_m"] = positions[:, 1]
        h5["probe_position_indexes"] = indexes
        h5["loss_values"] = np.asarray(product.loss_values, dtype=np.float64)
        h5["loss_epochs"] = np.asarray(product.loss_epochs, dtype=np.int64)
        h5.attrs["name"] = product.name
        h5.attrs["probe_energy_eV"] = product.energy_eV
        h5.attrs["detector_object_distance_m"] = product.distance_m
        h5.attrs["object_pixel_height_m"], h5.attrs["object_pixel_width_m"] = product.object_pixel_size_m
        h5.attrs["probe_pixel_height_m"], h5.attrs["probe_pixel_width_m"] = product.probe_pixel_size_m
        h5.attrs["object_center_y_m"], h5.attrs["object_center_x_m"] = product.object_center_m
        for key, value in product.attrs.items():
            h5.attrs[f"edgeray_{key}"] = value
    return Path(path)


def read_product(path: str | Path) -> Product:
    """Read a product file; raises :class:`EdgeRayFormatError` naming what is missing or malformed."""
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise EdgeRayFormatError(path, None, f"cannot open as HDF5 ({exc})") from exc
    with h5:
        obj = require_dataset(h5, "object", path, ndim=(2, 3))[()]
        probe = require_dataset(h5, "probe", path, ndim=(2, 3))[()]
        for name, arr in (("/object", obj), ("/probe", probe)):
            if not np.isfinite(arr).all():
                raise EdgeRayFormatError(path, name, "holds NaN or inf")
        y = require_dataset(h5, "probe_position_y_m", path, ndim=1)[()]
        x = require_dataset(h5, "probe_position_x_m", path, ndim=1)[()]
        if len(y) != len(x):
            raise EdgeRayFormatError(path, "/probe_position_x_m", f"{len(x)} values, but {len(y)} y positions")
        indexes = h5["probe_position_indexes"][()] if "probe_position_indexes" in h5 else None
        attrs = dict(h5.attrs)

        def need(key: str) -> float:
            if key not in attrs:
                raise EdgeRayFormatError(path, f"/ attribute {key}", "missing attribute")
            return float(attrs[key])

        return Product(
            object=np.asarray(obj, dtype=np.complex64).reshape((-1, *obj.shape[-2:])),
            probe=np.asarray(probe, dtype=np.complex64).reshape((-1, *probe.shape[-2:])),
            positions_m=np.stack([y, x], axis=1).astype(np.float64),
            object_pixel_size_m=(need("object_pixel_height_m"), need("object_pixel_width_m")),
            probe_pixel_size_m=(need("probe_pixel_height_m"), need("probe_pixel_width_m")),
            energy_eV=need("probe_energy_eV"),
            distance_m=need("detector_object_distance_m"),
            object_center_m=(
                float(attrs.get("object_center_y_m", 0.0)),
                float(attrs.get("object_center_x_m", 0.0)),
            ),
            loss_values=h5["loss_values"][()] if "loss_values" in h5 else np.zeros(0),
            loss_epochs=h5["loss_epochs"][()] if "loss_epochs" in h5 else np.zeros(0, dtype=np.int64),
            position_indexes=indexes,
            name=str(attrs.get("name", "")),
            attrs={k.removeprefix("edgeray_"): v for k, v in attrs.items() if k.startswith("edgeray_")},
        )
