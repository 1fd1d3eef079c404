"""The edges' pictures process: PNG previews of products and slices, drawn away from the stream's interpreter.

:class:`Pictures` owns the process (at the lowest CPU priority, replaced if it breaks); the functions below are what
it runs. This module imports nothing heavy, so the process that unpickles these functions loads only matplotlib and
EdgeRay's file readers (not torch and the networks).
"""

from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

log = logging.getLogger("edgeray.edge")


class Pictures:
    """A process of its own that draws pictures, started (and matplotlib loaded) before any frame comes."""

    def __init__(self):
        self.pool = self._start()
        self.pool.submit(load_pictures).result()

    @staticmethod
    def _start() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), initializer=lower_priority)

    def draw(self, function, *args) -> str | None:
        """``function(*args)`` in the process: the picture's path, or None after an error (logged; a process that
        broke is replaced, so the next picture is drawn)."""
        try:
            return self.pool.submit(function, *args).result(timeout=300)
        except BrokenProcessPool as error:
            log.error("the pictures process broke (%s); starting another", error)
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._start()
        except Exception as error:
            log.error("a picture (%s) could not be drawn: %s", function.__name__, error)
        return None

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def load_pictures() -> None:
    """Import what drawing a preview needs (run in the pictures process when it starts)."""
    import edgeray.viz  # noqa: F401


def lower_priority() -> None:
    """The pictures process at the lowest CPU priority: a preview of the last scan (about a second of CPU) must not
    take a core from the next scan's first frames."""
    import os

    try:
        os.nice(19)
    except (AttributeError, OSError):
        pass


class PictureError(RuntimeError):
    """A picture that could not be drawn; one message only, so it crosses back from the pictures process (an
    exception whose ``__init__`` takes other arguments cannot be unpickled there, and breaks the pool)."""


def draw_preview(product_path: str, png: str) -> str:
    """A product's PNG preview; returns its path (:class:`PictureError` naming the file on any failure)."""
    try:
        from edgeray.viz import save_preview

        return str(save_preview(product_path, png))
    except Exception as error:
        raise PictureError(f"{png}: {type(error).__name__}: {error}") from None


def draw_slices(panels: dict, png: str, title: str) -> str:
    """Slices ``{label: (Y, X) array}`` side by side -> PNG at ``png``; returns its path (:class:`PictureError`
    naming the file on any failure)."""
    try:
        from edgeray.viz import slice_panels

        return str(slice_panels(panels, png, title))
    except Exception as error:
        raise PictureError(f"{png}: {type(error).__name__}: {error}") from None
