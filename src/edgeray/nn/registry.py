"""Model registry: a directory of numbered model versions and a ``CURRENT`` pointer, both written atomically.

Layout: ``root/v0001/``, ``root/v0002/``, ... (each a model directory: ``model.safetensors``, ``model.json``, and
``provenance.json``: source scans, engine, epochs, metrics, time) and ``root/CURRENT`` (one line: the version
the edge should run). A version directory appears under its final name only when complete (copied under a
temporary name, then renamed); ``CURRENT`` is replaced in one rename. Nothing is ever deleted: every version stays
with its provenance.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

POINTER = "CURRENT"


class Registry:
    """The registry at ``root`` (created if missing)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def versions(self) -> list[str]:
        """Published versions, oldest first."""
        return sorted(p.name for p in self.root.glob("v[0-9][0-9][0-9][0-9]*") if p.is_dir())

    def path(self, version: str) -> Path:
        path = self.root / version
        if not path.is_dir():
            raise FileNotFoundError(f"{self.root}: no model version {version!r} (have: {', '.join(self.versions())})")
        return path

    def current(self) -> str | None:
        """The version ``CURRENT`` names, or None before the first publication."""
        pointer = self.root / POINTER
        return pointer.read_text().strip() if pointer.exists() else None

    def provenance(self, version: str) -> dict:
        file = self.path(version) / "provenance.json"
        return json.loads(file.read_text()) if file.exists() else {}

    def publish(self, model_dir: str | Path, provenance: dict | None = None, make_current: bool = True) -> str:
        """Copy ``model_dir`` in as the next version (with ``provenance``) and, by default, point ``CURRENT`` at it.

        Returns the new version's name.
        """
        model_dir = Path(model_dir)
        if not (model_dir / "model.safetensors").exists() or not (model_dir / "model.json").exists():
            raise ValueError(f"{model_dir}: not a model directory (model.safetensors and model.json expected)")
        staging = Path(tempfile.mkdtemp(prefix=".publish-", dir=self.root))
        for name in ("model.safetensors", "model.json", "MODEL_CARD.md", "loss.png"):
            if (model_dir / name).exists():
                shutil.copy2(model_dir / name, staging / name)
        weights_sha256 = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
        # names and checksums only: a record never carries the publishing machine's folders
        record = {"published_unix_s": time.time(), "source": model_dir.name, "weights_sha256": weights_sha256,
                  **(provenance or {})}  # fmt: skip
        (staging / "provenance.json").write_text(json.dumps(record, indent=2, default=str))
        while True:  # the next free number; a concurrent publisher makes the rename fail and we take the next
            existing = self.versions()
            number = int(existing[-1][1:]) + 1 if existing else 1
            version = f"v{number:04d}"
            try:
                os.rename(staging, self.root / version)
                break
            except OSError:
                if not (self.root / version).exists():
                    raise
        if make_current:
            self.set_current(version)
        return version

    def set_current(self, version: str) -> None:
        """Point ``CURRENT`` at ``version`` (one atomic rename)."""
        self.path(version)
        handle, temporary = tempfile.mkstemp(prefix=".current-", dir=self.root)
        with os.fdopen(handle, "w") as file:
            file.write(version + "\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, self.root / POINTER)
