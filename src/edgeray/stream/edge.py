"""The edge service: receive -> (write every frame) + (batch -> infer -> stitch -> refine, learn) -> finish, publish.

The service wires its stages, each a module of its own with its own state, talking through queues of typed
messages (:mod:`edgeray.stream.scan`), and runs their threads:

- **receiver** (:mod:`edgeray.stream.receiver`): the ZeroMQ PULL socket; each frame checked and copied once into its
  scan's ring in shared memory (a bounded spill when the ring is full);
- **writer** (:mod:`edgeray.stream.supervisor`, a process of :mod:`edgeray.stream.writer`): reads the ring and
  appends to the scan's run file (one SWMR CXI file, valid at every moment), restarted in a new part file if it dies;
- **inference** (:mod:`edgeray.stream.inference`): batches from the ring through ONNX Runtime;
- **stitcher** (:mod:`edgeray.stream.stitcher`): patches into the scan's mosaic, frames to the scan's live
  refinement and learning (:mod:`edgeray.stream.helpers`);
- **finisher** (:mod:`edgeray.stream.finisher`): each ended scan's summary, product and preview, off the stream's
  threads, so no scan pays for the one before it;
- **live state** (:mod:`edgeray.stream.live`): snapshots and the mosaic for the live view and the PUB socket.

Everything a scan's first frames would otherwise wait for (the writer process, the model's ONNX session, the
stitching kernel's compilation, the pictures process, the learner's first step) is ready before the first frame.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import zmq

from edgeray.limits import check_fields
from edgeray.stream import mosaic_kernel
from edgeray.stream.finisher import Finisher
from edgeray.stream.helpers import ScanHelpers
from edgeray.stream.inference import Inference
from edgeray.stream.learn import LearnOptions
from edgeray.stream.live import LiveState
from edgeray.stream.receiver import Receiver
from edgeray.stream.refine import RefineOptions
from edgeray.stream.scan import ScanRun
from edgeray.stream.security import bind_server_socket
from edgeray.stream.serving import ModelHolder
from edgeray.stream.stitcher import Stitcher
from edgeray.stream.supervisor import WriterSupervisor
from edgeray.stream.tiled_publish import TiledOptions

log = logging.getLogger("edgeray.edge")

STITCH_QUEUE_BATCHES = 64  # inverted batches waiting for the mosaic before the network waits too


@dataclass
class EdgeOptions:
    """Edge service settings.

    Attributes:
        listen: ZeroMQ endpoint the PULL socket binds (detectors connect to it).
        out: folder for run files, products, previews and summaries.
        model: surrogate folder (``None``: the shipped edge model).
        max_batch: largest inference batch, frames.
        max_wait_ms: longest a frame waits for its batch to fill, ms.
        flush_s: longest a received frame waits to be flushed to the run file, s.
        publish: PUB endpoint for the live mosaic and stats (``None``: off).
        scans: stop after this many scans have ended (``None``: run until stopped).
        curve_keys: folder of CurveZMQ keys (required to listen on anything but loopback).
        preview: write a PNG of each scan's mosaic.
        infer_threads: threads of the network's inference (the other stages need a core of their own).
        infer_workers: batches of this many parts run through the network at once (concurrent ONNX Runtime
            calls of ``infer_threads`` threads each), for machines with cores to spare; a batch then holds up to
            ``infer_workers * max_batch`` frames.
        registry: a model registry (:class:`edgeray.nn.registry.Registry`) to follow: the edge runs its
            ``CURRENT`` version and swaps to a new one between batches once it has passed validation
            (``model`` is published as the first version if the registry is empty).
        registry_poll_s: how often ``CURRENT`` is checked, s.
        refine: live refinement of each scan's image in the spare CPU time (:mod:`edgeray.stream.refine`), or
            None; it needs the model's probe (an edge model) or ``refine_probe_file``.
        refine_probe_file: a probe file (product, CXI, .npy) for refinement instead of the model's.
        learn: continual learning of each scan's sample (:mod:`edgeray.stream.learn`), or None: a better model is
            swapped in during the scan (written to ``out/learned/``) and the mosaic made again with it; with
            ``refine`` on, the refinement's object serves as labels.
        ring_frames: frames the shared-memory ring of a scan holds (a stall of writer or network up to that long
            costs nothing).
        spill_bytes: memory for frames beyond a full ring, bytes; past it frames are dropped and counted.
        tiled: publish each scan to a Tiled server (:mod:`edgeray.stream.tiled_publish`), or None.
        memory_bytes: the most memory one scan's ring and spill may take, bytes (default: a quarter of the
            machine's); a large-frame scan gets a smaller ring, one whose ring of 64 frames would not fit is refused.
        max_object_px: the widest object a scan may span, object pixels: a frame whose position lies further from
            its scan's first one is refused (positions in mm or um where metres belong).
        max_message_bytes: the PULL socket's limit on one message, bytes (larger ones are dropped by ZeroMQ).
    """

    listen: str = "tcp://127.0.0.1:5555"
    out: Path = Path("run")
    model: Path | None = None
    max_batch: int = 64
    max_wait_ms: float = 5.0  # 20 saves ~0.1 core at 2 kHz, at +15 ms p50 (docs/benchmarks.md, batch wait)
    flush_s: float = 0.2
    publish: str | None = "tcp://127.0.0.1:5556"
    scans: int | None = None
    curve_keys: Path | None = None
    preview: bool = True
    infer_threads: int = 1
    infer_workers: int = 1
    registry: Path | None = None
    registry_poll_s: float = 0.5
    refine: RefineOptions | None = None
    refine_probe_file: Path | None = None
    learn: LearnOptions | None = None
    ring_frames: int = 8192
    spill_bytes: int = 256 << 20
    tiled: TiledOptions | None = None
    memory_bytes: int = field(default_factory=lambda: machine_memory_bytes() // 4)
    max_object_px: int = 16384
    max_message_bytes: int = 256 << 20

    def __post_init__(self) -> None:
        """Every limit checked before anything starts (ValueError naming the option)."""
        check_fields(self, EDGE_LIMITS, integers=EDGE_INTEGERS, flags=True)


EDGE_INTEGERS = ("max_batch", "ring_frames", "infer_threads", "infer_workers", "memory_bytes", "max_object_px",
                 "max_message_bytes", "spill_bytes", "scans")  # fmt: skip
EDGE_LIMITS = {
    **dict.fromkeys(EDGE_INTEGERS, (1, None, ">=")),
    "spill_bytes": (0, None, ">="),
    **dict.fromkeys(("max_wait_ms", "flush_s", "registry_poll_s"), (0, None, ">")),
}


def machine_memory_bytes() -> int:
    """This machine's physical memory, bytes (8 GiB where it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


