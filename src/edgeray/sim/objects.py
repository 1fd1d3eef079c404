"""Sample objects: complex transmission functions ``amplitude * exp(i * phase)``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage import color, data, io, transform

#: Images bundled with scikit-image that load without a download.
BUNDLED_IMAGES = ("camera", "astronaut", "coins", "moon", "text", "brick", "grass", "gravel", "cell", "page")
#: Further bundled images, kept out of EdgeRay's simulated training sets so models can be scored on unseen objects.
HELD_OUT_IMAGES = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
DEFAULT_OBJECT = "camera,astronaut"


def load_image(name_or_path: str) -> np.ndarray:
    """A grey image scaled to ``[0, 1]`` float64, from a bundled scikit-image name or an image file.

    Raises:
        ValueError: the name is neither a bundled image nor a readable file.
    """
    if name_or_path in BUNDLED_IMAGES + HELD_OUT_IMAGES:
        image = getattr(data, name_or_path)()
    elif Path(name_or_path).is_file():
        image = io.imread(name_or_path)
    else:
        raise ValueError(f"object image {name_or_path!r} is neither a file nor one of: {', '.join(BUNDLED_IMAGES)}")
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3:
        image = color.rgb2gray(image[..., :3] / (255.0 if image.max() > 1 else 1.0))
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def object_from_images(
    amplitude_image: np.ndarray,
    phase_image: np.ndarray,
    shape: tuple[int, int],
    amplitude_min: float = 0.6,
    phase_range_rad: float = 1.5,
) -> np.ndarray:
    """Complex object from two grey images in ``[0, 1]``, each resized to ``shape``.

    Amplitude runs from ``amplitude_min`` (dark pixels) to 1; phase from ``-phase_range/2`` to ``+phase_range/2``
    radians. Returns ``(Y, X)`` complex64.
    """
    amp = transform.resize(amplitude_image, shape, anti_aliasing=True)
    phase = transform.resize(phase_image, shape, anti_aliasing=True)
    field = (amplitude_min + (1 - amplitude_min) * amp) * np.exp(1j * phase_range_rad * (phase - 0.5))
    return field.astype(np.complex64)


def random_object(
    shape: tuple[int, int],
    rng: np.random.Generator,
    feature_px: float = 3.0,
    amplitude_min: float = 0.6,
    phase_range_rad: float = 1.5,
) -> np.ndarray:
    """A procedural object: smoothed random fields (features about ``feature_px`` wide) for amplitude and phase.

    Returns ``(Y, X)`` complex64 with the same ranges as :func:`object_from_images`.
    """

    def field() -> np.ndarray:
        smooth = ndimage.gaussian_filter(rng.standard_normal(shape), feature_px, mode="wrap")
        return (smooth - smooth.min()) / (np.ptp(smooth) or 1.0)

    return object_from_images(field(), field(), shape, amplitude_min, phase_range_rad)


def make_object(
    spec: str,
    shape: tuple[int, int],
    rng: np.random.Generator,
    amplitude_min: float = 0.6,
    phase_range_rad: float = 1.5,
) -> np.ndarray:
    """An object from a spec: ``random``, one image (amplitude and phase from it) or ``AMP,PHASE`` images.

    Images are scikit-image names (:data:`BUNDLED_IMAGES`) or paths. Returns ``(Y, X)`` complex64.
    """
    if spec == "random":
        return random_object(shape, rng, amplitude_min=amplitude_min, phase_range_rad=phase_range_rad)
    names = spec.split(",")
    if len(names) > 2:
        raise ValueError(f"object spec {spec!r}: give 'random', IMAGE or AMPLITUDE_IMAGE,PHASE_IMAGE")
    amplitude = load_image(names[0])
    phase = load_image(names[-1])
    return object_from_images(amplitude, phase, shape, amplitude_min, phase_range_rad)
