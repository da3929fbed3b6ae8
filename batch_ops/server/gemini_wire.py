"""Gemini's batch wire, translated to and from the local server's own (OpenAI-shaped) store and engines.

The local server runs one store, one processor and one set of engines. A Gemini batch is kept
there as an OpenAI chat batch: each request line ``{"key", "request": GenerateContentRequest}``
becomes ``{"custom_id": key, "url": "/v1/chat/completions", "body": {model, messages, ...}}``
(:func:`chat_line`), so the echo, replay and upstream engines and every fault apply unchanged;
each result line comes back as Gemini writes it (:func:`gemini_result`): ``{"key", "response":
GenerateContentResponse}`` or ``{"key", "error": {code, message, status}}``. The batch itself is
shown as Google's long-running Operation (:func:`operation`).

Only text survives the trip through a chat engine: a non-text part (inline data, a file) is
sent as a placeholder. That is what an offline server needs; it is not a Gemini emulator.

Examples:
    >>> line = chat_line("q-1", {"contents": [{"role": "user", "parts": [{"text": "2+2?"}]}],
    ...                          "generationConfig": {"maxOutputTokens": 8}}, model="models/gemini-2.5-flash")
    >>> line["custom_id"], line["body"]["messages"], line["body"]["max_tokens"]
    ('q-1', [{'role': 'user', 'content': '2+2?'}], 8)
    >>> out = {"custom_id": "q-1", "response": {"status_code": 200, "body": {"model": "m",
    ...        "choices": [{"index": 0, "message": {"content": "4"}, "finish_reason": "stop"}],
    ...        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}}}}
    >>> r = gemini_result(out)["response"]
    >>> r["candidates"][0]["content"]["parts"][0]["text"], r["usageMetadata"]["totalTokenCount"]
    ('4', 6)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BATCH_TYPE",
    "STATES",
    "BadRequestLine",
    "chat_line",
    "gemini_result",
    "google_status",
    "operation",
    "rfc3339",
]

#: The ``@type`` of an Operation's metadata: the batch resource.
BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput"

#: The store's statuses as Gemini's batch states. ``cancelling`` has no Developer-API state: the
#: batch is still running until it ends ``CANCELLED``.
STATES = {
    "validating": "BATCH_STATE_PENDING",
    "in_progress": "BATCH_STATE_RUNNING",
    "finalizing": "BATCH_STATE_RUNNING",
    "cancelling": "BATCH_STATE_RUNNING",
    "completed": "BATCH_STATE_SUCCEEDED",
    "failed": "BATCH_STATE_FAILED",
    "cancelled": "BATCH_STATE_CANCELLED",
    "expired": "BATCH_STATE_EXPIRED",
}
_TERMINAL = {"completed", "failed", "cancelled", "expired"}

#: HTTP status → google.rpc code name (the ``status`` of Google's error envelope).
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    501: "NOT_IMPLEMENTED",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
#: google.rpc code numbers, for an Operation's ``error`` (a Status, whose code is the gRPC number).
_RPC_CODES = {"CANCELLED": 1, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5, "PERMISSION_DENIED": 7,
              "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "ABORTED": 10, "INTERNAL": 13, "UNAVAILABLE": 14}
#: An OpenAI batch line error without an HTTP response, as the HTTP code Gemini would report.
_LINE_ERRORS = {"batch_cancelled": 499, "batch_expired": 504}
_FINISH = {"stop": "STOP", "length": "MAX_TOKENS", "content_filter": "SAFETY", "tool_calls": "STOP"}
_ROLES = {"user": "user", "model": "assistant", "function": "tool"}


class BadRequestLine(ValueError):
    """A request line that is not a Gemini batch request: ``message`` names what is wrong."""


def google_status(code: int) -> str:
    """The google.rpc status name of an HTTP status code.

    Examples:
        >>> google_status(404), google_status(418), google_status(502)
        ('NOT_FOUND', 'FAILED_PRECONDITION', 'INTERNAL')
    """
    if code in _STATUS_NAMES:
        return _STATUS_NAMES[code]
    return "INTERNAL" if code >= 500 else "FAILED_PRECONDITION"


def rfc3339(epoch: float | None) -> str | None:
    """An epoch time as Google writes timestamps (RFC 3339, UTC, ``Z``).

    Examples:
        >>> rfc3339(0), rfc3339(None)
        ('1970-01-01T00:00:00Z', None)
    """
    if epoch is None:
        return None
    return dt.datetime.fromtimestamp(epoch, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get(obj: Mapping[str, Any], camel: str, snake: str) -> Any:
    """A field in either spelling: the REST API takes ``generationConfig`` and ``generation_config``."""
    return obj.get(camel, obj.get(snake))


def _parts_text(content: Any) -> str:
    parts = content.get("parts") if isinstance(content, Mapping) else None
    if not isinstance(parts, list):
        return ""
    texts = []
    for part in parts:
        if isinstance(part, Mapping) and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif isinstance(part, Mapping):
            texts.append("[" + ", ".join(sorted(part)) + "]")  # a non-text part: named, not carried
    return "".join(texts)


def chat_line(key: Any, request: Any, *, model: str) -> dict[str, Any]:
    """One Gemini request (``GenerateContentRequest``) as the OpenAI chat line the store and engines run.

    Raises :class:`BadRequestLine` when ``request`` is not one (no ``contents``, a content
    without parts).
    """
    if not isinstance(request, Mapping):
        raise BadRequestLine("'request' must be a GenerateContentRequest object")
    contents = request.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequestLine("'request.contents' must be a non-empty list of contents")
    messages: list[dict[str, Any]] = []
    system = _get(request, "systemInstruction", "system_instruction")
    if system is not None:
        messages.append({"role": "system", "content": _parts_text(system)})
    for n, content in enumerate(contents):
        if not isinstance(content, Mapping) or not isinstance(content.get("parts"), list):
            raise BadRequestLine(f"'request.contents[{n}]' must be a content with a list of 'parts'")
        role = _ROLES.get(str(content.get("role") or "user"), "user")
        messages.append({"role": role, "content": _parts_text(content)})
    body: dict[str, Any] = {"model": model.removeprefix("models/"), "messages": messages}
    config = _get(request, "generationConfig", "generation_config")
    if isinstance(config, Mapping):
        for camel, snake, ours in (("maxOutputTokens", "max_output_tokens", "max_tokens"),
                                   ("temperature", "temperature", "temperature"),
                                   ("topP", "top_p", "top_p"),
                                   ("stopSequences", "stop_sequences", "stop"),
                                   ("candidateCount", "candidate_count", "n")):
            value = _get(config, camel, snake)
            if value is not None:
                body[ours] = value
        # A response schema (responseJsonSchema, or the OpenAPI-subset responseSchema) as OpenAI's json_schema
        # response format: the engines answer the smallest JSON that follows it, in the text part.
        schema = _get(config, "responseJsonSchema", "response_json_schema") or _get(config, "responseSchema",
                                                                                     "response_schema")
        if isinstance(schema, Mapping):
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "response",
                                                                               "schema": _lower_types(schema)}}
    return {"custom_id": key, "method": "POST", "url": "/v1/chat/completions", "body": body}


def _lower_types(schema: Any) -> Any:
    """An OpenAPI ``responseSchema`` (``type: OBJECT``) in JSON Schema's words (``type: object``)."""
    if isinstance(schema, Mapping):
        return {k: (v.lower() if k == "type" and isinstance(v, str) else _lower_types(v)) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_lower_types(v) for v in schema]
    return schema


