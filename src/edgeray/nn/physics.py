"""The surrogates' physics: the forward model of one frame, its Poisson likelihood, and the supervised losses.

Conventions shared by the corpus, training, fine-tuning and stitching:

- The network sees ``x = sqrt(counts / scale)``, ``scale`` the scan's mean count per pixel (``(N, 1, H, W)``).
- It predicts the object window ``patch`` ``(N, H, W)`` on a grid centred on the probe (no sub-pixel offset: the
  stitcher places each patch at its exact position), as amplitude and phase.
- The probe ``p`` ``(H, W)`` complex has unit power (``sum |p|^2 = 1``), so the expected ``x^2`` of a frame is
  ``|fftshift(fft2(p * patch))|^2`` (numpy's unnormalized FFT) when the patch's amplitude is relative to the
  scan's mean transmission. A ptychographic reconstruction's amplitude scale is arbitrary in the same way.
- A single frame fixes its patch only up to a constant phase; losses and stitching remove it.
"""

from __future__ import annotations

import torch


def far_field_intensity(patch: torch.Tensor, probe: torch.Tensor) -> torch.Tensor:
    """``|fftshift(fft2(probe * patch))|^2``: ``patch`` ``(N, H, W)`` complex, ``probe`` ``(H, W)`` -> ``(N, H, W)``."""
    far = torch.fft.fftshift(torch.fft.fft2(probe * patch), dim=(-2, -1))
    return far.real.square() + far.imag.square()


def poisson_deviance(
    model: torch.Tensor, measured: torch.Tensor, valid: torch.Tensor | None = None, floor: float = 1e-6
) -> torch.Tensor:
    """Poisson deviance per frame, relative to the frame's counts: ``(N,)``.

    ``sum(I - m + m log(m / I)) / sum(m)`` over each frame's pixels, with ``I`` the model intensity and ``m`` the
    measured one (both in units of ``scale``, so ``m = x^2``). It is the negative log-likelihood minus its value at
    a perfect fit: 0 when ``I = m``, never negative, finite with a finite gradient at zero counts (the term is
    then ``I``). Dividing by the counts makes one frame weigh the same at any dose; its statistical noise floor is
    about ``H W / (2 * counts)``. ``valid`` ``(H, W)`` (1 good, 0 masked) leaves bad detector pixels out.
    """
    model = model.clamp_min(0)
    ratio_log = torch.where(measured > 0, measured * torch.log(measured.clamp_min(floor) / (model + floor)), 0.0)
    terms = model - measured + ratio_log
    if valid is not None:
        terms, measured = terms * valid, measured * valid
    return terms.sum(dim=(-2, -1)) / measured.sum(dim=(-2, -1)).clamp_min(1.0)


def probe_weights(probe: torch.Tensor) -> torch.Tensor:
    """``(H, W)`` float32 weights of the pixels a frame informs: ``|probe|^2 / max |probe|^2``."""
    power = probe.real.square() + probe.imag.square()
    return (power / power.max()).to(torch.float32)


def phase_offset(predicted: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(N,)`` constant phase (rad) that best turns complex ``predicted`` into ``target`` (weighted)."""
    return torch.angle((weights * target * predicted.conj()).sum(dim=(-2, -1)))


def wrap(phase: torch.Tensor) -> torch.Tensor:
    """Phase differences wrapped into ``(-pi, pi]``."""
    return torch.atan2(torch.sin(phase), torch.cos(phase))


def supervised_losses(
    amplitude: torch.Tensor, phase: torch.Tensor, target: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted L1 of amplitude and of wrapped phase after the best constant phase: two ``(N,)`` tensors.

    ``amplitude``, ``phase``: ``(N, H, W)`` network outputs; ``target`` ``(N, H, W)`` complex label;
    ``weights`` ``(H, W)`` (e.g. :func:`probe_weights`). The phase error of each pixel is weighed also by the
    label's amplitude (a phase under little transmission is barely measured).
    """
    norm = weights.sum()
    amplitude_l1 = (weights * (amplitude - target.abs()).abs()).sum(dim=(-2, -1)) / norm
    predicted = torch.polar(amplitude.detach().clamp_min(1e-6), phase.detach())
    offset = phase_offset(predicted, target, weights).detach()
    phase_weights = weights * target.abs()
    error = wrap(phase + offset[:, None, None] - target.angle()).abs()
    phase_l1 = (phase_weights * error).sum(dim=(-2, -1)) / phase_weights.sum(dim=(-2, -1)).clamp_min(1e-12)
    return amplitude_l1, phase_l1


def mean_phase(amplitude: torch.Tensor, phase: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(N,)`` weighted circular mean of predicted phases; training keeps it near 0 (a constant phase is free)."""
    return torch.angle((weights * torch.polar(amplitude.clamp_min(1e-6), phase)).sum(dim=(-2, -1)))


def mean_slope(field: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` weighted mean phase gradient ``[y, x]`` (rad per pixel) of complex ``field`` ``(N, H, W)``, from
    the correlation of neighbouring pixels (no unwrapping)."""
    along_y = (weights[1:] * field[:, 1:] * field[:, :-1].conj()).sum(dim=(-2, -1))
    along_x = (weights[:, 1:] * field[:, :, 1:] * field[:, :, :-1].conj()).sum(dim=(-2, -1))
    return torch.stack([torch.angle(along_y), torch.angle(along_x)], dim=1)


def slope_loss(
    amplitude: torch.Tensor, phase: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, radius_px: float
) -> torch.Tensor:
    """``(N,)`` L1 error of the patch's mean phase gradient, times ``radius_px`` (rad across the beam).

    A frame measures its patch's tilt only as a sub-pixel shift of the diffraction pattern, and a wrong tilt in
    every patch becomes a large-scale phase error once they are stitched: this term weighs it on its own.
    """
    predicted = torch.polar(amplitude.clamp_min(1e-6), phase)
    return radius_px * (mean_slope(predicted, weights) - mean_slope(target, weights)).abs().sum(dim=1)
