"""Scans served by a Tiled server (the data service of Bluesky facilities), read as the files they mirror.

A Tiled node whose arrays follow the names of one of EdgeRay's formats (CXI ptychography, Data Exchange or NXtomo
tomography; an HDF5 file served by ``tiled serve directory``, or a run written with those names) is copied, block by
block, into a local HDF5 file of the same layout, which the file readers then read with all their checks. A node
EdgeRay's edge published (:mod:`edgeray.stream.tiled_publish`) names its run file instead: when that file is on this
machine it is read directly.

The API key comes from ``TILED_API_KEY``, as with Tiled's own clients.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

#: links a format makes inside its file (served by Tiled as copies): link path pattern -> target path
LINKS = (
    (re.compile(r"^(entry_\d+)/data_\d+/data$"), r"\1/instrument_1/detector_1/data"),  # CXI
    (re.compile(r"^([^/]+)/data/data$"), r"\1/instrument/detector/data"),  # NXtomo
    (re.compile(r"^([^/]+)/data/image_key$"), r"\1/instrument/detector/image_key"),
    (re.compile(r"^([^/]+)/data/rotation_angle$"), r"\1/sample/rotation_angle"),
)
BLOCK_BYTES = 32 << 20  # bytes fetched per request of a large array


def is_tiled_uri(source: str | Path) -> bool:
    """Whether ``source`` names a Tiled node (an ``http://`` or ``https://`` URI) rather than a file."""
    return str(source).startswith(("http://", "https://"))


def api_key() -> str | None:
    """The API key Tiled's clients use: ``TILED_API_KEY``, or None."""
    return os.environ.get("TILED_API_KEY") or None


def connect(uri: str, key: str | None = None, timeout_s: float | None = None):
    """Tiled's client for the node at ``uri`` (``http://HOST:PORT/api/v1/metadata/PATH``); ``timeout_s``: the longest
    one request may take (None: the client's default).

    Raises:
        ValueError: the server cannot be reached, refuses the key, or has no such node (the message says which).
    """
    try:
        import httpx
        from tiled.client import from_uri
    except ImportError as error:
        raise ValueError(f"{uri}: Tiled's client is not installed: pip install 'edgeray[tiled]'") from error
    try:
        timeout = None if timeout_s is None else httpx.Timeout(timeout_s)
        return from_uri(uri, api_key=key, timeout=timeout)
    except httpx.HTTPStatusError as error:
        status = error.response.status_code
        if status in (401, 403):
            raise ValueError(f"{uri}: the Tiled server refused the API key (status {status}); set TILED_API_KEY "
                             "to a key it accepts") from error  # fmt: skip
        if status == 404:
            raise ValueError(f"{uri}: the Tiled server has no such node") from error
        raise ValueError(f"{uri}: the Tiled server answered {status}: {error}") from error
    except httpx.TransportError as error:
        raise ValueError(f"{uri}: cannot reach the Tiled server ({error})") from error
    except RuntimeError as error:  # Tiled's client: "This server requires API key authentication."
        raise ValueError(f"{uri}: {error} Set TILED_API_KEY.") from error


def _attrs(metadata) -> dict:
    """The metadata entries HDF5 attributes can hold (numbers, strings, flat lists of them)."""
    kept = {}
    for name, value in dict(metadata).items():
        if isinstance(value, (str, bytes, int, float, bool, np.number)):
            kept[name] = value
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
            kept[name] = np.array(value, dtype=h5py.string_dtype())
        elif isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) for v in value):
            kept[name] = np.asarray(value)
    return kept


def _arrays(node, prefix: str = "") -> tuple[list, list]:
    """``(groups, arrays)`` below ``node``: ``(path, metadata)`` of each container and ``(path, client)`` of each
    array, parents first."""
    groups, arrays = [], []
    for name, child in node.items():
        path = f"{prefix}{name}"
        if child.structure_family == "container":
            groups.append((path, child.metadata))
            below = _arrays(child, path + "/")
            groups += below[0]
            arrays += below[1]
        elif child.structure_family == "array":
            arrays.append((path, child))
    return groups, arrays


