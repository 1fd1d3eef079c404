"""The one error EdgeRay raises for files it cannot trust."""

from __future__ import annotations

from pathlib import Path


class EdgeRayFormatError(ValueError):
    """A file does not hold what its format promises.

    The message always names the file, the dataset (HDF5 path) at fault and what is wrong,
    e.g. ``scan.cxi: /entry_1/data_1/data: frame 17 holds NaN``.
    """

    def __init__(self, path: str | Path, dataset: str | None, problem: str):
        self.path = Path(path)
        self.dataset = dataset
        self.problem = problem
        where = f"{self.path}: {dataset}" if dataset else str(self.path)
        super().__init__(f"{where}: {problem}")
