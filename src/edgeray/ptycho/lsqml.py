"""LSQML: least-squares maximum likelihood (Odstrcil et al. 2018) with per-frame optimal step sizes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeray.ptycho.engine import Engine, EngineOptions
from edgeray.ptycho.ops import abs2, shifted_probes, unshift_sum


@dataclass
class LSQMLOptions(EngineOptions):
    """LSQML options.

    Attributes:
        noise: ``gaussian`` (amplitude misfit, robust default) or ``poisson`` (counting statistics).
        delta_object, delta_probe: regularization of the preconditioners, as a fraction of their maximum.
        max_step: cap of the per-frame step sizes.
        momentum: on by default here (0.8): see :class:`~edgeray.ptycho.engine.LowPassMomentum`.
    """

    noise: str = "gaussian"
    delta_object: float = 1e-2
    delta_probe: float = 1e-2
    max_step: float = 2.0
    momentum: float = 0.8


class LSQMLEngine(Engine):
    """Each batch: exit-wave change, preconditioned object and probe directions, then for every frame the
    object and probe step sizes that best explain its exit-wave change (a 2 x 2 least-squares problem)."""

    name = "lsqml"

    def epoch(self) -> float:
        refine_probe = self.refine_probe_now()
        return sum(self.update(index, refine_probe) for index in self.batches())

    def update(self, index: torch.Tensor, refine_probe: bool = True) -> float:
        """One mini-batch step on frames ``index`` ``(B,)``; returns their amplitude misfit before it."""
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
