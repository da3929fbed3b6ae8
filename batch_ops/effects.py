"""Effects: what a plan asks its driver to do, and what the driver answers.

A *plan* (:mod:`batch_ops._plans`) is a generator that yields effects and receives their results:
:class:`Send` one HTTP request (answered with a :class:`Reply`), :class:`Sleep`, :class:`Notify` a
callback, :class:`Work` (blocking file work, run in a thread by the async driver). This module holds
those values and the pure helpers every layer above builds requests and reads answers with —
:func:`api_path` (ids escaped into paths), :func:`follow` (redirects), :func:`parse` (a body as a
model, or an error naming what came instead). It imports nothing of batch_ops above the models and
errors: dialects (:mod:`batch_ops.dialects`) build their requests from it, plans drive them.

Examples:
    >>> send = Send("GET", api_path("/batches/{batch_id}", batch_id="b/1"))
    >>> send.path, Reply(status=200, body=b"{}").ok, Reply(status=302, headers={"location": "/x"}).redirect
    ('/batches/b%2F1', True, '/x')
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from pydantic import BaseModel, ValidationError

from batch_ops._http import error_from_response
from batch_ops.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APITimeoutError,
    InputValidationError,
    Problem,
)
from batch_ops.models import Batch

__all__ = [
    "MAX_REDIRECTS",
    "Notify",
    "Plan",
    "Reply",
    "Send",
    "Sleep",
    "Work",
    "api_path",
    "follow",
    "list_params",
    "parse",
    "same_origin",
]


@dataclass(frozen=True)
class Send:
    """Effect: send one HTTP request (no retry); the driver answers with a :class:`Reply`.

    ``upload`` streams that file as the multipart ``file`` field (``json`` then holds the
    other form fields); ``stream`` streams that file as the whole body, as it is (a resumable
    upload's bytes, a create body a dialect wrote to disk); ``sink`` streams a successful
    response body into that file. ``headers`` are the call's own (a protocol header, a body's
    ``Content-Type``), added to the client's; credentials are never among them.
    ``filename`` names the upload on the server (default: the local file's name).
    ``url`` (absolute) replaces base URL + ``path`` when following a redirect; ``auth=False``
    sends no credentials (a redirect to another origin). ``deadline`` (epoch seconds): the
    driver abandons the exchange then, whatever the server is doing.
    """

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    upload: Path | None = None
    stream: Path | None = None
    sink: Path | None = None
    filename: str | None = None
    url: str | None = None
    auth: bool = True
    deadline: float | None = None
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class Sleep:
    """Effect: wait this many seconds. ``reason`` says what is being retried (the drivers log it).

    ``wake_on`` (a batch id): a driver that follows batch webhooks (an events subscription) may
    end the sleep early when that batch's event arrives. ``polling`` is then the pause of the
    wait's ordinary schedule: while no working subscription can end the sleep (none, not
    connected yet, or unreachable for a while), the sleep lasts at most that long (see
    :meth:`pause`). The driver answers what ended it: ``"timer"``, ``"event"``, ``"missed"`` (the
    subscription may have lost events: look now) or ``"unavailable"`` (the ordinary pause ended
    it: no working subscription).

    Examples:
        >>> Sleep(1800.0, wake_on="batch_1", polling=30.0).pause(events=False)
        30.0
        >>> Sleep(1800.0, wake_on="batch_1", polling=30.0).pause(events=True)
        1800.0
    """

    seconds: float
    reason: str = ""
    wake_on: str | None = None
    polling: float | None = None

    def pause(self, *, events: bool) -> float:
        """How long to sleep when a working events subscription can (``events``) or cannot end it."""
        if events or self.polling is None:
            return self.seconds
        return min(self.seconds, self.polling)


@dataclass(frozen=True)
class Notify:
    """Effect: call ``callback(batch)`` (awaited by the async driver when it returns an awaitable)."""

    callback: Callable[[Batch], Any]
    batch: Batch


@dataclass(frozen=True)
class Work:
    """Effect: run ``fn()`` and send back its result — file work (validate, hash, filter).

    The sync driver calls it; the async driver runs it in a worker thread, so a plan never
    blocks an event loop with disk I/O. An exception it raises is thrown into the plan.
    """

    fn: Callable[[], Any]


@dataclass(frozen=True)
class Reply:
    """What the driver observed for one :class:`Send`: a response, or a transport error.

    ``sent`` is False only when the request certainly never reached the server (connection
    refused or connect timeout); it decides whether a failed create may have created a batch.
    ``url`` is the absolute URL the request went to (redirects are resolved against it).
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    timed_out: bool = False
    sent: bool = True
    url: str | None = None

    @property
    def ok(self) -> bool:
        """Only a 2xx is a success: a 3xx is a redirect to follow (or refuse), never an answer."""
        return self.error is None and self.status is not None and 200 <= self.status < 300

    @property
    def redirect(self) -> str | None:
        """The ``Location`` of a redirect answer, or None."""
        if self.error is None and self.status in _REDIRECTS:
            return self.headers.get("location") or self.headers.get("Location")
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    def exception(self, send: Send, base_url: str = "") -> APIError:
        """The exception this reply means, once retries are exhausted."""
        where = f"{send.method} {base_url}{send.path}"
        if self.error is not None:
            cls = APITimeoutError if self.timed_out else APIConnectionError
            return cls(f"{where}: {self.error}")
        assert self.status is not None
        return error_from_response(
            status_code=self.status, body=self.body, headers=self.headers, method=send.method, url=base_url + send.path
        )


