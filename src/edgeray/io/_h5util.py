"""Shared HDF5 helpers: atomic writes, compression choices, chunk sizes, counts validation."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

from edgeray.io.errors import EdgeRayFormatError

#: Raw detector dtypes a reader accepts (as stored; converted only on request).
SUPPORTED_COUNT_DTYPES = (
    np.uint8,
    np.uint16,
    np.uint32,
    np.int16,
    np.int32,
    np.int64,
    np.float32,
    np.float64,
)

COMPRESSIONS = ("none", "gzip", "lz4", "bitshuffle")


@contextlib.contextmanager
def atomic_path(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """A temporary hidden path beside ``path`` to write to (ending ``.tmp``, or ``.tmp.png`` with
    ``keep_suffix``, for writers that choose the format by the suffix); renamed to ``path`` only when the block
    succeeds. A crash or exception removes it and leaves any file at ``path`` untouched, so a half-written file
    never stands under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + (path.suffix if keep_suffix else ""),
                                    dir=path.parent)  # fmt: skip
    os.close(fd)
    try:
        yield Path(tmp_name)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_h5(path: str | Path) -> Iterator[h5py.File]:
    """Open a new HDF5 file under a temporary name; rename it to ``path`` only on success (:func:`atomic_path`)."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as h5:
        yield h5


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``text`` into ``path``, atomically (a reader sees the old file or the whole new one); returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def compression_kwargs(compression: str) -> dict:
    """h5py ``create_dataset`` keywords for one of :data:`COMPRESSIONS`.

    ``bitshuffle`` is bitshuffle + LZ4, as Eiger detectors write it; ``lz4`` is plain LZ4.
    """
    if compression == "none":
        return {}
    if compression == "gzip":
        return {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    if compression == "bitshuffle":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    raise ValueError(f"unknown compression {compression!r}; choose one of {', '.join(COMPRESSIONS)}")


def frames_per_chunk(frame_shape: tuple[int, ...], itemsize: int, target_bytes: int = 1 << 20) -> int:
    """How many frames of ``frame_shape`` make an HDF5 chunk of about ``target_bytes`` (>= 1)."""
    frame_bytes = int(np.prod(frame_shape)) * itemsize
    return max(1, target_bytes // max(1, frame_bytes))


def require_dataset(h5: h5py.File, name: str, path: Path, ndim: int | tuple[int, ...] | None = None) -> h5py.Dataset:
    """Return dataset ``name`` or raise :class:`EdgeRayFormatError` naming what is missing or misshapen."""
    if name not in h5:
        raise EdgeRayFormatError(path, "/" + name.lstrip("/"), "missing dataset")
    obj = h5[name]
    if not isinstance(obj, h5py.Dataset):
        raise EdgeRayFormatError(path, obj.name, "is a group, expected a dataset")
    allowed = (ndim,) if isinstance(ndim, int) else ndim
    if allowed is not None and obj.ndim not in allowed:
        want = " or ".join(str(n) for n in allowed)
        raise EdgeRayFormatError(path, obj.name, f"has {obj.ndim} dimensions {obj.shape}, expected {want}")
    return obj


def check_count_dtype(dataset: h5py.Dataset, path: Path) -> None:
    """Raise if ``dataset`` is not of a supported detector-count dtype."""
    if not any(dataset.dtype == np.dtype(t) for t in SUPPORTED_COUNT_DTYPES):
        supported = ", ".join(np.dtype(t).name for t in SUPPORTED_COUNT_DTYPES)
        raise EdgeRayFormatError(path, dataset.name, f"unsupported dtype {dataset.dtype}; supported: {supported}")


def count_problems(block: np.ndarray, first_index: int) -> list[str]:
    """Problems with a block of detector counts ``(n, H, W)``: NaN/inf and negative values.

    ``first_index`` is the index of ``block[0]`` in the file, so messages name real frame numbers.
    """
    problems = []
    if block.dtype.kind == "f":
        bad = ~np.isfinite(block).reshape(len(block), -1).all(axis=1)
        if bad.any():
            idx = first_index + np.flatnonzero(bad)
            problems.append(f"{bad.sum()} frame(s) hold NaN or inf, first at frame {idx[0]}")
    if block.dtype.kind in "if":
        neg = (block < 0).reshape(len(block), -1).any(axis=1)
        if neg.any():
            idx = first_index + np.flatnonzero(neg)
            problems.append(f"{neg.sum()} frame(s) hold negative counts, first at frame {idx[0]}")
    return problems


def read_scalar(h5: h5py.File, name: str, default: float | None = None) -> float | None:
    """A float from a scalar (or 1-element) dataset, or ``default`` when it is absent."""
    if name not in h5:
        return default
    return float(np.asarray(h5[name][()]).reshape(-1)[0])


_FILTER_NAMES = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32001: "blosc", 32004: "lz4", 32008: "bitshuffle"}


def describe_filters(dataset: h5py.Dataset) -> str:
    """The dataset's HDF5 filter pipeline in words, e.g. ``'shuffle+gzip'``; ``'none'`` when there is none."""
    plist = dataset.id.get_create_plist()
    names = []
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        names.append(_FILTER_NAMES.get(code, f"filter {code}"))
    return "+".join(names) if names else "none"