def _link_target(path: str, shapes: dict) -> str | None:
    """The array ``path`` is a format's link to (with the same shape and dtype), or None."""
    for pattern, target in LINKS:
        if pattern.match(path):
            linked = pattern.sub(target, path)
            if linked != path and linked in shapes and shapes[linked] == shapes[path]:
                return linked
    return None


def _copy_array(client, h5: h5py.File, path: str, progress: Callable[[int], None]) -> None:
    """One array into ``h5[path]``, in blocks of rows; a 1-element array (how Tiled serves HDF5 scalars) becomes a
    scalar dataset."""
    shape, dtype = tuple(client.shape), np.dtype(client.dtype)
    if shape == (1,):
        value = np.asarray(client.read())[0]
        h5.create_dataset(path, data=value.decode() if isinstance(value, bytes) else value)
        progress(dtype.itemsize)
        return
    if dtype.kind == "U":  # HDF5 holds variable-length UTF-8, not numpy's fixed-width unicode
        h5.create_dataset(path, data=np.asarray(client.read()).astype(object), dtype=h5py.string_dtype())
        return
    dataset = h5.create_dataset(path, shape=shape, dtype=dtype)
    if not shape or 0 in shape:
        dataset[()] = np.asarray(client.read())
        return
    row_bytes = max(dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64)), 1)
    rows = max(1, BLOCK_BYTES // row_bytes)
    for start in range(0, shape[0], rows):
        block = np.asarray(client[start : start + rows])
        dataset[start : start + len(block)] = block
        progress(block.nbytes)


def local_file(uri: str, folder: Path, key: str | None = None,
               progress: Callable[[int, int], None] | None = None) -> Path:  # fmt: skip
    """A local HDF5 file holding the run at ``uri``: the run file an EdgeRay edge's scan container names
    (``run_file`` in its metadata) when that file is on this machine, else a copy written into ``folder``
    (``<node name>.h5``: groups, arrays and their metadata as attributes; a format's links made as soft links, not
    copied twice).

    Args:
        key: the API key (None: ``TILED_API_KEY``).
        progress: called with ``(bytes copied, bytes in all)`` as blocks arrive.

    Raises:
        ValueError: the node cannot be reached or read, or is an array, not a run's container.
    """
    node = connect(uri, key if key is not None else api_key())
    if node.structure_family != "container":
        raise ValueError(f"{uri}: a Tiled {node.structure_family}, not a run's container (give the run's node)")
    run_file = dict(node.metadata).get("run_file")
    if run_file and Path(run_file).is_file():
        return Path(run_file)
    groups, arrays = _arrays(node)
    if not arrays:
        raise ValueError(f"{uri}: the Tiled container holds no arrays")
    shapes = {path: (tuple(client.shape), str(client.dtype)) for path, client in arrays}
    links = {path: target for path, _ in arrays if (target := _link_target(path, shapes)) is not None}
    total = sum(int(np.prod(shapes[p][0], dtype=np.int64)) * np.dtype(shapes[p][1]).itemsize for p, _ in arrays
                if p not in links)  # fmt: skip
    done = 0

    def advance(nbytes: int) -> None:
        nonlocal done
        done += nbytes
        if progress is not None:
            progress(min(done, total), total)

    name = node.item["id"] if node.item.get("id") else "tiled"
    destination = Path(folder) / f"{name}.h5"
    partial = destination.with_name(destination.name + ".part")
    with h5py.File(partial, "w") as h5:
        h5.attrs.update(_attrs(node.metadata))
        h5.attrs["tiled_uri"] = uri
        for path, metadata in groups:
            h5.require_group(path).attrs.update(_attrs(metadata))
        for path, client in arrays:
            if path in links:
                continue
            _copy_array(client, h5, path, advance)
            h5[path].attrs.update(_attrs(client.metadata))
        for path, target in links.items():
            h5[path] = h5py.SoftLink("/" + target)
    partial.replace(destination)
    return destination
