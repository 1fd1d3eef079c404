"""The reconstruction pipeline of a Data Exchange file, slice chunk by slice chunk (data larger than memory works).

read rows -> normalize (flats, darks) -> zingers -> minus-log -> stripes -> centre -> FBP / gridrec / SIRT ->
``/exchange/data`` of the output, written chunk by chunk into a file that is renamed into place at the end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from edgeray.io import DataExchangeFile, NXtomoFile, open_tomo
from edgeray.io._h5util import atomic_h5, compression_kwargs
from edgeray.io.nxtomo import TomoPaths
from edgeray.limits import check_fields
from edgeray.tomo.center import find_center_entropy, find_center_pair, opposite_pair
from edgeray.tomo.fbp import fbp, gridrec
from edgeray.tomo.preprocess import minus_log, normalize, remove_outliers, remove_stripes
from edgeray.tomo.sirt import cgls, sirt

ALGORITHMS = ("gridrec", "fbp", "sirt", "cgls")

log = logging.getLogger("edgeray.tomo")


@dataclass
class TomoOptions:
    """Reconstruction options.

    Attributes:
        algorithm: ``gridrec`` (FBP by non-uniform FFT, CPU, fastest), ``fbp`` (linear-interpolation
            backprojection, CPU or CUDA), ``sirt`` or ``cgls`` (iterative, CPU or CUDA).
        center: rotation-axis column (pixels), or None to find it.
        filter_name, cutoff: FBP filter and its cutoff (fraction of Nyquist).
        rings: remove stripes (sorting-based) before reconstruction.
        zingers: replace outliers above this relative deviation from the local median (0: off).
        slices: detector rows ``(start, stop)`` to reconstruct (None: all).
        chunk_slices: rows read and reconstructed at once (memory: about chunk x angles x columns x 12 bytes).
        iterations: SIRT or CGLS iterations.
        device: ``cpu`` or ``cuda`` (``fbp`` and ``sirt``).
        entry: which NXtomo entry of a NeXus file (None: the first); not used for Data Exchange.
        data_path, image_key_path, angles_path: where the file keeps frames, image keys and angles, when not
            where Data Exchange or NXtomo say (:class:`~edgeray.io.nxtomo.TomoPaths`); ``layout``: a named one of
            :data:`~edgeray.io.tomo_layouts.LAYOUTS` (None: found from the file).
        compression: of the written slices, ``none`` (the default: noisy float32 slices gain little from gzip,
            which took a fifth of the command's time) or ``gzip``/``lz4``.
    """

    algorithm: str = "gridrec"
    center: float | None = None
    filter_name: str = "shepp-logan"
    cutoff: float = 1.0
    rings: bool = False
    zingers: float = 0.0
    slices: tuple[int, int] | None = None
    chunk_slices: int = 16
    iterations: int = 100
    device: str = "cpu"
    entry: str | None = None
    data_path: str | None = None
    image_key_path: str | None = None
    angles_path: str | None = None
    layout: str | None = None
    compression: str = "none"

    def __post_init__(self) -> None:
        """The numeric options within their limits (ValueError naming the option), before any work."""
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        check_fields(self, {"chunk_slices": (1, None, ">="), "iterations": (1, None, ">="), "cutoff": (0, 1, ">"),
                            "zingers": (0, None, ">="), "center": (None, None, ">=")},
                     integers=("chunk_slices", "iterations"), flags=True)  # fmt: skip


def scan_warnings(theta_deg: np.ndarray, columns: int, center: float | None) -> list[str]:
    """What is legal but suspicious in a scan about to be reconstructed: one angle, angles all equal or spanning
    less than 90 degrees, a rotation centre outside the detector."""
    found = []
    if len(theta_deg) < 2:
        found.append(f"{len(theta_deg)} projection angle: a reconstruction from it is a smear, not a slice")
    elif np.ptp(theta_deg) == 0:
        found.append(f"all {len(theta_deg)} projection angles are {theta_deg[0]:g} deg: the sample did not rotate")
    elif np.ptp(theta_deg) < 90:
        found.append(f"the angles span {np.ptp(theta_deg):.1f} deg only (a parallel-beam scan needs 180)")
    if center is not None and not 0 <= center < columns:
        found.append(f"the rotation centre {center:g} lies outside the detector's columns 0 to {columns - 1}")
    return found


def preprocess_rows(data: DataExchangeFile | NXtomoFile, rows: slice, options: TomoOptions) -> np.ndarray:
    """Sinograms ``(S, A, C)`` of line integrals for detector ``rows`` of ``data``."""
    projections = data.read_sinograms(rows.start, rows.stop)
    try:
        transmission = normalize(projections, data.flats(rows), data.darks(rows))
    except ValueError as error:  # name the file: a wrong flat or dark is the file's fault
        raise ValueError(f"{data.path}: {error}") from None
    if options.zingers > 0:
        transmission = remove_outliers(transmission, options.zingers)
    sinograms = np.ascontiguousarray(np.moveaxis(minus_log(transmission), 1, 0))
    if options.rings:
        sinograms = remove_stripes(sinograms)
    return sinograms


def find_center(data: DataExchangeFile | NXtomoFile, options: TomoOptions) -> tuple[float, str]:
    """The rotation centre and how it was found: from two projections half a turn apart (middle rows) if the
    scan has them, else by the sharpest reconstruction of the middle slice."""
    rows = data.frame_shape[0]
    middle = slice(max(rows // 2 - 8, 0), min(rows // 2 + 8, rows))
    sinograms = preprocess_rows(data, middle, TomoOptions(rings=options.rings, zingers=options.zingers))
    theta = np.radians(data.theta_deg)
    pair = opposite_pair(theta)
    if pair is not None:
        i, j = pair
        return find_center_pair(sinograms[:, i, :], sinograms[:, j, :]), f"projections {i} and {j} half a turn apart"
    mid = sinograms[len(sinograms) // 2]
    return find_center_entropy(mid, theta), "least-entropy middle slice (no projections half a turn apart)"


def reconstruct_chunk(sinograms: np.ndarray, theta_rad: np.ndarray, center: float, options: TomoOptions) -> np.ndarray:
    if options.algorithm == "gridrec":
        return gridrec(sinograms, theta_rad, center, filter_name=options.filter_name, cutoff=options.cutoff)
    if options.algorithm == "fbp":
        return fbp(sinograms, theta_rad, center, filter_name=options.filter_name, cutoff=options.cutoff,
                   device=options.device)  # fmt: skip
    if options.algorithm == "sirt":
        return sirt(sinograms, theta_rad, center, iterations=options.iterations, device=options.device)
    if options.algorithm == "cgls":
        return cgls(sinograms, theta_rad, center, iterations=options.iterations, device=options.device)
    raise ValueError(f"unknown algorithm {options.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")


def reconstruct_file(
    path: str | Path,
    output: str | Path,
    options: TomoOptions,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Reconstruct ``path`` (Data Exchange or NXtomo) into ``output`` (Data Exchange reconstruction); returns a summary
    (centre and how it was found, slices, seconds, slices per second). ``progress(done, total)`` after each chunk.
    """
    if options.algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {options.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    start_time = time.perf_counter()
    paths = TomoPaths(options.data_path, options.image_key_path, options.angles_path, options.layout)
    with open_tomo(path, options.entry, paths) as data:
        rows, columns = data.frame_shape
        first, last = options.slices or (0, rows)
        if not 0 <= first < last <= rows:
            raise ValueError(f"slices {first}:{last} are outside the detector's {rows} rows")
        if options.center is None:
            center, how = find_center(data, options)
        else:
            center, how = float(options.center), "given"
        theta = np.radians(data.theta_deg)
        warnings = scan_warnings(np.asarray(data.theta_deg), columns, center)
        for warning in warnings:
            log.warning("%s: %s", path, warning)
        n_slices = last - first
        params = {**{k: v for k, v in asdict(options).items() if v is not None}, "center": center,
                  "center_method": how, "source": Path(path).name, "first_slice": first}  # fmt: skip
        params["slices"] = f"{first}:{last}"
        with atomic_h5(output) as h5:
            h5.attrs["implements"] = "exchange"
            volume = h5.create_dataset("exchange/data", shape=(n_slices, columns, columns), dtype=np.float32,
                                       chunks=(1, columns, columns),
                                       **compression_kwargs(options.compression))  # fmt: skip
            volume.attrs["axes"] = "slice:y:x"
            volume.attrs["kind"] = "reconstruction"
            for key, value in params.items():
                volume.attrs[key] = value if isinstance(value, str | int | float | bool) else str(value)
            chunks = [slice(s, min(s + options.chunk_slices, last)) for s in range(first, last, options.chunk_slices)]
            # three stages overlapped: the next chunk is read and preprocessed, and the last one written, on
            # threads of their own while this one is reconstructed (the NUFFT leaves the interpreter free)
            with ThreadPoolExecutor(1, "recon-read") as reader, ThreadPoolExecutor(1, "recon-write") as writer:
                ahead, written = reader.submit(preprocess_rows, data, chunks[0], options), None
                for k, rows_chunk in enumerate(chunks):
                    sinograms = ahead.result()
                    if k + 1 < len(chunks):
                        ahead = reader.submit(preprocess_rows, data, chunks[k + 1], options)
                    images = reconstruct_chunk(sinograms, theta, center, options)
                    if written is not None:
                        written.result()
                    place = slice(rows_chunk.start - first, rows_chunk.stop - first)
                    written = writer.submit(volume.__setitem__, place, images)
                    if progress:
                        progress(rows_chunk.stop - first, n_slices)
                written.result()
    seconds = time.perf_counter() - start_time
    return {"center": center, "center_method": how, "slices": n_slices, "seconds": seconds,
            "slices_per_s": n_slices / seconds, "algorithm": options.algorithm, "output": str(output),
            "warnings": warnings}  # fmt: skip
