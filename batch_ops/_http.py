"""HTTP decisions without I/O: whether and when to retry, what an error answer means, how an
upload is framed.

* :class:`RetryPolicy` — retry or not, and how long to wait (back-off with jitter,
  ``Retry-After``, a retry budget in tries and in seconds);
* :func:`error_from_response` — an error answer as the exception of the error tree;
* :class:`MultipartBody` — the frame of a streamed multipart upload (its head and tail, its length).

Requests themselves are built by a dialect (:mod:`batch_ops.dialects`) and sent by a driver; the
plans (:mod:`batch_ops._plans`) consult these when an answer is not a success.

Examples:
    >>> policy = RetryPolicy(max_retries=3, max_elapsed=60, initial=1, maximum=8)
    >>> policy.delay(attempt=0, elapsed=0, status=429, headers={"retry-after": "2"})
    2.0
    >>> policy.delay(attempt=0, elapsed=0, status=400, headers={}) is None
    True
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

from batch_ops._version import __version__
from batch_ops.errors import APIStatusError, is_retryable_status, status_error_class

__all__ = [
    "USER_AGENT",
    "MultipartBody",
    "RetryPolicy",
    "error_from_response",
    "parse_retry_after",
]

USER_AGENT = f"batch-ops/{__version__}"


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, ``Retry-After`` seconds or HTTP date.

    Examples:
        >>> parse_retry_after({"retry-after-ms": "250"}), parse_retry_after({"Retry-After": "3"})
        (0.25, 3.0)
        >>> parse_retry_after({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, now=1445412470.0)
        10.0
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    ms = lowered.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if now is None:
        import time

        now = time.time()
    return max(0.0, when.timestamp() - now)


@dataclass
class RetryPolicy:
    """Decides whether and how long to wait before retrying one HTTP call.

    Exponential back-off with jitter (half fixed, half random, so two clients that failed
    together do not retry together), ``Retry-After`` honoured, bounded by ``max_retries``
    and by ``max_elapsed`` seconds since the first attempt.
    """

    max_retries: int = 6
    max_elapsed: float = 300.0
    initial: float = 0.5
    maximum: float = 30.0
    rng: random.Random = field(default_factory=random.Random)

    def backoff(self, attempt: int) -> float:
        """Jittered exponential delay for retry number ``attempt`` (0-based)."""
        base = min(self.maximum, self.initial * (2**attempt))
        return base / 2 + self.rng.uniform(0, base / 2)

    def delay(
        self,
        *,
        attempt: int,
        elapsed: float,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        connection_error: bool = False,
        now: float | None = None,
    ) -> float | None:
        """Seconds to wait before the next try, or None to give up now.

        Args:
            attempt: how many retries were already made (0 after the first failure).
            elapsed: seconds since the first attempt started.
            status: the HTTP status received, if any.
            headers: the response headers, for ``Retry-After``.
            connection_error: no response arrived (refused, reset, dropped, timed out).
        """
        if not connection_error and (status is None or not is_retryable_status(status)):
            return None
        if attempt >= self.max_retries:
            return None
        wait = None
        if headers:
            wait = parse_retry_after(headers, now=now)
        if wait is None:
            wait = self.backoff(attempt)
        if elapsed + wait > self.max_elapsed:
            return None
        return wait


def error_from_response(
    *, status_code: int, body: bytes, headers: Mapping[str, str], method: str, url: str
) -> APIStatusError:
    """Build the matching APIStatusError from an error response, keeping the server's message.

    Examples:
        >>> e = error_from_response(status_code=404, body=b'{"error": {"message": "No batch b1",'
        ...     b' "type": "invalid_request_error", "param": null, "code": null}}', headers={},
        ...     method="GET", url="http://h/v1/batches/b1")
        >>> type(e).__name__, e.message
        ('NotFoundError', 'No batch b1')
    """
    message = None
    error_type = param = code = None
    try:
        payload: Any = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        payload = None
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            message = err.get("message")
            error_type = err.get("type")
            param = err.get("param")
            code = err.get("code")
        elif isinstance(err, str):
            message = err
    if not message:
        text = body[:500].decode("utf-8", "replace").strip() if body else ""
        message = text or f"HTTP {status_code} with an empty body"
    lowered = {k.lower(): v for k, v in headers.items()}
    cls = status_error_class(status_code)
    return cls(
        str(message),
        status_code=status_code,
        error_type=error_type,
        param=param,
        code=None if code is None else str(code),
        request_id=lowered.get("x-request-id"),
        method=method,
        url=_strip_query(url),
    )


def _strip_query(url: str) -> str:
    # Query strings may carry an Azure api-version only, but keep errors short and safe.
    return url.split("?", 1)[0]


@dataclass(frozen=True)
class MultipartBody:
    """A ``multipart/form-data`` upload of one file, streamed: head + file bytes + tail.

    Building the frame by hand lets both clients stream the file from disk in chunks (the
    async one off the event loop) with an exact Content-Length, never holding it in memory.

    Examples:
        >>> m = MultipartBody.for_file(filename="r.jsonl", size=10, fields={"purpose": "batch"})
        >>> m.content_length == len(m.head) + 10 + len(m.tail), m.content_type.startswith("multipart/form-data")
        (True, True)
    """

    head: bytes
    tail: bytes
    size: int
    boundary: str

    @classmethod
    def for_file(cls, *, filename: str, size: int, fields: Mapping[str, str]) -> MultipartBody:
        boundary = uuid.uuid4().hex
        safe_name = filename.replace('"', "_").replace("\r", "_").replace("\n", "_")
        parts = []
        for name, value in fields.items():
            parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n')
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{safe_name}"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        )
        head = "".join(parts).encode("utf-8")
        tail = f"\r\n--{boundary}--\r\n".encode()
        return cls(head=head, tail=tail, size=size, boundary=boundary)

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        return len(self.head) + self.size + len(self.tail)
