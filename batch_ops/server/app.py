"""Routes of the local Batch API server: Files, Batches, and the synchronous echo endpoints.

Shapes, status codes and the error envelope ``{"error": {"message", "type", "param", "code"}}``
follow the real API: 400 for an invalid body, 401 for a wrong key (only when the server has
one), 404 for an unknown id. ``POST /v1/batches`` is checked by ``batch_ops.models.
check_create_params``, the same function the client uses, so the two cannot disagree.

The app is a Starlette subclass whose ``__call__`` runs the faults and the auth check *before*
Starlette's own middleware: a dropped connection needs uvicorn's untouched ``send``.

Examples:
    >>> import tempfile
    >>> app = create_app(data_dir=tempfile.mkdtemp(), api_key="sk-local")
    >>> sorted({r.path for r in app.routes if r.path.startswith("/v1/batches")})
    ['/v1/batches', '/v1/batches/{batch_id}', '/v1/batches/{batch_id}/cancel']
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import json
import os
import re
import shutil
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any

import anyio
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from batch_ops._files import atomic_file
from batch_ops.jsonl import DEFAULT_MAX_BYTES, MAX_LINE_BYTES
from batch_ops.models import BATCH_ENDPOINTS, check_create_params
from batch_ops.server import anthropic_api
from batch_ops.server.engines import EchoEngine, api_error_body, make_engine
from batch_ops.server.faults import FaultPlan, losing_response
from batch_ops.server.gemini_api import GeminiApi, gemini_scope, is_gemini_path
from batch_ops.server.gemini_api import denied as gemini_denied
from batch_ops.server.options import ServerOptions
from batch_ops.server.processor import Processor
from batch_ops.server.store import Store, new_id
from batch_ops.server.together import PURPOSE as TOGETHER_PURPOSE
from batch_ops.server.together import together_job
from batch_ops.server.webhooks import WebhookSender

__all__ = ["BatchOpsApp", "create_app", "error_response"]

#: An id in a path (batch_..., Anthropic's msgbatch_..., Gemini's gbatch_..., file-...), replaced by {id}
#: when counting calls.
_ID = re.compile(r"(?<=/)(?:batch_|msgbatch_|gbatch_|file-)[\w-]+")

#: Purposes the Files API accepts on upload.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_DAY = 86400.0


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An HTTP error in the OpenAI envelope."""
    return JSONResponse(api_error_body(message, type=type, param=param, code=code), status_code=status, headers=headers)


