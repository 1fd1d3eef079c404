"""Run one pty-chi reconstruction in pty-chi's own environment (torch + torchvision), epoch by epoch.

Called by ptycho_vs_ptychi.py as ``PYTHON ptychi_runner.py IN.npz OUT.npz``. Input: ``frames`` (N, H, W) counts
as stored (zero frequency centred), ``positions_px`` (N, 2) probe centres [y, x] in object pixels, ``probe``
(M, H, W), ``object_shape``, ``pixel_size_m``, ``engine``, ``epochs``, ``batch_size``, ``near_field_m`` (inf for
far field), ``wavelength_m``, ``mask`` (H, W) valid pixels. Output: the object after every epoch and the seconds
each epoch took.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings

import numpy as np
import torch


def main(source: str, target: str) -> None:
    import ptychi.api as api
    from ptychi.api.task import PtychographyTask

    warnings.simplefilter("ignore")  # pty-chi's deprecation notices about its own options API
    logging.disable(logging.WARNING)
    torch.set_num_threads(int(np.load(source)["threads"]))
    data = np.load(source)
    engine = str(data["engine"])
    options = {"lsqml": api.LSQMLOptions, "epie": api.EPIEOptions, "pie": api.PIEOptions, "dm": api.DMOptions}[engine]()
    near = float(data["near_field_m"])
    options.data_options.data = torch.from_numpy(data["frames"].astype(np.float32))
    options.data_options.valid_pixel_mask = torch.from_numpy(data["mask"].astype(bool))
    options.data_options.wavelength_m = float(data["wavelength_m"])
    options.data_options.free_space_propagation_distance_m = near
    options.data_options.fft_shift = bool(np.isinf(near))  # far-field frames are stored centred
    shape = tuple(int(v) for v in data["object_shape"])
    options.object_options.initial_guess = torch.ones((1, *shape), dtype=torch.complex64)
    options.object_options.pixel_size_m = float(data["pixel_size_m"])
    options.object_options.optimizable = True
    options.object_options.determine_position_origin_coords_by = api.enums.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = np.zeros(2)
    probe = torch.from_numpy(data["probe"].astype(np.complex64))
    options.probe_options.initial_guess = probe[None] if probe.ndim == 3 else probe[None, None]
    options.probe_options.optimizable = True
    positions = data["positions_px"]
    options.probe_position_options.position_y_px = torch.from_numpy(positions[:, 0].astype(np.float32))
    options.probe_position_options.position_x_px = torch.from_numpy(positions[:, 1].astype(np.float32))
    options.probe_position_options.optimizable = False
    options.reconstructor_options.batch_size = int(data["batch_size"])
    options.reconstructor_options.num_epochs = 1
    options.reconstructor_options.default_device = api.Devices.GPU if torch.cuda.is_available() else api.Devices.CPU
    options.reconstructor_options.random_seed = 0
    if engine == "lsqml":
        options.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    task = PtychographyTask(options)
    objects, seconds = [], []
    for _ in range(int(data["epochs"])):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        task.run(1)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
        objects.append(task.get_data_to_cpu("object", as_numpy=True).reshape(-1, *shape)[0])
    probe_out = task.get_data_to_cpu("probe", as_numpy=True)
    np.savez(target, objects=np.asarray(objects), seconds=np.asarray(seconds), probe=probe_out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