Plan = Generator["Send | Sleep | Notify | Work", Any, Any]
_M = TypeVar("_M", bound=BaseModel)

#: Statuses that carry a ``Location`` to follow.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Redirects followed per call before giving up.
MAX_REDIRECTS = 5


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


def same_origin(url: str, base: str) -> bool:
    """``url`` is on ``base``'s origin (scheme, host, port): where credentials meant for ``base`` may go.

    Examples:
        >>> same_origin("https://api.example/v1/x", "https://api.example/v1"), same_origin("https://cdn.example/x",
        ...                                                                              "https://api.example/v1")
        (True, False)
    """
    return _origin(url) == _origin(base)


def follow(send: Send, reply: Reply, location: str) -> Send:
    """The request a redirect asks for: the credentials go only to the origin they were meant for.

    303 (and 301/302 after a POST, as browsers do) turns the request into a GET without a body;
    307/308 repeat it as it was.

    Examples:
        >>> s = Send("GET", "/files/f1/content")
        >>> r = Reply(status=302, headers={"location": "https://cdn.example/f1?sig=x"},
        ...           url="https://api.example/v1/files/f1/content")
        >>> nxt = follow(s, r, "https://cdn.example/f1?sig=x")
        >>> nxt.url, nxt.auth
        ('https://cdn.example/f1?sig=x', False)
    """
    base = reply.url or send.url or ""
    target = urljoin(base, location)
    same = bool(base) and _origin(target) == _origin(base)
    method, body, upload = send.method, send.json, send.upload
    if reply.status == 303 or (reply.status in (301, 302) and send.method == "POST"):
        method, body, upload = "GET", None, None
    return replace(send, method=method, json=body, upload=upload, url=target, params=None,
                   auth=send.auth and same)


def api_path(template: str, **ids: Any) -> str:
    """An API path with each id checked and percent-encoded: an id never changes which resource
    a call reaches (``../files`` stays one path segment, ``b?limit=1`` adds no query).

    Examples:
        >>> api_path("/batches/{batch_id}/cancel", batch_id="../files")
        '/batches/..%2Ffiles/cancel'
        >>> api_path("/files/{file_id}", file_id="")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        batch_ops.errors.InputValidationError: batch parameters: 1 problem:
          file_id: invalid_id: file_id is empty (fix: ...)
    """
    safe: dict[str, str] = {}
    for name, value in ids.items():
        problem = None
        if not isinstance(value, str):
            problem = f"{name} is a {type(value).__name__}, not a string"
        elif not value.strip():
            problem = f"{name} is empty"
        elif any(ord(c) < 32 for c in value):
            problem = f"{name} contains control characters"
        if problem is not None:
            raise InputValidationError(
                [Problem(rule="invalid_id", message=problem, param=name,
                         fix=f"pass the id the API returned, e.g. {name}='{name.split('_')[0]}_abc123'")],
                source="batch parameters",
            )
        safe[name] = quote(value, safe="")
    return template.format(**safe)


def parse(model: type[_M], reply: Reply, send: Send, *, what: str) -> _M:
    """The reply's body as ``model``, or an :class:`APIResponseValidationError` naming the call and
    what came instead (an HTML page, JSON cut off, an object missing fields)."""
    try:
        return model.model_validate_json(reply.body)
    except ValidationError as exc:
        first = exc.errors()[0] if exc.error_count() else {"msg": str(exc), "loc": ()}
        loc = ".".join(str(x) for x in first.get("loc", ()))
        reason = f"{loc}: {first['msg']}" if loc else str(first["msg"])
    snippet = reply.body[:80].decode("utf-8", "replace").replace("\n", " ")
    kind = reply.headers.get("content-type") or "no content type"
    where = f"{send.method} {reply.url or send.path}"
    return_error = APIResponseValidationError(
        f"{where} answered {reply.status} ({kind}) with a body that is not {what}: {reason}; "
        f"it began {snippet!r}. A proxy or gateway may stand between you and the API.",
        status_code=reply.status, method=send.method, url=reply.url or send.path, reason=reason,
    )
    raise return_error


def list_params(*, limit: int, after: str | None) -> dict[str, Any]:
    """Query parameters for GET /batches; the limit is checked here, before any request."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
        raise InputValidationError(
            [Problem(rule="invalid_limit", message=f"limit={limit!r} is outside 1..100", fix="pass 1 <= limit <= 100",
                     param="limit")]
        )
    params: dict[str, Any] = {"limit": limit}
    if after:
        params["after"] = after
    return params
