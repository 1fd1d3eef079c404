"""Simulators: ptychography (probes, scan paths, objects, far-field counts) and tomography (phantoms,
exact projections, flats/darks, dose, rings). Everything is seeded and vectorized."""

from edgeray.sim.objects import (
    BUNDLED_IMAGES,
    HELD_OUT_IMAGES,
    load_image,
    make_object,
    object_from_images,
    random_object,
)
from edgeray.sim.phantoms import PHANTOMS, Ellipsoid, foam, make_phantom, project, rasterize, shepp_logan
from edgeray.sim.probes import focused_probe, gaussian_probe, probe_from_file
from edgeray.sim.ptycho import (
    PtychoSimConfig,
    exit_waves,
    far_field,
    far_field_intensity,
    positions_m_to_px,
    shifted_probes,
    simulate_ptycho,
    simulate_ptycho_lazy,
)
from edgeray.sim.scan import SCANS, concentric_scan, fermat_spiral, make_scan, place_in_object, raster_scan
from edgeray.sim.tomo import TomoSimConfig, beam_profile, simulate_tomo

__all__ = [
    "BUNDLED_IMAGES",
    "HELD_OUT_IMAGES",
    "PHANTOMS",
    "SCANS",
    "Ellipsoid",
    "PtychoSimConfig",
    "TomoSimConfig",
    "beam_profile",
    "concentric_scan",
    "exit_waves",
    "far_field",
    "far_field_intensity",
    "fermat_spiral",
    "foam",
    "focused_probe",
    "gaussian_probe",
    "load_image",
    "make_object",
    "make_phantom",
    "make_scan",
    "object_from_images",
    "place_in_object",
    "positions_m_to_px",
    "probe_from_file",
    "project",
    "random_object",
    "raster_scan",
    "rasterize",
    "shepp_logan",
    "shifted_probes",
    "simulate_ptycho",
    "simulate_ptycho_lazy",
    "simulate_tomo",
]
