"""``.. yat-cli-usage::``: the ``yat-core`` usage text, generated from the real parser.

The directive shows what ``yat-core --help`` prints and then, under a heading each,
what ``yat-core COMMAND --help`` prints for every command, taken from
:func:`yat_core.cli.build_parser` at build time: the reference cannot drift from the
command line, and a new command appears without editing the page. With an argument (a
command's name) it shows that command only.
"""

from __future__ import annotations

import argparse

from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

# Wrap as an 88-column terminal would, whatever the builder's environment says.
HELP_WIDTH = 88


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps the subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _help(parser: argparse.ArgumentParser) -> str:
    formatter = parser.formatter_class

    def narrow(prog: str) -> argparse.HelpFormatter:
        return formatter(prog, width=HELP_WIDTH)

    parser.formatter_class = narrow  # type: ignore[assignment]
    try:
        return parser.format_help()
    finally:
        parser.formatter_class = formatter


class CliUsage(SphinxDirective):
    """Literal blocks of ``--help``: the parser's and every command's, or one command's."""

    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        from yat_core.cli import build_parser

        parser = build_parser()
        commands = _subparsers(parser)
        if self.arguments:
            name = self.arguments[0]
            if name not in commands:
                raise self.error(f"yat-core has no command {name!r}; it has: {', '.join(commands)}")
            return [_block(commands[name])]
        out: list[nodes.Node] = [_block(parser)]
        for name, command in commands.items():
            out.append(nodes.rubric("", f"yat-core {name}"))
            out.append(_block(command))
        return out


def _block(parser: argparse.ArgumentParser) -> nodes.literal_block:
    text = _help(parser).rstrip()
    return nodes.literal_block(text, text, language="text")


def setup(app: Sphinx) -> dict[str, object]:
    app.add_directive("yat-cli-usage", CliUsage)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
