"""The client's call sequences, written once as generators of effects.

A *plan* is a generator that yields effects — :class:`Send` one HTTP request, :class:`Sleep`,
:class:`Notify` a callback, :class:`Work` (blocking file work) — and receives each effect's
result (or, thrown into it, the exception the effect raised). It decides everything
(retry or not, how long to wait, whether a create may already have happened, when a wait is
over); it performs no I/O. ``BatchClient`` runs plans with blocking httpx and ``time.sleep``,
``AsyncBatchClient`` with async httpx and ``asyncio.sleep``. One implementation, two drivers:
the sync and async clients cannot drift apart, and the plans are testable step by step.

Examples:
    >>> plan = send_with_retries(Send("GET", "/batches/b1"), policy=RetryPolicy(max_retries=1, initial=1))
    >>> first = next(plan)
    >>> first.method, first.path
    ('GET', '/batches/b1')
    >>> plan.send(Reply(status=503, headers={"retry-after": "2"})).seconds
    2.0
    >>> next(plan) == first  # the retry
    True
    >>> try:
    ...     plan.send(Reply(status=200, body=b'{"ok": 1}'))
    ... except StopIteration as done:
    ...     done.value.json()
    {'ok': 1}
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

from pydantic import BaseModel, ValidationError

from batch_ops._http import RetryPolicy, error_from_response
from batch_ops.chain import IDEMPOTENCY_METADATA_KEY
from batch_ops.errors import (
    APIConnectionError,
    APIError,
    APIResponseValidationError,
    APIStatusError,
    APITimeoutError,
    InputValidationError,
    Problem,
    is_retryable_status,
)
from batch_ops.models import (
    METADATA_MAX_PAIRS,
    Batch,
    BatchList,
    FileList,
    FileObject,
    azure_endpoint,
    check_create_params,
)
from batch_ops.orphans import OWNER_METADATA_KEYS
from batch_ops.polling import BatchPoller, timeout_error

__all__ = [
    "Notify",
    "Plan",
    "Reply",
    "Send",
    "Sleep",
    "Work",
    "api_path",
    "call_plan",
    "create_body",
    "create_plan",
    "find_by_key_plan",
    "follow",
    "list_params",
    "new_idempotency_key",
    "parse",
    "send_with_retries",
    "wait_plan",
]

#: Clock used by plans; tests may patch it (and the drivers' sleeps), nothing else.
clock: Callable[[], float] = time.time

#: Seconds of clock skew allowed between us and the server when looking back for a create.
CREATE_LOOKBACK_SKEW = 600.0


@dataclass(frozen=True)
class Send:
    """Effect: send one HTTP request (no retry); the driver answers with a :class:`Reply`.

    ``upload`` streams that file as the multipart ``file`` field (``json`` then holds the
    other form fields); ``sink`` streams a successful response body into that file.
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
    sink: Path | None = None
    filename: str | None = None
    url: str | None = None
    auth: bool = True
    deadline: float | None = None


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


def _retry_delay(policy: RetryPolicy, reply: Reply, *, attempt: int, started: float) -> float | None:
    now = clock()
    return policy.delay(attempt=attempt, elapsed=now - started, status=reply.status, headers=reply.headers,
                        connection_error=reply.error is not None, now=now)


def send_with_retries(send: Send, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Reply]:
    """Send until success, a permanent error, the retry budget is spent, or ``send.deadline`` passes.

    Redirects are followed (at most :data:`MAX_REDIRECTS`), with the credentials only while
    the origin stays the same.
    """
    started = clock()
    attempt = 0
    current = send
    redirects = 0
    while True:
        if send.deadline is not None and clock() >= send.deadline:
            raise APITimeoutError(f"{send.method} {send.path}: the deadline passed before an answer came")
        reply: Reply = yield current
        if reply.ok:
            return reply
        location = reply.redirect
        if location is not None:
            redirects += 1
            if redirects > MAX_REDIRECTS:
                raise APIConnectionError(f"{send.method} {send.path}: more than {MAX_REDIRECTS} redirects")
            current = follow(current, reply, location)
            continue
        if send.deadline is not None and clock() >= send.deadline:
            raise reply.exception(current)  # no time left for another try
        delay = _retry_delay(policy, reply, attempt=attempt, started=started)
        if delay is None:
            raise reply.exception(current)
        if send.deadline is not None:
            delay = min(delay, max(send.deadline - clock(), 0.0))
        what = reply.error or f"HTTP {reply.status}"
        yield Sleep(delay, f"{send.method} {send.path} failed ({what}); retry {attempt + 1} of {policy.max_retries} "
                           f"in {delay:.1f} s")
        attempt += 1
        current = send  # a retry starts over at the original URL


