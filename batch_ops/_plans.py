"""The client's call sequences, written once as generators of effects.

A *plan* is a generator that yields effects — :class:`Send` one HTTP request, :class:`Sleep`,
:class:`Notify` a callback, :class:`Work` (blocking file work) — and receives each effect's
result (or, thrown into it, the exception the effect raised). It decides everything
(retry or not, how long to wait, whether a create may already have happened, when a wait is
over); it performs no I/O. ``BatchClient`` runs plans with blocking httpx and ``time.sleep``,
``AsyncBatchClient`` with async httpx and ``asyncio.sleep``. One implementation, two drivers:
the sync and async clients cannot drift apart, and the plans are testable step by step.

Example:
    >>> plan = send_with_retries(Send("GET", "/batches/b1"), policy=RetryPolicy(max_retries=1, initial=1))
    >>> next(plan)
    Send(method='GET', path='/batches/b1', params=None, json=None, upload=None, sink=None, filename=None)
    >>> plan.send(Reply(status=503, headers={"retry-after": "2"}))
    Sleep(seconds=2.0)
    >>> next(plan)  # the retry
    Send(method='GET', path='/batches/b1', params=None, json=None, upload=None, sink=None, filename=None)
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from batch_ops._http import RetryPolicy, error_from_response
from batch_ops.chain import IDEMPOTENCY_METADATA_KEY
from batch_ops.errors import (
    APIConnectionError,
    APIError,
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
    check_create_params,
)
from batch_ops.polling import BatchPoller, timeout_error

__all__ = [
    "Notify",
    "Plan",
    "Reply",
    "Send",
    "Sleep",
    "Work",
    "create_body",
    "create_plan",
    "find_by_key_plan",
    "list_params",
    "new_idempotency_key",
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
    """

    method: str
    path: str
    params: Mapping[str, Any] | None = None
    json: Any = None
    upload: Path | None = None
    sink: Path | None = None
    filename: str | None = None


@dataclass(frozen=True)
class Sleep:
    """Effect: wait this many seconds."""

    seconds: float


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
    """

    status: int | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None
    timed_out: bool = False
    sent: bool = True

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and self.status < 400

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


def _retry_delay(policy: RetryPolicy, reply: Reply, *, attempt: int, started: float) -> float | None:
    now = clock()
    return policy.delay(attempt=attempt, elapsed=now - started, status=reply.status, headers=reply.headers,
                        connection_error=reply.error is not None, now=now)


def send_with_retries(send: Send, *, policy: RetryPolicy) -> Generator[Send | Sleep, Any, Reply]:
    """Send until success, a permanent error, or the retry budget is spent."""
    started = clock()
    attempt = 0
    while True:
        reply: Reply = yield send
        if reply.ok:
            return reply
        delay = _retry_delay(policy, reply, attempt=attempt, started=started)
        if delay is None:
            raise reply.exception(send)
        yield Sleep(delay)
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
) -> dict[str, Any]:
    """The POST /batches body with our idempotency key in ``metadata``; raises before any I/O.

    Example:
        >>> create_body(input_file_id="f", endpoint="/v1/embeddings", completion_window="24h",
        ...             metadata={"run": "n"}, output_expires_after=None, idempotency_key="k")["metadata"]
        {'run': 'n', 'batch_ops_idempotency_key': 'k'}
    """
    user_meta = dict(metadata or {})
    problems = [
        Problem(rule="invalid_batch_parameter", message=msg, fix=fix, param=param)
        for param, msg, fix in check_create_params(
            endpoint=endpoint,
            completion_window=completion_window,
            metadata=user_meta,
            output_expires_after=output_expires_after,
        )
    ]
    if not input_file_id or not isinstance(input_file_id, str):
        problems.append(
            Problem(rule="invalid_batch_parameter", message="input_file_id is empty", fix="upload the file first",
                    param="input_file_id")
        )
    if IDEMPOTENCY_METADATA_KEY not in user_meta and len(user_meta) >= METADATA_MAX_PAIRS:
        problems.append(
            Problem(
                rule="invalid_batch_parameter",
                message=f"metadata has {len(user_meta)} pairs and batch_ops adds '{IDEMPOTENCY_METADATA_KEY}' "
                f"so a retried create can find the batch instead of billing a second one",
                fix=f"keep at most {METADATA_MAX_PAIRS - 1} metadata keys",
                param="metadata",
            )
        )
    if problems:
        raise InputValidationError(problems, source="batch parameters")
    user_meta[IDEMPOTENCY_METADATA_KEY] = idempotency_key
    body: dict[str, Any] = {
        "input_file_id": input_file_id,
        "endpoint": endpoint,
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
        reply = yield from send_with_retries(Send("GET", "/batches", params=list_params(limit=100, after=after)),
                                             policy=policy)
        page = BatchList.model_validate_json(reply.body)
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
    that may have reached the server (timeout, dropped connection, 5xx, 408, 409), look it up
    again before re-sending. A 429 or a refused connection means nothing was created.
    """
    key = body["metadata"][IDEMPOTENCY_METADATA_KEY]
    if key_may_exist:
        found = yield from find_by_key_plan(key, since=clock() - lookback, policy=policy)
        if found is not None:
            return found
    started = clock()
    send = Send("POST", "/batches", json=dict(body))
    attempt = 0
    may_exist = False
    while True:
        if may_exist:
            found = yield from find_by_key_plan(key, since=started - CREATE_LOOKBACK_SKEW, policy=policy)
            if found is not None:
                return found
        reply: Reply = yield send
        if reply.ok:
            return Batch.model_validate_json(reply.body)
        if reply.error is not None:
            may_exist = may_exist or reply.sent
        elif reply.status is not None and reply.status != 429 and is_retryable_status(reply.status):
            may_exist = True
        delay = _retry_delay(policy, reply, attempt=attempt, started=started)
        if delay is None:
            raise reply.exception(send)
        yield Sleep(delay)
        attempt += 1


def wait_plan(
    batch_id: str,
    *,
    poller: BatchPoller,
    policy: RetryPolicy,
    on_poll: Callable[[Batch], Any] | None = None,
) -> Generator[Send | Sleep | Notify, Any, Batch]:
    """Poll until the batch is terminal; raise BatchTimeoutError at the deadline.

    Transient poll failures (after the per-request retries) are tolerated up to the poller's
    bound; permanent 4xx (the batch does not exist, the key is wrong) end the wait at once.
    """
    poller.start(now=clock())
    last: Batch | None = None
    last_body = b""
    while True:
        try:
            reply = yield from send_with_retries(Send("GET", f"/batches/{batch_id}"), policy=policy)
        except APIStatusError as exc:
            if not is_retryable_status(exc.status_code):
                raise
            decision = poller.failed(now=clock(), retryable=True, error=str(exc))
            if decision.action == "done":
                raise
        except APIConnectionError as exc:
            decision = poller.failed(now=clock(), retryable=True, error=str(exc))
            if decision.action == "done":
                raise
        else:
            # A long batch answers the same bytes poll after poll: parse only what changed
            # (Batch is frozen, so handing out the same object again is safe).
            if last is None or reply.body != last_body:
                last, last_body = Batch.model_validate_json(reply.body), reply.body
            if on_poll is not None:
                yield Notify(on_poll, last)
            decision = poller.decide(last, now=clock())
            if decision.action == "done":
                return last
        if decision.action == "timeout":
            raise timeout_error(batch_id, deadline=poller.deadline, last=last)
        yield Sleep(decision.delay)
