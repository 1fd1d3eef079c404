"""Fused CPU kernels of the LSQML mini-batch step (numba), the FFTs left to torch.

The reference step (:meth:`edgeray.ptycho.lsqml.LSQMLEngine.update`) is about forty tensor operations per batch:
each a pass over ``(B, M, H, W)`` complex arrays, with temporaries, and the strided ``real``/``imag`` views of
complex tensors that torch's CPU kernels do not vectorize. Profiled on 900 frames of 64 x 64 (2 cores), FFTs were
14 % of an epoch and the elementwise passes the rest. Here each stage between two FFTs is one pass over the
batch: sub-pixel ramps applied to the probe spectrum, exit waves, the Fourier-magnitude update with its misfit,
the object-sum scatter, the step-size reductions and the object update. The results equal the reference step's
to float32 rounding (tests: one step and whole epochs, ``float32`` and ``float64``, with and without sub-pixel
positions, one and two probe modes).

Array conventions: frames ``B``, probe modes ``M``, frame ``(H, W)``; ``corners`` ``(B, 2)`` int64 top-left
object pixels of each frame's window; object-sized sum buffers are zero between calls (the kernel that reads
them last clears them). Each kernel does a part of the work (frames ``first:last``, or object rows
``top:bottom`` for those that add into object-sized sums, so that no two parts write one pixel) and releases
the GIL: :func:`in_parts` runs the parts on a thread each. The sums at a pixel are taken in frame order in
every part, so the result does not depend on the number of parts.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numba import njit

_POOLS: dict[int, ThreadPoolExecutor] = {}


def in_parts(kernel: Callable, span: tuple[int, int], parts: int, *args) -> list:
    """``kernel(*args, first, last)`` over ``range(*span)`` cut into ``parts`` equal ranges, one thread each
    (the kernels release the GIL); returns each part's result."""
    start, stop = span
    parts = max(1, min(parts, stop - start))
    if parts == 1:
        return [kernel(*args, start, stop)]
    bounds = np.linspace(start, stop, parts + 1).astype(int)
    pool = _POOLS.setdefault(parts, ThreadPoolExecutor(parts, thread_name_prefix="edgeray-fused"))
    futures = [pool.submit(kernel, *args, int(bounds[i]), int(bounds[i + 1])) for i in range(parts)]
    return [future.result() for future in futures]


@njit(cache=True, nogil=True, fastmath=True)
def ramp_spectra(spectrum, ramp_y, ramp_x, out, first, last):
    """``out[b, m] = spectrum[m] * ramp_y[b][:, None] * ramp_x[b][None, :]`` for frames ``first:last``: a probe
    spectrum ``(M, H, W)`` moved by each frame's separable sub-pixel ramps ``(B, H)``, ``(B, W)``."""
    _, modes, height, width = out.shape
    for b in range(first, last):
        for m in range(modes):
            for y in range(height):
                ry = ramp_y[b, y]
                for x in range(width):
                    out[b, m, y, x] = spectrum[m, y, x] * (ry * ramp_x[b, x])


@njit(cache=True, nogil=True, fastmath=True)
def unramp_sum(spectra, ramp_y, ramp_x, out, first, last):
    """Adjoint of :func:`ramp_spectra` summed over frames, rows ``first:last`` of ``out`` ``(M, H, W)``:
    ``out[m] = sum_b spectra[b, m] * conj(ramps[b])``."""
    n, modes, _, width = spectra.shape
    for m in range(modes):
        for y in range(first, last):
            for x in range(width):
                out[m, y, x] = 0
    for b in range(n):
        for m in range(modes):
            for y in range(first, last):
                ry = np.conj(ramp_y[b, y])
                for x in range(width):
                    out[m, y, x] += spectra[b, m, y, x] * (ry * np.conj(ramp_x[b, x]))


