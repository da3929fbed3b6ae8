"""An argparse parser whose help and errors look like the rest of the ``batch-ops`` commands.

``batch-ops serve`` keeps argparse so that it runs without the ``cli`` extra (typer, rich); every
other verb is a typer (click) command. This parser prints what click prints, so a user reading
``batch-ops serve --help`` next to ``batch-ops submit --help`` sees one style: ``Usage: ... [OPTIONS]``,
capitalised sections, ``--flag METAVAR`` columns, ``--gzip / --no-gzip``, ``[default: ...]`` tags,
and on a bad flag ``Try '... --help' for help.`` then ``Error: ...``, exit status 2.

Examples:
    >>> p = ClickStyleParser(prog="batch-ops serve", description="Run it.")
    >>> p.add_argument("--port", type=int, metavar="PORT", help="Port to bind.")  # doctest: +ELLIPSIS
    _StoreAction(...)
    >>> print(p.format_help())  # doctest: +NORMALIZE_WHITESPACE
    Usage: batch-ops serve [OPTIONS]
    <BLANKLINE>
      Run it.
    <BLANKLINE>
    Options:
      -h, --help   Show this message and exit.
      --port PORT  Port to bind.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from typing import Any, NoReturn

__all__ = ["ClickStyleParser"]

#: Click wraps help at 80 columns (or the terminal, if narrower) and starts the text column at
#: most 30 characters in.
_WIDTH = 80
_MAX_FIRST_COLUMN = 30


class _ClickStyleFormatter(argparse.HelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_WIDTH, max_help_position=_MAX_FIRST_COLUMN + 2)

    def add_usage(self, usage: str | None, actions: Any, groups: Any, prefix: str | None = None) -> None:
        super().add_usage(usage, actions, groups, prefix="Usage: " if prefix is None else prefix)

    def start_section(self, heading: str | None) -> None:
        super().start_section(heading[:1].upper() + heading[1:] if heading else heading)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        # Click indents the description by two spaces and keeps its paragraphs.
        paragraphs = [textwrap.fill(" ".join(p.split()), width - 2) for p in text.split("\n\n")]
        return textwrap.indent("\n\n".join(paragraphs), "  ")

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if isinstance(action, argparse.BooleanOptionalAction):
            return " / ".join(action.option_strings)
        return super()._format_action_invocation(action)

    def _format_args(self, action: argparse.Action, default_metavar: str) -> str:
        # One METAVAR, even for a repeatable flag (click shows no "[X ...]" either).
        return self._metavar_formatter(action, default_metavar)(1)[0]


class ClickStyleParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with click's help layout and error format (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _ClickStyleFormatter)
        kwargs.setdefault("usage", "%(prog)s [OPTIONS]")
        kwargs["add_help"] = False
        super().__init__(*args, **kwargs)
        self._optionals.title = "Options"
        self.add_argument("-h", "--help", action="help", help="Show this message and exit.")

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"Try '{self.prog} --help' for help.\n\nError: {message[:1].upper()}{message[1:]}\n")
