"""Iterative ptychography engines on torch (CPU and CUDA): mini-batch ePIE/rPIE, LSQML and ML conjugate gradient.

Use :func:`reconstruct` for a whole scan; the operators in :mod:`edgeray.ptycho.ops` and the engines are public
for those who build on them.
"""

from edgeray.ptycho.engine import EngineOptions, History, ReconstructionDiverged, State
from edgeray.ptycho.lsqml import LSQMLEngine, LSQMLOptions
from edgeray.ptycho.mlcg import MLCGEngine, MLCGOptions
from edgeray.ptycho.pie import PIEEngine, PIEOptions, epie_options
from edgeray.ptycho.problem import Geometry, Problem, initial_object, initial_probe, prepare
from edgeray.ptycho.reconstruct import ENGINES, ReconstructionResult, default_options, reconstruct

__all__ = [
    "ENGINES",
    "EngineOptions",
    "Geometry",
    "History",
    "LSQMLEngine",
    "LSQMLOptions",
    "MLCGEngine",
    "MLCGOptions",
    "PIEEngine",
    "PIEOptions",
    "Problem",
    "ReconstructionDiverged",
    "ReconstructionResult",
    "State",
    "default_options",
    "epie_options",
    "initial_object",
    "initial_probe",
    "prepare",
    "reconstruct",
]