@njit(cache=True, nogil=True, fastmath=True)
def exit_waves(obj, corners, probes, patches, waves, first, last):
    """Object windows ``patches`` ``(B, H, W)`` and exit waves ``waves = probes * patches`` ``(B, M, H, W)``."""
    _, modes, height, width = probes.shape
    for b in range(first, last):
        row, col = corners[b, 0], corners[b, 1]
        for y in range(height):
            for x in range(width):
                patches[b, y, x] = obj[row + y, col + x]
        for m in range(modes):
            for y in range(height):
                for x in range(width):
                    waves[b, m, y, x] = probes[b, m, y, x] * patches[b, y, x]


@njit(cache=True, nogil=True, fastmath=True)
def intensities(far, amplitudes, valid, intensity, first, last):
    """Model intensities ``(B, H, W)`` (summed over modes) of detector waves ``far`` ``(B, M, H, W)``; returns
    ``(amplitude misfit over valid pixels, sum of the intensities)`` against measured ``amplitudes`` ``(B, H, W)``."""
    _, modes, height, width = far.shape
    misfit = 0.0
    total = 0.0
    for b in range(first, last):
        for y in range(height):
            for x in range(width):
                value = 0.0
                for m in range(modes):
                    f = far[b, m, y, x]
                    value += f.real * f.real + f.imag * f.imag
                intensity[b, y, x] = value
                total += intensity[b, y, x]
                diff = np.sqrt(intensity[b, y, x]) - amplitudes[b, y, x]
                misfit += valid[y, x] * diff * diff
    return misfit, total


@njit(cache=True, nogil=True, fastmath=True)
def magnitude_update(far, amplitudes, valid, intensity, eps, first, last):
    """In place: ``far *= valid * (amplitudes / sqrt(intensity + eps) - 1)`` (the Gaussian exit-wave change in
    detector space)."""
    _, modes, height, width = far.shape
    for b in range(first, last):
        for y in range(height):
            for x in range(width):
                factor = valid[y, x] * (amplitudes[b, y, x] / np.sqrt(intensity[b, y, x] + eps) - 1.0)
                for m in range(modes):
                    far[b, m, y, x] *= factor


@njit(cache=True, nogil=True, fastmath=True)
def frame_sums(probes, chi, probe_power, probe_chi, first, last):
    """Per frame ``probe_power = sum_m |P|^2`` (real) and ``probe_chi = sum_m conj(P) chi`` ``(B, H, W)``."""
    _, modes, height, width = probes.shape
    for b in range(first, last):
        for y in range(height):
            for x in range(width):
                power = 0.0
                inner = 0j
                for m in range(modes):
                    p = probes[b, m, y, x]
                    power += p.real * p.real + p.imag * p.imag
                    inner += np.conj(p) * chi[b, m, y, x]
                probe_power[b, y, x] = power
                probe_chi[b, y, x] = inner


@njit(cache=True, nogil=True, fastmath=True)
def scatter_sums(corners, probe_power, probe_chi, illumination, gradient, top, bottom):
    """Add every frame's ``probe_power`` and ``probe_chi`` into the object-sized ``illumination`` and ``gradient``
    ``(Y, X)`` at object rows ``top:bottom``; returns the largest illumination there over the frames' windows."""
    n, height, width = probe_power.shape
    for b in range(n):
        row, col = corners[b, 0], corners[b, 1]
        for y in range(max(0, top - row), min(height, bottom - row)):
            for x in range(width):
                illumination[row + y, col + x] += probe_power[b, y, x]
                gradient[row + y, col + x] += probe_chi[b, y, x]
    largest = -np.inf
    for b in range(n):
        row, col = corners[b, 0], corners[b, 1]
        for y in range(max(0, top - row), min(height, bottom - row)):
            for x in range(width):
                largest = max(largest, illumination[row + y, col + x])
    return largest