#: Statuses that carry a ``Location`` to follow.
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: Redirects followed per call before giving up.
MAX_REDIRECTS = 5


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return (parts.scheme, (parts.hostname or "").lower(), port)


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


def call_plan(send: Send, model: type[_M], *, policy: RetryPolicy, what: str) -> Generator[Send | Sleep, Any, _M]:
    """:func:`send_with_retries`, then the body as ``model``. A 2xx whose body is not one (a proxy's
    error page) is retried like a 5xx, within the same budget, before it is raised."""
    started = clock()
    attempt = 0
    while True:
        reply = yield from send_with_retries(send, policy=policy)
        try:
            return parse(model, reply, send, what=what)
        except APIResponseValidationError:
            delay = policy.delay(attempt=attempt, elapsed=clock() - started, connection_error=True, now=clock())
            if delay is None:
                raise
            yield Sleep(delay, f"{send.method} {send.path} answered with a body that is not {what}; "
                               f"retry {attempt + 1} of {policy.max_retries} in {delay:.1f} s")
            attempt += 1


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


def new_idempotency_key() -> str:
    """A fresh random key for a batch create that has no natural identity."""
    return uuid.uuid4().hex


def create_body(
    *,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    metadata: Mapping[str, str] | None,
    output_expires_after: Mapping[str, Any] | None,
    idempotency_key: str,
    azure: bool = False,
) -> dict[str, Any]:
    """The POST /batches body with our idempotency key in ``metadata``; raises before any I/O.

    ``azure``: the endpoint may be spelled as Azure OpenAI documents it, and is sent that way.

    Examples:
        >>> create_body(input_file_id="f", endpoint="/v1/embeddings", completion_window="24h",
        ...             metadata={"run": "n"}, output_expires_after=None, idempotency_key="k")["metadata"]
        {'run': 'n', 'batch_ops_idempotency_key': 'k'}
    """
    user_meta = dict(metadata or {})
    if isinstance(output_expires_after, Mapping) and "anchor" not in output_expires_after:
        # The API requires the anchor and knows only one: say it for the caller.
        output_expires_after = {"anchor": "created_at", **output_expires_after}
    problems = [
        Problem(rule="invalid_batch_parameter", message=msg, fix=fix, param=param)
        for param, msg, fix in check_create_params(
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=user_meta,
            output_expires_after=output_expires_after,
            azure=azure,
        )
    ]
    if not input_file_id or not isinstance(input_file_id, str):
        problems.append(
            Problem(rule="invalid_batch_parameter", message="input_file_id is empty", fix="upload the file first",
                    param="input_file_id")
        )
    if IDEMPOTENCY_METADATA_KEY not in user_meta and len(user_meta) >= METADATA_MAX_PAIRS:
        # The adapters add the run that owns the batch (for the orphan sweep): name every pair that is ours.
        ours = [k for k in OWNER_METADATA_KEYS if k in user_meta]
        added = ", ".join(f"'{k}'" for k in (*ours, IDEMPOTENCY_METADATA_KEY))
        problems.append(
            Problem(
                rule="invalid_batch_parameter",
                message=f"metadata has {len(user_meta) - len(ours)} pairs of yours and batch_ops adds {added} "
                f"(so a retried create finds the batch instead of billing a second one, and a sweep finds its run)",
                fix=f"keep at most {METADATA_MAX_PAIRS - 1 - len(ours)} metadata keys of your own",
                param="metadata",
            )
        )
    if problems:
        raise InputValidationError(problems, source="batch parameters")
    user_meta[IDEMPOTENCY_METADATA_KEY] = idempotency_key
    body: dict[str, Any] = {
        "input_file_id": input_file_id,
        "endpoint": azure_endpoint(endpoint) if azure else endpoint,
        "completion_window": completion_window,
        "metadata": user_meta,
    }
    if output_expires_after is not None:
        body["output_expires_after"] = dict(output_expires_after)
    return body


