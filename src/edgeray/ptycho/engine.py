"""What every engine shares: options, state, the forward model of a batch, the epoch loop and its safeguards."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from edgeray.limits import check_fields
from edgeray.ptycho.ops import (
    abs2,
    extract_patches,
    gaussian_lowpass,
    patch_indices,
    scatter_patches,
    shift_ramps,
    shifted_probes,
    split_positions,
)
from edgeray.ptycho.problem import Problem, power_sum

NOISE_MODELS = ("gaussian", "poisson")


@dataclass
class EngineOptions:
    """Options every engine takes (defaults work on real data without tuning).

    Attributes:
        batch_size: frames per update (mini-batch); the whole scan in one batch when larger than it.
        probe_refine: refine the probe (False keeps the start probe).
        probe_start_epoch: first epoch in which the probe is refined (object-only before).
        n_probe_modes: incoherent probe modes (extra modes are made from the first).
        position_correction: refine positions from the data.
        position_start_epoch: first epoch of position correction.
        position_step_limit_px: largest position change per batch update, pixels.
        position_gain: multiplier of the least-squares position step (the object, fitted to the wrong positions,
            absorbs part of each error, so the plain estimate falls short; 4 measured best on simulated scans).
        seed: seed of the random batch order.
        dtype: ``float32`` (default) or ``float64`` (references, tests).
        divergence_factor: stop when the cost grows beyond this multiple of its best value.
        momentum: after each epoch, the object moves on by this factor times the accumulated velocity of its
            large-scale part (:class:`LowPassMomentum`); 0 turns it off (every engine but LSQML: off by default).
        momentum_scale_px: width (Gaussian sigma, object pixels) of the low-pass the momentum acts on.
    """

    batch_size: int = 96
    probe_refine: bool = True
    probe_start_epoch: int = 0
    n_probe_modes: int = 1
    position_correction: bool = False
    position_start_epoch: int = 5
    position_step_limit_px: float = 0.5
    position_gain: float = 4.0
    seed: int = 0
    dtype: str = "float32"
    divergence_factor: float = 10.0
    momentum: float = 0.0
    momentum_scale_px: float = 8.0

    def __post_init__(self) -> None:
        """Each numeric field within its limits (ValueError naming it), before any work."""
        limits = {"batch_size": (1, None, ">="), "n_probe_modes": (1, 64, ">="), "probe_start_epoch": (0, None, ">="),
                  "position_start_epoch": (0, None, ">="), "position_step_limit_px": (0, None, ">="),
                  "momentum": (0, 0.999, ">="), "momentum_scale_px": (0, None, ">"),
                  "divergence_factor": (1, None, ">=")}  # fmt: skip
        check_fields(
            self, limits, integers=("batch_size", "n_probe_modes", "probe_start_epoch", "position_start_epoch")
        )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"{type(self).__name__}.dtype must be float32 or float64, not {self.dtype!r}")


class LowPassMomentum:
    """Momentum on the large-scale part of the object's change from one epoch to the next.

    Overlapping frames pass the object's large-scale phase from frame to frame only slowly (each update moves it by
    a fraction of the beam), so iterative engines spend most of their epochs on it while the detail has long
    converged. After each epoch, with ``d`` the Gaussian low-pass (sigma ``scale_px``) of the object's change since
    the last call, the velocity ``v = beta v + d`` is added again, times ``beta``: the detail is left as the engine
    made it. Where ``d`` points against ``v`` (the object overshot), the velocity starts again from ``d`` (adaptive
    restart). Measured on simulated 1e5-photon scans (LSQML, beta 0.8, sigma 8 px, 2026-12-01): 10 epochs reach
    about what 30 plain epochs reach, and 30 epochs end as good or better.

    Args:
        beta: momentum factor in ``[0, 1)``; scale_px: low-pass sigma in object pixels.
    """

    restart_cosine = 0.0  # adaptive restart (O'Donoghue & Candes 2015): once progress turns against the velocity

    def __init__(self, beta: float, scale_px: float):
        if not 0 <= beta < 1:
            raise ValueError(f"momentum must be in [0, 1), not {beta}")
        if scale_px <= 0:
            raise ValueError(f"momentum_scale_px must be > 0, not {scale_px}")
        self.beta, self.scale_px = beta, scale_px
        self.previous: torch.Tensor | None = None
        self.velocity: torch.Tensor | None = None

    @staticmethod
    def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
        inner = float(torch.vdot(a.reshape(-1), b.reshape(-1)).real)
        return inner / max(float(a.abs().norm() * b.abs().norm()), 1e-30)

    def __call__(self, obj: torch.Tensor) -> torch.Tensor:
        """The object ``(Y, X)`` complex after this epoch's momentum step (a new tensor; ``obj`` is untouched)."""
        if self.beta == 0:
            return obj
        if self.previous is None or self.previous.shape != obj.shape:
            self.previous, self.velocity = obj.clone(), None
            return obj
        change = gaussian_lowpass(obj - self.previous, self.scale_px).to(obj.dtype)
        if self.velocity is None or self._cosine(self.velocity, change) < self.restart_cosine:
            self.velocity = change  # none yet, or the change turned against it (overshot): start again from here
        else:
            self.velocity = self.beta * self.velocity + change
        moved = obj + self.beta * self.velocity
        self.previous = moved.clone()
        return moved


