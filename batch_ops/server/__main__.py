"""``python -m batch_ops.server`` / ``batch-ops serve``: run the local Batch API server.

Examples:
    >>> from batch_ops.server.__main__ import main
    >>> main(["--engine", "upstream"])  # doctest: +ELLIPSIS
    2
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from batch_ops.server.options import ServerOptions

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, serve until SIGINT/SIGTERM; the exit status."""
    try:
        options = ServerOptions.from_argv(argv)
    except SystemExit as exc:  # --help, or a flag the command refused (it printed why)
        return exc.code if isinstance(exc.code, int) else 0
    except ValueError as exc:
        print(f"batch-ops serve: {exc}", file=sys.stderr)
        return 2
    # Imported late: parsing --help must not need starlette and uvicorn.
    import uvicorn

    from batch_ops.server.app import create_app

    app = create_app(options=options)

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list | None = None) -> None:  # type: ignore[type-arg]
            await super().startup(sockets=sockets)
            if self.started and self.servers:
                port = self.servers[0].sockets[0].getsockname()[1]
                # One line scripts can wait for; the key is never printed.
                print(
                    f"batch_ops server ready at http://{options.host}:{port}/v1 "
                    f"(engine {options.engine}, data {options.data_dir})",
                    flush=True,
                )

    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        log_level=options.log_level,
        access_log=options.access_log,
        lifespan="on",
        timeout_graceful_shutdown=5,
    )
    server = _Server(config)
    server.run()
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
