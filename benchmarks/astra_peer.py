"""The peer, for tests and benchmarks (not shipped in the package): astra-toolbox's CPU FBP in EdgeRay's geometry.

astra-toolbox is a development dependency (``pip install astra-toolbox``), not a runtime one.
"""

from __future__ import annotations

import numpy as np


def astra_fbp(
    sinogram: np.ndarray, theta_rad: np.ndarray, size: int, filter_type: str = "ram-lak", gpu: bool = False
) -> np.ndarray:
    """astra's ``FBP`` (CPU, ``linear`` projector; ``gpu``: ``FBP_CUDA``) of one sinogram ``(A, D)`` ->
    ``(size, size)`` float32.

    astra puts the rotation axis mid-detector and turns the other way: angles are negated to match
    :mod:`edgeray.tomo.geometry`.
    """
    import astra

    volume = astra.create_vol_geom(size, size)
    geometry = astra.create_proj_geom("parallel", 1.0, sinogram.shape[1], -np.asarray(theta_rad, dtype=np.float64))
    projector = astra.create_projector("cuda" if gpu else "linear", geometry, volume)
    sino_id = astra.data2d.create("-sino", geometry, np.asarray(sinogram, dtype=np.float32))
    rec_id = astra.data2d.create("-vol", volume)
    config = astra.astra_dict("FBP_CUDA" if gpu else "FBP")
    config.update(ReconstructionDataId=rec_id, ProjectionDataId=sino_id, ProjectorId=projector)
    config["FilterType"] = filter_type
    algorithm = astra.algorithm.create(config)
    try:
        astra.algorithm.run(algorithm)
        return astra.data2d.get(rec_id).astype(np.float32)
    finally:
        astra.algorithm.delete(algorithm)
        astra.data2d.delete([sino_id, rec_id])
        astra.projector.delete(projector)
