"""``reconstruct``: a scan in, a product out, with any engine, on CPU or CUDA."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

from edgeray.device import resolve_device
from edgeray.io import Product, PtychoScan
from edgeray.ptycho.engine import EngineOptions, History, State
from edgeray.ptycho.lsqml import LSQMLEngine, LSQMLOptions
from edgeray.ptycho.mlcg import MLCGEngine, MLCGOptions
from edgeray.ptycho.pie import PIEEngine, PIEOptions, epie_options
from edgeray.ptycho.problem import (
    Geometry,
    Problem,
    add_probe_modes,
    initial_object,
    initial_probe,
    object_on_grid,
    prepare,
)

#: engine name -> (engine class, its options class, the options it starts from): the one table of engines
ENGINE_TABLE: dict[str, tuple[type, type, Callable[[], EngineOptions]]] = {
    "lsqml": (LSQMLEngine, LSQMLOptions, LSQMLOptions),
    "rpie": (PIEEngine, PIEOptions, PIEOptions),
    "epie": (PIEEngine, PIEOptions, epie_options),
    "mlcg": (MLCGEngine, MLCGOptions, MLCGOptions),
}
ENGINES = tuple(ENGINE_TABLE)
DEFAULT_ENGINE = "lsqml"
DEFAULT_EPOCHS = 50


def engine_of(options: EngineOptions) -> str:
    """The engine an options object is for (``rpie`` for :class:`PIEOptions`: ePIE is rPIE with other weights)."""
    return next(name for name, (_, cls, _) in ENGINE_TABLE.items() if type(options) is cls)


def default_options(engine: str, **overrides) -> EngineOptions:
    """The documented defaults of ``engine`` with ``overrides`` applied (unknown names are an error)."""
    if engine not in ENGINE_TABLE:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    _, cls, start = ENGINE_TABLE[engine]
    base = asdict(start())
    known = {f.name for f in fields(cls)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"engine {engine} has no option(s) {', '.join(sorted(unknown))}; it has {sorted(known)}")
    return cls(**{**base, **overrides})


@dataclass
class ReconstructionResult:
    """A reconstruction and how it went: the product, the cost history, the prepared problem and final state."""

    product: Product
    history: History
    problem: Problem
    state: State
    seconds: float


def run(
    scan: PtychoScan,
    engine: str = DEFAULT_ENGINE,
    epochs: int = DEFAULT_EPOCHS,
    device: str = "cpu",
    *,
    geometry: Geometry | None = None,
    probe: np.ndarray | None = None,
    obj: np.ndarray | Product | None = None,
    callback: Callable[[int, float, float], None] | None = None,
    observer: Callable[[State], None] | None = None,
    options: EngineOptions | None = None,
    **option_overrides,
) -> ReconstructionResult:
    """Reconstruct ``scan`` and keep everything (see :func:`reconstruct` for the arguments).

    ``observer(state)`` is called after each epoch, outside the timed part (benchmarks score every epoch).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, not {epochs!r}")
    options = options or default_options(engine, **option_overrides)
    problem = prepare(scan, geometry, resolve_device(device))
    start_probe = probe if probe is not None else scan.probe
    if start_probe is None:
        probe_t = initial_probe(problem, options.n_probe_modes)
    else:
        probe_t = torch.as_tensor(np.asarray(start_probe, dtype=np.complex64)).reshape(-1, *problem.frame_shape)
        probe_t = add_probe_modes(probe_t.to(problem.device), options.n_probe_modes)
    if isinstance(obj, Product):
        obj = object_on_grid(obj, problem)
    if obj is not None:
        obj_t = torch.as_tensor(np.asarray(obj, dtype=np.complex64)).to(problem.device)
        if tuple(obj_t.shape) != problem.object_shape:
            raise ValueError(f"start object shape {tuple(obj_t.shape)} differs from the scan's {problem.object_shape}")
    else:
        obj_t = initial_object(problem)
    state = State(obj_t, probe_t, problem.positions_px.clone())
    runner = ENGINE_TABLE[engine][0](problem, state, options)
    runner.name = engine
    started = time.perf_counter()
    history = runner.run(epochs, callback, observer)
    seconds = time.perf_counter() - started
    product = to_product(runner.state, problem, history, engine, options, seconds)
    return ReconstructionResult(product, history, problem, runner.state, seconds)


def reconstruct(
    scan: PtychoScan,
    engine: str = DEFAULT_ENGINE,
    epochs: int = DEFAULT_EPOCHS,
    device: str = "cpu",
    **kwargs,
) -> Product:
    """Reconstruct a ptychography scan.

    Args:
        scan: frames, positions and geometry (e.g. from :func:`edgeray.io.read_cxi`).
        engine: ``lsqml`` (default), ``rpie``, ``epie`` or ``mlcg``.
        epochs: passes over the data.
        device: ``cpu``, ``cuda`` or ``auto``.
        geometry: far field (default) or near field, see :class:`~edgeray.ptycho.Geometry`.
        probe: start probe ``(modes, H, W)``; default the file's illumination, else one made from the data.
        obj: start object ``(Y, X)`` on the scan's grid, or a product (EdgeRay's or ptychodus's) placed on it by
            its centre; default ones.
        callback: ``callback(epoch, cost, frames_per_s)`` after each epoch.
        options: an options dataclass of the engine; or give its fields as keywords
            (e.g. ``batch_size=128, n_probe_modes=2``).

    Returns:
        The product; its ``loss_values`` are the cost per epoch, its ``attrs`` hold the engine, options, seconds
        and, when the engine stopped early, why.
    """
    return run(scan, engine, epochs, device, **kwargs).product


def to_product(
    state: State, problem: Problem, history: History, engine: str, options: EngineOptions, seconds: float
) -> Product:
    """Package an engine state as a :class:`~edgeray.io.Product` (positions back in metres)."""
    pixel = np.asarray(problem.pixel_size_m)
    origin = np.asarray(problem.origin_m)
    positions_m = state.positions_px.detach().cpu().numpy() * pixel + origin
    centre = np.asarray(problem.object_shape) / 2 * pixel + origin
    attrs = {
        "engine": engine,
        "options": json.dumps(asdict(options)),
        "seconds": seconds,
        "epochs": len(history.cost),
        "propagation": problem.geometry.propagation,
    }
    if history.stopped:
        attrs["stopped"] = history.stopped
    return Product(
        object=state.object.detach().cpu().numpy().astype(np.complex64)[None],
        probe=state.probe.detach().cpu().numpy().astype(np.complex64),
        positions_m=positions_m,
        object_pixel_size_m=tuple(float(p) for p in pixel),
        probe_pixel_size_m=tuple(float(p) for p in pixel),
        energy_eV=problem.energy_eV,
        distance_m=problem.distance_m,
        object_center_m=(float(centre[0]), float(centre[1])),
        loss_values=np.asarray(history.cost, dtype=np.float64),
        loss_epochs=np.arange(1, len(history.cost) + 1),
        name=f"edgeray {engine}",
        attrs=attrs,
    )
