"""Fused CPU kernels of the LSQML mini-batch step (numba), the FFTs left to torch.

The reference step (:meth:`edgeray.ptycho.lsqml.LSQMLEngine.update`) is about forty tensor operations per batch:
each a pass over ``(B, M, H, W)`` complex arrays, with temporaries, and the strided ``real``/``imag`` views of
complex tensors that torch's CPU kernels do not vectorize. Profiled on 900 frames of 64 x 64 (2 cores), FFTs were
14 % of an epoch and the elementwise passes the rest. Here each stage between two FFTs is one pass over the
batch: sub-pixel ramps applied to the probe spectrum, exit waves, the Fourier-magnitude update with its misfit,
the object-sum scatter, the step-size reductions and the object update. The results equal the reference step's
to float32 rounding (tests: one step and whole epochs, ``float32`` and ``float64``, with and without sub-pixel
positions, one and two probe modes).

Array conventions: frames ``B``, probe modes ``M``, frame ``(H, W)`` (``P = H W`` pixels where a kernel
takes frames flattened); ``corners`` ``(B, 2)`` int64 top-left
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


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)  # torch keeps this per thread: each part's FFTs run in its own thread, no team


def in_parts(kernel: Callable, span: tuple[int, int], parts: int, *args) -> list:
    """``kernel(*args, first, last)`` over ``range(*span)`` cut into ``parts`` equal ranges, one thread each
    (the kernels, and torch's FFTs, release the GIL; the threads run torch on one thread each, so no OpenMP team
    spins beside them); returns each part's result. One part runs in the calling thread."""
    start, stop = span
    parts = max(1, min(parts, stop - start))
    if parts == 1:
        return [kernel(*args, start, stop)]
    bounds = [start + (stop - start) * i // parts for i in range(parts + 1)]
    if parts not in _POOLS:
        _POOLS[parts] = ThreadPoolExecutor(parts, "edgeray-fused", initializer=_one_torch_thread)
    futures = [_POOLS[parts].submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(parts)]
    return [future.result() for future in futures]


KERNEL = {"cache": True, "nogil": True, "fastmath": True, "error_model": "numpy"}  # numpy errors: no branch per
# division, which is what lets LLVM vectorize the loops (3-4x here)


@njit(**KERNEL)
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


@njit(**KERNEL)
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


@njit(**KERNEL)
def exit_waves(obj, corners, probes, patches, waves, first, last):
    """Object windows ``patches`` ``(B, H, W)`` and exit waves ``waves = probes * patches`` ``(B, M, H, W)``;
    returns the waves' total intensity (what the detector model receives: the propagators are unitary)."""
    _, modes, height, width = probes.shape
    total = 0.0
    for b in range(first, last):
        row, col = corners[b, 0], corners[b, 1]
        for y in range(height):
            for x in range(width):
                patches[b, y, x] = obj[row + y, col + x]
        for m in range(modes):
            for y in range(height):
                for x in range(width):
                    wave = probes[b, m, y, x] * patches[b, y, x]
                    waves[b, m, y, x] = wave
                    total += wave.real * wave.real + wave.imag * wave.imag
    return total


@njit(**KERNEL)
def magnitude_update(far, amplitudes, valid, eps, first, last):
    """In place on detector waves ``far`` ``(B, M, P)``: ``far *= valid * (amplitudes / sqrt(I + eps) - 1)``, the
    Gaussian exit-wave change in detector space, with ``I`` the model intensity summed over modes; returns the
    amplitude misfit ``sum valid (sqrt(I) - amplitudes)^2`` of frames ``first:last``."""
    _, modes, pixels = far.shape
    scratch = np.empty(pixels, dtype=amplitudes.dtype)
    misfit = 0.0
    for b in range(first, last):
        for p in range(pixels):
            scratch[p] = 0
        for m in range(modes):
            for p in range(pixels):
                f = far[b, m, p]
                scratch[p] += f.real * f.real + f.imag * f.imag
        for p in range(pixels):
            intensity = scratch[p]
            diff = np.sqrt(intensity) - amplitudes[b, p]
            misfit += valid[p] * diff * diff
            root = np.sqrt(intensity + eps)
            scratch[p] = valid[p] * (amplitudes[b, p] - root) / root
        for m in range(modes):
            for p in range(pixels):
                far[b, m, p] *= scratch[p]
    return misfit


@njit(**KERNEL)
def frame_sums(probes, chi, probe_power, probe_chi, first, last):
    """Per frame ``probe_power = sum_m |P|^2`` (real) and ``probe_chi = sum_m conj(P) chi`` ``(B, P)``."""
    _, modes, pixels = probes.shape
    for b in range(first, last):
        for p in range(pixels):
            probe_power[b, p] = 0
            probe_chi[b, p] = 0
        for m in range(modes):
            for p in range(pixels):
                probe = probes[b, m, p]
                probe_power[b, p] += probe.real * probe.real + probe.imag * probe.imag
                probe_chi[b, p] += np.conj(probe) * chi[b, m, p]


@njit(**KERNEL)
def scatter_sums(corners, probe_power, probe_chi, illumination, gradient, top, bottom):
    """Add every frame's ``probe_power`` and ``probe_chi`` ``(B, H, W)`` into the object-sized ``illumination``
    and ``gradient`` ``(Y, X)`` at object rows ``top:bottom``; returns the largest illumination there over the
    frames' windows."""
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


@njit(**KERNEL)
def object_direction(illumination, gradient, corners, probe_power, probe_chi, regularizer, direction, a11, b1,
                     first, last):  # fmt: skip
    """The preconditioned object direction at each frame's pixels, ``gradient / (illumination + regularizer)``
    ``(B, H, W)``, and per frame ``a11 = sum probe_power |direction|^2``, ``b1 = Re sum conj(direction) probe_chi``."""
    _, height, width = direction.shape
    one = illumination.dtype.type(1)  # typed constants keep float32 arithmetic in float32
    for b in range(first, last):
        row, col = corners[b, 0], corners[b, 1]
        s11 = 0.0
        s1 = 0.0
        for y in range(height):
            for x in range(width):
                inverse = one / (illumination[row + y, col + x] + regularizer)
                g = gradient[row + y, col + x]
                d_re, d_im = g.real * inverse, g.imag * inverse
                direction[b, y, x] = complex(d_re, d_im)
                s11 += probe_power[b, y, x] * (d_re * d_re + d_im * d_im)
                pc = probe_chi[b, y, x]
                s1 += d_re * pc.real + d_im * pc.imag
        a11[b] = s11
        b1[b] = s1


@njit(**KERNEL)
def probe_gradient_terms(patches, chi, values, weight, first, last):
    """``values = conj(patches) * chi`` ``(B, M, P)``; returns ``sum_b |patches|^2`` ``(P,)`` over the part
    (``weight``: an array of the real dtype)."""
    _, modes, pixels = chi.shape
    weight = np.zeros(pixels, dtype=weight.dtype)
    for b in range(first, last):
        for p in range(pixels):
            o = patches[b, p]
            weight[p] += o.real * o.real + o.imag * o.imag
        for m in range(modes):
            for p in range(pixels):
                values[b, m, p] = np.conj(patches[b, p]) * chi[b, m, p]
    return weight


@njit(**KERNEL)
def probe_step_terms(moved, patches, probes, chi, direction, a22, a12, b2, first, last):
    """With ``v = moved * patches`` (the exit-wave change along the probe direction, ``moved`` ``(B, M, P)`` the
    direction shifted to each frame): per frame ``a22 = sum |v|^2``, ``a12 = Re sum conj(direction) sum_m
    conj(P) v``, ``b2 = Re sum conj(v) chi``."""
    _, modes, pixels = moved.shape
    scratch = np.empty(pixels, dtype=patches.dtype)
    for b in range(first, last):
        s22 = 0.0
        s12 = 0.0
        s2 = 0.0
        for p in range(pixels):
            scratch[p] = 0
        for m in range(modes):
            for p in range(pixels):
                v = moved[b, m, p] * patches[b, p]
                s22 += v.real * v.real + v.imag * v.imag
                c = chi[b, m, p]
                s2 += v.real * c.real + v.imag * c.imag
                scratch[p] += np.conj(probes[b, m, p]) * v
        for p in range(pixels):
            d = direction[b, p]
            s12 += d.real * scratch[p].real + d.imag * scratch[p].imag
        a22[b] = s22
        a12[b] = s12
        b2[b] = s2


@njit(**KERNEL)
def update_object(obj, corners, probe_power, steps, weighted, illumination, gradient, regularizer, top, bottom):
    """At object rows ``top:bottom``: ``obj += W / (I + r) * G / (I + r)`` once at every pixel the frames reach,
    with ``W`` the per-pixel sum of ``steps[b] * probe_power[b]`` (accumulated here in ``weighted``), ``I``/``G``
    the illumination and gradient sums; then clears the three sum buffers there (a pixel met again adds
    nothing)."""
    n, height, width = probe_power.shape
    one = illumination.dtype.type(1)
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
                inverse = one / (illumination[row + y, col + x] + regularizer)
                scale = weighted[row + y, col + x] * inverse * inverse
                g = gradient[row + y, col + x]
                o = obj[row + y, col + x]
                obj[row + y, col + x] = complex(o.real + g.real * scale, o.imag + g.imag * scale)
                weighted[row + y, col + x] = 0  # a pixel met again: W = G = 0, no change
                illumination[row + y, col + x] = 0
                gradient[row + y, col + x] = 0
