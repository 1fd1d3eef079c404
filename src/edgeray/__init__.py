"""EdgeRay: AI-accelerated, real-time analysis of synchrotron X-ray ptychography and tomography."""

from edgeray.io.errors import EdgeRayFormatError

__version__ = "0.1.0"
__all__ = ["EdgeRayFormatError", "__version__"]
