"""The edge's network: load a model for raw counts, check a candidate on held-out frames, follow a registry.

A :class:`ModelHolder` keeps the runtime the inference stage calls (``runtime(counts, scale)``, ONNX Runtime on the
CPU with the normalization inside the graph), the card, the stitching weights and the model's probe, and swaps
them as one (under its lock) when the registry's ``CURRENT`` version changes and passes validation.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from edgeray.nn.checkpoint import SHIPPED, load_model, weights_digest
from edgeray.nn.export import CountsRuntime
from edgeray.nn.group import AloneGroup, GroupNet
from edgeray.nn.infer import stitch_weights

log = logging.getLogger("edgeray.edge")


def model_version(model_dir: Path | None) -> str:
    """``<folder name>@<first 8 hex digits of the weights' SHA-256>``: which network inverted a frame."""
    directory = Path(model_dir) if model_dir is not None else SHIPPED
    return f"{directory.name}@{weights_digest(directory)[:8]}"


class LoadedModel:
    """One model ready for the stream: ``runtime``, ``card``, ``weights`` (H, W), ``probe`` (H, W) or None,
    ``version``."""

    def __init__(self, model_dir: Path | None, dtype: str = "uint16", threads: int = 1):
        self.model_dir = model_dir
        model, self.card = load_model(model_dir, "cpu")
        if isinstance(model, GroupNet):
            log.info("%s: a group model; the edge inverts each frame as a group of one", model_dir)
            model = AloneGroup(model)
        size = self.card["config"]["frame_size"]
        self.weights = stitch_weights(model, (size, size))
        self.probe = model.complex_probe() if hasattr(model, "complex_probe") else None
        self.version = model_version(model_dir)
        self.dtype = dtype
        # exported beside no model (its folder may be read-only); the session keeps the graph once it is built
        with tempfile.TemporaryDirectory(prefix="edgeray-model-") as folder:
            self.runtime = CountsRuntime(model, Path(folder) / f"model.{dtype}.onnx", size, dtype, threads)
        self.kind = self.card["config"]["kind"]

    def validate(self, counts: np.ndarray | None, scale: float) -> None:
        """Raise ValueError unless the model inverts ``counts`` (the last frames seen; synthetic counts when None)
        into finite patches of the right shape (and range, for the bounded kinds)."""
        size = self.card["config"]["frame_size"]
        if counts is None or counts.shape[-1] != size or str(counts.dtype) != self.dtype:
            generator = np.random.default_rng(0)
            counts = generator.poisson(20.0, (8, size, size)).astype(self.dtype)
            scale = 20.0
        amplitude, phase = self.runtime(counts, scale)
        expected = (len(counts), 1, size, size)
        if tuple(amplitude.shape) != expected or tuple(phase.shape) != expected:
            raise ValueError(f"outputs {tuple(amplitude.shape)} for inputs {tuple(counts.shape)}")
        if not (torch.isfinite(amplitude).all() and torch.isfinite(phase).all()):
            raise ValueError("non-finite outputs on the validation batch")
        if amplitude.min() < 0:
            raise ValueError("negative amplitudes on the validation batch")
        if self.kind not in ("edge", "group") and (amplitude.max() > 1 or phase.abs().max() > np.pi + 1e-4):
            raise ValueError("outputs outside the amplitude [0, 1] / phase [-pi, pi] ranges")


class ModelHolder:
    """The current model, swapped atomically; optionally following a registry in a thread of its own.

    Args:
        model_dir: the model (None: the shipped one); with ``registry`` it is published as the first version if
            the registry is empty.
        dtype: the frames' dtype (the runtime takes raw counts of it); threads: ONNX Runtime's threads.
    """

    def __init__(self, model_dir: Path | None, registry: Path | None = None, dtype: str = "uint16", threads: int = 1,
                 poll_s: float = 0.5):  # fmt: skip
        self.dtype, self.threads, self.poll_s = dtype, threads, poll_s
        self.lock = threading.Lock()
        self.registry = None
        self.rejected: dict[str, str] = {}  # registry version -> why it was not swapped in
        self.swaps: list[dict] = []
        self.validation: tuple[np.ndarray, float] | None = None  # the last frames inverted, and their scale
        if registry is not None:
            from edgeray.nn.registry import Registry

            self.registry = Registry(registry)
            if self.registry.current() is None:
                self.registry.publish(model_dir or SHIPPED, {"source": "initial model of the edge service"})
            self.registry_version = self.registry.current()
            model_dir = self.registry.path(self.registry_version)
        self.current = LoadedModel(model_dir, dtype, threads)

    def get(self) -> LoadedModel:
        with self.lock:
            return self.current

    def for_dtype(self, dtype: str) -> LoadedModel:
        """The current model, reloaded for frames of ``dtype`` when the stream's dtype changed."""
        with self.lock:
            if self.current.dtype != dtype:
                self.current = LoadedModel(self.current.model_dir, dtype, self.threads)
                self.dtype = dtype
            return self.current

    def watch(self, finished: threading.Event) -> None:
        """Swap to the registry's ``CURRENT`` when it changes and passes validation (else keep the old); until
        ``finished``."""
        while not finished.wait(self.poll_s):
            version = self.registry.current()
            if version is None or version == self.registry_version or version in self.rejected:
                continue
            started = time.perf_counter()
            try:
                model_dir = self.registry.path(version)
                if model_dir.resolve() == Path(self.registry.root / self.registry_version).resolve():
                    continue
                candidate = LoadedModel(model_dir, self.dtype, self.threads)
                self._check(candidate)
            except (ValueError, OSError, RuntimeError) as error:
                self.rejected[version] = str(error)
                log.error("model %s rejected, %s stays: %s", version, self.current.version, error)
                continue
            self._install(candidate, {"registry_version": version}, started)
            self.registry_version = version

    def _check(self, candidate: LoadedModel) -> None:
        """Raise ValueError unless ``candidate`` takes the stream's frames and inverts the last ones seen."""
        size, ours = candidate.card["config"]["frame_size"], self.current.card["config"]["frame_size"]
        if size != ours:
            raise ValueError(f"frame size {size}, the stream's model takes {ours}")
        counts, scale = self.validation or (None, 1.0)
        candidate.validate(counts, scale)

    def _install(self, candidate: LoadedModel, record: dict, started: float) -> None:
        previous = self.current.version
        with self.lock:  # the inference stage picks up the whole model between two batches
            self.current = candidate
        self.swaps.append({"from": previous, "to": candidate.version, **record, "unix_s": time.time(),
                           "load_s": time.perf_counter() - started})  # fmt: skip
        log.info("model swapped: %s -> %s (%.2f s to load and validate)", previous, candidate.version,
                 time.perf_counter() - started)  # fmt: skip

    def install(self, model_dir: Path, record: dict) -> LoadedModel:
        """Swap to the model in ``model_dir`` (one learned at the edge) once it passes validation; ``record`` goes
        into the swap's entry. Raises ValueError (the current model stays) when it does not pass."""
        started = time.perf_counter()
        candidate = LoadedModel(model_dir, self.dtype, self.threads)
        self._check(candidate)
        self._install(candidate, record, started)
        return candidate
