"""File formats: CXI raw ptychography, reconstruction products, Data Exchange and NeXus NXtomo tomography.

Readers are lazy and validating; writers are atomic (temporary name, then rename). Every problem
with a file raises :class:`EdgeRayFormatError` naming the file and the dataset at fault.
"""

from edgeray.io.cxi import CXIFile, GroundTruth, PtychoScan, read_cxi, write_cxi
from edgeray.io.detect import KINDS, detect_kind
from edgeray.io.dxchange import (
    DataExchangeFile,
    TomoScan,
    read_dxchange,
    read_reconstruction,
    write_dxchange,
    write_reconstruction,
)
from edgeray.io.errors import EdgeRayFormatError
from edgeray.io.geometry import EV_J, HC_EV_M, PtychoGeometry
from edgeray.io.inspect import inspect
from edgeray.io.nxtomo import NXtomoFile, is_nxtomo, open_tomo, read_tomo
from edgeray.io.product import Product, read_product, write_product

__all__ = [
    "EV_J",
    "HC_EV_M",
    "KINDS",
    "CXIFile",
    "DataExchangeFile",
    "EdgeRayFormatError",
    "GroundTruth",
    "NXtomoFile",
    "Product",
    "PtychoGeometry",
    "PtychoScan",
    "TomoScan",
    "detect_kind",
    "inspect",
    "is_nxtomo",
    "open_tomo",
    "read_cxi",
    "read_dxchange",
    "read_product",
    "read_reconstruction",
    "read_tomo",
    "write_cxi",
    "write_dxchange",
    "write_product",
    "write_reconstruction",
]