@dataclass
class State:
    """What an engine refines.

    Attributes:
        object: ``(Y, X)`` complex; probe: ``(M, H, W)`` complex; positions_px: ``(N, 2)`` float64.
    """

    object: torch.Tensor
    probe: torch.Tensor
    positions_px: torch.Tensor

    def clone(self) -> State:
        return State(self.object.clone(), self.probe.clone(), self.positions_px.clone())


@dataclass
class History:
    """Cost per epoch (normalized amplitude misfit) and wall time, plus how the run ended."""

    cost: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    stopped: str | None = None


class Batch:
    """The forward model of one batch of frames, with everything the updates reuse.

    Attributes:
        index: ``(B,)`` frame numbers; ramps: ``(B, H, W)`` sub-pixel shift factors or None;
        patch_index: ``(B, H, W)`` flat object indices; probes: ``(B, M, H, W)`` shifted probe modes;
        patches: ``(B, H, W)`` object windows; waves: ``(B, M, H, W)`` exit waves; far: detector waves;
        intensity: ``(B, H, W)`` model intensities; amplitudes: ``(B, H, W)`` measured.
    """

    def __init__(self, problem: Problem, state: State, index: torch.Tensor, probe_spectrum: torch.Tensor):
        self.index = index
        corners, fractions = split_positions(state.positions_px[index], problem.frame_shape)
        self.ramps = (
            None if bool((fractions == 0).all()) else shift_ramps(fractions, problem.frame_shape, state.object.dtype)
        )
        self.patch_index = patch_indices(corners, problem.frame_shape, problem.object_shape[1])
        self.probes = shifted_probes(probe_spectrum, self.ramps)[: len(index)]  # none for a rank without frames
        self.patches = extract_patches(state.object, self.patch_index)
        self.waves = self.probes * self.patches[:, None]
        self.far = problem.propagator.forward(self.waves)
        self.intensity = abs2(self.far[:, 0]) if self.far.shape[1] == 1 else abs2(self.far).sum(dim=1)
        self.amplitudes = problem.amplitudes.index_select(0, index).to(self.intensity.dtype)

    def misfit(self, valid: torch.Tensor) -> torch.Tensor:
        """Sum of squared amplitude differences over valid pixels: a 0-d tensor on the batch's device (an epoch
        sums them there and reads the total once, so a GPU epoch does not wait on the host after each batch)."""
        return (valid * (torch.sqrt(self.intensity) - self.amplitudes) ** 2).sum()

    def exit_wave_update(self, problem: Problem, noise: str = "gaussian", floor: float | None = None) -> torch.Tensor:
        """``chi`` ``(B, M, H, W)``: the change of exit waves that best explains the data under ``noise``.

        Gaussian: the amplitude projection ``far * A / |far|`` on valid pixels. Poisson: the likelihood gradient
        direction ``far * (A^2 / I - 1)`` with a per-frame step minimizing the Poisson likelihood along it.
        ``floor``: the intensity floor (default: 1e-6 of this batch's mean intensity, see below).
        """
        # Where the model predicts (almost) nothing, the phase of its far field is round-off; a floor of 1e-6 of
        # the mean intensity keeps such pixels from driving the update (and float32 from departing from float64).
        eps = 1e-6 * float(self.intensity.mean()) + 1e-30 if floor is None else floor
        valid = problem.valid
        if noise == "gaussian":
            factor = valid * (self.amplitudes / torch.sqrt(self.intensity + eps) - 1.0)
        elif noise == "poisson":
            # Descent direction of the Poisson likelihood, far * (r - 1), r = A^2 / I, with per-frame step gamma
            # from Newton iterations on L(gamma) = sum s^2 I - A^2 log(s^2 I), s = 1 + gamma (r - 1).
            ratio = self.amplitudes**2 / (self.intensity + eps)
            d = valid * (ratio - 1.0)
            d2_i = d**2 * self.intensity
            d2_a = d**2 * self.amplitudes**2
            gamma = torch.full((len(ratio), 1, 1), 0.5, dtype=ratio.dtype, device=ratio.device)
            for _ in range(4):
                s = 1.0 + gamma * d
                first = (s * d * self.intensity - self.amplitudes**2 * d / s).sum(dim=(1, 2), keepdim=True)
                second = (d2_i + d2_a / s**2).sum(dim=(1, 2), keepdim=True)
                gamma = (gamma - first / (second + 1e-30)).clamp(0.0, 1.0)
            factor = gamma * d
        else:
            raise ValueError(f"noise model must be one of {NOISE_MODELS}, not {noise!r}")
        return problem.propagator.backward(self.far * factor[:, None])


