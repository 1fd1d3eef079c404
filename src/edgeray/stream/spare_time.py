"""Work a scan's helpers do in the CPU time the stream leaves (the live refinement, the continual learning)."""

from __future__ import annotations

import logging
import os
import threading
import time

import torch

log = logging.getLogger("edgeray.edge")


def lower_thread_priority() -> None:
    """Run the calling thread at the lowest CPU priority (Linux: ``setpriority`` on a thread id affects that
    thread alone); a no-op where that is not possible."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass


class SpareTimeWorker:
    """Mixin of a helper that calls its ``step() -> bool`` (True: it did some work) in its own low-priority thread:
    one torch thread while the scan streams, pausing while more than ``options.max_backlog`` frames wait for the
    mosaic (``backlog()``); once ``ended`` is set, ``tail_threads`` threads for ``options.tail_s`` more seconds
    after ``last_frame_at``. Stops early on ``stop``, or on an error in a step (logged: a helper must never take the
    edge down). The subclass sets those attributes, ``what`` (for the log) and ``seconds_busy``."""

    what = "helper"
    idle_s = 0.02  # sleep when a step found nothing to do

    def work_in_spare_time(self) -> None:
        tail = False
        while not self.stop.is_set():
            if self.ended.is_set() and not tail:
                torch.set_num_threads(self.tail_threads)
                tail = True
            if tail and time.perf_counter() - self.last_frame_at >= self.options.tail_s:
                break
            if not self.ended.is_set() and self.backlog() > self.options.max_backlog:
                time.sleep(0.005)  # reception, writing and inference come first
                continue
            started = time.perf_counter()
            try:
                did = self.step()
            except Exception as error:
                log.exception("live %s stopped: %s", self.what, error)
                break
            if did:
                self.worked(time.perf_counter() - started)
            else:
                time.sleep(self.idle_s)

    def worked(self, seconds: float) -> None:
        """A step took ``seconds``."""
        self.seconds_busy += seconds
