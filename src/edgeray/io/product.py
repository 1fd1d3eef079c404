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


def _ptychodus_centre(center_m: tuple[float, float], pixel_m: tuple[float, float]) -> tuple[float, float]:
    """EdgeRay puts an array's ``center`` at pixel ``shape / 2``, ptychodus at ``(shape - 1) / 2``: the same point
    is half a pixel lower in ptychodus's numbers. ``(y, x)``, m."""
    return (center_m[0] - pixel_m[0] / 2, center_m[1] - pixel_m[1] / 2)


def write_product(path: str | Path, product: Product) -> Path:
    """Write ``product`` atomically (temporary name, then rename) in ptychodus's product layout; returns ``path``.

    Layout (ptychodus 1.7 ``save_product``): file attributes ``name``, ``comments``, ``photon_energy_eV``,
    ``detector_object_distance_m``; ``/object`` (layers, Y, X) with attributes ``pixel_width_m``, ``pixel_height_m``,
    ``center_x_m``, ``center_y_m``; ``/probe`` (modes, H, W) with ``pixel_width_m``, ``pixel_height_m``;
    ``/probe_position_x_m``, ``/probe_position_y_m``, ``/probe_position_indexes``; ``/object_layer_spacing_m``;
    ``/loss_epochs``, ``/loss_values``. EdgeRay's provenance goes in ``edgeray_*`` file attributes.
    """
    obj = np.asarray(product.object, dtype=np.complex64)
    obj = obj[None] if obj.ndim == 2 else obj
    probe = np.asarray(product.probe, dtype=np.complex64)
    probe = probe[None] if probe.ndim == 2 else probe
    positions = np.asarray(product.positions_m, dtype=np.float64).reshape(-1, 2)
    indexes = product.position_indexes
    indexes = np.arange(len(positions)) if indexes is None else np.asarray(indexes, dtype=np.int64)
    centre_y, centre_x = _ptychodus_centre(product.object_center_m, product.object_pixel_size_m)
    with atomic_h5(path) as h5:
        h5.attrs["name"] = product.name
        h5.attrs["comments"] = "written by EdgeRay"
        h5.attrs["photon_energy_eV"] = float(product.energy_eV)
        h5.attrs["detector_object_distance_m"] = float(product.distance_m)
        h5["object"] = obj
        h5["object"].attrs["pixel_height_m"], h5["object"].attrs["pixel_width_m"] = product.object_pixel_size_m
        h5["object"].attrs["center_y_m"], h5["object"].attrs["center_x_m"] = centre_y, centre_x
        h5["object_layer_spacing_m"] = np.zeros(len(obj) - 1)
        h5["probe"] = probe
        h5["probe"].attrs["pixel_height_m"], h5["probe"].attrs["pixel_width_m"] = product.probe_pixel_size_m
        h5["probe_position_y_m"] = positions[:, 0]
        h5["probe_position_x_m"] = positions[:, 1]
        h5["probe_position_indexes"] = indexes
        h5["loss_values"] = np.asarray(product.loss_values, dtype=np.float64)
        h5["loss_epochs"] = np.asarray(product.loss_epochs, dtype=np.int64)
        for key, value in product.attrs.items():
            h5.attrs[f"edgeray_{key}"] = value
    return Path(path)


def read_product(path: str | Path) -> Product:
    """Read a product written by EdgeRay or ptychodus (its HDF5 product layout; EdgeRay's layout before 2026-12
    too); raises :class:`EdgeRayFormatError` naming what is missing or malformed.

    A ptychodus probe sequence ``(positions, modes, H, W)`` keeps its first entry.
    """
    path = Path(path)
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise EdgeRayFormatError(path, None, f"cannot open as HDF5 ({exc})") from exc
    with h5:
        obj_set = require_dataset(h5, "object", path, ndim=(2, 3))
        probe_set = require_dataset(h5, "probe", path, ndim=(2, 3, 4))
        obj, probe = obj_set[()], probe_set[()]
        probe = probe[0] if probe.ndim == 4 else probe
        for name, arr in (("/object", obj), ("/probe", probe)):
            if not np.isfinite(arr).all():
                raise EdgeRayFormatError(path, name, "holds NaN or inf")
        y = require_dataset(h5, "probe_position_y_m", path, ndim=1)[()]
        x = require_dataset(h5, "probe_position_x_m", path, ndim=1)[()]
        if len(y) != len(x):
            raise EdgeRayFormatError(path, "/probe_position_x_m", f"{len(x)} values, but {len(y)} y positions")
        indexes = h5["probe_position_indexes"][()] if "probe_position_indexes" in h5 else None
        attrs = dict(h5.attrs)
        layout_2026_11 = "object_pixel_height_m" in attrs  # EdgeRay's own keys, all as file attributes

        def need(where: h5py.AttributeManager, key: str, owner: str, old_key: str | None = None) -> float:
            for name in (key, old_key):
                if name is not None and name in where:
                    return float(where[name])
            raise EdgeRayFormatError(path, f"{owner} attribute {key}", "missing attribute")

        if layout_2026_11:
            object_pixel = (need(h5.attrs, "object_pixel_height_m", "/"), need(h5.attrs, "object_pixel_width_m", "/"))
            probe_pixel = (need(h5.attrs, "probe_pixel_height_m", "/"), need(h5.attrs, "probe_pixel_width_m", "/"))
            centre = (float(attrs.get("object_center_y_m", 0.0)), float(attrs.get("object_center_x_m", 0.0)))
        else:
            oa, pa = obj_set.attrs, probe_set.attrs
            object_pixel = (need(oa, "pixel_height_m", "/object"), need(oa, "pixel_width_m", "/object"))
            probe_pixel = (
                float(pa.get("pixel_height_m", object_pixel[0])),
                float(pa.get("pixel_width_m", object_pixel[1])),
            )
            in_ptychodus = (float(oa.get("center_y_m", 0.0)), float(oa.get("center_x_m", 0.0)))
            centre = (in_ptychodus[0] + object_pixel[0] / 2, in_ptychodus[1] + object_pixel[1] / 2)
        return Product(
            object=np.asarray(obj, dtype=np.complex64).reshape((-1, *obj.shape[-2:])),
            probe=np.asarray(probe, dtype=np.complex64).reshape((-1, *probe.shape[-2:])),
            positions_m=np.stack([y, x], axis=1).astype(np.float64),
            object_pixel_size_m=object_pixel,
            probe_pixel_size_m=probe_pixel,
            energy_eV=need(h5.attrs, "photon_energy_eV", "/", old_key="probe_energy_eV"),
            distance_m=need(h5.attrs, "detector_object_distance_m", "/"),
            object_center_m=centre,
            loss_values=h5["loss_values"][()] if "loss_values" in h5 else np.zeros(0),
            loss_epochs=h5["loss_epochs"][()] if "loss_epochs" in h5 else np.zeros(0, dtype=np.int64),
            position_indexes=indexes,
            name=str(attrs.get("name", "")),
            attrs={k.removeprefix("edgeray_"): v for k, v in attrs.items() if k.startswith("edgeray_")},
        )