def real_dtype(name: str) -> tuple[torch.dtype, torch.dtype]:
    """``(real, complex)`` torch dtypes for ``float32`` or ``float64``."""
    if name == "float32":
        return torch.float32, torch.complex64
    if name == "float64":
        return torch.float64, torch.complex128
    raise ValueError(f"dtype must be float32 or float64, not {name!r}")


def orthogonalize_modes(probe: torch.Tensor) -> torch.Tensor:
    """Incoherent probe modes made orthogonal and sorted by power (the intensity they give is unchanged)."""
    if probe.shape[0] == 1:
        return probe
    flat = probe.reshape(probe.shape[0], -1)
    gram = flat @ flat.conj().T
    _, vectors = torch.linalg.eigh(gram)
    return (vectors.conj().T.flip(0) @ flat).reshape(probe.shape)


@dataclass
class PixelSum:
    """A per-pixel sum over a batch's frames: at the frames' pixels ``entries`` ``(B, H, W)``, and for a
    distributed run the whole-object array ``full`` ``(Y, X)``."""

    entries: torch.Tensor
    full: torch.Tensor | None = None


class ReconstructionDiverged(RuntimeError):
    """Raised inside the loop when the cost becomes NaN or explodes; the engine restores the last good state."""


class Engine:
    """Base of the iterative engines: run ``epochs``, each calling :meth:`epoch`, with progress and safeguards."""

    name = "engine"

    def __init__(self, problem: Problem, state: State, options: EngineOptions, check_positions: bool = True):
        self.problem = problem
        self.options = options
        self.real, self.complex = real_dtype(options.dtype)
        self.state = State(
            state.object.to(problem.device, self.complex),
            state.probe.to(problem.device, self.complex),
            state.positions_px.to(problem.device, torch.float64),
        )
        self.valid = problem.valid.to(self.real)
        self._data_norm: float | None = None
        self.rng = np.random.default_rng(options.seed)
        self.history = History()
        self.epochs_done = 0
        self.momentum = LowPassMomentum(options.momentum, options.momentum_scale_px)
        if check_positions:
            self._check_positions(self.state.positions_px)

    @property
    def data_norm(self) -> float:
        """Sum of the measured intensities over valid pixels (the cost's denominator), computed once."""
        if self._data_norm is None:
            amplitudes = self.problem.amplitudes
            self._data_norm = float((self.valid.double() * power_sum(amplitudes)).sum())
        return self._data_norm

    def _check_positions(self, positions_px: torch.Tensor) -> None:
        corners, _ = split_positions(positions_px, self.problem.frame_shape)
        limit = torch.tensor(self.problem.object_shape, device=corners.device) - torch.tensor(
            self.problem.frame_shape, device=corners.device
        )
        if bool((corners < 0).any()) or bool((corners > limit).any()):
            bad = int(torch.nonzero(((corners < 0) | (corners > limit)).any(dim=1))[0, 0])
            raise ValueError(
                f"frame {bad} at position {positions_px[bad].tolist()} px reaches outside the object "
                f"{self.problem.object_shape}"
            )

    def batches(self) -> list[torch.Tensor]:
        """This epoch's random partition of the frames into mini-batches.

        Within a batch the frames are ordered by their place on the object (row-major): a batch update sums over
        its frames, so the order changes nothing but memory locality, which makes the gathers and scatter-adds of
        patches about 1.7x faster.
        """
        n = self.problem.n_frames
        order = torch.from_numpy(self.rng.permutation(n)).to(self.problem.device)
        size = max(1, min(self.options.batch_size, n))
        place = self.state.positions_px[:, 0].round() * self.problem.object_shape[1] + self.state.positions_px[:, 1]
        return self.announced([batch[torch.argsort(place[batch])] for batch in torch.split(order, size)])

    def announced(self, batches: list[torch.Tensor]) -> list[torch.Tensor]:
        """``batches``, told to frames read from disk (:mod:`edgeray.ptycho.disk_frames`) so they are read ahead."""
        expect = getattr(self.problem.amplitudes, "expect", None)
        if expect is not None:
            expect(batches)
        return batches

    def refine_probe_now(self) -> bool:
        return self.options.probe_refine and self.epochs_done >= self.options.probe_start_epoch

    def correct_positions_now(self) -> bool:
        return self.options.position_correction and self.epochs_done >= self.options.position_start_epoch

    def epoch(self) -> float | torch.Tensor:
        """One pass over the data; returns the summed amplitude misfit measured before each update (a float, or a
        0-d tensor on the device)."""
        raise NotImplementedError

    def run(
        self,
        epochs: int,
        callback: Callable[[int, float, float], None] | None = None,
        observer: Callable[[State], None] | None = None,
    ) -> History:
        """Run ``epochs`` epochs; ``callback(epoch, cost, frames_per_s)`` and ``observer(state)`` after each.

        On a NaN or exploding cost the last good state is restored and ``history.stopped`` says why.
        """
        best = math.inf
        good = self.state.clone()
        for _ in range(epochs):
            start = time.perf_counter()
            misfit = float(self.epoch())  # the epoch's one host synchronization
            if self.state.probe.shape[0] > 1:
                self.state.probe = orthogonalize_modes(self.state.probe)
            # one decision for every rank of a distributed run: the misfit and non-finite pixels of all of them
            misfit, broken = self.combine_costs([misfit, float(not bool(torch.isfinite(self.state.object).all()))])
            seconds = time.perf_counter() - start
            cost = misfit / self.data_norm
            finite = math.isfinite(cost) and broken == 0
            if not finite or cost > self.options.divergence_factor * best:
                self.state = good
                self.history.stopped = (
                    f"{self.name} diverged at epoch {self.epochs_done + 1} (cost {cost:.3g}, best {best:.3g}); "
                    "kept the state of the last good epoch"
                )
                break
            best = min(best, cost)
            good = self.state.clone()
            self.state.object = self.momentum_step(self.state.object)
            self.epochs_done += 1
            self.history.cost.append(cost)
            self.history.seconds.append(seconds)
            if callback:
                callback(self.epochs_done, cost, self.problem.n_frames / seconds)
            if observer:
                observer(self.state)
        return self.history

    # Sums over a batch's frames at each object pixel. In one process the sums go to persistent object-sized
    # buffers that are cleared again at the touched pixels only, and are read back at the batch's own pixels: a
    # batch then costs in proportion to its frames, not to the object (large objects, live refinement). A
    # distributed run completes the sums across ranks on whole-object arrays (the sum_object hook), and updates
    # the whole object, since other ranks' frames reach pixels that this rank's do not.
    dense_sums = False

    def pixel_sum(self, values: torch.Tensor, patch_index: torch.Tensor) -> PixelSum:
        """The sum of ``values`` ``(B, H, W)`` over the batch's frames at each object pixel (over every rank's
        frames in a distributed run), read back at every frame's pixels (``entries``, ``(B, H, W)``)."""
        flat = patch_index.reshape(-1)
        if self.dense_sums:
            total = self.sum_object(scatter_patches(values, patch_index, self.problem.object_shape))
            return PixelSum(total.reshape(-1).index_select(0, flat).reshape(values.shape), total)
        size = self.problem.object_shape[0] * self.problem.object_shape[1]
        key = (values.dtype, values.device)
        buffers = self.__dict__.setdefault("_sum_buffers", {})
        if key not in buffers or buffers[key].numel() != size:
            buffers[key] = torch.zeros(size, dtype=values.dtype, device=values.device)
        buffer = buffers[key]
        buffer.index_add_(0, flat, values.reshape(-1))
        entries = buffer.index_select(0, flat).reshape(values.shape)
        buffer.index_fill_(0, flat, 0)
        return PixelSum(entries)

    def add_to_object(self, patch_index: torch.Tensor, change: Callable[..., torch.Tensor], *sums: PixelSum) -> None:
        """``object += change(*sums)`` where the batch's frames reach; ``change`` is elementwise in its arguments
        (applied to the sums at the frames' pixels, or to whole-object sums in a distributed run)."""
        if self.dense_sums:
            self.state.object = self.state.object + change(*(s.full for s in sums))
            return
        flat = patch_index.reshape(-1)
        obj = self.state.object.reshape(-1)
        # one value per object pixel, the same wherever several frames reach it: plain assignment is exact
        changed = obj.index_select(0, flat) + change(*(s.entries for s in sums)).reshape(-1).to(obj.dtype)
        obj.index_copy_(0, flat, changed)

    def intensity_floor(self, batch: Batch) -> float | None:
        """The floor of :meth:`Batch.exit_wave_update` (None: the batch's own; a distributed run: every rank's
        part of the batch together)."""
        return None

    def momentum_step(self, obj: torch.Tensor) -> torch.Tensor:
        """The object after the epoch's low-pass momentum (:class:`LowPassMomentum`; a distributed run applies it
        to the whole object, assembled from every rank)."""
        return self.momentum(obj)

    # What a distributed run reduces across ranks (see edgeray.ptycho.distributed): the engines call these
    # hooks wherever they sum over frames; in one process there is nothing to do.
    def combine_costs(self, values: list[float]) -> list[float]:
        """Sums over every frame of the scan, from this process's partial sums."""
        return values

    def sum_object(self, partial: torch.Tensor) -> torch.Tensor:
        """An object-shaped sum over this process's frames -> the sum over every frame (in place)."""
        return partial

    def sum_probe(self, partial: torch.Tensor) -> torch.Tensor:
        """A probe-shaped sum over this process's frames -> the sum over every frame (in place)."""
        return partial

    def global_max(self, value: torch.Tensor) -> torch.Tensor:
        """The largest element of ``value`` over every process (``value`` may be empty on some)."""
        return value.max()

    # Shared pieces ---------------------------------------------------------------------------------------
    def forward(self, index: torch.Tensor, probe_spectrum: torch.Tensor) -> Batch:
        return Batch(self.problem, self.state, index, probe_spectrum)

    def position_step(self, batch: Batch, chi: torch.Tensor, probe_spectrum: torch.Tensor) -> None:
        """Move each frame's position by the least-squares shift explaining ``chi`` (clipped per epoch)."""
        height, width = self.problem.frame_shape
        device = probe_spectrum.device
        ky = torch.fft.fftfreq(height, device=device, dtype=self.real)[:, None]
        kx = torch.fft.fftfreq(width, device=device, dtype=self.real)[None, :]
        shifted = probe_spectrum[None] if batch.ramps is None else probe_spectrum[None] * batch.ramps[:, None]
        # d(probe(r - p))/dp = -grad probe: the exit-wave derivative along y and x.
        d_y = -torch.fft.ifft2(shifted * (2j * math.pi * ky)) * batch.patches[:, None]
        d_x = -torch.fft.ifft2(shifted * (2j * math.pi * kx)) * batch.patches[:, None]
        dims = (1, 2, 3)
        a_yy = abs2(d_y).sum(dim=dims).double()
        a_xx = abs2(d_x).sum(dim=dims).double()
        a_yx = (d_y.conj() * d_x).real.sum(dim=dims).double()
        b_y = (d_y.conj() * chi).real.sum(dim=dims).double()
        b_x = (d_x.conj() * chi).real.sum(dim=dims).double()
        det = a_yy * a_xx - a_yx**2
        scale = 1e-3 * (a_yy + a_xx) ** 2 + 1e-30
        step_y = (a_xx * b_y - a_yx * b_x) / (det + scale)
        step_x = (a_yy * b_x - a_yx * b_y) / (det + scale)
        limit = self.options.position_step_limit_px
        gain = self.options.position_gain
        step = (gain * torch.stack([step_y, step_x], dim=1)).to(torch.float64).clamp(-limit, limit)
        step = step - step.mean(dim=0)  # a common shift of all frames is an object shift, not information
        half = torch.tensor([height / 2, width / 2], dtype=torch.float64, device=device)
        high = torch.tensor(self.problem.object_shape, dtype=torch.float64, device=device) - half - 1
        moved = self.state.positions_px[batch.index] + step
        self.state.positions_px[batch.index] = torch.maximum(torch.minimum(moved, high), half)
