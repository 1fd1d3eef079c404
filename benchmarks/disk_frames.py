"""A scan larger than memory: LSQML reading its frames from the CXI file per mini-batch, beside the disk itself.

Writes a CXI scan of ``--gigabytes`` of raw uint16 frames (128 x 128; quick: 1 GB, full: 30 GB, more than this
machine's 24 GB of memory). The frames repeat 512 simulated ones on a raster of positions: the image is meaningless,
the bytes, the object's size and the work per frame are those of a real scan of that size. Then, the page cache
dropped for the file before each:

- ``disk``: the peer, the file's frame bytes read sequentially (64 MiB reads): the disk's rate for those bytes;
- ``edgeray on disk``: ``edgeray ptycho reconstruct --epochs 1`` (LSQML, ``--frames-on-disk auto``) as a user runs
  it, in its own process: seconds per epoch, peak resident memory, bytes read, and the epoch's time over the disk's
  sequential time for the same bytes (target: <= 1.5; resident <= 4 GB);
- ``edgeray in memory`` and ``edgeray on disk (same frames)``: the first frames that fit in memory, reconstructed
  both ways: what reading per batch costs over compute alone (the overlap).

Prints one JSON object per line.

    python benchmarks/disk_frames.py [--quick] [--gigabytes G] [--folder DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from edgeray.io.cxi import DETECTOR, FRAMES, FRAMES_LINK, TRANSLATION, write_geometry
from edgeray.sim import PtychoSimConfig, simulate_ptycho

FRAME = 128


def write_big_scan(path: Path, gigabytes: float, step_px: float = 6.0) -> int:
    """A CXI file of about ``gigabytes`` of raw uint16 frames (one frame a chunk); returns the frame count."""
    base = simulate_ptycho(PtychoSimConfig(n_positions=512, frame_size=FRAME, seed=11))
    n = int(gigabytes * 1e9 // (FRAME * FRAME * 2))
    side = int(np.ceil(np.sqrt(n)))
    rows, cols = np.divmod(np.arange(n), side)
    pixel = np.asarray(base.geometry.object_pixel_size_m)
    positions_m = np.stack([rows, cols], axis=1) * step_px * pixel
    block = 8192
    with h5py.File(path, "w") as h5:
        h5["cxi_version"] = 150
        data = h5.create_group(DETECTOR).create_dataset("data", (n, FRAME, FRAME), np.uint16, chunks=(1, FRAME, FRAME))
        frames = base.frames.astype(np.uint16)
        for start in range(0, n, block):
            stop = min(start + block, n)
            data[start:stop] = frames[np.arange(start, stop) % len(frames)]
        h5.create_group("entry_1/data_1")
        h5[FRAMES_LINK] = h5py.SoftLink("/" + FRAMES)
        write_geometry(h5, base.geometry)
        translation = np.zeros((n, 3))
        translation[:, 0], translation[:, 1] = -positions_m[:, 1], -positions_m[:, 0]
        h5[TRANSLATION] = translation
        h5[TRANSLATION].attrs["units"] = "m"
    return n


def drop_cache(path: Path) -> None:
    """The file's pages out of the page cache (they are clean once synced), so the next reads come from the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_read(path: Path) -> dict:
    """The frames' bytes read in file order, 64 MiB at a time."""
    with h5py.File(path, "r") as h5:
        data = h5[FRAMES]
        n = data.shape[0]
        offsets = []
        data.id.chunk_iter(lambda info: offsets.append(info.byte_offset))
        first, nbytes = min(offsets), n * data.dtype.itemsize * FRAME * FRAME
    drop_cache(path)
    buffer = bytearray(64 << 20)
    fd = os.open(path, os.O_RDONLY)
    started = time.perf_counter()
    try:
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [memoryview(buffer)[: min(len(buffer), nbytes - done)]], first + done)
            if got == 0:
                break
            done += got
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    return {"case": "disk", "bytes": done, "seconds": seconds, "gb_per_s": done / seconds / 1e9}


def reconstruct(path: Path, out: Path, mode: str, frames: int | None = None) -> dict:
    """``edgeray ptycho reconstruct`` in a process of its own: its summary, wall seconds and peak resident memory."""
    source = path
    if frames is not None:  # the first `frames` frames as a file of their own (raw, like the big one)
        source = out.with_name(f"first{frames}.cxi")
        if not source.exists():
            from edgeray.io import CXIFile, write_cxi

            with CXIFile(path) as cxi:
                scan = cxi.lazy()
                head = type(scan)(cxi.read_frames(0, frames), scan.positions_m[:frames], scan.geometry)
            write_cxi(source, head, compression="none")
    drop_cache(source)
    started = time.perf_counter()
    arguments = ["ptycho", "reconstruct", str(source), "-o", str(out), "--epochs", "1", "--engine", "lsqml",
                 "--frames-on-disk", mode]  # fmt: skip
    result = subprocess.run([sys.executable, "-c", MEASURED, *arguments], check=True, capture_output=True, text=True)
    wall = time.perf_counter() - started
    peak_kib = json.loads(result.stderr.strip().splitlines()[-1])["max_rss_kib"]
    summary = json.loads(out.with_suffix(".json").read_text())
    return {"frames": round(summary["frames_per_s"] * summary["seconds"]), "seconds_per_epoch": summary["seconds"],
            "command_seconds": wall, "frames_per_s": summary["frames_per_s"],
            "frames_on_disk": summary["frames_on_disk"], "bytes_read": summary["bytes_read"],
            "max_rss_gb": peak_kib * 1024 / 1e9}  # fmt: skip


#: the command run in-process, its own peak resident memory printed last on stderr
MEASURED = (
    "import json, resource, sys\n"
    "from edgeray.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "print(json.dumps({'max_rss_kib': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}), file=sys.stderr)\n"
    "sys.exit(status)\n"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 GB instead of 30 GB")
    parser.add_argument("--gigabytes", type=float, default=None, help="size of the scan's frames, GB")
    parser.add_argument("--folder", type=Path, default=None, help="where the scan is written (default: a temp dir)")
    args = parser.parse_args()
    gigabytes = args.gigabytes or (1.0 if args.quick else 30.0)
    with tempfile.TemporaryDirectory(dir=args.folder) as folder:
        path = Path(folder) / "big.cxi"
        started = time.perf_counter()
        n = write_big_scan(path, gigabytes)
        print(json.dumps({"case": "written", "frames": n, "frame": [FRAME, FRAME], "gigabytes": gigabytes,
                          "seconds": time.perf_counter() - started}), flush=True)  # fmt: skip
        disk = sequential_read(path)
        print(json.dumps(disk), flush=True)
        on_disk = reconstruct(path, Path(folder) / "disk.h5", "auto")
        on_disk.update(case="edgeray on disk", ratio_to_disk_read=on_disk["seconds_per_epoch"] / disk["seconds"],
                       memory_gb=os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9)  # fmt: skip
        print(json.dumps(on_disk), flush=True)
        fits = min(n, 20000)
        memory = reconstruct(path, Path(folder) / "memory.h5", "never", fits)
        memory["case"] = "edgeray in memory"
        print(json.dumps(memory), flush=True)
        same = reconstruct(path, Path(folder) / "same.h5", "always", fits)
        same.update(
            case="edgeray on disk (same frames)", overhead=same["seconds_per_epoch"] / memory["seconds_per_epoch"]
        )
        print(json.dumps(same), flush=True)


if __name__ == "__main__":
    main()