@njit(cache=True, nogil=True, fastmath=True)
def object_direction(illumination, gradient, corners, probe_power, probe_chi, regularizer, direction, a11, b1,
                     first, last):  # fmt: skip
    """The preconditioned object direction at each frame's pixels, ``gradient / (illumination + regularizer)``
    ``(B, H, W)``, and per frame ``a11 = sum probe_power |direction|^2``, ``b1 = Re sum conj(direction) probe_chi``."""
    _, height, width = direction.shape
    for b in range(first, last):
        row, col = corners[b, 0], corners[b, 1]
        s11 = 0.0
        s1 = 0.0
        for y in range(height):
            for x in range(width):
                direction[b, y, x] = gradient[row + y, col + x] / (illumination[row + y, col + x] + regularizer)
                d = direction[b, y, x]
                s11 += probe_power[b, y, x] * (d.real * d.real + d.imag * d.imag)
                pc = probe_chi[b, y, x]
                s1 += d.real * pc.real + d.imag * pc.imag
        a11[b] = s11
        b1[b] = s1


@njit(cache=True, nogil=True, fastmath=True)
def probe_gradient_terms(patches, chi, values, weight, first, last):
    """``values = conj(patches) * chi`` ``(B, M, H, W)``; returns ``sum_b |patches|^2`` ``(H, W)`` over the part."""
    _, modes, height, width = chi.shape
    weight = np.zeros((height, width), dtype=weight.dtype)
    for b in range(first, last):
        for y in range(height):
            for x in range(width):
                o = patches[b, y, x]
                weight[y, x] += o.real * o.real + o.imag * o.imag
        for m in range(modes):
            for y in range(height):
                for x in range(width):
                    values[b, m, y, x] = np.conj(patches[b, y, x]) * chi[b, m, y, x]
    return weight


@njit(cache=True, nogil=True, fastmath=True)
def probe_step_terms(moved, patches, probes, chi, direction, a22, a12, b2, first, last):
    """With ``v = moved * patches`` (the exit-wave change along the probe direction, ``moved`` ``(B, M, H, W)``
    the direction shifted to each frame): per frame ``a22 = sum |v|^2``, ``a12 = Re sum conj(direction) sum_m
    conj(P) v``, ``b2 = Re sum conj(v) chi``."""
    _, modes, height, width = moved.shape
    for b in range(first, last):
        s22 = 0.0
        s12 = 0.0
        s2 = 0.0
        for y in range(height):
            for x in range(width):
                o = patches[b, y, x]
                d = direction[b, y, x]
                along = 0j
                for m in range(modes):
                    v = moved[b, m, y, x] * o
                    s22 += v.real * v.real + v.imag * v.imag
                    along += np.conj(probes[b, m, y, x]) * v
                    c = chi[b, m, y, x]
                    s2 += v.real * c.real + v.imag * c.imag
                s12 += d.real * along.real + d.imag * along.imag
        a22[b] = s22
        a12[b] = s12
        b2[b] = s2


@njit(cache=True, nogil=True, fastmath=True)
def update_object(obj, corners, probe_power, steps, weighted, illumination, gradient, regularizer, top, bottom):
    """At object rows ``top:bottom``: ``obj += W / (I + r) * G / (I + r)`` once at every pixel the frames reach,
    with ``W`` the per-pixel sum of ``steps[b] * probe_power[b]`` (accumulated here in ``weighted``), ``I``/``G``
    the illumination and gradient sums; then clears the three sum buffers there (a pixel met again adds
    nothing)."""
    n, height, width = probe_power.shape
    for b in range(n):
        row, col = corners[b, 0], corners[b, 1]
        step = steps[b]
        for y in range(max(0, top - row), min(height, bottom - row)):
            for x in range(width):
                weighted[row + y, col + x] += step * probe_power[b, y, x]
    for b in range(n):
        row, col = corners[b, 0], corners[b, 1]
        for y in range(max(0, top - row), min(height, bottom - row)):
            for x in range(width):
                if weighted[row + y, col + x] == 0 and illumination[row + y, col + x] == 0:
                    continue  # done already (or nothing there): the buffers are clear
                lit = illumination[row + y, col + x] + regularizer
                change = weighted[row + y, col + x] / lit * gradient[row + y, col + x] / lit
                obj[row + y, col + x] = obj[row + y, col + x] + change
                weighted[row + y, col + x] = 0
                illumination[row + y, col + x] = 0
                gradient[row + y, col + x] = 0
