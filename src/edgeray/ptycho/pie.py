"""ePIE and rPIE with mini-batches: preconditioned object and probe updates from the exit-wave change."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeray.ptycho.engine import Engine, EngineOptions
from edgeray.ptycho.ops import abs2, unshift_sum


@dataclass
class PIEOptions(EngineOptions):
    """(r)PIE options.

    The object update divides by ``(1 - alpha) * illumination + alpha * max|probe|^2``, the illumination summed
    over the batch's frames and the maximum taken over one frame's probe: ``alpha = 1`` is ePIE's normalization
    by the brightest pixel, small ``alpha`` is rPIE's (Maiden et al. 2017), which steps further where the probe
    is weak. The probe update mirrors it with the object's intensity.

    Attributes:
        alpha_object, alpha_probe: regularization weights in ``[0, 1]``.
        step_object, step_probe: update step sizes.
    """

    alpha_object: float = 0.1
    alpha_probe: float = 0.1
    step_object: float = 1.0
    step_probe: float = 1.0


def epie_options(**overrides) -> PIEOptions:
    """ePIE: alpha = 1 for object and probe."""
    return PIEOptions(**{"alpha_object": 1.0, "alpha_probe": 1.0, **overrides})


class PIEEngine(Engine):
    """Mini-batch (r)PIE: each batch's exit-wave changes are summed into one object and one probe update."""

    name = "rpie"

    def epoch(self) -> float:
        refine_probe = self.refine_probe_now()
        return sum(self.update(index, refine_probe) for index in self.batches())

    def update(self, index: torch.Tensor, refine_probe: bool = True) -> torch.Tensor:
        """One mini-batch step on frames ``index`` ``(B,)``; returns their amplitude misfit before it."""
        options: PIEOptions = self.options
        spectrum = torch.fft.fft2(self.state.probe)
        batch = self.forward(index, spectrum)
        misfit = batch.misfit(self.valid)
        chi = batch.exit_wave_update(self.problem, floor=self.intensity_floor(batch))
        if self.correct_positions_now():
            self.position_step(batch, chi, spectrum)
        numerator = self.pixel_sum((batch.probes.conj() * chi).sum(dim=1), batch.patch_index)
        illumination = self.pixel_sum(abs2(batch.probes).sum(dim=1), batch.patch_index)
        # alpha weighs the brightest pixel of ONE frame's probe, as in sequential (r)PIE: the batch's summed
        # illumination would shrink the steps of every frame that does not overlap another in the batch.
        a = options.alpha_object
        single = self.global_max(abs2(batch.probes).sum(dim=1))  # 0-d tensors: no host synchronization
        floor = 1e-12 * self.global_max(illumination.entries)

        def object_step(n: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
            return options.step_object * n / ((1 - a) * i + a * single + floor)

        if refine_probe:
            probe_numerator = self.sum_probe(unshift_sum(batch.patches.conj()[:, None] * chi, batch.ramps))
            weight = self.sum_probe(abs2(batch.patches).sum(dim=0))
            b = options.alpha_probe
            probe_denominator = (1 - b) * weight + b * weight.max()
            self.state.probe = self.state.probe + options.step_probe * probe_numerator / (
                probe_denominator + 1e-12 * weight.max()
            )
        self.add_to_object(batch.patch_index, object_step, numerator, illumination)
        return misfit