def _usage(usage: Any) -> dict[str, int]:
    usage = usage if isinstance(usage, Mapping) else {}
    prompt = int(usage.get("prompt_tokens") or usage.get("input_tokens") or 0)
    out = int(usage.get("completion_tokens") or usage.get("output_tokens") or 0)
    meta = {"promptTokenCount": prompt, "candidatesTokenCount": out,
            "totalTokenCount": int(usage.get("total_tokens") or prompt + out)}
    details = usage.get("prompt_tokens_details")
    if isinstance(details, Mapping) and details.get("cached_tokens"):
        meta["cachedContentTokenCount"] = int(details["cached_tokens"])
    out_details = usage.get("completion_tokens_details")
    if isinstance(out_details, Mapping) and out_details.get("reasoning_tokens"):
        meta["thoughtsTokenCount"] = int(out_details["reasoning_tokens"])
    return meta


def _response(body: Mapping[str, Any]) -> dict[str, Any]:
    """A chat completion as a ``GenerateContentResponse``."""
    candidates = []
    for choice in body.get("choices") or []:
        message = choice.get("message") or {}
        text = message.get("content") if isinstance(message.get("content"), str) else ""
        finish = "content_filter" if message.get("refusal") else choice.get("finish_reason")
        candidates.append({"content": {"role": "model", "parts": [{"text": text}]},
                           "finishReason": _FINISH.get(str(finish), "OTHER"),
                           "index": int(choice.get("index") or 0)})
    response: dict[str, Any] = {"candidates": candidates, "usageMetadata": _usage(body.get("usage"))}
    if body.get("model"):
        response["modelVersion"] = body["model"]
    if body.get("id"):
        response["responseId"] = body["id"]
    return response


