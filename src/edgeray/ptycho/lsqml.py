"""LSQML: least-squares maximum likelihood (Odstrcil et al. 2018) with per-frame optimal step sizes."""

from __future__ import annotations

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
        fused: run each mini-batch step as fused CPU kernels (:mod:`edgeray.ptycho.fused`; same results to
            float32 rounding, ~4x faster on 64 x 64 frames) where they apply: on the CPU, in one process, Gaussian
            noise, no position correction. False, or anywhere else: the tensor operations (the reference).
    """

    noise: str = "gaussian"
    delta_object: float = 1e-2
    delta_probe: float = 1e-2
    max_step: float = 2.0
    momentum: float = 0.8
    fused: bool = True


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
        )

    def update(self, index: torch.Tensor, refine_probe: bool = True) -> float:
        """One mini-batch step on frames ``index`` ``(B,)``; returns their amplitude misfit before it."""
        if self.fused_applies():
            return fused_update(self, index, refine_probe)
        options: LSQMLOptions = self.options
        dims = (1, 2, 3)
        spectrum = torch.fft.fft2(self.state.probe)
        batch = self.forward(index, spectrum)
        misfit = batch.misfit(self.valid)
        chi = batch.exit_wave_update(self.problem, options.noise)
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
            ridge = 1e-6 * (a11 + a22) + 1e-30
            det = (a11 + ridge) * (a22 + ridge) - a12**2
            step_object = ((a22 + ridge) * b1 - a12 * b2) / det
            step_probe = ((a11 + ridge) * b2 - a12 * b1) / det
            step_probe = step_probe.clamp(0, options.max_step)
            total, count = self.combine_costs([float(step_probe.sum()), float(len(step_probe))])
            self.state.probe = self.state.probe + total / count * probe_direction
        else:
            step_object = b1 / (a11 + 1e-6 * self.global_max(a11) + 1e-30)
        step_object = step_object.clamp(0, options.max_step).to(probe_power.dtype)
        # Per-pixel average of the frames' object steps, weighted by their illumination, along the direction.
        weighted = self.pixel_sum(step_object[:, None, None] * probe_power, batch.patch_index)
        self.add_to_object(batch.patch_index, lambda w, i, g: w / (i + regularizer) * g / (i + regularizer),
                           weighted, illumination, gradient)  # fmt: skip
        return misfit


def _moved(spectrum: torch.Tensor, ramps: tuple[np.ndarray, np.ndarray] | None, n: int, parts: int) -> torch.Tensor:
    """``ifft2`` of a spectrum ``(M, H, W)`` moved by each frame's sub-pixel ramps -> ``(B, M, H, W)``."""
    if ramps is None:
        return torch.fft.ifft2(spectrum)[None].expand(n, -1, -1, -1).contiguous()
    moved = torch.empty((n, *spectrum.shape), dtype=spectrum.dtype)
    fused.in_parts(fused.ramp_spectra, (0, n), parts, spectrum.numpy(), *ramps, moved.numpy())
    return torch.fft.ifft2(moved)


