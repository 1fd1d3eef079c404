"""Tomography: preprocessing, rotation centre, FBP (gridrec by NUFFT, or backprojection), SIRT, file pipeline; the
denoisers of reconstructed slices (TomoGAN, Noise2Inverse: :mod:`edgeray.tomo.denoise`, :mod:`edgeray.tomo.tomogan`,
:mod:`edgeray.tomo.noise2inverse`) and their shipped models (``edgeray/tomo/shipped``)."""

from edgeray.tomo.center import find_center_entropy, find_center_pair, opposite_pair
from edgeray.tomo.fbp import FILTERS, backproject, fbp, filter_response, gridrec
from edgeray.tomo.geometry import angle_weights
from edgeray.tomo.preprocess import minus_log, normalize, paganin, remove_outliers, remove_stripes
from edgeray.tomo.project import project
from edgeray.tomo.recon import ALGORITHMS, TomoOptions, reconstruct_file
from edgeray.tomo.sirt import cgls, sirt

__all__ = [
    "ALGORITHMS",
    "FILTERS",
    "TomoOptions",
    "angle_weights",
    "backproject",
    "cgls",
    "fbp",
    "filter_response",
    "find_center_entropy",
    "find_center_pair",
    "gridrec",
    "minus_log",
    "normalize",
    "opposite_pair",
    "paganin",
    "project",
    "reconstruct_file",
    "remove_outliers",
    "remove_stripes",
    "sirt",
]
