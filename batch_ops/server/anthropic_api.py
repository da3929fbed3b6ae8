"""Anthropic's Message Batches API on the local server, over the same store, processor, engines and faults.

An Anthropic batch is a batch of the store like any other: ``POST /v1/messages/batches`` checks the
inline ``requests[]`` as Anthropic does (``custom_id`` 1 to 64 of ``[A-Za-z0-9_-]``, unique; at most
100,000 requests and 256 MB), writes them as one chat-completions request file and creates a batch
from it (id ``msgbatch_…``). The processor and the engine answer it unchanged; these routes render
what they made in Anthropic's words:

* the batch as a ``MessageBatch``: ``processing_status`` ``in_progress`` | ``canceling`` | ``ended``,
  ``request_counts`` that show only ``processing`` until the batch ends, RFC 3339 timestamps,
  ``results_url`` once ended;
* each result as a line of the results JSONL: ``succeeded`` (a Messages ``message`` with
  ``usage``), ``errored`` (the double-nested error), ``canceled``, ``expired``; streamed.

The same faults apply (``--fail-requests`` errors requests, ``--expire-after`` expires batches,
``--request-latency``, ``--create-failures`` answers 529, the HTTP faults of every ``/v1`` call).
Credentials arrive in ``x-api-key`` (or as a Bearer token: the 2.17.0 SDK sends its ``api_key`` so);
every call needs ``anthropic-version``. Errors use Anthropic's
shape ``{"type": "error", "error": {"type", "message"}}``.

Examples:
    >>> _rfc3339(0)
    '1970-01-01T00:00:00Z'
    >>> _error_type(429), _error_type(503)
    ('rate_limit_error', 'api_error')
"""

from __future__ import annotations

import codecs
import functools
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Scope

from batch_ops._files import atomic_file
from batch_ops.server.options import ServerOptions
from batch_ops.server.processor import Processor
from batch_ops.server.store import Store, new_id

__all__ = ["ANTHROPIC_PREFIX", "MAX_BODY_BYTES", "MAX_REQUESTS", "AnthropicApi", "denied"]

#: Paths these routes own (auth and the error shape are Anthropic's there).
ANTHROPIC_PREFIX = "/v1/messages"
#: Anthropic's limits on one batch: requests, and bytes of the create body.
MAX_REQUESTS = 100_000
MAX_BODY_BYTES = 256 * 1024 * 1024
#: The largest single request (one element of ``requests``) read into memory.
MAX_REQUEST_BYTES = 32 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_ID_PREFIX = "msgbatch_"
_CHAT = "/v1/chat/completions"
_DAY = 86400.0
_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 408: "timeout_error", 409: "conflict_error",
                413: "request_too_large", 429: "rate_limit_error", 529: "overloaded_error"}


def _error_type(status: int) -> str:
    return _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")


