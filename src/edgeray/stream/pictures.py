"""What the edges' pictures process runs: PNG previews of products and slices, drawn away from the stream's
interpreter.

This module imports nothing heavy, so the process that unpickles these functions loads only matplotlib and
EdgeRay's file readers (not torch and the networks).
"""

from __future__ import annotations


def load_pictures() -> None:
    """Import what drawing a preview needs (run in the pictures process when it starts)."""
    import edgeray.viz  # noqa: F401


def draw_preview(product_path: str, png: str) -> str:
    """A product's PNG preview; returns its path."""
    from edgeray.viz import save_preview

    return str(save_preview(product_path, png))


def draw_slices(panels: dict, png: str, title: str) -> str:
    """Slices ``{label: (Y, X) array}`` side by side -> PNG at ``png``; returns its path."""
    from edgeray.viz import slice_panels

    return str(slice_panels(panels, png, title))
