"""The fused CPU kernels of the LSQML step (edgeray.ptycho.fused) against the tensor-operation reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeray.io import PtychoScan
from edgeray.ptycho import State, prepare
from edgeray.ptycho.lsqml import LSQMLEngine
from edgeray.ptycho.problem import add_probe_modes, initial_object
from edgeray.ptycho.reconstruct import default_options, run
from edgeray.sim import PtychoSimConfig, simulate_ptycho


def small_scan(jitter_px: float) -> PtychoScan:
    """120 frames of 32 x 32 on a raster; sub-pixel positions unless ``jitter_px`` is 0 (whole pixels)."""
    config = PtychoSimConfig(frame_size=32, n_positions=120, step_px=4.0, scan="raster", jitter_px=jitter_px,
                             photons=1e6, seed=3)  # fmt: skip
    return simulate_ptycho(config)


def engine_after_one_step(scan, fused, dtype, modes, refine_probe, threads=2) -> LSQMLEngine:
    options = default_options("lsqml", fused=fused, dtype=dtype, n_probe_modes=modes, momentum=0.0)
    problem = prepare(scan)
    probe = torch.as_tensor(np.asarray(scan.ground_truth.probe, dtype=np.complex64)).reshape(-1, 32, 32)
    # a start away from the answer, the same for both: a flat object and the true probe (with made-up modes)
    state = State(initial_object(problem), add_probe_modes(probe, modes), problem.positions_px.clone())
    engine = LSQMLEngine(problem, state, options)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        engine.update(torch.arange(0, problem.n_frames, 2), refine_probe)  # a batch of every other frame
    finally:
        torch.set_num_threads(previous)
    return engine


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().norm() / b.abs().norm())


@pytest.mark.parametrize("jitter_px", [0.0, 0.5])
@pytest.mark.parametrize("modes", [1, 2])
@pytest.mark.parametrize("refine_probe", [True, False])
def test_one_fused_step_equals_the_reference_step(jitter_px, modes, refine_probe):
    """float64: equal to 1e-12. float32: as close to the float64 step as the float32 reference is (the two
    float32 paths differ by up to ~4e-5 of the step here, which is the float32 reference's own distance from
    float64: comparing them with each other to 1e-5 would test rounding, not the algebra)."""
    scan = small_scan(jitter_px)
    exact = engine_after_one_step(scan, False, "float64", modes, refine_probe)
    fused64 = engine_after_one_step(scan, True, "float64", modes, refine_probe)
    assert fused64.fused_applies() and not exact.fused_applies()
    start = initial_object(exact.problem).to(torch.complex128)
    change = exact.state.object - start
    assert float(change.abs().max()) > 1e-3  # the step did something
    assert relative(fused64.state.object - start, change) < 1e-12
    assert relative(fused64.state.probe, exact.state.probe) < 1e-12
    buffer = fused64._fused_buffers["illumination"]
    assert not buffer.any()  # the object-sized sums are left clear for the next batch

    def error32(fused: bool) -> tuple[float, float]:
        engine = engine_after_one_step(scan, fused, "float32", modes, refine_probe)
        return (
            relative_l2(engine.state.object.to(torch.complex128) - start, change),
            relative_l2(engine.state.probe.to(torch.complex128), exact.state.probe),
        )

    (fused_object, fused_probe), (reference_object, reference_probe) = error32(True), error32(False)
    assert fused_object <= 1.2 * reference_object + 1e-6
    assert fused_probe <= 1.2 * reference_probe + 1e-6


def test_the_step_does_not_depend_on_the_number_of_threads():
    scan = small_scan(0.5)
    one = engine_after_one_step(scan, True, "float64", 1, True, threads=1)
    two = engine_after_one_step(scan, True, "float64", 1, True, threads=2)
    assert relative(one.state.object, two.state.object) < 1e-14


def test_whole_runs_agree_and_the_fused_path_steps_aside_where_it_does_not_apply():
    scan = small_scan(0.5)
    common = {"probe": scan.ground_truth.probe, "batch_size": 40, "dtype": "float64"}
    fused = run(scan, "lsqml", 4, **common)
    reference = run(scan, "lsqml", 4, fused=False, **common)
    assert relative(fused.state.object, reference.state.object) < 1e-10
    assert fused.history.cost == pytest.approx(reference.history.cost, rel=1e-10)
    for other in ({"noise": "poisson"}, {"position_correction": True, "position_start_epoch": 0}):
        options = default_options("lsqml", **other)
        problem = prepare(scan)
        state = State(initial_object(problem), problem.amplitudes.new_ones(1, 32, 32, dtype=torch.complex64),
                      problem.positions_px.clone())  # fmt: skip
        assert not LSQMLEngine(problem, state, options).fused_applies()


def test_batches_of_varying_size_reuse_the_same_arrays_and_stay_exact():
    """The live refinement's batches vary in size: the kept arrays must not multiply, nor a smaller batch read a
    larger one's leftovers."""
    scan = small_scan(0.5)
    engines = {}
    for fused in (True, False):
        options = default_options("lsqml", fused=fused, dtype="float64", momentum=0.0)
        problem = prepare(scan)
        probe = torch.as_tensor(np.asarray(scan.ground_truth.probe, dtype=np.complex64)).reshape(-1, 32, 32)
        engine = LSQMLEngine(problem, State(initial_object(problem), probe, problem.positions_px.clone()), options)
        for first, size in ((0, 40), (40, 7), (47, 23), (70, 40)):
            engine.update(torch.arange(first, first + size), True)
        engines[fused] = engine
    assert relative(engines[True].state.object, engines[False].state.object) < 1e-12
    assert len(engines[True]._fused_workspace) == 12  # one array per name (12 names), grown to the largest batch
