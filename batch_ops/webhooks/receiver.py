"""The webhook receiver as an ASGI app: verify OpenAI's deliveries, hand the batch events on.

Routes (mount the app anywhere; the paths are relative to it):

- ``POST /openai`` — the endpoint registered with OpenAI. A genuine, first-seen batch event is
  answered 200 and published; a replay of one already received, or another delivery of a batch
  ending already published (OpenAI retries for up to 72 hours), is answered 200 too but not
  published again; a delivery that fails verification is answered 400 and dropped; other event
  types are answered 200 and ignored. The body is read as it streams in and refused with 413 (and
  the connection closed) the moment it passes :data:`MAX_BODY`, before any signature check, and
  with 408 when it has not arrived within :data:`BODY_TIMEOUT` seconds.
- ``GET /events?after=<cursor>&wait=<s>`` — the long-poll that triggerers and Prefect workers
  hold (:class:`~batch_ops.webhooks.EventSubscription`); answered as soon as an event arrives,
  else after ``wait`` seconds (at most 60) with no events. With ``events_token``, it needs
  ``Authorization: Bearer <token>``.
- ``GET /healthz`` — 200 with the current cursor and counts.

Every bad request is a 4xx with a one-line JSON error, never a 500 or a logged traceback.

``on_event`` is called with each published event (e.g. to emit a Prefect event), after the
delivery is answered; an exception there is logged, never turned into a non-2xx (OpenAI would
retry, and the event is already kept).

The app bounds what it reads; connections (slow headers, how many at once) are the server's
business: ``batch-ops webhooks serve`` runs it under :func:`batch_ops.webhooks.serve.run_receiver`,
which bounds those too. Mounted in another server, set that server's (or the ingress's) limits
(docs/webhooks.md).

Examples:
    >>> import base64
    >>> app = create_receiver_app(secret="whsec_" + base64.b64encode(b"k" * 32).decode())
    >>> sorted(r.path for r in app.routes)
    ['/events', '/gemini', '/healthz', '/openai']
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batch_ops.errors import WebhookVerificationError
from batch_ops.webhooks.events import BatchEvent
from batch_ops.webhooks.hub import DEFAULT_KEEP, EventHub
from batch_ops.webhooks.verify import WebhookVerifier

__all__ = ["BODY_TIMEOUT", "MAX_BODY", "create_receiver_app"]

log = logging.getLogger(__name__)

#: Largest delivery accepted; OpenAI's events are a few hundred bytes.
MAX_BODY = 64 * 1024
#: Seconds a delivery's body may take to arrive (a few hundred bytes from OpenAI: milliseconds).
BODY_TIMEOUT = 10.0
#: Longest long-poll a subscriber may ask for (proxies close idle connections after ~60 s).
MAX_WAIT = 60.0
#: Sent with every refusal of a body: the connection is closed, so the rest of it is never read.
_CLOSE = {"connection": "close"}


class _Refused(Exception):
    """A body the receiver will not read further (the status and error to answer)."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


async def _read_body(request: Request) -> bytes:
    """The request's body, read as it streams in: never more than ``MAX_BODY`` bytes are held.

    Raises:
        _Refused: 413 when it is (or says it is) larger, 408 when it is slower than ``BODY_TIMEOUT``.
    """
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isascii() or not declared.isdigit() or len(declared) > 12
                                 or int(declared) > MAX_BODY):
        raise _Refused(413, "body too large")  # refused before a byte of it is read
    body = bytearray()
    try:
        with anyio.fail_after(BODY_TIMEOUT):
            async for chunk in request.stream():  # chunked bodies have no Content-Length: count
                body += chunk
                if len(body) > MAX_BODY:
                    raise _Refused(413, "body too large")
    except TimeoutError:
        raise _Refused(408, "the body did not arrive in time") from None
    return bytes(body)

OnEvent = Callable[[BatchEvent], "Awaitable[Any] | Any"]


async def _call(on_event: OnEvent, event: BatchEvent) -> None:
    try:
        result = on_event(event)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("on_event failed for %s (the event is kept for subscribers)", event.id)


