"""Sphinx configuration of EdgeRay's documentation site (``make docs``: warnings are errors)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "EdgeRay"
author = "EdgeRay developers"
extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "cli_reference"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "_generated", "**/*.jsonl", "**/*.json"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = "EdgeRay"
autodoc_typehints = "description"
autodoc_member_order = "bysource"
autodoc_mock_imports = ["p4p"]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False
