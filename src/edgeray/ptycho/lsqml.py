"""LSQML: least-squares maximum likelihood (Odstrcil et al. 2018) with per-frame optimal step sizes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from edgeray.ptycho import fused
from edgeray.ptycho.engine import Engine, EngineOptions
from edgeray.ptycho.ops import abs2, separable_ramps, shifted_probes, split_positions, unshift_sum


@dataclass
class LSQMLOptions(EngineOptions):
    """LSQML options.

    Attributes:
        noise: ``gaussian`` (amplitude misfit, robust default) or ``poisson`` (counting statistics).
        delta_object, delta_probe: regularization of the preconditioners, as a fraction of their maximum.
        max_step: cap of the per-frame step sizes.
        momentum: on by default here (0.8): see :class:`~edgeray.ptycho.engine.LowPassMomentum`.
        fused: run each mini-batch step as fused CPU kernels (:mod:`edgeray.ptycho.fused`; the same results to
            float32 rounding) where they apply: on the CPU, in one process, Gaussian noise, no position
            correction, ``delta_object > 0``. False, or anywhere else: the tensor operations (the reference).
    """

    noise: str = "gaussian"
    delta_object: float = 1e-2
    delta_probe: float = 1e-2
    max_step: float = 2.0
    momentum: float = 0.8
    fused: bool = True


def joint_steps(a11, a12, a22, b1, b2, max_step: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame object and probe step sizes ``(B,)`` float64 from the 2 x 2 normal equations
    ``[[a11, a12], [a12, a22]] [s_o, s_p] = [b1, b2]`` (a small ridge keeps them solvable); the probe's step is
    clipped to ``[0, max_step]``, the object's is left for the caller."""
    ridge = 1e-6 * (a11 + a22) + 1e-30
    det = (a11 + ridge) * (a22 + ridge) - a12**2
    step_object = ((a22 + ridge) * b1 - a12 * b2) / det
    step_probe = ((a11 + ridge) * b2 - a12 * b1) / det
    return step_object, step_probe.clamp(0, max_step)


class LSQMLEngine(Engine):
    """Each batch: exit-wave change, preconditioned object and probe directions, then for every frame the
    object and probe step sizes that best explain its exit-wave change (a 2 x 2 least-squares problem)."""

    name = "lsqml"

    def epoch(self) -> float:
        refine_probe = self.refine_probe_now()
        return sum(self.update(index, refine_probe) for index in self.batches())

    def fused_applies(self) -> bool:
        """Whether :meth:`update` runs as fused CPU kernels (see :attr:`LSQMLOptions.fused`)."""
        options: LSQMLOptions = self.options
        return (
            options.fused
            and self.problem.device.type == "cpu"
            and not self.dense_sums
            and options.noise == "gaussian"
            and not self.correct_positions_now()
            and options.delta_object > 0
        )

    def update(self, index: torch.Tensor, refine_probe: bool = True) -> float | torch.Tensor:
        """One mini-batch step on frames ``index`` ``(B,)``; returns their amplitude misfit before it."""
        if self.fused_applies():
            return fused_update(self, index, refine_probe)
        options: LSQMLOptions = self.options
        dims = (1, 2, 3)
        spectrum = torch.fft.fft2(self.state.probe)
        batch = self.forward(index, spectrum)
        misfit = batch.misfit(self.valid)
        chi = batch.exit_wave_update(self.problem, options.noise, self.intensity_floor(batch))
        if self.correct_positions_now():
            self.position_step(batch, chi, spectrum)
        probe_power = abs2(batch.probes).sum(dim=1)
        illumination = self.pixel_sum(probe_power, batch.patch_index)
        regularizer = options.delta_object * self.global_max(illumination.entries)
        probe_chi = (batch.probes.conj() * chi).sum(dim=1)  # sum over modes of conj(P) chi: (B, H, W)
        gradient = self.pixel_sum(probe_chi, batch.patch_index)
        direction = gradient.entries / (illumination.entries + regularizer)
        # u = P * direction is the exit-wave change along the object direction; its inner products need no u:
        # |u|^2 summed over modes is |P|^2 |direction|^2, and <u, chi> is <direction, sum conj(P) chi>.
        # The 2 x 2 normal equations are solved in float64: in float32 their determinant cancels badly.
        a11 = (probe_power * abs2(direction)).sum(dim=(1, 2)).double()
        b1 = (direction.conj() * probe_chi).real.sum(dim=(1, 2)).double()
        if refine_probe:
            weight = self.sum_probe(abs2(batch.patches).sum(dim=0))
            probe_direction = self.sum_probe(unshift_sum(batch.patches.conj()[:, None] * chi, batch.ramps))
            probe_direction = probe_direction / (weight + options.delta_probe * weight.max())
            v = shifted_probes(torch.fft.fft2(probe_direction), batch.ramps) * batch.patches[:, None]
            a22 = abs2(v).sum(dim=dims).double()
            a12 = (direction.conj() * (batch.probes.conj() * v).sum(dim=1)).real.sum(dim=(1, 2)).double()
            b2 = (v.conj() * chi).real.sum(dim=dims).double()
            step_object, step_probe = joint_steps(a11, a12, a22, b1, b2, options.max_step)
            if self.dense_sums:  # a distributed run: the mean step over every rank's frames
                total, count = self.combine_costs([float(step_probe.sum()), float(len(step_probe))])
                mean_step = torch.tensor(total / count, dtype=self.real, device=step_probe.device)
            else:  # stays on the device: no host synchronization per batch
                mean_step = step_probe.mean().to(self.real)
            self.state.probe = self.state.probe + mean_step * probe_direction
        else:
            step_object = b1 / (a11 + 1e-6 * self.global_max(a11) + 1e-30)
        step_object = step_object.clamp(0, options.max_step).to(probe_power.dtype)
        # Per-pixel average of the frames' object steps, weighted by their illumination, along the direction.
        weighted = self.pixel_sum(step_object[:, None, None] * probe_power, batch.patch_index)
        self.add_to_object(batch.patch_index, lambda w, i, g: w / (i + regularizer) * g / (i + regularizer),
                           weighted, illumination, gradient)  # fmt: skip
        return misfit


