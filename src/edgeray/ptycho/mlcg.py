"""Maximum-likelihood conjugate gradient: preconditioned Dai-Yuan directions with a line search.

The solver PtyGer (Yu et al. 2022) parallelizes: every iteration takes the gradient of the likelihood over all
frames (here by torch's automatic differentiation, batch by batch), so the partial sums of the gradient and of
the line-search costs are exactly what a distributed run all-reduces.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from edgeray.ptycho.engine import Batch, Engine, EngineOptions, State
from edgeray.ptycho.ops import abs2, scatter_patches


@dataclass
class MLCGOptions(EngineOptions):
    """ML-CG options.

    Attributes:
        noise: ``gaussian`` (amplitude misfit) or ``poisson`` (negative log-likelihood of counts).
        delta_object, delta_probe: preconditioner regularization, fraction of the maximum.
        restart_every: restart with steepest descent every this many iterations.
        batch_size: frames per gradient chunk (memory only: the gradient is always over all frames).
    """

    noise: str = "gaussian"
    delta_object: float = 1e-2
    delta_probe: float = 1e-2
    restart_every: int = 50
    batch_size: int = 512


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return float(sum((x.conj() * y).real.sum() for x, y in zip(a, b, strict=True)))


class MLCGEngine(Engine):
    """One epoch = one gradient over all frames, one conjugate direction, one line search."""

    name = "mlcg"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.previous_gradient: list[torch.Tensor] | None = None
        self.previous_direction: list[torch.Tensor] | None = None
        self.step = 1.0
        self.iteration = 0

    def _frames(self) -> list[torch.Tensor]:
        n = self.problem.n_frames
        return self.announced(
            list(torch.split(torch.arange(n, device=self.problem.device), max(1, self.options.batch_size)))
        )

    def _cost_of(self, batch: Batch) -> torch.Tensor:
        valid = self.valid
        if self.options.noise == "gaussian":
            return (valid * (torch.sqrt(batch.intensity + 1e-12) - batch.amplitudes) ** 2).sum()
        if self.options.noise == "poisson":
            return (valid * (batch.intensity - batch.amplitudes**2 * torch.log(batch.intensity + 1e-12))).sum()
        raise ValueError(f"noise model must be gaussian or poisson, not {self.options.noise!r}")

    def cost(self, state: State) -> float:
        """The likelihood cost of ``state`` over all frames."""
        total = 0.0
        with torch.no_grad():
            spectrum = torch.fft.fft2(state.probe)
            for index in self._frames():
                total += float(self._cost_of(Batch(self.problem, state, index, spectrum)))
        return self.combine_costs([total])[0]

    def combine_gradient(self, object_parts: list[torch.Tensor], probe_parts: list[torch.Tensor]) -> None:
        """Make the object-shaped and probe-shaped partial sums (in place) sums over every frame."""
        for part in probe_parts:
            self.sum_probe(part)
        for part in object_parts:
            self.sum_object(part)

    def dot(self, a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
        """Real inner product of ``[object, probe]`` pairs."""
        return _dot(a, b)

    def gradient(self) -> tuple[float, float, list[torch.Tensor], list[torch.Tensor]]:
        """Cost, amplitude misfit, gradient ``[d object, d probe]`` and preconditioner, over all frames."""
        obj = self.state.object.detach().requires_grad_(True)
        probe = self.state.probe.detach().requires_grad_(self.refine_probe_now())
        state = State(obj, probe, self.state.positions_px)
        shape = self.problem.object_shape
        illumination = torch.zeros(shape, dtype=self.real, device=obj.device)
        probe_weight = torch.zeros(probe.shape[-2:], dtype=self.real, device=obj.device)
        cost = misfit = 0.0
        for index in self._frames():
            batch = Batch(self.problem, state, index, torch.fft.fft2(probe))
            value = self._cost_of(batch)
            value.backward()
            cost += float(value.detach())
            with torch.no_grad():
                misfit += batch.misfit(self.valid)
                power = abs2(batch.probes).sum(dim=1)
                illumination += scatter_patches(power, batch.patch_index, shape)
                probe_weight += abs2(batch.patches).sum(dim=0)
        grads = [obj.grad, probe.grad if probe.grad is not None else torch.zeros_like(probe)]
        self.combine_gradient([grads[0], illumination], [grads[1], probe_weight])
        cost = self.combine_costs([cost])[0]  # the misfit: this process's, as every engine's (run() sums it)
        precondition = [
            1.0 / (illumination + self.options.delta_object * self.global_max(illumination)),
            1.0 / (probe_weight + self.options.delta_probe * probe_weight.max()),
        ]
        return cost, misfit, grads, precondition

    def _moved(self, direction: list[torch.Tensor], step: float) -> State:
        return State(
            self.state.object + step * direction[0], self.state.probe + step * direction[1], self.state.positions_px
        )

    def epoch(self) -> float:
        cost0, misfit, grad, precondition = self.gradient()
        scaled = [grad[0] * precondition[0], grad[1] * precondition[1]]
        direction = [-s for s in scaled]
        restart = self.previous_gradient is None or self.iteration % self.options.restart_every == 0
        if not restart:
            change = [g - p for g, p in zip(grad, self.previous_gradient, strict=True)]
            denominator = self.dot(self.previous_direction, change)
            beta = self.dot(grad, scaled) / denominator if denominator != 0 else 0.0
            if beta > 0 and beta == beta:
                direction = [d + beta * p for d, p in zip(direction, self.previous_direction, strict=True)]
        slope = self.dot(grad, direction)
        if slope >= 0:  # not a descent direction: fall back to preconditioned steepest descent
            direction = [-s for s in scaled]
            slope = self.dot(grad, direction)
        step = self._line_search(cost0, slope, direction)
        if step > 0:
            self.state = self._moved(direction, step)
            self.step = step
        self.previous_gradient, self.previous_direction = grad, direction
        self.iteration += 1
        return misfit

    def _line_search(self, cost0: float, slope: float, direction: list[torch.Tensor]) -> float:
        """A step that lowers the cost: a parabola through f(0), f'(0) and f(t1), then halving if needed."""
        trial = min(2 * self.step, 4.0)
        for _ in range(8):
            cost1 = self.cost(self._moved(direction, trial))
            curvature = cost1 - cost0 - slope * trial
            best_step, best_cost = (trial, cost1) if cost1 < cost0 else (0.0, cost0)
            if curvature > 0:
                guess = min(max(-slope * trial**2 / (2 * curvature), 0.1 * trial), 4 * trial)
                cost_guess = self.cost(self._moved(direction, guess))
                if cost_guess < best_cost:
                    best_step, best_cost = guess, cost_guess
            if best_step > 0:
                return best_step
            trial /= 4
        return 0.0