class _ApiError(Exception):
    """Raised inside a route to answer ``status`` (400 unless said otherwise) in the API's envelope."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.param, self.code, self.status = message, param, code, status


def _missing(param: str) -> _ApiError:
    return _ApiError(f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")


#: The largest JSON body a route reads: one request may carry at most this much (batch_ops.jsonl).
JSON_MAX_BYTES = MAX_LINE_BYTES


async def _json_body(request: Request) -> Any:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > JSON_MAX_BYTES:
        raise _body_too_large(int(declared))
    # Counted as it arrives (a chunked body declares no length): never held past the limit.
    raw = await Request(request.scope, _capped(request.receive, JSON_MAX_BYTES, _body_too_large)).body()
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise _ApiError(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your "
            "HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code="invalid_json",
        ) from exc


def _int_param(request: Request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _ApiError(
            f"Invalid '{name}': expected an integer, got {raw!r}.", param=name, code="invalid_value"
        ) from None
    if not low <= value <= high:
        raise _ApiError(f"Invalid '{name}': {value} is outside {low}..{high}.", param=name, code="integer_out_of_range")
    return value


#: The API's limit on one uploaded batch input file (the default of ``--upload-max-bytes``), and
#: the multipart framing allowed around it.
UPLOAD_MAX_BYTES = DEFAULT_MAX_BYTES
_FORM_OVERHEAD = 64 * 1024


def _body_too_large(size: int) -> _ApiError:
    return _ApiError(f"Request body too large: {size:,} bytes or more; the maximum is {JSON_MAX_BYTES:,} bytes "
                     f"({JSON_MAX_BYTES / 2**20:g} MB).", code="request_too_large", status=413)


def _file_too_large(size: int, limit: int, *, so_far: bool = False) -> _ApiError:
    what = f"more than {size:,} bytes so far" if so_far else f"{size:,} bytes"
    return _ApiError(f"File is too large: {what}; the maximum is {limit:,} bytes ({limit / 2**20:g} MB).",
                     param="file", code="file_too_large")


def _capped(receive: Receive, limit: int, refusal: Callable[[int], _ApiError]) -> Receive:
    """``receive``, refusing the request (``refusal(bytes seen)``) once its body passes ``limit`` bytes.

    Counted as the bytes arrive, whatever the framing: a chunked upload declares no length, and
    was spooled to disk whole before its size was judged (600 MB spooled for a 400). Stopping
    here stops the form parser, which closes (and so removes) what it spooled.
    """
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise refusal(seen)
        return message

    return counted


def _expires_after(form: Any) -> int | None:
    """``expires_after[anchor]`` / ``expires_after[seconds]`` of an upload, checked as the API does."""
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise _ApiError("Invalid 'expires_after[anchor]': must be 'created_at'.", param="expires_after[anchor]",
                        code="invalid_value")
    if not isinstance(seconds, str) or not seconds.isdigit() or not 3600 <= int(seconds) <= 2_592_000:
        raise _ApiError("Invalid 'expires_after[seconds]': must be an integer between 3600 and 2592000.",
                        param="expires_after[seconds]", code="invalid_value")
    return int(seconds)


def _save_upload(src: IO[bytes], dest: Path) -> int:
    """Copy an upload to its final place atomically; return its size."""
    with atomic_file(dest) as out:
        shutil.copyfileobj(src, out, 1024 * 1024)
        size = out.tell()
    return size


class _Api:
    """The route handlers, around one store and one processor."""

    def __init__(self, *, options: ServerOptions, store: Store, processor: Processor) -> None:
        self.calls: Counter[str] = Counter()
        self.options = options
        self.store = store
        self.processor = processor
        # Which vendor's objects the answers are (ServerOptions.wire): Together's jobs, or OpenAI's batches.
        self._together = options.wire == "together"
        self._batch_purpose = TOGETHER_PURPOSE if self._together else "batch"
        self._purposes = (*UPLOAD_PURPOSES, TOGETHER_PURPOSE) if self._together else UPLOAD_PURPOSES
        self.echo = EchoEngine()

    def routes(self) -> list[Route]:
        routes = [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/v1/models", self.models, methods=["GET"]),
            Route("/v1/files", self.upload_file, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.retrieve_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.retrieve_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]
        routes += [Route(path, self.answer_now, methods=["POST"]) for path in BATCH_ENDPOINTS]
        return routes

    async def healthz(self, request: Request) -> Response:
        # ``calls``: /v1 requests served so far, by kind ("GET /v1/batches/{id}": polls), for
        # tests and benchmarks that count what a waiter costs; ``webhooks``: deliveries by state.
        return JSONResponse({"status": "ok", "pid": os.getpid(), "engine": self.options.engine,
                             "calls": dict(self.calls), "webhooks": self.store.webhook_counts()})

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [{"id": "batch-ops-echo", "object": "model", "created": 0, "owned_by": "batch_ops"}],
            }
        )

    # ---- files -------------------------------------------------------------------------------

    async def upload_file(self, request: Request) -> Response:
        limit = self.options.upload_max_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit + _FORM_OVERHEAD:
            # Refused before a byte of it is stored, as the API refuses it.
            raise _file_too_large(int(declared), limit)
        # Any other body (chunked, or a length that lies) is cut off as soon as it passes the limit.
        refusal = functools.partial(_file_too_large, limit=limit, so_far=True)
        request = Request(request.scope, _capped(request.receive, limit + _FORM_OVERHEAD, refusal))
        async with request.form(max_files=1, max_fields=16) as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise _missing("file")
            if not isinstance(purpose, str) or not purpose:
                raise _missing("purpose")
            if purpose not in self._purposes:
                raise _ApiError(
                    f"'{purpose}' is not one of {list(self._purposes)} - 'purpose'",
                    param="purpose",
                    code="invalid_value",
                )
            filename = upload.filename or "upload"
            if purpose == self._batch_purpose and not filename.endswith(".jsonl"):
                raise _ApiError(
                    "Invalid file format for Batch API. Must be .jsonl", param="file", code="invalid_file_format"
                )
            expires_seconds = _expires_after(form)
            if upload.size is not None and upload.size > limit:
                raise _file_too_large(upload.size, limit)
            file_id = new_id("file-")
            size = await anyio.to_thread.run_sync(_save_upload, upload.file, self.store.file_path(file_id))
        created = int(time.time())
        expires_at = created + expires_seconds if expires_seconds is not None else None
        return JSONResponse(self.store.add_file(file_id=file_id, size=size, filename=filename, purpose=purpose,
                                                created_at=created, expires_at=expires_at))

    async def list_files(self, request: Request) -> Response:
        limit = _int_param(request, "limit", default=10_000, low=1, high=10_000)
        order = request.query_params.get("order", "desc")
        if order not in ("asc", "desc"):
            raise _ApiError(f"Invalid 'order': {order!r} is not 'asc' or 'desc'.", param="order", code="invalid_value")
        after = request.query_params.get("after") or None  # ``after=`` (empty) is no cursor
        page = self.store.list_files(purpose=request.query_params.get("purpose"), after=after, limit=limit, order=order)
        if page is None:
            raise _ApiError(f"Invalid 'after': no file with id {after!r}.", param="after", code="invalid_value")
        return JSONResponse(_page(*page, ids_required=True))

    def _file(self, file_id: str) -> dict[str, Any]:
        found = self.store.get_file(file_id)
        if found is None:
            raise _ApiError(f"No such File object: {file_id}", param="id", status=404)
        return found

    async def retrieve_file(self, request: Request) -> Response:
        return JSONResponse(self._file(request.path_params["file_id"]))

    async def delete_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if not self.store.delete_file(file_id):
            raise _ApiError(f"No such File object: {file_id}", param="id", status=404)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    async def file_content(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        self._file(file_id)
        path = self.store.file_path(file_id)
        if not path.exists():
            raise _ApiError(f"No such File object: {file_id}", param="id", status=404)
        # FileResponse streams in 64 KiB chunks: output files can be hundreds of MB.
        return FileResponse(path, media_type="application/octet-stream")

    # ---- batches -----------------------------------------------------------------------------

    async def create_batch(self, request: Request) -> Response:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _ApiError("The request body must be a JSON object.", code="invalid_value")
        for param in ("input_file_id", "endpoint", "completion_window"):
            if body.get(param) is None:
                raise _missing(param)
        input_file_id = body["input_file_id"]
        if not isinstance(input_file_id, str) or not input_file_id:
            raise _ApiError(
                "Invalid 'input_file_id': expected a file id string.", param="input_file_id", code="invalid_value"
            )
        problems = check_create_params(
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            metadata=body.get("metadata"),
            output_expires_after=body.get("output_expires_after"),
            azure=True,  # the local server stands in for Azure OpenAI too: /chat/completions is fine
        )
        if problems:
            param = problems[0][0]
            message = "; ".join(f"Invalid '{p}': {problem} ({fix})" for p, problem, fix in problems)
            raise _ApiError(message, param=param, code="invalid_value")
        found = self.store.get_file(input_file_id)
        if found is None:
            raise _ApiError(f"No such File object: {input_file_id}", param="input_file_id", status=404)
        if self.options.create_failures and self.store.take_fault("create_failures", self.options.create_failures):
            raise _ApiError("The server is overloaded (injected by --create-failures); nothing was created.",
                            code="server_overloaded", status=503)
        if found["purpose"] != self._batch_purpose:
            raise _ApiError(
                f"File {input_file_id} has purpose {found['purpose']!r}; a batch input file must be uploaded with "
                f"purpose {self._batch_purpose!r}.",
                param="input_file_id",
                code="invalid_value",
            )
        batch = self.store.create_batch(
            input_file_id=input_file_id,
            endpoint=body["endpoint"],
            completion_window=body["completion_window"],
            window_seconds=self.options.expire_after or _DAY,
            metadata=None if self._together else body.get("metadata"),  # Together's jobs carry none
            output_expires_after=body.get("output_expires_after"),
            batch_id=str(uuid.uuid4()) if self._together else None,
        )
        self.processor.wake()
        if self._together:
            return JSONResponse({"job": self._job(batch), "warning": None})
        return JSONResponse(batch)

    async def list_batches(self, request: Request) -> Response:
        limit = _int_param(request, "limit", default=20, low=1, high=100)
        after = request.query_params.get("after") or None  # ``after=`` (empty) is no cursor
        if self._together:
            # Together lists every job at once, as a bare array (no pages, no cursor).
            jobs: list[dict[str, Any]] = []
            cursor: str | None = None
            while True:
                found = self.store.list_batches(after=cursor, limit=100)
                if not found or not found[0]:
                    break
                jobs.extend(self._job(b) for b in found[0])
                if not found[1]:
                    break
                cursor = found[0][-1]["id"]
            return JSONResponse(jobs)
        page = self.store.list_batches(after=after, limit=limit)
        if page is None:
            raise _ApiError(f"Invalid 'after': no batch with id {after!r}.", param="after", code="invalid_value")
        return JSONResponse(_page(*page))

    async def retrieve_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        found = self.store.get_batch(batch_id)
        if found is None:
            raise _ApiError(f"No batch found with id '{batch_id}'.", param="batch_id", status=404)
        return JSONResponse(self._job(found) if self._together else found)

    async def cancel_batch(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        batch, refusal = self.store.request_cancel(batch_id)
        if batch is None:
            raise _ApiError(f"No batch found with id '{batch_id}'.", param="batch_id", status=404)
        if refusal is not None:
            raise _ApiError(refusal, param="batch_id", code="invalid_state")
        self.processor.wake()
        return JSONResponse(self._job(batch) if self._together else batch)

    def _job(self, batch: dict[str, Any]) -> dict[str, Any]:
        found = self.store.get_file(batch["input_file_id"]) if batch.get("input_file_id") else None
        return together_job(batch, file_size=int(found["bytes"]) if found else 0)

    # ---- synchronous echo (one local server can be another's upstream) ------------------------

    async def answer_now(self, request: Request) -> Response:
        body = await _json_body(request)
        if isinstance(body, dict) and body.get("stream"):
            raise _ApiError(
                "stream=true is not supported by the local echo server.", param="stream", code="unsupported_value"
            )
        reply = self.echo.respond(request.url.path, body)
        return JSONResponse(reply.body, status_code=reply.status_code or 500)


def _page(rows: list[dict[str, Any]], has_more: bool, *, ids_required: bool = False) -> dict[str, Any]:
    """A list page as the spec writes it: ``first_id``/``last_id`` are strings when present. An
    empty page of batches leaves them out (optional there); one of files, where they are
    required, carries empty strings (neither is a cursor)."""
    page: dict[str, Any] = {"object": "list", "data": rows}
    if rows:
        page.update(first_id=rows[0]["id"], last_id=rows[-1]["id"])
    elif ids_required:
        page.update(first_id="", last_id="")
    page["has_more"] = has_more
    return page


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, _ApiError)
    return error_response(exc.status, exc.message, param=exc.param, code=exc.code)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        message = f"Invalid URL ({request.method} {request.url.path})"
    else:
        message = str(exc.detail)
    return error_response(
        exc.status_code,
        message,
        code="unknown_url" if exc.status_code == 404 else None,
        headers=dict(exc.headers or {}),
    )


async def _server_error(request: Request, exc: Exception) -> Response:
    return error_response(500, f"The local server failed: {type(exc).__name__}", type="server_error")


class BatchOpsApp(Starlette):
    """Starlette, with faults, auth and ``x-request-id`` applied outermost on ``/v1`` routes.

    Examples:
        >>> import tempfile
        >>> isinstance(create_app(data_dir=tempfile.mkdtemp()), Starlette)
        True
    """

    def __init__(self, *, options: ServerOptions) -> None:
        self.options = options
        self.store = Store(options.data_path, webhook_urls=options.webhook_urls)
        self.processor = Processor(store=self.store, engine=make_engine(options), options=options)
        self.webhooks: WebhookSender | None = None
        if options.webhook_urls:
            assert options.webhook_secret is not None  # ServerOptions refuses URLs without one
            self.webhooks = WebhookSender(store=self.store, secret=options.webhook_secret,
                                          drop=options.webhook_drop, delay=options.webhook_delay, seed=options.seed)
        self.faults = FaultPlan.from_options(options)
        self._key = options.api_key.encode() if options.api_key else None
        api = _Api(options=options, store=self.store, processor=self.processor)
        self.gemini = GeminiApi(options=options, store=self.store, processor=self.processor)
        self.calls = api.calls
        anthropic = anthropic_api.AnthropicApi(options=options, store=self.store, processor=self.processor)
        super().__init__(
            routes=api.routes() + self.gemini.routes() + anthropic.routes(),
            middleware=[Middleware(GZipMiddleware, minimum_size=500)] if options.gzip else None,
            lifespan=self._lifespan,
            exception_handlers={_ApiError: _api_error, HTTPException: _http_error, Exception: _server_error},
        )

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await self.processor.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        try:
            yield
        finally:
            await self.processor.stop()
            if self.webhooks is not None:
                await self.webhooks.stop()
            self.gemini.close()
            self.store.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/openai/"):
            # Azure OpenAI's two URL forms, served as the /v1 API: ``<resource>/openai/v1/...`` (no api-version)
            # and ``<resource>/openai/...?api-version=...`` (the query is not read).
            path = scope["path"]
            path = "/v1/" + path.removeprefix("/openai/v1/") if path.startswith("/openai/v1/") else \
                "/v1/" + path.removeprefix("/openai/")
            scope = {**scope, "path": path, "raw_path": path.encode()}
        if scope["type"] == "http":
            scope = gemini_scope(scope)  # Gemini's SDK calls /v1 too: its calls go to /v1beta
        if scope["type"] == "http" and scope["path"].startswith(("/v1", "/upload/v1")):
            self.calls[f"{scope['method']} {_ID.sub('{id}', scope['path'])}"] += 1
            fault = await self.faults.apply(send) if self.faults.active else None
            if fault == "handled":
                return
            if fault == "drop_after" or (self.options.lose_creates and _is_create(scope)
                                         and self.store.take_fault("lose_creates", self.options.lose_creates)):
                send = losing_response(send)  # handle the call, then lose the answer
            request_id = ("req_" + os.urandom(16).hex()).encode()
            denied = self._denied(scope)
            send = _with_header(send, b"x-request-id", request_id)
            if denied is not None:
                await denied(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    def _denied(self, scope: Scope) -> Response | None:
        """A 401 when the server has a key and the call does not carry it; None when allowed."""
        if scope["path"].startswith(anthropic_api.ANTHROPIC_PREFIX):
            return anthropic_api.denied(scope, self._key)  # Anthropic's header and error shape
        if self._key is None:
            return None
        if is_gemini_path(scope["path"]):
            return gemini_denied(scope, self._key)
        headers = dict(scope["headers"])
        given = headers.get(b"api-key")  # Azure style
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None:
            return error_response(
                401,
                "You didn't provide an API key. You need to provide your API key in an Authorization header using "
                "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            )
        if not hmac.compare_digest(given, self._key):
            # Never echo the key back: it would end up in client logs and exceptions.
            return error_response(401, "Incorrect API key provided.", code="invalid_api_key")
        return None


def _is_create(scope: Scope) -> bool:
    """A batch create, on any wire this server speaks (``POST .../batches``, ``POST ...:batchGenerateContent``)."""
    return scope["method"] == "POST" and scope["path"].endswith(("/batches", ":batchGenerateContent"))


def _with_header(send: Send, name: bytes, value: bytes) -> Send:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (name, value)]}
        await send(message)

    return wrapped


def create_app(*, options: ServerOptions | None = None, **overrides: Any) -> BatchOpsApp:
    """The server as an ASGI app: ``create_app(data_dir=..., engine="echo", http_429=0.1, ...)``.

    Takes a ``ServerOptions`` and/or its fields as keywords. Background processing starts with the
    app's lifespan, so run it under an ASGI server that runs lifespans (uvicorn does).
    """
    base = options or ServerOptions()
    return BatchOpsApp(options=base.replace(**overrides) if overrides else base)
