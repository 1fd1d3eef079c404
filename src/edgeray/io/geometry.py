"""Far-field ptychography geometry: energies, wavelengths and pixel sizes (SI units)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

#: h * c in eV * m: wavelength_m = HC_EV_M / energy_eV.
HC_EV_M = 1.239841984e-6
#: One electronvolt in joules (CXI stores source energy in J).
EV_J = 1.602176634e-19


@dataclass(frozen=True)
class PtychoGeometry:
    """Geometry of a far-field ptychography measurement.

    Attributes:
        energy_eV: photon energy, eV.
        distance_m: sample-to-detector distance, m.
        detector_pixel_size_m: ``(y, x)`` detector pixel pitch, m.
        frame_shape: ``(H, W)`` detector frame size, pixels.
    """

    energy_eV: float
    distance_m: float
    detector_pixel_size_m: tuple[float, float]
    frame_shape: tuple[int, int]

    @property
    def wavelength_m(self) -> float:
        """X-ray wavelength, m."""
        return HC_EV_M / self.energy_eV

    @property
    def object_pixel_size_m(self) -> tuple[float, float]:
        """``(y, x)`` object-plane pixel size ``wavelength * distance / (n * detector_pixel)``, m."""
        lam_z = self.wavelength_m * self.distance_m
        return (
            lam_z / (self.frame_shape[0] * self.detector_pixel_size_m[0]),
            lam_z / (self.frame_shape[1] * self.detector_pixel_size_m[1]),
        )

    def to_dict(self) -> dict:
        """JSON-ready dict, the ``geometry`` of the stream protocol plus the frame shape."""
        out = asdict(self)
        out["detector_pixel_size_m"] = list(self.detector_pixel_size_m)
        out["frame_shape"] = list(self.frame_shape)
        out["object_pixel_size_m"] = list(self.object_pixel_size_m)
        return out


def energy_eV_from_wavelength(wavelength_m: float) -> float:
    """Photon energy (eV) of an X-ray of ``wavelength_m`` (m)."""
    return HC_EV_M / wavelength_m
