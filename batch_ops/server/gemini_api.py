"""Routes of the local server's Gemini API Batch Mode (Developer API), beside OpenAI's.

The same store, processor, engines and faults run Gemini batches: a Gemini batch is an OpenAI
chat batch in the store (:mod:`batch_ops.server.gemini_wire` translates both ways), and what
Gemini knows that OpenAI does not — a file's display name and MIME type, a batch's model,
display name, inline requests and rendered output — lives in a small table of its own
(``gemini.sqlite3`` in the data dir, so it survives a restart like the rest).

Paths (under ``/v1beta``, and ``/upload/v1beta`` for uploads), as the ``google-genai`` SDK calls them:

============================================  ==============================================
``POST /upload/v1beta/files``                 resumable upload: ``X-Goog-Upload-Command: start``
                                              answers an ``X-Goog-Upload-URL``; ``upload`` /
                                              ``upload, finalize`` to it (at
                                              ``X-Goog-Upload-Offset``) → ``{"file": {...}}``
``GET /v1beta/files`` · ``/files/{id}``       list (``pageSize``, ``pageToken``) · one file
``GET /v1beta/files/{id}:download?alt=media``  a generated file's bytes (uploads cannot be read back)
``DELETE /v1beta/files/{id}``                 delete a file
``POST /v1beta/models/{m}:batchGenerateContent``  create: ``{"batch": {displayName, inputConfig:
                                              {fileName | requests: {requests: [...]}}}}`` → an Operation
``GET /v1beta/batches`` · ``/batches/{id}``   list (``operations``, ``nextPageToken``) · one batch
``POST /v1beta/batches/{id}:cancel``          cancel → ``{}``
``DELETE /v1beta/batches/{id}``               forget the batch (it is not cancelled) → ``{}``
============================================  ==============================================

Credentials: ``x-goog-api-key`` or ``?key=``; an upload URL carries its own ``upload_id`` (the
SDK sends no key on it, as Google's upload URLs need none). Errors are Google's envelope
``{"error": {"code", "message", "status"}}``. The fault options apply as to OpenAI's routes
(``--http-429``, ``--drop`` …, ``--create-failures``, ``--fail-requests``, ``--token-limit-failures``,
``--expire-after``; a Gemini batch expires after 48 h otherwise).

Examples:
    >>> denied_message({"headers": [(b"x-goog-api-key", b"k")]}, b"k") is None
    True
    >>> denied_message({"headers": [], "query_string": b"key=nope"}, b"k")
    'API key not valid. Please pass a valid API key.'
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import anyio
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from batch_ops._files import atomic_file
from batch_ops.jsonl import MAX_LINE_BYTES, read_lines
from batch_ops.server.gemini_wire import (
    BadRequestLine,
    chat_line,
    gemini_result,
    google_status,
    operation,
    rfc3339,
)
from batch_ops.server.options import ServerOptions
from batch_ops.server.processor import Processor
from batch_ops.server.store import Store, new_id

__all__ = ["GEMINI_PREFIXES", "GeminiApi", "denied_message", "gemini_scope", "google_error", "is_gemini_path"]

#: Paths this module serves.
GEMINI_PREFIXES = ("/v1beta/", "/upload/v1beta/")
#: A Gemini batch that is still pending or running after this long ends ``EXPIRED`` (the Batch
#: Mode guide's 48 hours; unverified against a real expiry).
EXPIRE_SECONDS = 48 * 3600.0
#: Uploaded files are deleted after 48 h by the real API; the local server keeps them, and only says so.
FILE_TTL_SECONDS = 48 * 3600.0
#: Inline requests of one create: at most this many bytes of body (the guide's 20 MB).
INLINE_MAX_BYTES = 20 * 1024 * 1024
#: The store's (OpenAI's) ending events as Gemini's webhook events name them.
WEBHOOK_TYPES = {"batch.completed": "batch.succeeded", "batch.failed": "batch.failed",
                 "batch.expired": "batch.expired", "batch.cancelled": "batch.cancelled"}
_BATCH_PAGE = (50, 1000)  # default and largest pageSize of the batch list
_FILE_PAGE = (10, 100)  # default and largest pageSize of the file list

_SCHEMA = """
CREATE TABLE IF NOT EXISTS gfiles (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    display_name TEXT,
    mime_type TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    created REAL NOT NULL,
    source TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS guploads (
    id TEXT PRIMARY KEY,
    display_name TEXT,
    mime_type TEXT NOT NULL,
    declared INTEGER,
    received INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS gbatches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    display_name TEXT NOT NULL,
    model TEXT NOT NULL,
    input TEXT NOT NULL,
    inline_meta TEXT,
    output TEXT,
    deleted INTEGER NOT NULL DEFAULT 0
);
"""


class GoogleError(Exception):
    """Raised inside a route: answered as ``{"error": {"code", "message", "status"}}``."""

    def __init__(self, code: int, message: str, status: str | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status or google_status(code)


def google_error(code: int, message: str, status: str | None = None) -> JSONResponse:
    """An HTTP error in Google's envelope."""
    return JSONResponse({"error": {"code": code, "message": message, "status": status or google_status(code)}},
                        status_code=code)


def is_gemini_path(path: str) -> bool:
    """Whether ``path`` is one of this module's."""
    return path.startswith(GEMINI_PREFIXES)


def _query(scope: Scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def gemini_scope(scope: Scope) -> Scope:
    """``scope`` with a Gemini call on ``/v1`` moved to ``/v1beta``: the ``google-genai`` SDK (3.6.1)
    calls API version ``v1`` by default (``/v1/batches``, ``/upload/v1/files``), where OpenAI's
    routes live too. A call carrying Google's credentials (``x-goog-api-key`` or ``?key=``) is
    Gemini's, as is every ``/upload/v1/`` call; any other ``/v1`` call stays OpenAI's.

    Examples:
        >>> gemini_scope({"path": "/v1/batches", "headers": [(b"x-goog-api-key", b"k")]})["path"]
        '/v1beta/batches'
        >>> gemini_scope({"path": "/v1/batches", "headers": [(b"authorization", b"Bearer k")]})["path"]
        '/v1/batches'
    """
    path = scope.get("path", "")
    if path.startswith("/upload/v1/"):
        moved = "/upload/v1beta/" + path.removeprefix("/upload/v1/")
    elif path.startswith("/v1/") and (b"x-goog-api-key" in dict(scope.get("headers") or []) or "key" in _query(scope)):
        moved = "/v1beta/" + path.removeprefix("/v1/")
    else:
        return scope
    return {**scope, "path": moved, "raw_path": moved.encode()}


def denied_message(scope: Scope, key: bytes) -> str | None:
    """Why a Gemini call is refused (None: allowed): ``x-goog-api-key`` or ``?key=`` must carry the
    server's key, except on an upload URL, which carries its own ``upload_id``."""
    query = _query(scope)
    if scope.get("path", "").startswith("/upload/") and query.get("upload_id"):
        return None  # the upload id is the credential (checked by the route)
    headers = dict(scope.get("headers") or [])
    given = headers.get(b"x-goog-api-key")
    if given is None and query.get("key"):
        given = query["key"][0].encode()
    if given is None:
        return ("Method doesn't allow unregistered callers (callers without established identity). "
                "Please use API Key.")
    if not hmac.compare_digest(given, key):
        return "API key not valid. Please pass a valid API key."  # never the key itself
    return None


def denied(scope: Scope, key: bytes) -> Response | None:
    """:func:`denied_message` as Google answers it (403 without a key, 400 with a wrong one)."""
    message = denied_message(scope, key)
    if message is None:
        return None
    return google_error(403 if message.startswith("Method") else 400, message)


def _guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    """Answer a route's :class:`GoogleError` in Google's envelope (the app's handlers speak OpenAI's)."""
    async def run(request: Request) -> Response:
        try:
            return await handler(request)
        except GoogleError as exc:
            return google_error(exc.code, exc.message, exc.status)
    return run


class _GeminiState:
    """What Gemini knows that the store does not, in ``gemini.sqlite3`` (one lock, short statements)."""

    def __init__(self, root: Path) -> None:
        self._lock = threading.RLock()
        self._db = sqlite3.connect(root / "gemini.sqlite3", check_same_thread=False, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        with self._lock, self._db:
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def run(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with self._lock, self._db:
            return self._db.execute(sql, args).rowcount

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        with self._lock:
            row: sqlite3.Row | None = self._db.execute(sql, args).fetchone()
        return row

    def all(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())


def _page_size(request: Request, default: int, largest: int) -> int:
    raw = request.query_params.get("pageSize")
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise GoogleError(400, f"Invalid value at 'page_size' (TYPE_INT32), \"{raw}\"") from None
    if value < 0:
        raise GoogleError(400, "page_size must not be negative")
    return min(value or default, largest)


def _page_token(request: Request) -> int | None:
    """A page token is the ``seq`` of the last row of the previous page, base64-wrapped (opaque to callers)."""
    raw = request.query_params.get("pageToken")
    if not raw:
        return None
    try:
        return int(base64.urlsafe_b64decode(raw.encode() + b"==").decode().removeprefix("seq:"))
    except (ValueError, UnicodeDecodeError):
        raise GoogleError(400, f"Invalid page token: {raw!r}") from None


def _next_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused once it passes ``limit`` bytes (counted as it arrives: a chunked body
    declares no length), so a route never holds more than that."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> GoogleError:
    return GoogleError(400, f"Request payload size exceeds the limit: {limit:,} bytes (inline requests must stay "
                            "under 20 MB: upload a JSONL file and pass its name as input_config.file_name).")


def _file_id(name: str) -> str:
    """``files/abc`` or ``abc`` → ``abc``."""
    return name.removeprefix("files/")


class GeminiApi:
    """The Gemini routes, around the server's one store and processor."""

    def __init__(self, *, options: ServerOptions, store: Store, processor: Processor) -> None:
        self.options = options
        self.store = store
        self.processor = processor
        self.state = _GeminiState(store.root)
        self._render = asyncio.Lock()
        store.event_renderers.append(self._event_body)

    def close(self) -> None:
        self.state.close()

    def _event_body(self, event_id: str, kind: str, batch_id: str, now: float) -> str | None:
        """A Gemini batch's ending as Gemini's webhook names it (``batch.succeeded`` …), for the outbox.

        Gemini signs its (static) webhooks as Standard Webhooks, as the server signs every event; the
        body's fields beyond the event type and the batch's name are not documented (unverified).
        """
        if self.state.one("SELECT 1 FROM gbatches WHERE id = ?", (batch_id,)) is None:
            return None
        name = f"batches/{batch_id}"
        return json.dumps({"id": event_id, "type": WEBHOOK_TYPES[kind], "created_at": int(now),
                           "timestamp": rfc3339(now), "data": {"id": name, "name": name}}, separators=(",", ":"))

    def routes(self) -> list[Route]:
        # Routes with a ``:verb`` first: ``{id}`` alone would match ``abc:download`` too.
        pairs: list[tuple[str, Callable[[Request], Awaitable[Response]], str]] = [
            ("/upload/v1beta/files", self.upload, "POST"),
            ("/v1beta/files", self.list_files, "GET"),
            ("/v1beta/files/{file_id}:download", self.download, "GET"),
            ("/v1beta/files/{file_id}", self.get_file, "GET"),
            ("/v1beta/files/{file_id}", self.delete_file, "DELETE"),
            ("/v1beta/models/{model}:batchGenerateContent", self.create_batch, "POST"),
            ("/v1beta/batches", self.list_batches, "GET"),
            ("/v1beta/batches/{batch_id}:cancel", self.cancel_batch, "POST"),
            ("/v1beta/batches/{batch_id}", self.get_batch, "GET"),
            ("/v1beta/batches/{batch_id}", self.delete_batch, "DELETE"),
        ]
        return [Route(path, _guarded(handler), methods=[method]) for path, handler, method in pairs]

    # ---- files -------------------------------------------------------------------------------

    def _file_json(self, row: sqlite3.Row, request: Request) -> dict[str, Any]:
        root = str(request.base_url).rstrip("/")
        created = rfc3339(row["created"])
        found: dict[str, Any] = {
            "name": f"files/{row['id']}",
            "displayName": row["display_name"],
            "mimeType": row["mime_type"],
            "sizeBytes": str(row["bytes"]),
            "createTime": created,
            "updateTime": created,
            "expirationTime": rfc3339(row["created"] + FILE_TTL_SECONDS),
            "sha256Hash": row["sha256"],
            "uri": f"{root}/v1beta/files/{row['id']}",
            "state": "ACTIVE",
            "source": row["source"],
        }
        if row["source"] == "GENERATED":
            found["downloadUri"] = f"{root}/v1beta/files/{row['id']}:download?alt=media"
        if not found["displayName"]:
            del found["displayName"]
        return found

    def _file_row(self, file_id: str) -> sqlite3.Row:
        row = self.state.one("SELECT * FROM gfiles WHERE id = ?", (file_id,))
        if row is None or not self.store.file_path(file_id).exists():
            raise GoogleError(403, f"You do not have permission to access the File {file_id} or it may not exist.",
                              "PERMISSION_DENIED")
        return row

    async def upload(self, request: Request) -> Response:
        upload_id = request.query_params.get("upload_id")
        command = request.headers.get("x-goog-upload-command", "").replace(" ", "").lower()
        if upload_id is None:
            if request.headers.get("x-goog-upload-protocol", "").lower() != "resumable" or command != "start":
                raise GoogleError(400, "Only resumable uploads are served here: send X-Goog-Upload-Protocol: "
                                       "resumable and X-Goog-Upload-Command: start first.")
            return await self._start_upload(request)
        session = self.state.one("SELECT * FROM guploads WHERE id = ?", (upload_id,))
        if session is None:
            raise GoogleError(404, "No such upload session (it was finalized, or never started).")
        if command not in ("upload", "upload,finalize", "finalize"):
            raise GoogleError(400, f"Unknown X-Goog-Upload-Command {command!r}: use 'upload' or 'upload, finalize'.")
        offset = request.headers.get("x-goog-upload-offset", "0")
        if not offset.isdigit() or int(offset) != session["received"]:
            raise GoogleError(400, f"X-Goog-Upload-Offset {offset!r} is not where the upload stands "
                                   f"({session['received']} bytes received).")
        received = await self._append(request, upload_id, session["received"])
        self.state.run("UPDATE guploads SET received = ? WHERE id = ?", (received, upload_id))
        if not command.endswith("finalize"):
            return Response(status_code=200, headers={"X-Goog-Upload-Status": "active"})
        declared = session["declared"]
        if declared is not None and declared != received:
            raise GoogleError(400, f"The upload declared {declared} bytes (X-Goog-Upload-Header-Content-Length) "
                                   f"but {received} arrived.")
        row = await anyio.to_thread.run_sync(self._finalize, session, received)
        return JSONResponse({"file": self._file_json(row, request)}, headers={"X-Goog-Upload-Status": "final"})

    async def _start_upload(self, request: Request) -> Response:
        raw = await _body(request, 1 << 20)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise GoogleError(400, "Invalid JSON payload received.") from None
        meta = body.get("file") if isinstance(body, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        declared_raw = request.headers.get("x-goog-upload-header-content-length")
        declared = int(declared_raw) if declared_raw and declared_raw.isdigit() else None
        limit = self.options.upload_max_bytes
        if declared is not None and declared > limit:
            raise GoogleError(400, f"File is too large: {declared:,} bytes; the maximum is {limit:,} bytes.")
        # Google's JSON takes either spelling of a field (the SDK sends ``display_name``).
        mime = (request.headers.get("x-goog-upload-header-content-type") or meta.get("mimeType")
                or meta.get("mime_type") or "application/octet-stream")
        upload_id = new_id("up", 16)
        self.state.run("INSERT INTO guploads (id, display_name, mime_type, declared) VALUES (?, ?, ?, ?)",
                       (upload_id, meta.get("displayName", meta.get("display_name")), mime, declared))
        url = f"{str(request.base_url).rstrip('/')}/upload/v1beta/files?upload_id={upload_id}&upload_protocol=resumable"
        return Response(status_code=200, headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active",
                                                  "X-Goog-Upload-Chunk-Granularity": "8388608"})

    def _partial(self, upload_id: str) -> Path:
        return self.store.work_dir / f"gemini-upload-{upload_id}"

    async def _append(self, request: Request, upload_id: str, received: int) -> int:
        """Append the body to the upload's partial file, streamed, refusing it past the size limit."""
        limit = self.options.upload_max_bytes
        async with await anyio.open_file(self._partial(upload_id), "ab") as out:
            await out.truncate(received)  # a retried chunk starts again where the last good one ended
            async for chunk in request.stream():
                received += len(chunk)
                if received > limit:
                    raise GoogleError(400, f"File is too large: more than {limit:,} bytes.")
                await out.write(chunk)
        return received

    def _finalize(self, session: sqlite3.Row, size: int) -> sqlite3.Row:
        file_id = new_id("file-")
        digest = hashlib.sha256()
        partial = self._partial(session["id"])
        partial.touch()
        with open(partial, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        os.replace(partial, self.store.file_path(file_id))
        self.state.run("INSERT INTO gfiles (id, display_name, mime_type, bytes, sha256, created, source) "
                       "VALUES (?, ?, ?, ?, ?, ?, 'UPLOADED')",
                       (file_id, session["display_name"], session["mime_type"], size,
                        base64.b64encode(digest.digest()).decode(), time.time()))
        self.state.run("DELETE FROM guploads WHERE id = ?", (session["id"],))
        row = self.state.one("SELECT * FROM gfiles WHERE id = ?", (file_id,))
        assert row is not None
        return row

    async def list_files(self, request: Request) -> Response:
        size = _page_size(request, *_FILE_PAGE)
        token = _page_token(request)
        rows = self.state.all("SELECT * FROM gfiles WHERE seq < ? ORDER BY seq DESC LIMIT ?",
                              (token if token is not None else 2**62, size + 1))
        page: dict[str, Any] = {"files": [self._file_json(r, request) for r in rows[:size]]}
        if len(rows) > size:
            page["nextPageToken"] = _next_token(rows[size - 1]["seq"])
        return JSONResponse(page)

    async def get_file(self, request: Request) -> Response:
        return JSONResponse(self._file_json(self._file_row(request.path_params["file_id"]), request))

    async def delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        self._file_row(file_id)
        self.state.run("DELETE FROM gfiles WHERE id = ?", (file_id,))
        self.store.delete_file(file_id)  # a published output file has a store row too
        self.store.file_path(file_id).unlink(missing_ok=True)
        return JSONResponse({})

    async def download(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        row = self._file_row(file_id)
        if request.query_params.get("alt") != "media":
            raise GoogleError(400, "Download with ?alt=media.")
        if row["source"] != "GENERATED":
            # The SDK: "Only generated files can be downloaded, uploaded files can't be downloaded."
            raise GoogleError(400, f"File files/{file_id} was uploaded; only generated files can be downloaded.",
                              "FAILED_PRECONDITION")
        return FileResponse(self.store.file_path(file_id), media_type="application/octet-stream")

    # ---- batches -----------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        model = "models/" + request.path_params["model"].removeprefix("models/")
        try:
            body = json.loads(await _body(request, INLINE_MAX_BYTES))
        except ValueError:
            raise GoogleError(400, "Invalid JSON payload received.") from None
        batch = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(batch, dict):
            raise GoogleError(400, "Invalid JSON payload received. Expected a 'batch' object.")
        display_name = batch.get("displayName", batch.get("display_name"))
        if not isinstance(display_name, str) or not display_name:
            raise GoogleError(400, "batch.display_name is required.")
        config = batch.get("inputConfig", batch.get("input_config"))
        if not isinstance(config, dict):
            raise GoogleError(400, "batch.input_config is required: file_name or requests.")
        file_name = config.get("fileName", config.get("file_name"))
        inline = config.get("requests")
        if (file_name is None) == (inline is None):
            raise GoogleError(400, "batch.input_config takes exactly one of file_name and requests.")
        if self.options.create_failures and self.store.take_fault("create_failures", self.options.create_failures):
            raise GoogleError(503, "The service is currently unavailable (injected by --create-failures); "
                                   "nothing was created.")
        chat_id = new_id("file-")
        target = self.store.file_path(chat_id)
        if file_name is not None:
            source_id = _file_id(str(file_name))
            self._file_row(source_id)
            count, inline_meta = await anyio.to_thread.run_sync(self._translate_file, source_id, model, target), None
            input_json: dict[str, Any] = {"fileName": f"files/{source_id}"}
        else:
            items = inline.get("requests") if isinstance(inline, dict) else None
            if not isinstance(items, list) or not items:
                raise GoogleError(400, "batch.input_config.requests.requests must be a non-empty list.")
            inline_meta = await anyio.to_thread.run_sync(self._translate_inline, items, model, target)
            count = len(items)
            input_json = {"requests": {"requestCount": str(count)}}
        # ``gbatch_``: a Gemini batch is told from OpenAI's (``batch_``) by its id.
        created = self.store.create_batch(input_file_id=chat_id, endpoint="/v1/chat/completions",
                                          window_seconds=self.options.expire_after or EXPIRE_SECONDS,
                                          batch_id=new_id("gbatch_", 16))
        self.state.run("INSERT INTO gbatches (id, display_name, model, input, inline_meta) VALUES (?, ?, ?, ?, ?)",
                       (created["id"], display_name, model, json.dumps(input_json),
                        json.dumps(inline_meta) if inline_meta is not None else None))
        self.processor.wake()
        return JSONResponse(await self._operation(created["id"], request))

    def _translate_file(self, source_id: str, model: str, target: Path) -> int:
        """Write the Gemini JSONL file ``source_id`` as the store's chat lines; refuse a line that is not a request."""
        count = 0
        with open(self.store.file_path(source_id), "rb") as fh, atomic_file(target) as out:
            for n, raw in enumerate(read_lines(fh, limit=MAX_LINE_BYTES), start=1):
                if raw is None:
                    raise GoogleError(400, f"Line {n} of files/{source_id} is over {MAX_LINE_BYTES:,} bytes.")
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except ValueError:
                    raise GoogleError(400, f"Line {n} of files/{source_id} is not JSON.") from None
                if not isinstance(line, dict) or not isinstance(line.get("key"), str) or not line["key"]:
                    raise GoogleError(400, f"Line {n} of files/{source_id} needs a string 'key'.")
                try:
                    chat = chat_line(line["key"], line.get("request"), model=model)
                except BadRequestLine as exc:
                    raise GoogleError(400, f"Line {n} of files/{source_id}: {exc}.") from None
                out.write(json.dumps(chat).encode() + b"\n")
                count += 1
        if not count:
            raise GoogleError(400, f"files/{source_id} holds no requests.")
        return count

    def _translate_inline(self, items: list[Any], model: str, target: Path) -> list[Any]:
        """Write inline requests as chat lines run under their index; returns each one's ``metadata``."""
        metas = []
        with atomic_file(target) as out:
            for n, item in enumerate(items):
                if not isinstance(item, dict):
                    raise GoogleError(400, f"requests[{n}] must be an object with a 'request'.")
                try:
                    chat = chat_line(str(n), item.get("request"), model=model)
                except BadRequestLine as exc:
                    raise GoogleError(400, f"requests[{n}]: {exc}.") from None
                out.write(json.dumps(chat).encode() + b"\n")
                metas.append(item.get("metadata"))
        return metas

    def _row(self, batch_id: str) -> sqlite3.Row:
        row = self.state.one("SELECT * FROM gbatches WHERE id = ? AND deleted = 0", (batch_id,))
        if row is None or self.store.get_batch(batch_id) is None:
            raise GoogleError(404, f"Batch batches/{batch_id} not found.")
        return row

    async def _operation(self, batch_id: str, request: Request) -> dict[str, Any]:
        row = self._row(batch_id)
        batch = self.store.get_batch(batch_id)
        assert batch is not None
        output = json.loads(row["output"]) if row["output"] else None
        if output is None and batch["status"] in ("completed", "failed", "cancelled", "expired"):
            output = await self._rendered(batch_id, batch)
        return operation(batch, name=f"batches/{batch_id}", display_name=row["display_name"], model=row["model"],
                         input_config=json.loads(row["input"]), output=output)

    async def _rendered(self, batch_id: str, batch: Mapping[str, Any]) -> dict[str, Any] | None:
        """The output of an ended batch, written once (a file, or inline responses) and kept."""
        async with self._render:
            row = self._row(batch_id)
            if row["output"]:
                return dict(json.loads(row["output"]))
            output = await anyio.to_thread.run_sync(self._render_output, row, batch)
            self.state.run("UPDATE gbatches SET output = ? WHERE id = ?", (json.dumps(output), batch_id))
            return output

    def _store_lines(self, batch: Mapping[str, Any]) -> list[Path]:
        return [self.store.file_path(str(batch[f])) for f in ("output_file_id", "error_file_id") if batch.get(f)]

    def _render_output(self, row: sqlite3.Row, batch: Mapping[str, Any]) -> dict[str, Any]:
        paths = self._store_lines(batch)
        if not paths:
            return {}
        if row["inline_meta"] is not None:
            metas = json.loads(row["inline_meta"])
            answers: list[dict[str, Any] | None] = [None] * len(metas)
            for line in _result_lines(paths):
                index = int(line["custom_id"])
                answer = gemini_result(line)
                answer.pop("key", None)
                if metas[index] is not None:
                    answer["metadata"] = metas[index]
                answers[index] = answer
            return {"inlinedResponses": {"inlinedResponses": [a for a in answers if a is not None]}}
        file_id = new_id("file-")
        digest = hashlib.sha256()
        size = 0
        with atomic_file(self.store.file_path(file_id)) as out:
            for line in _result_lines(paths):
                data = json.dumps(gemini_result(line)).encode() + b"\n"
                digest.update(data)
                size += len(data)
                out.write(data)
        self.state.run("INSERT INTO gfiles (id, display_name, mime_type, bytes, sha256, created, source) "
                       "VALUES (?, ?, 'application/jsonl', ?, ?, ?, 'GENERATED')",
                       (file_id, f"batch-{row['id']}", size, base64.b64encode(digest.digest()).decode(), time.time()))
        return {"responsesFile": f"files/{file_id}"}

    async def get_batch(self, request: Request) -> Response:
        return JSONResponse(await self._operation(request.path_params["batch_id"], request))

    async def list_batches(self, request: Request) -> Response:
        size = _page_size(request, *_BATCH_PAGE)
        token = _page_token(request)
        rows = self.state.all("SELECT id, seq FROM gbatches WHERE deleted = 0 AND seq < ? ORDER BY seq DESC LIMIT ?",
                              (token if token is not None else 2**62, size + 1))
        page: dict[str, Any] = {"operations": [await self._operation(r["id"], request) for r in rows[:size]]}
        if len(rows) > size:
            page["nextPageToken"] = _next_token(rows[size - 1]["seq"])
        return JSONResponse(page)

    async def cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        self._row(batch_id)
        _batch, refusal = self.store.request_cancel(batch_id)
        if refusal is not None:
            raise GoogleError(400, f"Batch batches/{batch_id} has already ended: it cannot be cancelled.",
                              "FAILED_PRECONDITION")
        self.processor.wake()
        return JSONResponse({})

    async def delete_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        self._row(batch_id)
        self.state.run("UPDATE gbatches SET deleted = 1 WHERE id = ?", (batch_id,))
        return JSONResponse({})


def _result_lines(paths: list[Path]) -> Any:
    for path in paths:
        with open(path, "rb") as fh:
            for raw in read_lines(fh, limit=MAX_LINE_BYTES):
                if raw is not None and raw.strip():
                    line = json.loads(raw)
                    if isinstance(line, dict):
                        yield line
