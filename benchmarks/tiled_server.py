"""A real Tiled server on 127.0.0.1 for the tests and benchmarks: ``tiled serve`` in a process of its own.

``catalog`` mode serves a writable catalog (SQLite, array files and an SQL table store for Bluesky's event streams,
in ``folder``), kept across a restart on the same port; ``directory`` mode serves the HDF5 files of a folder
(``.cxi`` included) read-only. Both ask for ``api_key``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

HDF5_EXTENSIONS = (".cxi", ".nx", ".nxs")  # HDF5 files Tiled does not know by their extension


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tiled_command() -> str:
    """The ``tiled`` executable beside this Python (the virtual environment's), else on PATH."""
    beside = Path(sys.executable).with_name("tiled")
    found = str(beside) if beside.exists() else shutil.which("tiled")
    if found is None:
        raise FileNotFoundError("the tiled command is not installed: pip install 'tiled[server]'")
    return found


class TiledServer:
    """``with TiledServer(folder, "key") as server:`` ... ``server.uri``; :meth:`kill` and :meth:`start` again.

    Args:
        folder: the catalog's database and data (catalog mode), and the server's log.
        api_key: the single key the server accepts.
        directory: serve this folder's files read-only instead of a writable catalog.
        nice: the server's scheduling niceness (a server on another host, on a machine with few cores).
    """

    def __init__(self, folder: Path, api_key: str, directory: Path | None = None, nice: int = 0):
        self.folder, self.api_key, self.directory, self.nice = Path(folder), api_key, directory, nice
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.started = 0

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}/api/v1/metadata/"

    def start(self, timeout_s: float = 90.0) -> TiledServer:
        common = ["--api-key", self.api_key, "--host", "127.0.0.1", "--port", str(self.port)]
        if self.directory is not None:
            command = [tiled_command(), "serve", "directory", str(self.directory)]
            command += [arg for ext in HDF5_EXTENSIONS for arg in ("--ext", f"{ext}=application/x-hdf5")]
        else:
            database = self.folder / "catalog.db"
            command = [
                tiled_command(),
                "serve",
                "catalog",
                str(database),
                "-w",
                str(self.folder / "data"),
                "-w",
                f"sqlite:///{self.folder / 'tables.db'}",
            ]  # files for arrays, SQL for Bluesky's tables
            if not database.exists():
                command.append("--init")
        log = (self.folder / f"server-{self.started}.log").open("w")
        self.started += 1
        prefix = ["nice", "-n", str(self.nice)] if self.nice else []
        self.process = subprocess.Popen(prefix + command + common, stdout=log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "TILED_API_KEY": ""})  # fmt: skip
        deadline = time.monotonic() + timeout_s
        try:
            while not self._answers():
                if self.process.poll() is not None:
                    raise RuntimeError(f"tiled serve exited with {self.process.returncode}; see {log.name}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"tiled serve did not answer within {timeout_s:g} s; see {log.name}")
                time.sleep(0.2)
        except BaseException:
            self.kill()  # never left running behind a failed start
            raise
        return self

    def _answers(self) -> bool:
        """Whether the server is up: it has indexed a served directory, or answers at all."""
        import httpx

        try:
            reply = httpx.get(
                f"http://127.0.0.1:{self.port}/api/v1/search/",
                headers={"Authorization": f"Apikey {self.api_key}"},
                timeout=2,
            )
        except httpx.TransportError:
            return False
        if reply.status_code != 200:
            return False
        if self.directory is None:
            return True
        served = {path.stem for path in Path(self.directory).iterdir() if path.suffix in (".h5", *HDF5_EXTENSIONS)}
        return served <= {item["id"] for item in reply.json()["data"]}

    def kill(self) -> None:
        """End the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> TiledServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