def create_receiver_app(
    *,
    secret: str | tuple[str, ...],
    events_token: str | None = None,
    on_event: OnEvent | None = None,
    keep: int = DEFAULT_KEEP,
) -> Starlette:
    """The receiver (see the module).

    Args:
        secret: the endpoint's ``whsec_`` secret (two while rotating).
        events_token: the bearer token ``GET /events`` requires. **Without one, /events answers
            anyone who can reach it** with every batch id and outcome the receiver keeps (never a
            key or a result): serve it on loopback only, or behind something that lets only
            ``/openai`` through. ``batch-ops webhooks serve`` refuses to bind another interface
            without a token unless told ``--allow-anonymous-events``.
        on_event: called with each published event, after the delivery is answered.
        keep: how many events are kept for subscribers.
    """
    verifier = WebhookVerifier(*((secret,) if isinstance(secret, str) else secret))
    hub = EventHub(keep=keep)
    counts: Counter[str] = Counter()
    token = events_token.encode() if events_token else None
    pending: set[asyncio.Task[None]] = set()

    async def receive(request: Request) -> JSONResponse:
        try:
            body = await _read_body(request)
        except _Refused as refused:
            counts["rejected"] += 1
            log.warning("webhook rejected (%s)", refused.error)
            return JSONResponse({"error": refused.error}, status_code=refused.status, headers=_CLOSE)
        except ClientDisconnect:  # the sender went away (or the server cut a slow one): nobody to answer
            counts["rejected"] += 1
            return JSONResponse({"error": "disconnected"}, status_code=400, headers=_CLOSE)
        try:
            event = verifier.verify(body, dict(request.headers))
        except WebhookVerificationError as exc:
            if exc.reason == "replay":
                counts["duplicate"] += 1
                return JSONResponse({"ok": True, "duplicate": True})
            counts["rejected"] += 1
            log.warning("webhook rejected (%s): %s", exc.reason, exc)
            return JSONResponse({"error": exc.reason}, status_code=400)
        if event is None:
            counts["ignored"] += 1
            return JSONResponse({"ok": True, "ignored": True})
        if hub.publish(event) is None:
            # A new id for an ending already published: OpenAI retrying after the verifier forgot the
            # id (it retries for 72 h), or the same ending sent twice. A batch ends once.
            counts["duplicate"] += 1
            log.info("webhook %s: batch %s %s was already published", event.id, event.batch_id, event.status)
            return JSONResponse({"ok": True, "duplicate": True})
        counts["accepted"] += 1
        log.info("webhook %s: batch %s %s", event.id, event.batch_id, event.status)
        if on_event is not None:
            # After the answer, not before: OpenAI waits for the 200, and on_event may take seconds
            # (the Prefect forwarder retrieves the batch first).
            task = asyncio.get_running_loop().create_task(_call(on_event, event))
            pending.add(task)
            task.add_done_callback(pending.discard)
        return JSONResponse({"ok": True})

    async def events(request: Request) -> JSONResponse:
        if token is not None:
            auth = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(auth, b"Bearer " + token):
                return JSONResponse({"error": "unauthorized"}, status_code=401)
        try:
            wait = float(request.query_params.get("wait", "25"))
        except ValueError:
            wait = math.nan
        if math.isnan(wait):  # NaN passes min() and max() unchanged
            return JSONResponse({"error": "wait must be seconds"}, status_code=400)
        wait = min(max(wait, 0.0), MAX_WAIT)
        after = request.query_params.get("after") or None  # an empty cursor is no cursor
        try:
            page = await hub.wait_after(after, timeout=wait)
        except ValueError as exc:  # not a cursor (parse_cursor)
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"events": [e.to_json() for e in page.events], "cursor": page.cursor,
                             "reset": page.reset})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "cursor": hub.cursor, "counts": dict(counts), "time": time.time()})

    app = Starlette(routes=[
        Route("/openai", receive, methods=["POST"]),
        Route("/gemini", receive, methods=["POST"]),  # Gemini signs its webhooks the same way
        Route("/events", events, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.hub = hub
    app.state.counts = counts
    return app
