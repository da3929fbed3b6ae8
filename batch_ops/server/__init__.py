"""The local OpenAI-compatible Batch API server (files + batches, SQLite + files on disk).

``serve_in_background()`` starts it in a subprocess and yields the base URL; ``create_app()``
returns the ASGI app for in-process use. Importing this package loads neither Starlette nor
uvicorn: only ``create_app`` and the server process need them.

Examples:
    >>> from batch_ops.server import serve_in_background
    >>> with serve_in_background(http_429=0.1, seed=1) as url:  # doctest: +SKIP
    ...     client = openai.OpenAI(base_url=url, api_key="sk-local")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from batch_ops.server.background import ServerURL, serve_in_background
from batch_ops.server.options import ServerOptions

if TYPE_CHECKING:
    from batch_ops.server.app import BatchOpsApp

__all__ = ["ServerOptions", "ServerURL", "create_app", "serve_in_background"]


def create_app(*, options: ServerOptions | None = None, **overrides: Any) -> BatchOpsApp:
    """The server as a Starlette app; see ``batch_ops.server.app.create_app``."""
    from batch_ops.server.app import create_app as _create_app

    return _create_app(options=options, **overrides)
