"""``.. edgeray-cli::``: the command reference, generated from ``edgeray``'s own argument parser, so every command
and flag the program has is in it, with the help and default it has."""

from __future__ import annotations

import argparse

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _commands(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, argparse.ArgumentParser]]:
    """``(command line, parser)`` of every command under ``parser``, depth first."""
    found = [(prefix, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += _commands(child, f"{prefix} {name}")
    return found


class EdgerayCli(SphinxDirective):
    """One section per command: its description and its ``--help`` text."""

    def run(self) -> list[nodes.Node]:
        from edgeray.cli import build_parser

        sections = []
        for command, parser in _commands(build_parser(), "edgeray"):
            section = nodes.section(ids=[nodes.make_id(command)])
            section += nodes.title(text=command)
            if parser.description:
                section += nodes.paragraph(text=parser.description)
            parser.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
            section += nodes.literal_block(text=parser.format_help())
            sections.append(section)
        return sections


def setup(app) -> dict:
    app.add_directive("edgeray-cli", EdgerayCli)
    return {"parallel_read_safe": True}