def _workspace(engine: LSQMLEngine, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A batch-sized array kept between steps (fresh arrays of this size cost page faults on every step): the
    first ``shape[0]`` frames of one buffer per name, grown to the largest batch asked for (the live refinement's
    batches vary in size: one buffer per size would grow without bound)."""
    space = engine.__dict__.setdefault("_fused_workspace", {})
    key = (name, tuple(shape[1:]), dtype)
    if key not in space or len(space[key]) < shape[0]:
        space[key] = torch.empty(shape, dtype=dtype)
    return space[key][: shape[0]]


def _propagate(propagate: Callable, waves: torch.Tensor, out: torch.Tensor) -> None:
    """``out[:] = propagate(waves)``, written in place where the propagator can (the far field)."""
    result = propagate(waves, out=out)
    if result.data_ptr() != out.data_ptr():
        out.copy_(result)


def fused_update(engine: LSQMLEngine, index: torch.Tensor, refine_probe: bool) -> float:
    """:meth:`LSQMLEngine.update` as fused CPU kernels (same algebra, same order of updates).

    The frames are cut into ``torch.get_num_threads()`` parts, each taken through the per-frame stages (probe
    shifts, exit waves, propagation, the Fourier update, the sums) on a thread of its own with its own FFTs; the
    sums into the object are cut by object rows. Arrays of the batch's size are kept between steps. The calling
    thread's own torch work (probe-sized FFTs, per-frame step sizes) runs on one thread: an OpenMP team for
    arrays that small cost more in waking up than it saved (a third of the step at 16 frames per batch).
    """
    parts = torch.get_num_threads()
    torch.set_num_threads(1)  # this thread's setting (torch keeps one per thread); restored below
    try:
        return _fused_update(engine, index, refine_probe, parts)
    finally:
        torch.set_num_threads(parts)


def _fused_update(engine: LSQMLEngine, index: torch.Tensor, refine_probe: bool, parts: int) -> float:
    options: LSQMLOptions = engine.options
    problem, state = engine.problem, engine.state
    height, width = problem.frame_shape
    n, modes = len(index), state.probe.shape[0]
    frames, shape, flat = (0, n), (n, modes, height, width), (n, modes, height * width)

    def space(name: str, size: tuple[int, ...] = shape, dtype: torch.dtype = engine.complex) -> torch.Tensor:
        return _workspace(engine, name, size, dtype)

    corners, fractions = split_positions(state.positions_px[index], problem.frame_shape)
    corners = corners.contiguous().numpy()
    rows = (int(corners[:, 0].min()), int(corners[:, 0].max()) + height)  # the object rows the batch reaches
    ramps = None
    if not bool((fractions == 0).all()):
        ramps = tuple(r.contiguous().numpy() for r in separable_ramps(fractions, problem.frame_shape, engine.complex))
    obj = state.object.numpy()
    probes, patches, waves = space("probes"), space("patches", (n, height, width)), space("waves")
    far, chi, ramped = space("far"), space("chi"), space("ramped")

    def shifted(spectrum: torch.Tensor, out: torch.Tensor, first: int, last: int) -> None:
        """``out[first:last]``: ``ifft2`` of ``spectrum`` ``(M, H, W)`` moved to each frame's sub-pixel place."""
        if ramps is None:
            out[first:last] = torch.fft.ifft2(spectrum)
            return
        fused.ramp_spectra(spectrum.numpy(), *ramps, ramped.numpy(), first, last)
        torch.fft.ifft2(ramped[first:last], out=out[first:last])

    probe_spectrum = torch.fft.fft2(state.probe)

    def exit_waves(first: int, last: int) -> float:
        shifted(probe_spectrum, probes, first, last)
        return fused.exit_waves(obj, corners, probes.numpy(), patches.numpy(), waves.numpy(), first, last)

    totals = fused.in_parts(exit_waves, frames, parts)
    amplitudes = problem.amplitudes.index_select(0, index).to(engine.real).contiguous().numpy().reshape(n, -1)
    valid = engine.valid.contiguous().numpy().reshape(-1)
    real = amplitudes.dtype.type  # scalars in the arrays' precision keep the kernels' arithmetic in it
    eps = real(1e-6 * sum(totals) / (n * height * width) + 1e-30)  # as Batch.exit_wave_update (Parseval)
    probe_power = space("probe power", (n, height, width), engine.real).numpy()
    probe_chi = space("probe chi", (n, height, width)).numpy()

    def fourier_update(first: int, last: int) -> float:
        _propagate(problem.propagator.forward, waves[first:last], far[first:last])
        misfit = fused.magnitude_update(far.numpy().reshape(flat), amplitudes, valid, eps, first, last)
        _propagate(problem.propagator.backward, far[first:last], chi[first:last])
        fused.frame_sums(probes.numpy().reshape(flat), chi.numpy().reshape(flat), probe_power.reshape(n, -1),
                         probe_chi.reshape(n, -1), first, last)  # fmt: skip
        return misfit

    misfits = fused.in_parts(fourier_update, frames, parts)
    buffers = engine.__dict__.setdefault("_fused_buffers", {})
    if buffers.get("shape") != problem.object_shape or buffers.get("dtype") != engine.real:
        size = problem.object_shape
        buffers.update(shape=size, dtype=engine.real, illumination=np.zeros(size, amplitudes.dtype),
                       gradient=np.zeros(size, obj.dtype), weighted=np.zeros(size, amplitudes.dtype))  # fmt: skip
    illumination, gradient = buffers["illumination"], buffers["gradient"]
    largest = fused.in_parts(fused.scatter_sums, rows, parts, corners, probe_power, probe_chi, illumination, gradient)
    regularizer = real(options.delta_object * max(largest))
    direction = space("direction", (n, height, width)).numpy()
    a11, b1 = np.empty(n), np.empty(n)
    values, spectra = space("values"), space("values fft")

    def directions(first: int, last: int) -> np.ndarray | None:
        fused.object_direction(illumination, gradient, corners, probe_power, probe_chi, regularizer, direction,
                               a11, b1, first, last)  # fmt: skip
        if not refine_probe:
            return None
        weight = fused.probe_gradient_terms(patches.numpy().reshape(n, -1), chi.numpy().reshape(flat),
                                            values.numpy().reshape(flat), valid[:0], first, last)  # fmt: skip
        if ramps is not None:
            torch.fft.fft2(values[first:last], out=spectra[first:last])
        return weight

    weights = fused.in_parts(directions, frames, parts)
    a11, b1 = torch.from_numpy(a11), torch.from_numpy(b1)
    if refine_probe:
        weight = torch.from_numpy(sum(weights[1:], weights[0]).reshape(height, width))
        if ramps is None:
            probe_direction = values.sum(dim=0)
        else:
            summed = torch.empty_like(state.probe)
            fused.in_parts(fused.unramp_sum, (0, height), parts, spectra.numpy(), *ramps, summed.numpy())
            probe_direction = torch.fft.ifft2(summed)
        probe_direction = probe_direction / (weight + options.delta_probe * weight.max())
        direction_spectrum = torch.fft.fft2(probe_direction)
        moved = space("moved")
        a22, a12, b2 = np.empty(n), np.empty(n), np.empty(n)

        def probe_terms(first: int, last: int) -> None:
            shifted(direction_spectrum, moved, first, last)
            fused.probe_step_terms(moved.numpy().reshape(flat), patches.numpy().reshape(n, -1),
                                   probes.numpy().reshape(flat), chi.numpy().reshape(flat), direction.reshape(n, -1),
                                   a22, a12, b2, first, last)  # fmt: skip

        fused.in_parts(probe_terms, frames, parts)
        a22, a12, b2 = torch.from_numpy(a22), torch.from_numpy(a12), torch.from_numpy(b2)
        step_object, step_probe = joint_steps(a11, a12, a22, b1, b2, options.max_step)
        state.probe = state.probe + float(step_probe.mean()) * probe_direction
    else:
        step_object = b1 / (a11 + 1e-6 * a11.max() + 1e-30)
    steps = step_object.clamp(0, options.max_step).to(engine.real).numpy()
    fused.in_parts(fused.update_object, rows, parts, obj, corners, probe_power, steps, buffers["weighted"],
                   illumination, gradient, regularizer)  # fmt: skip
    return float(sum(misfits))
