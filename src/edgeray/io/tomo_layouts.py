"""Named layouts of raw tomography files: where a facility's beamlines keep frames, image keys and angles.

Data Exchange and NXtomo are read by their own readers; the other layouts are the HDF5 paths a beamline writes,
as its public loader settings name them (Diamond's from httomo's ``standard_tomo`` loader: ``data_path``,
``image_key_path`` and the rotation angles' ``data_path``). A file that is neither Data Exchange nor NXtomo is
matched against this table when no paths are given (:func:`match_layout`); ``--layout NAME`` names one outright.
"""

from __future__ import annotations

from dataclasses import dataclass

import h5py


@dataclass(frozen=True)
class Layout:
    """One facility layout.

    Attributes:
        name: what ``--layout`` calls it.
        description: the beamlines and writers it is for.
        data_path: the frames ``(n_frames, rows, cols)`` (None: the format's own reader finds them).
        image_key_path: ``(n_frames,)`` 0 projection, 1 flat, 2 dark (None: every frame a projection).
        angles_paths: where the rotation angles may be, the first present one read (writers moved them over time).
    """

    name: str
    description: str
    data_path: str | None = None
    image_key_path: str | None = None
    angles_paths: tuple[str, ...] = ()

    def present(self, h5: h5py.File) -> bool:
        """Whether the file has this layout's frames, image keys and one of its angle datasets."""
        if self.data_path is None:
            return False
        needed = [self.data_path] + ([self.image_key_path] if self.image_key_path else [])
        return all(isinstance(h5.get(p), h5py.Dataset) for p in needed) and self.angles_path(h5) is not None

    def angles_path(self, h5: h5py.File) -> str | None:
        """The first of :attr:`angles_paths` the file has (None: none)."""
        return next((p for p in self.angles_paths if isinstance(h5.get(p), h5py.Dataset)), None)


#: the known layouts, by name; ``dxchange`` and ``nxtomo`` stand for their formats' own readers
LAYOUTS: dict[str, Layout] = {
    layout.name: layout
    for layout in (
        Layout("dxchange", "Data Exchange (APS tomography): /exchange/data, data_white, data_dark, theta"),
        Layout("nxtomo", "NeXus NXtomo (ESRF, tomoscan, nxtomomill; Diamond's entry1/tomo_entry)"),
        Layout(
            "diamond-diad",
            "Diamond DIAD (K11) imaging: /entry/imaging/data with the EtherCAT-era image keys",
            "/entry/imaging/data",
            "/entry/instrument/imaging/image_key",
            ("/entry/imaging_sum/gts_cs_theta", "/entry/imaging_sum/gts_theta_value"),
        ),
        Layout(
            "diamond-tomo",
            "Diamond I12 / I13 tomography (NXtomo written under entry1/tomo_entry)",
            "/entry1/tomo_entry/data/data",
            "/entry1/tomo_entry/instrument/detector/image_key",
            ("/entry1/tomo_entry/data/rotation_angle",),
        ),
    )
}


def layout(name: str) -> Layout:
    """The layout called ``name``; an unknown name is refused with the known ones listed."""
    if name not in LAYOUTS:
        raise ValueError(f"unknown layout {name!r}; known layouts: {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


def match_layout(h5: h5py.File) -> Layout | None:
    """The first path layout of :data:`LAYOUTS` whose datasets the file has (None: none matches)."""
    return next((item for item in LAYOUTS.values() if item.present(h5)), None)