def find_by_key_plan(key: str, *, since: float, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Batch | None]:
    """Newest-first scan of the batch list for ``key``, back to ``since`` (epoch seconds)."""
    after: str | None = None
    while True:
        page = yield from list_batches_plan(limit=100, after=after, policy=policy)
        for batch in page.data:
            if (batch.metadata or {}).get(IDEMPOTENCY_METADATA_KEY) == key:
                return batch
        if not page.has_more or not page.data or not page.last_id:
            return None
        if min(b.created_at for b in page.data) < since:
            return None
        after = page.last_id


def create_plan(
    body: Mapping[str, Any], *, key_may_exist: bool, policy: RetryPolicy, lookback: float
) -> Generator[Send | Sleep, Any, Batch]:
    """Create a batch at most once.

    A create is not idempotent on the server. So: when the key may already have been used
    (a caller-chosen key, e.g. an Airflow task retry), look it up first; and after any failure
    that may have reached the server (timeout, dropped connection, 5xx, 408, 409, an answer that
    is not a batch), look it up again before re-sending. A 429 or a refused connection means
    nothing was created.
    """
    key = body["metadata"][IDEMPOTENCY_METADATA_KEY]
    if key_may_exist:
        found = yield from find_by_key_plan(key, since=clock() - lookback, policy=policy)
        if found is not None:
            return found
    started = clock()
    first = send = Send("POST", "/batches", json=dict(body))
    attempt = redirects = 0
    may_exist = False
    while True:
        if may_exist:
            found = yield from find_by_key_plan(key, since=started - CREATE_LOOKBACK_SKEW, policy=policy)
            if found is not None:
                return found
        reply: Reply = yield send
        location = reply.redirect
        if location is not None and redirects < MAX_REDIRECTS:
            redirects += 1
            send = follow(send, reply, location)
            continue
        send = first
        if reply.ok:
            try:
                return parse(Batch, reply, send, what="a batch")
            except APIResponseValidationError:
                if _retry_delay(policy, Reply(error="unreadable"), attempt=attempt, started=started) is None:
                    raise
                may_exist = True  # something answered 2xx: the batch may well exist
        elif reply.error is not None:
            may_exist = may_exist or reply.sent
        elif reply.status is not None and reply.status != 429 and is_retryable_status(reply.status):
            may_exist = True
        failed = reply if not reply.ok else Reply(error="an answer that is not a batch")
        delay = _retry_delay(policy, failed, attempt=attempt, started=started)
        if delay is None:
            raise reply.exception(send)
        yield Sleep(delay, f"POST /batches failed ({failed.error or f'HTTP {failed.status}'}); "
                           f"retry {attempt + 1} of {policy.max_retries} in {delay:.1f} s")
        attempt += 1


