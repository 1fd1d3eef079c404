"""The edge's finisher: each ended scan's summary, product, pictures, and the wait for its refinement and learning.

It runs on a thread of its own, fed by the stitcher, so no scan's end (waiting for the writer to close the run file,
reading its positions back, writing the product and its preview) holds a frame of the next scan; previews are drawn
in a process of their own (drawing holds the interpreter for long). At the end of a scan it writes, in ``out/``:
``<scan>_product.h5`` (the mosaic as a product), ``<scan>.png`` and ``<scan>.json`` (the summary: counts, rates,
latency from arrival to in-mosaic, each stage's busy fraction and the highest rate the edge could have kept).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
from pathlib import Path

import numpy as np

from edgeray.io import CXIFile, Product, write_product
from edgeray.io._h5util import write_text_atomic
from edgeray.stream.pictures import Pictures, draw_preview
from edgeray.stream.protocol import geometry_of
from edgeray.stream.scan import ScanEnded, ScanRun, latency_profile
from edgeray.stream.serving import ModelHolder

log = logging.getLogger("edgeray.edge")


def frame_counts(run: ScanRun) -> dict:
    """A scan's frames expected, received, written, inverted and refused, for its summary."""
    return {
        "frames_expected": run.expected if run.expected is not None else run.start.n_frames,
        "frames_received": run.received,
        "frames_written": run.written,
        "frames_inferred": run.stitched,
        "frames_invalid": run.invalid,
    }