class EdgeService:
    """The edge service; :meth:`start` its threads, :meth:`stop` (or ``options.scans``) to end, :meth:`join`."""

    def __init__(self, options: EdgeOptions, context: zmq.Context | None = None):
        self.options = options
        self.torch_threads = torch.get_num_threads()  # the process's; the stream's threads each use one
        Path(options.out).mkdir(parents=True, exist_ok=True)
        self.finished = threading.Event()
        self.tiled = None
        if options.tiled is not None:  # first: a key the server refuses stops the service before anything opens
            from edgeray.stream.tiled_publish import TiledPublisher

            self.tiled = TiledPublisher(options.tiled, self.finished)
        self.context = context or zmq.Context.instance()
        self.models = ModelHolder(options.model, options.registry, "uint16", options.infer_threads,
                                  options.registry_poll_s)  # fmt: skip
        mosaic_kernel.warm_up()  # compiled before the first frame can arrive, not on the first batch
        if options.learn is not None and self.models.get().kind == "edge":
            from edgeray.nn.checkpoint import load_model
            from edgeray.stream.learn import warm_up

            warm_up(load_model(self.models.get().model_dir, "cpu")[0])
        self.socket, self.endpoint = bind_server_socket(self.context, zmq.PULL, options.listen, options.curve_keys,
                                                        max_message_bytes=options.max_message_bytes)  # fmt: skip
        self.publisher = None
        if options.publish:
            self.publisher, _ = bind_server_socket(self.context, zmq.PUB, options.publish, options.curve_keys)
        pool = None
        if options.infer_workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(options.infer_workers, thread_name_prefix="edge-infer-worker")
        self.stopping = threading.Event()
        self.lock = threading.Lock()  # guards the mosaics and the summaries list
        control: queue.Queue = queue.Queue()  # receiver -> inference: scan started / ended, stop
        to_stitch: queue.Queue = queue.Queue(STITCH_QUEUE_BATCHES)  # inference -> stitcher
        to_finish: queue.Queue = queue.Queue()  # stitcher -> finisher
        frames_ready = threading.Condition()
        self.finisher = Finisher(options, to_finish, self.models, self.lock, self.stopping, self.finished)
        self.supervisor = WriterSupervisor(options.flush_s, lambda: self.model_version, self.stopping, self.finished)
        self.receiver = Receiver(self.socket, options, self.supervisor, control, frames_ready, self.stopping)
        self.helpers = ScanHelpers(options, self.models, self.lock, self.torch_threads)
        self.inference = Inference(options, self.models, control, to_stitch, frames_ready, self.helpers.scan_started,
                                   pool)  # fmt: skip
        self.stitcher = Stitcher(to_stitch, to_finish, self.lock)
        self.live = LiveState(self.receiver, self.stitcher, self.finisher.summaries, self.models, self.lock,
                              self.publisher, self.finished)  # fmt: skip
        self.threads = [
            threading.Thread(target=self.receiver.run, name="edge-receive", daemon=True),
            threading.Thread(target=self.inference.run, name="edge-infer", daemon=True),
            threading.Thread(target=self.stitcher.run, name="edge-stitch", daemon=True),
            threading.Thread(target=self.finisher.run, name="edge-finish", daemon=True),
            threading.Thread(target=self.supervisor.watch, name="edge-writer-monitor", daemon=True),
        ]
        if self.publisher is not None:
            self.threads.append(threading.Thread(target=self.live.publish, name="edge-publish", daemon=True))
        if self.tiled is not None:
            self.tiled.attach(self.live)
            self.finisher.on_summary = self.tiled.scan_done
            self.threads.append(threading.Thread(target=self.tiled.run, name="edge-tiled", daemon=True))
        if self.models.registry is not None:
            self.threads.append(threading.Thread(target=self.models.watch, args=(self.finished,),
                                                 name="edge-registry", daemon=True))  # fmt: skip

    # -- what callers read -----------------------------------------------------------------------------------
    @property
    def model_version(self) -> str:
        return self.models.get().version

    @property
    def swaps(self) -> list[dict]:
        return self.models.swaps

    @property
    def rejected_versions(self) -> dict[str, str]:
        return self.models.rejected

    @property
    def summaries(self) -> list[dict]:
        return self.finisher.summaries

    @property
    def current(self) -> ScanRun | None:
        return self.receiver.current

    @property
    def writer(self):
        """The run-file writer process (:class:`~edgeray.stream.writer.WriterProcess`)."""
        return self.supervisor.writer

    @property
    def received_total(self) -> int:
        return self.receiver.received_total

    @property
    def invalid_total(self) -> int:
        return self.receiver.invalid_total

    def snapshot(self) -> dict:
        return self.live.snapshot()

    def mosaic_image(self, max_side: int | None = None):
        return self.live.mosaic_image(max_side)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> EdgeService:
        for thread in self.threads:
            thread.start()
        log.info("edge listening on %s, model %s", self.endpoint, self.model_version)
        return self

    def stop(self, cut_tails: bool = True) -> None:
        """Stop receiving; the open scan (if any) is closed as incomplete, with every received frame written.
        ``cut_tails``: refinements and learning still running stop now (their results so far are written)."""
        self.stopping.set()
        if cut_tails:
            self.helpers.stop_all()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the threads (``timeout`` s for all of them together), then close the processes and sockets."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self.threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        if self.inference.infer_pool is not None:
            self.inference.infer_pool.shutdown(wait=True)
        self.finisher.close()
        if self.tiled is not None:
            self.tiled.close()
        self.supervisor.stop()
        self.socket.close(0)
        if self.publisher is not None:
            self.publisher.close(0)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the service has finished (``options.scans`` reached or stopped) and, with Tiled, published
        what it could; True if it has."""
        if not self.finished.wait(timeout):
            return False
        return self.tiled is None or self.tiled.done.wait(timeout)