def error_body(message: str, *, status: int = 400, type: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope."""
    return {"type": "error", "error": {"type": type or _error_type(status), "message": message}}


def error_response(status: int, message: str, *, type: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, status=status, type=type), status_code=status)


class AnthropicError(Exception):
    """Raised inside an Anthropic route to answer ``status`` in Anthropic's error shape."""

    def __init__(self, message: str, *, status: int = 400, type: str | None = None) -> None:
        super().__init__(message)
        self.message, self.status, self.type = message, status, type


def _rfc3339(epoch: Any) -> str | None:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat().replace("+00:00", "Z")


def denied(scope: Scope, key: bytes | None) -> Response | None:
    """Anthropic's checks on every call: ``anthropic-version`` present, ``x-api-key`` right (when the
    server has a key). None when allowed."""
    headers = dict(scope["headers"])
    if key is not None:
        # ``x-api-key`` as the REST docs say; the SDK (2.17.0) sends its api_key as a Bearer token.
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None:
            return error_response(401, "x-api-key header is required")
        if not hmac.compare_digest(given, key):
            return error_response(401, "invalid x-api-key")  # never echo the key back
    if not headers.get(b"anthropic-version"):
        return error_response(400, "anthropic-version: header is required")
    return None


# ---- the create body, read without holding it ------------------------------------------------


class _Tokens:
    """A JSON text read from a file in chunks: values decoded one at a time, the buffer kept small."""

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.buf = ""
        self.pos = 0
        self.eof = False
        self.json = json.JSONDecoder()

    def _more(self, size: int = 1 << 20) -> bool:
        if self.eof:
            return False
        chunk = self.fh.read(size)
        self.buf = self.buf[self.pos:] + self.decoder.decode(chunk, final=not chunk)
        self.pos = 0
        self.eof = not chunk
        return True

    def peek(self) -> str:
        """The next character that is not white space ("" at the end)."""
        while True:
            while self.pos < len(self.buf) and self.buf[self.pos] in " \t\r\n":
                self.pos += 1
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._more():
                return ""

    def expect(self, chars: str, where: str) -> str:
        found = self.peek()
        if not found or found not in chars:
            raise AnthropicError(f"Invalid JSON body: expected {' or '.join(repr(c) for c in chars)} {where}.")
        self.pos += 1
        return found

    def value(self) -> Any:
        """The next JSON value, read whole (at most MAX_REQUEST_BYTES of it)."""
        self.peek()
        size = 1 << 20
        while True:
            try:
                value, end = self.json.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError:
                if len(self.buf) - self.pos > MAX_REQUEST_BYTES:
                    raise AnthropicError(f"One request is larger than {MAX_REQUEST_BYTES:,} bytes.",
                                         status=413) from None
                if not self._more(size):
                    raise AnthropicError("Invalid JSON body: the request body is not valid JSON.") from None
                size = min(size * 2, 1 << 24)
                continue
            # A number at the very end of the buffer may go on in the next chunk: read on first.
            if end == len(self.buf) and not self.eof and isinstance(value, (int, float)):
                self._more()
                continue
            self.pos = end
            return value


def iter_requests(fh: IO[bytes]) -> Iterator[Any]:
    """The elements of ``requests`` in a create body ``{"requests": [...], ...}``, one at a time.

    Examples:
        >>> import io
        >>> list(iter_requests(io.BytesIO(b'{"x": 1, "requests": [{"custom_id": "a"}, 2]}')))
        [{'custom_id': 'a'}, 2]
    """
    tokens = _Tokens(fh)
    tokens.expect("{", "at the start of the body")
    seen = False
    if tokens.peek() == "}":
        tokens.pos += 1
    else:
        while True:
            key = tokens.value()
            tokens.expect(":", "after a key")
            if key == "requests" and tokens.peek() == "[":
                seen = True
                tokens.pos += 1
                if tokens.peek() == "]":
                    tokens.pos += 1
                else:
                    while True:
                        yield tokens.value()
                        if tokens.expect(",]", "between requests") == "]":
                            break
            else:
                value = tokens.value()
                if key == "requests":
                    raise AnthropicError(f"requests: Input should be a valid list, got {type(value).__name__}")
            if tokens.expect(",}", "between fields") == "}":
                break
    if tokens.peek():
        raise AnthropicError("Invalid JSON body: text after the JSON object.")
    if not seen:
        raise AnthropicError("requests: Field required")


def _check_params(i: int, params: Any) -> str | None:
    """Anthropic's refusal of one request's ``params``, or None."""
    where = f"requests.{i}.params"
    if not isinstance(params, dict):
        return f"{where}: Input should be a valid dictionary"
    model = params.get("model")
    if not isinstance(model, str) or not model:
        return f"{where}.model: Field required"
    max_tokens = params.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        return f"{where}.max_tokens: Field required (an integer of at least 1)"
    messages = params.get("messages")
    if not isinstance(messages, list) or not messages:
        return f"{where}.messages: Field required (a non-empty list)"
    for j, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            return f"{where}.messages.{j}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"{where}.messages.{j}.content: Field required"
    if params.get("stream"):
        return f"{where}.stream: streaming is not supported in Message Batches"
    tools = params.get("tools", [])
    if not isinstance(tools, list) or not all(isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools):
        return f"{where}.tools: Input should be a list of tools, each with a name"
    for j, tool in enumerate(tools):
        if tool.get("type") in (None, "custom") and (tool.get("input_schema") or {}).get("type") != "object":
            return f"{where}.tools.{j}.input_schema.type: Input should be 'object'"
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and choice.get("name") not in {
            t["name"] for t in tools}:
        return f"{where}.tool_choice.name: Tool {choice.get('name')!r} not found in tools"
    return None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def chat_body(params: dict[str, Any]) -> dict[str, Any]:
    """A Messages request as the chat-completions request the engines answer.

    Examples:
        >>> chat_body({"model": "m", "max_tokens": 5, "system": "be brief", "stop_sequences": ["x"],
        ...            "messages": [{"role": "user", "content": "hi"}]})["messages"][0]
        {'role': 'system', 'content': 'be brief'}
    """
    messages: list[dict[str, Any]] = []
    if params.get("system"):
        messages.append({"role": "system", "content": _text(params["system"])})
    messages += [{"role": m["role"], "content": m["content"]} for m in params["messages"]]
    body: dict[str, Any] = {"model": params["model"], "messages": messages, "max_tokens": params["max_tokens"]}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("stop", "stop_sequences")):
        if params.get(theirs) is not None:
            body[ours] = params[theirs]
    # Tools as OpenAI's function tools; a forced tool (tool_choice "tool") as a forced function call, which
    # the engines answer with the smallest input its schema accepts (batch_ops.server.structured).
    tools = [t for t in params.get("tools") or () if isinstance(t, dict) and t.get("type") in (None, "custom")]
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": t["name"], "description": t.get("description", ""),
                                                            "parameters": t.get("input_schema") or {}}}
                         for t in tools]
    choice = params.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool":
        body["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    return body


def write_input(body: Path, dest: Path) -> int:
    """Check a create body (Anthropic's rules) and write its requests to ``dest`` as chat-completions
    request lines; the number of requests. Raises :class:`AnthropicError` naming the first problem."""
    seen: set[str] = set()
    count = 0
    with body.open("rb") as fh, atomic_file(dest) as out:
        for i, request in enumerate(iter_requests(fh)):
            if i >= MAX_REQUESTS:
                raise AnthropicError(f"requests: a batch holds at most {MAX_REQUESTS:,} requests.", status=413,
                                     type="request_too_large")
            if not isinstance(request, dict):
                raise AnthropicError(f"requests.{i}: Input should be a valid dictionary")
            custom_id = request.get("custom_id")
            if not isinstance(custom_id, str) or not CUSTOM_ID.match(custom_id):
                raise AnthropicError(f"requests.{i}.custom_id: String should match pattern '^[a-zA-Z0-9_-]{{1,64}}$'")
            if custom_id in seen:
                raise AnthropicError(f"requests.{i}.custom_id: Duplicate custom_id {custom_id!r}: each custom_id "
                                     "must be unique within a batch.")
            seen.add(custom_id)
            problem = _check_params(i, request.get("params"))
            if problem is not None:
                raise AnthropicError(problem)
            line = {"custom_id": custom_id, "method": "POST", "url": _CHAT, "body": chat_body(request["params"])}
            out.write(json.dumps(line, separators=(",", ":")).encode() + b"\n")
            count += 1
    if count == 0:
        raise AnthropicError("requests: List should have at least 1 item after validation, not 0")
    return count


# ---- results: the engine's answers in Anthropic's words --------------------------------------


def _tool_use(call: Any) -> dict[str, Any]:
    """An OpenAI tool call as Anthropic's ``tool_use`` block (arguments cut by the token limit: an empty input,
    as a cut tool call arrives)."""
    fn: dict[str, Any] = call["function"] if isinstance(call, dict) and isinstance(call.get("function"), dict) else {}
    try:
        value = json.loads(fn.get("arguments") or "{}")
    except ValueError:
        value = {}
    return {"type": "tool_use", "id": "toolu_" + os.urandom(12).hex(), "name": fn.get("name"),
            "input": value if isinstance(value, dict) else {}}


def _message(custom_id: Any, body: dict[str, Any]) -> dict[str, Any]:
    choice = (body.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    text = _text(message.get("content"))
    usage = body.get("usage") or {}
    cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not message.get("tool_calls") else []
    content += [_tool_use(call) for call in message.get("tool_calls") or ()]
    stop = "max_tokens" if choice.get("finish_reason") == "length" else "end_turn"
    if message.get("refusal"):
        stop, content = "refusal", [{"type": "text", "text": str(message["refusal"])}]
    elif stop == "end_turn" and message.get("tool_calls"):
        stop = "tool_use"
    return {
        "id": "msg_" + os.urandom(12).hex(),
        "type": "message",
        "role": "assistant",
        "model": body.get("model"),
        "content": content,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": int(usage.get("prompt_tokens") or 0) - cached,
                  "output_tokens": int(usage.get("completion_tokens") or 0),
                  "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached, "service_tier": "batch"},
    }


def _errored(error_type: str, message: str) -> dict[str, Any]:
    return {"type": "errored", "error": {"type": "error", "error": {"type": error_type, "message": message},
                                        "request_id": "req_" + os.urandom(12).hex()}}


def result_of(line: dict[str, Any]) -> dict[str, Any]:
    """One output or error line of the store as Anthropic's result line.

    Examples:
        >>> result_of({"custom_id": "a", "response": None,
        ...            "error": {"code": "batch_cancelled", "message": "m"}})["result"]
        {'type': 'canceled'}
    """
    custom_id = line.get("custom_id")
    error, response = line.get("error"), line.get("response")
    if isinstance(error, dict):
        code = error.get("code")
        if code == "batch_cancelled":
            return {"custom_id": custom_id, "result": {"type": "canceled"}}
        if code == "batch_expired":
            return {"custom_id": custom_id, "result": {"type": "expired"}}
        return {"custom_id": custom_id, "result": _errored("api_error", str(error.get("message") or code))}
    response = response if isinstance(response, dict) else {}
    status, body = response.get("status_code") or 500, response.get("body")
    if 200 <= status < 300 and isinstance(body, dict):
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": _message(custom_id, body)}}
    detail = body.get("error") if isinstance(body, dict) else None
    message = str(detail.get("message")) if isinstance(detail, dict) else f"HTTP {status}"
    return {"custom_id": custom_id, "result": _errored(_error_type(status), message)}


_KINDS = ("succeeded", "errored", "canceled", "expired")


def _lines(paths: list[Path]) -> Iterator[dict[str, Any]]:
    for path in paths:
        with path.open("rb") as fh:
            for raw in fh:
                if raw.strip():
                    yield json.loads(raw)


class AnthropicApi:
    """The Message Batches routes, around the server's store and processor."""

    def __init__(self, *, options: ServerOptions, store: Store, processor: Processor) -> None:
        self.options = options
        self.store = store
        self.processor = processor
        #: Counts of ended batches (their files never change again), by batch id.
        self._counts: dict[str, dict[str, int]] = {}

    def routes(self) -> list[Route]:
        def wrap(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
            @functools.wraps(handler)
            async def answered(request: Request) -> Response:
                try:
                    return await handler(request)
                except AnthropicError as exc:
                    return error_response(exc.status, exc.message, type=exc.type)
            return answered

        base = "/v1/messages/batches"
        return [
            Route(base, wrap(self.create), methods=["POST"]),
            Route(base, wrap(self.list), methods=["GET"]),
            Route(base + "/{batch_id}", wrap(self.retrieve), methods=["GET"]),
            Route(base + "/{batch_id}", wrap(self.delete), methods=["DELETE"]),
            Route(base + "/{batch_id}/cancel", wrap(self.cancel), methods=["POST"]),
            Route(base + "/{batch_id}/results", wrap(self.results), methods=["GET"]),
        ]

    # ---- the object ------------------------------------------------------------------------------

    def _row(self, batch_id: str) -> dict[str, Any]:
        found = self.store.get_batch(batch_id) if batch_id.startswith(_ID_PREFIX) else None
        if found is None:
            raise AnthropicError(f"message_batch not found: {batch_id}", status=404)
        return found

    def _paths(self, row: dict[str, Any]) -> list[Path]:
        return [self.store.file_path(row[f]) for f in ("output_file_id", "error_file_id") if row.get(f)]

    def _ended_counts(self, row: dict[str, Any]) -> dict[str, int]:
        found = self._counts.get(row["id"])
        if found is None:
            found = dict.fromkeys(_KINDS, 0)
            if row["status"] == "failed":  # the whole batch was refused (a fault): every request errored
                found["errored"] = int(row.get("request_total") or 0)
            else:
                for line in _lines(self._paths(row)):
                    found[result_of(line)["result"]["type"]] += 1
            self._counts[row["id"]] = found
        return found

    def render(self, row: dict[str, Any], request: Request) -> dict[str, Any]:
        """A store batch as Anthropic's ``MessageBatch``."""
        status = row["status"]
        ended = status in ("completed", "failed", "expired", "cancelled")
        total = int(row.get("request_total") or 0)
        if ended:
            counts = {"processing": 0, **self._ended_counts(row)}
            processing = "ended"
        else:
            counts = {"processing": total, **dict.fromkeys(_KINDS, 0)}
            processing = "canceling" if status == "cancelling" else "in_progress"
        ended_at = next((row.get(f) for f in ("completed_at", "failed_at", "expired_at", "cancelled_at")
                         if row.get(f) is not None), None)
        root = str(request.base_url).rstrip("/")
        return {
            "id": row["id"],
            "type": "message_batch",
            "processing_status": processing,
            "request_counts": counts,
            "ended_at": _rfc3339(ended_at) if ended else None,
            "created_at": _rfc3339(row["created_at"]),
            "expires_at": _rfc3339(row["expires_at"]),
            "archived_at": None,
            "cancel_initiated_at": _rfc3339(row.get("cancelling_at")),
            "results_url": f"{root}/v1/messages/batches/{row['id']}/results" if ended else None,
        }

    # ---- routes ----------------------------------------------------------------------------------

    async def create(self, request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise AnthropicError(f"Request body too large: the maximum is {MAX_BODY_BYTES:,} bytes (256 MB).",
                                 status=413)
        body = self.store.work_dir / ("create-" + os.urandom(8).hex() + ".json")
        dest_id = new_id("file-")
        dest = self.store.file_path(dest_id)
        try:
            size = 0
            with body.open("wb") as out:  # streamed to disk, counted as it arrives (chunked bodies too)
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > MAX_BODY_BYTES:
                        raise AnthropicError(f"Request body too large: more than {MAX_BODY_BYTES:,} bytes "
                                             "(256 MB).", status=413)
                    out.write(chunk)
            count = await anyio.to_thread.run_sync(write_input, body, dest)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        finally:
            body.unlink(missing_ok=True)
        if self.options.create_failures and self.store.take_fault("create_failures", self.options.create_failures):
            dest.unlink(missing_ok=True)
            raise AnthropicError("Overloaded (injected by --create-failures); nothing was created.", status=529)
        row = self.store.create_batch(input_file_id=dest_id, endpoint=_CHAT,
                                      window_seconds=self.options.expire_after or _DAY,
                                      id_prefix=_ID_PREFIX, extra={"request_total": count})
        self.processor.wake()
        return JSONResponse(self.render(row, request))

    async def retrieve(self, request: Request) -> Response:
        return JSONResponse(self.render(self._row(request.path_params["batch_id"]), request))

    async def list(self, request: Request) -> Response:
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise AnthropicError("limit: Input should be an integer between 1 and 1000")
        after, before = request.query_params.get("after_id") or None, request.query_params.get("before_id") or None
        if after and before:
            raise AnthropicError("Only one of after_id and before_id may be given.")
        page = self.store.page_batches(prefix=_ID_PREFIX, after=after, before=before, limit=int(raw))
        if page is None:
            raise AnthropicError(f"message_batch not found: {after or before}", status=404)
        rows, has_more = page
        data = [self.render(r, request) for r in rows]
        return JSONResponse({"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    async def cancel(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        self._row(batch_id)
        row, refusal = self.store.request_cancel(batch_id)
        assert row is not None
        if refusal is not None and row["status"] not in ("completed", "failed", "expired", "cancelled"):
            raise AnthropicError(refusal)
        # Cancelling an ended batch answers it as it is (nothing left to cancel).
        self.processor.wake()
        return JSONResponse(self.render(row, request))

    async def delete(self, request: Request) -> Response:
        batch_id = request.path_params["batch_id"]
        row = self._row(batch_id)
        if row["status"] not in ("completed", "failed", "expired", "cancelled"):
            raise AnthropicError(f"Batch {batch_id} cannot be deleted while it is processing; cancel it first and "
                                 "delete it once processing has ended.")
        self.store.delete_batch(batch_id)
        self._counts.pop(batch_id, None)
        return JSONResponse({"id": batch_id, "type": "message_batch_deleted"})

    async def results(self, request: Request) -> Response:
        row = self._row(request.path_params["batch_id"])
        if row["status"] not in ("completed", "failed", "expired", "cancelled"):
            raise AnthropicError(f"Batch {row['id']} has not ended yet: its results are available once "
                                 "processing_status is 'ended'.")
        if row["status"] == "failed":
            message = "; ".join(e.get("message", "") for e in ((row.get("errors") or {}).get("data") or []))
            stream: Iterator[bytes] = self._refused(row, message or "The batch could not be processed.")
        else:
            stream = (json.dumps(result_of(line), separators=(",", ":")).encode() + b"\n"
                      for line in _lines(self._paths(row)))
        # A sync iterator: Starlette reads it in a worker thread, one line at a time.
        return StreamingResponse(stream, media_type="application/binary")

    def _refused(self, row: dict[str, Any], message: str) -> Iterator[bytes]:
        path = self.store.file_path(row["input_file_id"])
        with path.open("rb") as fh:
            for raw in fh:
                custom_id = json.loads(raw).get("custom_id")
                line = {"custom_id": custom_id, "result": _errored("rate_limit_error", message)}
                yield json.dumps(line, separators=(",", ":")).encode() + b"\n"

