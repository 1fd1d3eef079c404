"""Continual learning at the edge: the network learns the scan's sample from the frames it receives.

Once a scan has ``start_frames`` frames, a :class:`LiveLearner` fine-tunes a copy of the serving edge model on
them in its own thread, at the lowest CPU priority and on one core, pausing while frames wait for the network (as
the live refinement does, :mod:`edgeray.stream.refine`). Its loss (:mod:`edgeray.nn.physics`):

- each frame's Poisson deviance under the predicted patch (label-free, always);
- where the live refinement has run at least ``label_epochs`` epochs, its object at the frame's position as a
  label (as edgePtychoNN learns from iterative reconstructions of the same sample): L1 of amplitude and phase
  and the patch's mean phase slope.

Every ``round_steps`` steps, the candidate and the serving model are scored on the same held-out frames (every
``holdout_every``-th frame received never trains). The candidate is handed over (``swap``) only when it scores
better by ``min_gain`` (relative): its held-out label error where labels exist (with a deviance at most
``deviance_slack`` higher), else its held-out deviance, as ``edgeray nn finetune`` chooses its epoch. The edge
swaps only to a model that does better on frames it did not learn from.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from edgeray.nn.models import EdgeNet
from edgeray.nn.physics import far_field_intensity, poisson_deviance, probe_weights, slope_loss, supervised_losses
from edgeray.stream.spare_time import SpareTimeWorker, lower_thread_priority

log = logging.getLogger("edgeray.learn")


@dataclass
class LearnOptions:
    """Continual-learning settings.

    Attributes:
        start_frames: frames received before learning starts.
        holdout_every: every this-many-th frame received is held out (scores models, never trains).
        holdout_max: most held-out frames scored (the newest).
        batch_size: frames per optimizer step.
        learning_rate: AdamW's (constant: the stream has no known end).
        round_steps: optimizer steps between two scores of candidate and serving model.
        min_gain: relative drop of the held-out score a candidate needs to be swapped in: its label error where
            there are labels, else its deviance.
        deviance_slack: with labels, how much higher (relative) the candidate's held-out deviance may be.
        label_epochs: live-refinement epochs before its object serves as labels (0: never use labels).
        physics_weight: weight of the deviance when labels are used.
        capacity: frames kept (memory: ``capacity * H * W`` of the frames' dtype); a scan past it keeps learning
            from its newest frames, and its mosaic is not re-inverted after a swap.
        tail_s: seconds of learning after a scan's last frame.
        max_backlog: frames received and not yet in the mosaic above which learning pauses.
        seed: batch order.
    """

    start_frames: int = 1000
    holdout_every: int = 10
    holdout_max: int = 512
    batch_size: int = 32
    learning_rate: float = 1e-3
    round_steps: int = 40
    min_gain: float = 0.005
    deviance_slack: float = 0.25
    label_epochs: float = 2.0
    physics_weight: float = 0.1
    capacity: int = 16384
    tail_s: float = 10.0
    max_backlog: int = 64
    seed: int = 0


class LiveLearner(SpareTimeWorker):
    """Learns one scan's sample while it streams in (see the module docstring).

    Args:
        model: the serving edge model (copied; the copy learns), or a function that loads it (called in the
            learner's own thread, so that loading costs the stream nothing).
        frame_shape: ``(H, W)``; dtype: the frames' dtype.
        options: :class:`LearnOptions`.
        swap: ``swap(model, record) -> bool`` hands a better model over (True: it now serves).
        labels: ``labels(positions_m (N, 2)) -> (N, H, W) complex64 or None``: the live refinement's object at
            those positions, or None while it is not ready (see ``LearnOptions.label_epochs``).
        backlog: ``() -> int`` frames received and not yet in the mosaic.
        tail_threads: torch threads after the scan's end.
    """

    def __init__(
        self,
        model: EdgeNet | Callable[[], EdgeNet],
        frame_shape: tuple[int, int],
        dtype: str,
        options: LearnOptions,
        swap: Callable[[EdgeNet, dict], bool],
        labels: Callable[[np.ndarray], torch.Tensor | None] = lambda positions_m: None,
        backlog: Callable[[], int] = lambda: 0,
        tail_threads: int = 1,
    ):
        self.options, self.what = options, "learning"
        self.source = model
        self.serving: EdgeNet | None = None  # made from the source by _prepare, in the learner's thread
        self.model: EdgeNet | None = None
        self.swap, self.labels, self.backlog, self.tail_threads = swap, labels, backlog, tail_threads
        self.frames = np.empty((options.capacity, *frame_shape), dtype=dtype)
        self.positions_m = np.zeros((options.capacity, 2))
        self.stored = 0  # frames ever stored (frame k in slot k % capacity); its writer is the stitching thread
        self.count_sum, self.count_pixels = 0.0, 0
        self.rng = np.random.default_rng(options.seed)
        self.steps = 0
        self.rounds: list[dict] = []  # each score: step, frames, deviances, label errors, swapped
        self.swaps = 0
        self.seconds_busy = 0.0
        self.last_frame_at: float | None = None
        self.ended = threading.Event()
        self.stop = threading.Event()
        self.done = threading.Event()
        self.started_at = time.perf_counter()
        self.thread = threading.Thread(target=self._run, name="edge-learn", daemon=True)

    # -- feeding -----------------------------------------------------------------------------------------
    def add(self, counts: np.ndarray, positions_m: np.ndarray) -> None:
        """Keep a batch of frames ``(n, H, W)`` and their positions ``(n, 2)`` m (copied; called in order)."""
        n = len(counts)
        slots = (self.stored + np.arange(n)) % self.options.capacity
        self.frames[slots] = counts
        self.positions_m[slots] = positions_m
        self.count_sum += float(counts.sum(dtype=np.float64))
        self.count_pixels += counts.size
        self.stored += n

    def end(self) -> None:
        """The scan's last frame has been handed over: learn for ``tail_s`` more seconds, then finish."""
        self.last_frame_at = time.perf_counter()
        self.ended.set()

    def start(self) -> LiveLearner:
        self.thread.start()
        return self

    @property
    def scale(self) -> float:
        """The scan's mean count per pixel so far (the networks' input normalization)."""
        return self.count_sum / max(self.count_pixels, 1)

    @property
    def complete(self) -> bool:
        """Every frame of the scan is still kept (the mosaic can be made again from them)."""
        return self.stored <= self.options.capacity

    def kept_at(self, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Frames ``(n, H, W)`` of stored numbers ``chosen`` (still kept) and their positions ``(n, 2)`` m."""
        slots = chosen % self.options.capacity
        return self.frames[slots], self.positions_m[slots]

    # -- the work ----------------------------------------------------------------------------------------
    def _prepare(self) -> None:
        """The learning copy and the serving copy of the model, the optimizer and the loss weights."""
        model = self.source if isinstance(self.source, torch.nn.Module) else self.source()
        if not isinstance(model, EdgeNet):
            raise ValueError("continual learning needs an edge model (one that carries its probe)")
        self.serving = copy.deepcopy(model).cpu().eval()
        self.model = copy.deepcopy(model).cpu().train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.options.learning_rate, weight_decay=0.0)
        self.weights = probe_weights(self.model.complex_probe())
        size = self.frames.shape[-1]
        axis = torch.arange(size, dtype=torch.float32) - size // 2
        radius_sq = axis[:, None] ** 2 + axis[None, :] ** 2
        self.radius = float(torch.sqrt((self.weights * radius_sq).sum() / self.weights.sum()))

    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        """Stored numbers of the kept frames that train, and of the newest held-out ones."""
        stored = self.stored
        kept = np.arange(max(0, stored - self.options.capacity), stored)
        held = kept % self.options.holdout_every == self.options.holdout_every - 1
        return kept[~held], kept[held][-self.options.holdout_max :]

    def _inputs(self, chosen: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        counts, positions = self.kept_at(chosen)
        x = torch.sqrt(torch.from_numpy(counts.astype(np.float32)) / max(self.scale, 1e-12))[:, None]
        return x, positions

    def _losses(self, model: EdgeNet, x: torch.Tensor, target: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """Per-frame ``(N,)`` deviance and, with labels, label error (amplitude + phase L1 + slope)."""
        amplitude, phase = model(x)
        amplitude, phase = amplitude[:, 0], phase[:, 0]
        intensity = far_field_intensity(torch.polar(amplitude, phase), model.complex_probe())
        terms = {"deviance": poisson_deviance(intensity, x[:, 0] ** 2)}
        if target is not None:
            errors = supervised_losses(amplitude, phase, target, self.weights)
            slope = slope_loss(amplitude, phase, target, self.weights, self.radius)
            terms["label_error"] = errors[0] + errors[1] + slope
        return terms

    def step(self) -> bool:
        """One optimizer step on a random batch of training frames (False: too few frames yet)."""
        if self.stored < self.options.start_frames:
            return False
        if self.model is None:
            self._prepare()
        train, _ = self._split()
        chosen = self.rng.choice(train, size=min(self.options.batch_size, len(train)), replace=False)
        x, positions = self._inputs(chosen)
        target = self.labels(positions)
        terms = self._losses(self.model, x, target)
        if target is None:
            loss = terms["deviance"].mean()
        else:
            loss = terms["label_error"].mean() + self.options.physics_weight * terms["deviance"].mean()
        if not torch.isfinite(loss):
            log.warning("learning step %d: non-finite loss, batch skipped", self.steps)
            return True
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.steps += 1
        if self.steps % self.options.round_steps == 0:
            self.score()
        return True

    @torch.inference_mode()
    def score(self) -> dict:
        """Score candidate and serving model on the held-out frames; swap when the candidate is better."""
        _, held = self._split()
        x, positions = self._inputs(held)
        target = self.labels(positions)
        self.model.eval()
        candidate = {k: float(v.mean()) for k, v in self._losses(self.model, x, target).items()}
        serving = {k: float(v.mean()) for k, v in self._losses(self.serving, x, target).items()}
        self.model.train()
        if "label_error" in candidate:  # the reconstruction is the better guide; the frames must not disagree
            better = (candidate["label_error"] < (1 - self.options.min_gain) * serving["label_error"]
                      and candidate["deviance"] <= (1 + self.options.deviance_slack) * serving["deviance"])  # fmt: skip
        else:
            better = candidate["deviance"] < (1 - self.options.min_gain) * serving["deviance"]
        record = {"step": self.steps, "seconds": time.perf_counter() - self.started_at, "frames": self.stored,
                  "holdout_frames": len(held), "labels": target is not None, "candidate": candidate,
                  "serving": serving, "swapped": False}  # fmt: skip
        if better and math.isfinite(candidate["deviance"]):
            fresh = copy.deepcopy(self.model).eval()
            if self.swap(fresh, record):
                self.serving = fresh
                record["swapped"] = True
                self.swaps += 1
        self.rounds.append(record)
        return record

    def _run(self) -> None:
        lower_thread_priority()
        torch.set_num_threads(1)
        try:
            self.work_in_spare_time()
        finally:  # the finisher waits for this, whatever happened
            self.done.set()

    def summary(self) -> dict:
        """What the learning did, for the scan's JSON summary."""
        last = self.rounds[-1] if self.rounds else None
        return {
            "frames_kept": min(self.stored, self.options.capacity),
            "steps": self.steps,
            "rounds": len(self.rounds),
            "swaps": self.swaps,
            "seconds_busy": self.seconds_busy,
            "holdout_deviance_serving": last["serving"]["deviance"] if last else None,
            "holdout_deviance_candidate": last["candidate"]["deviance"] if last else None,
            "history": self.rounds[-50:],
            "options": asdict(self.options),
        }


def warm_up(model: EdgeNet) -> None:
    """One learning step and one score on random counts with a throw-away copy of ``model``: what the first step
    of a scan would load or build on first use (autograd, the optimizer's code, FFT plans) happens now, before any
    frame arrives (measured: a scan's first learning steps held the stream for up to 200 ms without it)."""
    size = model.complex_probe().shape[-1]
    generator = np.random.default_rng(0)
    learner = LiveLearner(model, (size, size), "uint16", LearnOptions(start_frames=4, batch_size=2, capacity=8,
                                                                      holdout_every=2, round_steps=1),
                          swap=lambda candidate, record: False)  # fmt: skip
    learner.add(generator.poisson(20.0, (8, size, size)).astype(np.uint16), np.zeros((8, 2)))
    learner.step()