def _error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "status": google_status(code)}


def gemini_result(line: Mapping[str, Any], *, key: Any = None) -> dict[str, Any]:
    """One result line of the store (OpenAI's shape) as Gemini writes it: ``{"key", "response"}``
    or ``{"key", "error": {code, message, status}}``; ``key`` overrides the line's ``custom_id``
    (inline requests are run under their index).

    Examples:
        >>> gemini_result({"custom_id": "a", "error": {"code": "batch_expired", "message": "late"}})
        {'key': 'a', 'error': {'code': 504, 'message': 'late', 'status': 'DEADLINE_EXCEEDED'}}
    """
    out: dict[str, Any] = {"key": line.get("custom_id") if key is None else key}
    response = line.get("response")
    if isinstance(response, Mapping) and isinstance(response.get("status_code"), int):
        code, body = response["status_code"], response.get("body")
        if 200 <= code < 300 and isinstance(body, Mapping):
            out["response"] = _response(body)
            return out
        err = body.get("error") if isinstance(body, Mapping) else None
        message = err.get("message") if isinstance(err, Mapping) else None
        out["error"] = _error(code, str(message or f"HTTP {code}"))
        return out
    error: Mapping[str, Any] = line["error"] if isinstance(line.get("error"), Mapping) else {}
    code = _LINE_ERRORS.get(str(error.get("code")), 500)
    out["error"] = _error(code, str(error.get("message") or "the request was not run"))
    return out


def _stats(batch: Mapping[str, Any]) -> dict[str, str]:
    counts = batch.get("request_counts") or {}
    total, done, failed = (int(counts.get(k) or 0) for k in ("total", "completed", "failed"))
    # int64 fields travel as strings in Google's JSON.
    return {"requestCount": str(total), "successfulRequestCount": str(done), "failedRequestCount": str(failed),
            "pendingRequestCount": str(max(total - done - failed, 0))}


def _end_time(batch: Mapping[str, Any]) -> int | None:
    for field in ("completed_at", "failed_at", "cancelled_at", "expired_at"):
        if batch.get(field):
            return int(batch[field])
    return None


def operation(batch: Mapping[str, Any], *, name: str, display_name: str, model: str,
              input_config: Mapping[str, Any], output: Mapping[str, Any] | None) -> dict[str, Any]:
    """The batch as Google's long-running Operation: ``name`` ``batches/{id}``, the batch in ``metadata``,
    ``done`` once it ended, and (done) the output in ``response`` or the failure in ``error``.

    ``batch`` is the store's (OpenAI-shaped) batch object; ``output`` the rendered output
    (``{"responsesFile": ...}`` or ``{"inlinedResponses": {...}}``), None while there is none.
    """
    status = str(batch["status"])
    end = _end_time(batch)
    stamps = [batch.get(f) for f in ("created_at", "in_progress_at", "finalizing_at", "cancelling_at")]
    updated = max([int(s) for s in stamps if s] + ([end] if end else []))
    meta: dict[str, Any] = {
        "@type": BATCH_TYPE,
        "model": model,
        "name": name,
        "displayName": display_name,
        "inputConfig": dict(input_config),
        "createTime": rfc3339(batch["created_at"]),
        "updateTime": rfc3339(updated),
        "batchStats": _stats(batch),
        "state": STATES.get(status, "BATCH_STATE_UNSPECIFIED"),
        "priority": "0",
    }
    if end is not None:
        meta["endTime"] = rfc3339(end)
    if output:
        meta["output"] = dict(output)
    op: dict[str, Any] = {"name": name, "metadata": meta, "done": status in _TERMINAL}
    if status == "failed":
        errors = ((batch.get("errors") or {}).get("data")) or [{}]
        first = errors[0]
        kind = "RESOURCE_EXHAUSTED" if first.get("code") == "token_limit_exceeded" else "INVALID_ARGUMENT"
        op["error"] = {"code": _RPC_CODES[kind], "message": str(first.get("message") or "the batch failed"),
                       "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": str(e.get("code")),
                                    "metadata": {"line": str(e.get("line"))}} for e in errors]}
    elif status in _TERMINAL:
        op["response"] = {"@type": _OUTPUT_TYPE, **(output or {})}
    return op