def wait_plan(
    batch_id: str,
    *,
    poller: BatchPoller,
    policy: RetryPolicy,
    on_poll: Callable[[Batch], Any] | None = None,
    first_delay: float = 0.0,
) -> Generator[Send | Sleep | Notify, Any, Batch]:
    """Poll until the batch is terminal; raise BatchTimeoutError at the deadline.

    Transient poll failures (after the per-request retries) are tolerated up to the poller's
    bound, an answer that is not a batch among them; permanent 4xx (the batch does not exist,
    the key is wrong) end the wait at once. Every request carries the wait's deadline, so a
    server that never answers, or answers a byte at a time, cannot hold the wait past it.

    ``first_delay`` seconds pass before the first poll (a spread, so many waits do not poll in
    the same instant). With webhooks (``poller.safety_poll_interval``), every pause is a
    :class:`Sleep` that the batch's event may end early; between events the wait polls only
    every ``safety_poll_interval`` seconds, and on its ordinary schedule (``Sleep.polling``)
    whenever the driver has no working subscription at that moment: a wait that starts while
    the receiver is down polls at its interval from the start.
    """
    poller.start(now=clock())
    send = Send("GET", api_path("/batches/{batch_id}", batch_id=batch_id), deadline=poller.deadline)
    last: Batch | None = None
    last_body = b""
    events = poller.safety_poll_interval is not None
    if first_delay > 0:
        yield Sleep(poller.clip(first_delay, now=clock()), wake_on=batch_id if events else None)
    while True:
        try:
            reply = yield from send_with_retries(send, policy=policy)
            # A long batch answers the same bytes poll after poll: parse only what changed
            # (Batch is frozen, so handing out the same object again is safe).
            if last is None or reply.body != last_body:
                last, last_body = parse(Batch, reply, send, what="a batch"), reply.body
        except APIStatusError as exc:
            if not is_retryable_status(exc.status_code):
                raise
            decision = poller.failed(now=clock(), retryable=True, error=str(exc))
            if decision.action == "done":
                raise
        except (APIConnectionError, APIResponseValidationError) as exc:
            decision = poller.failed(now=clock(), retryable=True, error=str(exc))
            if decision.action == "done":
                raise
        else:
            if on_poll is not None:
                yield Notify(on_poll, last)
            decision = poller.decide(last, now=clock())
            if decision.action == "done":
                return last
        if decision.action == "timeout":
            raise timeout_error(batch_id, deadline=poller.deadline, last=last)
        yield Sleep(decision.delay, wake_on=batch_id if decision.wake_on_event else None,
                    polling=decision.polling_delay)


# ---------------------------------------------------------------------------------------------
# one call each: written once for both clients
# ---------------------------------------------------------------------------------------------


def upload_plan(path: Path, *, purpose: str, filename: str | None = None,
                policy: RetryPolicy) -> Generator[Send | Sleep, Any, FileObject]:
    send = Send("POST", "/files", json={"purpose": purpose}, upload=path, filename=filename)
    return (yield from call_plan(send, FileObject, policy=policy, what="a file object"))


def retrieve_file_plan(file_id: str, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, FileObject]:
    send = Send("GET", api_path("/files/{file_id}", file_id=file_id))
    return (yield from call_plan(send, FileObject, policy=policy, what="a file object"))


def list_files_plan(*, purpose: str | None, policy: RetryPolicy,
                    params: Mapping[str, Any] | None = None) -> Generator[Send | Sleep, Any, FileList]:
    query = {**({"purpose": purpose} if purpose else {}), **(params or {})}
    send = Send("GET", "/files", params=query or None)
    return (yield from call_plan(send, FileList, policy=policy, what="a list of files"))


def download_plan(file_id: str, target: Path, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Path]:
    yield from send_with_retries(Send("GET", api_path("/files/{file_id}/content", file_id=file_id), sink=target),
                                 policy=policy)
    return target


def delete_file_plan(file_id: str, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, bool]:
    send = Send("DELETE", api_path("/files/{file_id}", file_id=file_id))
    reply = yield from send_with_retries(send, policy=policy)
    try:
        answer = reply.json()
    except ValueError:
        return True  # deleted (2xx) with a body we cannot read: nothing more to know
    return bool(answer.get("deleted", True)) if isinstance(answer, dict) else True


def retrieve_batch_plan(batch_id: str, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Batch]:
    send = Send("GET", api_path("/batches/{batch_id}", batch_id=batch_id))
    return (yield from call_plan(send, Batch, policy=policy, what="a batch"))


def cancel_batch_plan(batch_id: str, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Batch]:
    send = Send("POST", api_path("/batches/{batch_id}/cancel", batch_id=batch_id))
    return (yield from call_plan(send, Batch, policy=policy, what="a batch"))


def list_batches_plan(*, limit: int, after: str | None, policy: RetryPolicy) -> Generator[Send | Sleep, Any, BatchList]:
    send = Send("GET", "/batches", params=list_params(limit=limit, after=after))
    return (yield from call_plan(send, BatchList, policy=policy, what="a list of batches"))
