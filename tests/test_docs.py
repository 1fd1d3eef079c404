"""The front door: a short README with the two commands, and a documentation site whose command reference comes
from the program's own parser."""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_readme_is_short_and_its_quick_start_has_exactly_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 8000
    quick_start = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick_start, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):  # every page it points at exists
        assert (ROOT / link).exists(), link


def test_the_command_reference_holds_every_command_the_program_has():
    sys.path.insert(0, str(ROOT / "docs" / "_ext"))
    from cli_reference import _commands

    from edgeray.cli import build_parser

    commands = {command for command, _ in _commands(build_parser(), "edgeray")}
    expected = {
        "edgeray demo",
        "edgeray edge",
        "edgeray detector replay",
        "edgeray ptycho reconstruct",
        "edgeray nn finetune",
        "edgeray tomo recon",
        "edgeray tomo denoise",
        "edgeray workflow run",
    }
    assert expected <= commands
    pages = [path.stem for path in (ROOT / "docs").glob("*.md")]
    index = (ROOT / "docs" / "index.md").read_text()
    assert all(page in index for page in pages if page != "index")  # every page is in the site's table of contents
