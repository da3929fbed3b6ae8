"""The ``batch-ops`` command: submit, watch, list, cancel and collect OpenAI batches from a shell.

Commands (``batch-ops COMMAND --help`` tells the flags)::

    submit INPUT --endpoint E      validate, upload and create a batch (--wait: progress, summary)
    status BATCH_ID                status, request counts, usage, file ids, timestamps, errors
    list                           a table of batches, newest first (--all follows the cursor)
    cancel BATCH_ID                ask the API to cancel (--wait: until it is cancelled)
    results BATCH_ID -o PATH       output and error files joined in input order, as JSONL or CSV
    validate INPUT                 check a request file offline; every problem with its fix
    shard INPUT --out-dir DIR      split a request file into parts within the API's limits
    serve ...                      the local Batch API server (its own flags: serve --help)

Commands that call the API take ``--base-url`` (``OPENAI_BASE_URL``), ``--api-key``
(``OPENAI_API_KEY``; never printed), ``--max-retries`` and ``--json``. With ``--json`` stdout
carries exactly one JSON object (the batch, the list, the report; ``{"error": {...}}`` on
failure) and nothing else; progress is suppressed and messages go to stderr.

Exit codes::

    0    success
    1    validation problems; a waited-for batch ended failed, expired or cancelled; other failures
    2    usage error: unknown flag, missing or malformed argument
    3    API or connection error after retries (HTTP 4xx/5xx, no response), e.g. unknown batch id
    4    configuration error: no API key, malformed base URL, key rejected (HTTP 401)
    5    timed out waiting (--timeout); the batch keeps running on the server
    130  interrupted (Ctrl-C); a created batch keeps running on the server

``batch-ops serve`` goes straight to ``batch_ops.server.__main__`` (so it is the same program as
``python -m batch_ops.server``) and works without the ``cli`` extra (typer, rich).

Examples:
    >>> main(["serve", "--engine", "upstream"])
    2
    >>> EXIT_CODES[EXIT_TIMEOUT]
    'timed out waiting (--timeout); the batch keeps running on the server'
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

__all__ = [
    "EXIT_API",
    "EXIT_CODES",
    "EXIT_CONFIG",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TIMEOUT",
    "EXIT_USAGE",
    "exit_code_for",
    "main",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_API = 3
EXIT_CONFIG = 4
EXIT_TIMEOUT = 5
EXIT_INTERRUPTED = 130

#: The table printed by ``batch-ops --help``; keep it in step with the module docstring.
EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_FAILED: "validation problems; a waited-for batch ended failed, expired or cancelled; other failures",
    EXIT_USAGE: "usage error: unknown flag, missing or malformed argument",
    EXIT_API: "API or connection error after retries (HTTP 4xx/5xx, no response), e.g. unknown batch id",
    EXIT_CONFIG: "configuration error: no API key, malformed base URL, key rejected (HTTP 401)",
    EXIT_TIMEOUT: "timed out waiting (--timeout); the batch keeps running on the server",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); a created batch keeps running on the server",
}


def exit_code_for(exc: BaseException) -> int:
    """The exit status a failure deserves (see the module docstring for the table).

    Examples:
        >>> from batch_ops.errors import AuthenticationError, BatchTimeoutError, NotFoundError
        >>> exit_code_for(NotFoundError("no such batch", status_code=404))
        3
        >>> exit_code_for(AuthenticationError("bad key", status_code=401)), exit_code_for(BatchTimeoutError("t"))
        (4, 5)
    """
    # Imported here: ``batch-ops serve`` should not pay for the client's imports.
    from batch_ops.errors import (
        APIError,
        AuthenticationError,
        BatchTimeoutError,
        ConfigurationError,
    )

    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, BatchTimeoutError):
        return EXIT_TIMEOUT
    # A rejected key is fixed in the settings, like a missing one: retrying the call cannot help.
    if isinstance(exc, (ConfigurationError, AuthenticationError)):
        return EXIT_CONFIG
    if isinstance(exc, APIError):
        return EXIT_API
    return EXIT_FAILED


def _serve(args: Sequence[str]) -> int:
    # Imported late: the command must not load the server (or Starlette) unless asked to serve.
    from batch_ops.server.__main__ import main as serve_main

    return serve_main(list(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``batch-ops``; returns the exit status.

    Examples:
        >>> main(["validate", "/no/such/requests.jsonl"])  # a usage error: the file does not exist
        2
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["serve"]:
        # Straight to the server's own parser: no typer or rich needed, and its --help is the real one.
        return _serve(args[1:])
    try:
        from batch_ops.cli.app import app
    except ImportError as exc:
        if exc.name not in ("typer", "rich", "click"):
            raise
        print(
            "batch-ops: this command needs the cli extra: pip install 'openai-batch-ops[cli]' "
            "(`batch-ops serve` works without it)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        app(args=args, prog_name="batch-ops")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return EXIT_OK
