"""The helpers of a scan at the edge: its mosaic, its live refinement and its continual learning, wired together.

When a scan starts (:meth:`ScanHelpers.scan_started`, on the inference's thread, before its first batch) it gets
its :class:`~edgeray.stream.mosaic.Mosaic` and, when on, a :class:`~edgeray.stream.refine.LiveRefiner` reading the
mosaic and a :class:`~edgeray.stream.learn.LiveLearner` taking the refinement's object as labels; a model the
learner swaps in makes the mosaic again (:meth:`ScanHelpers.reinvert`).
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import numpy as np
import torch

from edgeray.nn.checkpoint import save_model
from edgeray.stream.learn import LiveLearner
from edgeray.stream.mosaic import Mosaic
from edgeray.stream.protocol import object_pixel_size_m
from edgeray.stream.refine import LiveRefiner
from edgeray.stream.scan import ScanRun
from edgeray.stream.serving import LoadedModel, ModelHolder

log = logging.getLogger("edgeray.edge")


class ScanHelpers:
    """Makes each scan's mosaic, refiner and learner.

    Args:
        options: the service's :class:`~edgeray.stream.edge.EdgeOptions` (``refine``, ``refine_probe_file``, ``learn``,
            ``out``, ``max_batch``).
        models: the serving model (the learner swaps through it).
        lock: the service's lock over the mosaics.
        torch_threads: threads the refinement and learning may use after a scan's end.
    """

    def __init__(self, options, models: ModelHolder, lock: threading.Lock, torch_threads: int):
        self.options, self.models, self.lock, self.torch_threads = options, models, lock, torch_threads
        self.workers: list = []  # every refiner and learner made, so that a stopping service can end them
        self.stopped = False

    def stop_all(self) -> None:
        """End every refinement and learning now (each writes what it has); later ones start stopped."""
        self.stopped = True
        for worker in self.workers:
            worker.stop.set()

    def _keep(self, worker):
        if worker is not None:
            self.workers = [w for w in self.workers if not w.done.is_set()] + [worker]
            if self.stopped:
                worker.stop.set()
        return worker

    def scan_started(self, run: ScanRun, model: LoadedModel) -> None:
        """Give ``run`` its mosaic, refiner and learner (``model``: the serving one)."""
        run.mosaic = Mosaic(run.start.shape, object_pixel_size_m(run.start), model.weights)
        run.refiner = self._keep(self.make_refiner(run, model.probe))
        run.learner = self._keep(self.make_learner(run, model))

    def make_refiner(self, run: ScanRun, model_probe: torch.Tensor | None) -> LiveRefiner | None:
        """The scan's live refiner, when refinement is on and a probe is known (else a warning, and none)."""
        if self.options.refine is None:
            return None
        probe = model_probe
        if self.options.refine_probe_file is not None:
            from edgeray.sim.probes import probe_from_file

            probe = torch.from_numpy(probe_from_file(self.options.refine_probe_file, run.start.shape)[0])
        if probe is None or tuple(probe.shape) != tuple(run.start.shape):
            log.warning("scan %s: no refinement (the model carries no probe of %s; give --refine-probe)",
                        run.start.scan_id, run.start.shape)  # fmt: skip
            return None
        probe = probe / torch.linalg.vector_norm(probe)

        def mosaic():
            # The lock only for the references: the refinement runs at the lowest priority, and holding the lock
            # through a copy of the whole mosaic it could be descheduled with it, stalling the stitching. A grown
            # mosaic is a new pair of tensors, so these stay consistent with this origin; a patch added while
            # they are copied may be in one and not yet in the other, which only touches the refinement's seed.
            with self.lock:
                m = run.mosaic
                if m.origin_m is None:
                    return None, None, None, None
                numerator, coverage, origin_m, pixel_size_m = m.numerator, m.coverage, m.origin_m, m.pixel_size_m
            return numerator.clone(), coverage.clone(), origin_m.copy(), pixel_size_m.copy()

        def backlog() -> int:  # frames not yet in the mosaic; the writer's only once it lags by half the ring
            unwritten = run.published - run.ring.written
            return (run.published - run.stitched_upto) + (unwritten if unwritten > run.ring.capacity // 2 else 0)

        return LiveRefiner(run.start.shape, probe, self.options.refine, mosaic, backlog,
                           tail_threads=self.torch_threads).start()  # fmt: skip

    def make_learner(self, run: ScanRun, model) -> LiveLearner | None:
        """The scan's continual learner, when learning is on and the model is an edge model of the scan's frames
        (else a warning, and none)."""
        if self.options.learn is None:
            return None
        from edgeray.nn.checkpoint import load_model

        size = model.card["config"]["frame_size"]
        if model.kind != "edge" or tuple(run.start.shape) != (size, size):
            log.warning("scan %s: no learning (it needs an edge model of %s frames, the model is a %s of %d)",
                        run.start.scan_id, run.start.shape, model.kind, size)  # fmt: skip
            return None
        base_card = model.card
        learner: LiveLearner | None = None

        def labels(positions_m: np.ndarray) -> torch.Tensor | None:
            refiner, needed = run.refiner, self.options.learn.label_epochs
            if refiner is None or not needed or refiner.epochs < needed:
                return None
            from edgeray.nn.trainset import object_patches, relative_to_transmission

            with refiner.lock:
                if refiner.object is None:
                    return None
                positions_px = (positions_m - refiner.origin_m) / refiner.pixel_size_m
                patches = object_patches(refiner.object.numpy(), positions_px, run.start.shape)
                probe = None if refiner.probe is None else refiner.probe[0].numpy()
            # the refinement's amplitude scale drifts once it refines its probe: labels are relative to the mean
            # transmission, as the network's patches are
            return torch.from_numpy(relative_to_transmission(patches, probe))

        def swap(candidate, record: dict) -> bool:
            directory = Path(self.options.out) / "learned" / f"{run.start.scan_id}-{learner.swaps + 1}"
            card = {k: v for k, v in base_card.items() if k not in ("history", "evaluation")}
            card["learned_at_edge"] = {"scan_id": run.start.scan_id, "from": model.version, **record}
            save_model(directory, candidate, card)
            try:
                loaded = self.models.install(directory, {"source": "learned at the edge", "scan_id": run.start.scan_id,
                                                         "step": record["step"]})  # fmt: skip
            except (ValueError, OSError, RuntimeError) as error:
                log.error("scan %s: the learned model %s was refused: %s", run.start.scan_id, directory, error)
                return False
            if learner.complete:
                began = time.perf_counter()
                self.reinvert(run, loaded)
                record["reinvert_s"] = time.perf_counter() - began
            return True

        def backlog() -> int:
            return run.published - run.stitched_upto

        def network():  # loaded in the learner's own thread: the stream's start does not wait for it
            return load_model(model.model_dir, "cpu")[0]

        # after the scan's end the cores are shared with the refinement, when it runs (threads of the two beyond
        # the cores slow both)
        threads = max(1, self.torch_threads // 2) if run.refiner is not None else self.torch_threads
        learner = LiveLearner(network, run.start.shape, run.start.dtype, self.options.learn, swap, labels, backlog,
                              tail_threads=threads)  # fmt: skip
        return learner.start()

    def reinvert(self, run: ScanRun, model) -> None:
        """Make the scan's mosaic again from every frame so far with ``model`` (a swapped-in one): most frames
        outside the lock, the last few under it, so the stitching waits only for those."""
        learner = run.learner
        mosaic = Mosaic(run.start.shape, object_pixel_size_m(run.start), model.weights)
        with self.lock:  # on the old mosaic's grid, which the live refinement's object follows
            old = run.mosaic
            mosaic.origin_m = None if old.origin_m is None else old.origin_m.copy()
            mosaic.numerator, mosaic.coverage = torch.zeros_like(old.numerator), torch.zeros_like(old.coverage)
        done = 0
        while True:
            with self.lock:
                stop = learner.stored
                if stop - done <= self.options.max_batch:
                    self.add_inverted(mosaic, model, learner, done, stop)
                    run.mosaic = mosaic
                    return
            self.add_inverted(mosaic, model, learner, done, stop)
            done = stop

    @staticmethod
    def add_inverted(mosaic: Mosaic, model, learner: LiveLearner, first: int, stop: int, batch: int = 512) -> None:
        for start in range(first, stop, batch):
            counts, positions = learner.kept_at(np.arange(start, min(start + batch, stop)))
            amplitude, phase = model.runtime(counts, learner.scale)
            mosaic.add_polar(amplitude, phase, positions)