class Finisher:
    """The finishing stage; :meth:`run` is its thread.

    Args:
        options: the service's :class:`~edgeray.stream.edge.EdgeOptions` (``out``, ``preview``, ``scans``,
            ``max_batch``, ``max_wait_ms``).
        to_finish: in: :class:`ScanEnded`, then :class:`~edgeray.stream.scan.Stop`.
        models: the serving model (its version and swaps go into summaries).
        lock: the service's lock over the mosaics and ``summaries``.
        stopping: set once ``options.scans`` scans are summarized; finished: set when the service has ended.
    """

    def __init__(self, options, to_finish: queue.Queue, models: ModelHolder, lock: threading.Lock,
                 stopping: threading.Event, finished: threading.Event):  # fmt: skip
        self.options, self.to_finish, self.models, self.lock = options, to_finish, models, lock
        self.stopping, self.finished = stopping, finished
        self.summaries: list[dict] = []
        self.on_summary = None  # called with (summary, its file) once a scan's summary is written (Tiled)
        self.helpers: list[threading.Thread] = []  # scans whose refinement or learning still runs
        self.pictures = None
        if options.preview:
            self.pictures = Pictures()

    def run(self) -> None:
        """The finisher's thread: ended scans' summaries, products and pictures, in order; the service's end once
        every scan's refinement and learning are done."""
        while isinstance(message := self.to_finish.get(), ScanEnded):
            try:
                self.finish(message.run)
            except Exception as error:  # a scan that cannot be summarized must not stop the next ones being
                log.exception("scan %s: its summary or products could not be written", message.run.start.scan_id)
                self.record_failure(message.run, "finisher", error)
        for helper in self.helpers:
            helper.join()
        self.finished.set()

    def close(self) -> None:
        if self.pictures is not None:
            self.pictures.close()

    def record_failure(self, run: ScanRun, stage: str, error: BaseException) -> None:
        """A scan whose summary could not be made: an error summary with its counts and the failure named (what
        was written stays written), so the scan is counted and the service goes on."""
        run.fail(stage, error)
        paths = [part.get("path", part["requested"]) for part in run.parts]
        summary = {
            "scan_id": run.start.scan_id,
            "complete": False,
            **frame_counts(run),
            "network_image": run.no_network,
            "errors": run.errors,
            "writer_errors": run.writer_errors,
            "files": {"raw": paths[0] if paths else None},
        }
        try:
            self.record(summary, Path(self.options.out) / f"{Path(paths[0]).stem if paths else run.start.scan_id}.json")
        except Exception:
            log.exception("scan %s: not even its error summary could be written", run.start.scan_id)
            with self.lock:
                self.summaries.append(summary)
        run.ring.close()

    def record(self, summary: dict, path: Path) -> None:
        """Write a scan's summary and count it (the service stops after ``options.scans`` of them)."""
        write_text_atomic(path, json.dumps(summary, indent=2))
        if self.on_summary is not None:
            self.on_summary(summary, path)
        with self.lock:
            self.summaries.append(summary)
        if self.options.scans is not None and len(self.summaries) >= self.options.scans:
            self.stopping.set()

    def finish(self, run: ScanRun) -> None:
        """Write the product, preview and summary of an ended scan."""
        if not run.closed.wait(60):
            run.writer_errors.append("the run-file writer did not close the file within 60 s")
        scan_id = run.start.scan_id
        seconds = max((run.last_arrival_ns - run.started_perf_ns) / 1e9, 1e-9)
        latencies = run.latencies_ms[: run.stitched].astype(np.float64)
        paths = [part.get("path", part["requested"]) for part in run.parts]
        files = {"raw": paths[0] if paths else None}
        if len(paths) > 1:
            files["raw_parts"] = paths
        if run.mosaic is not None and run.mosaic.n_patches and run.no_network is None:
            files.update(self.write_product(run))
        rate = run.received / seconds if run.received > 1 else 0.0
        busy = {stage: value / seconds for stage, value in run.busy_s.items()}
        cpu = {stage: value / seconds for stage, value in run.cpu_s.items()}
        cores = os.cpu_count() or 1
        # the highest rate the stream's own CPU time allows: no stage above one core, all of them within the
        # machine's cores (wall busy time would count waiting for a core as work, on a loaded machine)
        load = max(max(cpu.values()), sum(cpu.values()) / cores)
        summary = {
            "scan_id": scan_id,
            "complete": run.complete,
            **frame_counts(run),
            "frames_duplicate": run.duplicates,
            "frames_dropped": run.dropped,
            "frames_not_inverted": run.not_inverted,
            "spill_peak_frames": run.spill_peak_frames,
            "writer_errors": run.writer_errors,
            "seconds": seconds,
            "frames_per_s": rate,
            "latency_ms_p50": float(np.percentile(latencies, 50)) if latencies.size else None,
            "latency_ms_p99": float(np.percentile(latencies, 99)) if latencies.size else None,
            "latency_ms_max": float(latencies.max()) if latencies.size else None,
            "latency_ms_p99_per_s": latency_profile(latencies, seconds),
            "stage_busy_fraction": busy,
            "stage_cpu_fraction": cpu,
            "stream_cpu_cores": sum(cpu.values()),
            "max_rate_hz": rate / max(load, 1e-9) if rate else None,
            "model_version": self.models.get().version,
            "model_versions": run.version_counts,
            "model_version_segments": run.version_segments,
            "model_swaps": [s for s in self.models.swaps if s["unix_s"] >= run.started_wall],
            "max_batch": self.options.max_batch,
            "max_wait_ms": self.options.max_wait_ms,
            "network_image": run.no_network,  # None: the network imaged the scan; else why not
            "errors": run.errors,
            "files": files,
        }
        path = Path(self.options.out) / f"{Path(paths[0]).stem if paths else scan_id}.json"
        log.info("scan %s: %d received, %d written, %d inferred, p99 latency %s ms, stream CPU %.2f cores -> could "
                 "have kept %s frames/s -> %s", scan_id, run.received, run.written, run.stitched,
                 summary["latency_ms_p99"], sum(cpu.values()), summary["max_rate_hz"], path)  # fmt: skip
        if run.refiner is None and run.learner is None:
            self.record(summary, path)
            run.ring.close()
            return
        for helper in (run.refiner, run.learner):  # they go on for their tails in their own threads; the next
            if helper is not None:  # scan need not wait
                helper.end()

        def finish_helpers() -> None:
            try:
                finish_tails()
            except Exception as error:
                log.exception("scan %s: its refined or learned products could not be written", scan_id)
                run.fail("finisher", error)
                summary["errors"] = run.errors
            self.record(summary, path)
            run.ring.close()

        def finish_tails() -> None:
            if run.learner is not None:
                run.learner.done.wait()
                summary["learning"] = run.learner.summary()
                if run.learner.swaps:
                    summary["model_version"] = self.models.get().version
                    summary["model_swaps"] = [s for s in self.models.swaps if s["unix_s"] >= run.started_wall]
                    if run.learner.complete and run.mosaic.n_patches:  # the mosaic was made again: its product too
                        files.update(self.write_product(run))
                log.info("scan %s learned: %d steps, %d swaps", scan_id, run.learner.steps, run.learner.swaps)
            if run.refiner is not None:
                run.refiner.done.wait()
                summary["refinement"] = run.refiner.summary()
                if run.refiner.object is not None and run.mosaic.n_patches:
                    files.update(self.write_product(run, refined=True))
                log.info("scan %s refined: %.1f epochs, misfit %s", scan_id, run.refiner.epochs, run.refiner.misfit)

        finisher = threading.Thread(target=finish_helpers, name="edge-scan-finish", daemon=True)
        self.helpers.append(finisher)
        finisher.start()

    def write_product(self, run: ScanRun, refined: bool = False) -> dict:
        """The network's mosaic (or, ``refined``, the live refinement's image and probe) as a product, with its
        preview; returns the files written."""
        paths = [part.get("path", part["requested"]) for part in run.parts]
        stem = Path(paths[0]).stem if paths else run.start.scan_id
        with self.lock:
            obj, _ = run.mosaic.image()
            center = run.mosaic.center_m()
            numerator, coverage = run.mosaic.numerator.numpy().copy(), run.mosaic.coverage.numpy().copy()
            origin_m = run.mosaic.origin_m.copy()
        probe = np.zeros((1, *run.start.shape), dtype=np.complex64)
        engine, suffix = "nn-stream", "_product"
        history = np.zeros((0, 2))
        if refined:
            image = run.refiner.image(numerator, coverage, origin_m)
            obj = np.where(np.isfinite(image), image, 1.0).astype(np.complex64)
            probe = run.refiner.probe.numpy().astype(np.complex64)
            engine, suffix = f"nn-stream + live {run.refiner.options.engine}", "_refined"
            history = np.asarray(run.refiner.history, dtype=np.float64).reshape(-1, 2)  # (epoch, misfit)
        pixel = tuple(float(v) for v in run.mosaic.pixel_size_m)
        geometry = geometry_of(run.start)
        positions = [np.zeros((0, 2))]
        for path in paths:
            with CXIFile(path) as cxi:
                positions.append(cxi.positions_m)
        product = Product(
            object=obj[None],
            probe=probe,
            positions_m=np.concatenate(positions),
            object_pixel_size_m=pixel,
            probe_pixel_size_m=pixel,
            energy_eV=geometry.energy_eV,
            distance_m=geometry.distance_m,
            object_center_m=center,
            name=f"edgeray edge {self.models.get().version}",
            loss_values=history[:, 1],
            loss_epochs=history[:, 0],
            attrs={"engine": engine, "model": self.models.get().version, "scan_id": run.start.scan_id},
        )
        product_path = write_product(Path(self.options.out) / f"{stem}{suffix}.h5", product)
        key = "refined" if refined else "product"
        files = {key: str(product_path)}
        if self.options.preview:
            png = Path(self.options.out) / (f"{stem}_refined.png" if refined else f"{stem}.png")
            files[f"{key}_preview" if refined else "preview"] = self.pictures.draw(
                draw_preview, str(product_path), str(png)
            )
        return files