def fused_update(engine: LSQMLEngine, index: torch.Tensor, refine_probe: bool) -> float:
    """:meth:`LSQMLEngine.update` as fused CPU kernels (same algebra, same order of updates), each stage on
    ``torch.get_num_threads()`` threads."""
    options: LSQMLOptions = engine.options
    problem, state = engine.problem, engine.state
    height, width = problem.frame_shape
    n, parts = len(index), torch.get_num_threads()
    frames = (0, n)
    corners, fractions = split_positions(state.positions_px[index], problem.frame_shape)
    corners = corners.contiguous().numpy()
    rows = (int(corners[:, 0].min()), int(corners[:, 0].max()) + height)  # the object rows the batch reaches
    ramps = None
    if not bool((fractions == 0).all()):
        ramps = tuple(r.contiguous().numpy() for r in separable_ramps(fractions, problem.frame_shape, engine.complex))
    spectrum = torch.fft.fft2(state.probe)
    probes = _moved(spectrum, ramps, n, parts)
    patches = torch.empty((n, height, width), dtype=engine.complex)
    waves = torch.empty_like(probes)
    obj = state.object.numpy()
    fused.in_parts(fused.exit_waves, frames, parts, obj, corners, probes.numpy(), patches.numpy(), waves.numpy())
    far = problem.propagator.forward(waves).contiguous()
    amplitudes = problem.amplitudes.index_select(0, index).to(engine.real).contiguous().numpy()
    valid = engine.valid.contiguous().numpy()
    intensity = np.empty((n, height, width), dtype=amplitudes.dtype)
    sums = fused.in_parts(fused.intensities, frames, parts, far.numpy(), amplitudes, valid, intensity)
    misfit, total = (sum(values) for values in zip(*sums, strict=True))
    real = amplitudes.dtype.type  # scalars in the arrays' precision keep the kernels' arithmetic in it
    eps = real(1e-6 * total / intensity.size + 1e-30)  # as Batch.exit_wave_update
    fused.in_parts(fused.magnitude_update, frames, parts, far.numpy(), amplitudes, valid, intensity, eps)
    chi = problem.propagator.backward(far).contiguous()

    buffers = engine.__dict__.setdefault("_fused_buffers", {})
    if buffers.get("shape") != problem.object_shape or buffers.get("dtype") != engine.real:
        shape = problem.object_shape
        buffers.update(shape=shape, dtype=engine.real, illumination=np.zeros(shape, amplitudes.dtype),
                       gradient=np.zeros(shape, obj.dtype), weighted=np.zeros(shape, amplitudes.dtype))  # fmt: skip
    illumination, gradient = buffers["illumination"], buffers["gradient"]
    probe_power = np.empty((n, height, width), dtype=amplitudes.dtype)
    probe_chi = np.empty((n, height, width), dtype=obj.dtype)
    fused.in_parts(fused.frame_sums, frames, parts, probes.numpy(), chi.numpy(), probe_power, probe_chi)
    largest = fused.in_parts(fused.scatter_sums, rows, parts, corners, probe_power, probe_chi, illumination, gradient)
    regularizer = real(options.delta_object * max(largest))
    direction = np.empty((n, height, width), dtype=obj.dtype)
    a11, b1 = np.empty(n), np.empty(n)
    fused.in_parts(fused.object_direction, frames, parts, illumination, gradient, corners, probe_power, probe_chi,
                   regularizer, direction, a11, b1)  # fmt: skip
    a11, b1 = torch.from_numpy(a11), torch.from_numpy(b1)
    if refine_probe:
        values = torch.empty_like(chi)
        weight_dtype = np.empty(0, amplitudes.dtype)
        weights = fused.in_parts(fused.probe_gradient_terms, frames, parts, patches.numpy(), chi.numpy(),
                                 values.numpy(), weight_dtype)  # fmt: skip
        weight = torch.from_numpy(sum(weights[1:], weights[0]))
        if ramps is None:
            probe_direction = values.sum(dim=0)
        else:
            summed = torch.empty_like(state.probe)
            fused.in_parts(fused.unramp_sum, (0, height), parts, torch.fft.fft2(values).numpy(), *ramps,
                           summed.numpy())  # fmt: skip
            probe_direction = torch.fft.ifft2(summed)
        probe_direction = probe_direction / (weight + options.delta_probe * weight.max())
        moved = _moved(torch.fft.fft2(probe_direction), ramps, n, parts)
        a22, a12, b2 = np.empty(n), np.empty(n), np.empty(n)
        fused.in_parts(fused.probe_step_terms, frames, parts, moved.numpy(), patches.numpy(), probes.numpy(),
                       chi.numpy(), direction, a22, a12, b2)  # fmt: skip
        a22, a12, b2 = torch.from_numpy(a22), torch.from_numpy(a12), torch.from_numpy(b2)
        ridge = 1e-6 * (a11 + a22) + 1e-30
        det = (a11 + ridge) * (a22 + ridge) - a12**2
        step_object = ((a22 + ridge) * b1 - a12 * b2) / det
        step_probe = ((a11 + ridge) * b2 - a12 * b1) / det
        step_probe = step_probe.clamp(0, options.max_step)
        state.probe = state.probe + float(step_probe.mean()) * probe_direction
    else:
        step_object = b1 / (a11 + 1e-6 * a11.max() + 1e-30)
    steps = step_object.clamp(0, options.max_step).to(engine.real).numpy()
    fused.in_parts(fused.update_object, rows, parts, obj, corners, probe_power, steps, buffers["weighted"],
                   illumination, gradient, regularizer)  # fmt: skip
    return float(misfit)
