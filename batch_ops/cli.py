"""The ``batch-ops`` command.

For now one subcommand: ``batch-ops serve``, the local Batch API server, whose flags are parsed
by ``batch_ops.server.__main__`` (so ``batch-ops serve`` and ``python -m batch_ops.server`` are
the same program). typer comes with the ``cli`` extra; without it, ``serve`` still works.

Example:
    >>> main(["serve", "--engine", "upstream"])
    2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

try:
    import typer
except ImportError:  # pragma: no cover - the ``cli`` extra is not installed
    typer = None  # type: ignore[assignment]

__all__ = ["main"]


def _serve(args: Sequence[str]) -> int:
    # Imported late: the command must not load the server (or Starlette) unless asked to serve.
    from batch_ops.server.__main__ import main as serve_main

    return serve_main(list(args))


if typer is not None:
    app = typer.Typer(no_args_is_help=True, add_completion=False, help="batch_ops: the OpenAI Batch API, anywhere.")

    @app.callback()
    def _root() -> None:
        """batch_ops command line."""

    @app.command(
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
        add_help_option=False,  # --help goes to the server's own parser, which knows the flags
    )
    def serve(ctx: typer.Context) -> None:
        """Run the local OpenAI-compatible Batch API server (flags: batch-ops serve --help)."""
        raise typer.Exit(_serve(ctx.args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``batch-ops``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if typer is None:
        if args[:1] == ["serve"]:
            return _serve(args[1:])
        print("usage: batch-ops serve [flags]   (install batch-ops[cli] for the full command)", file=sys.stderr)
        return 2
    try:
        app(args=args, prog_name="batch-ops")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
