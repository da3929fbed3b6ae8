"""The webhook receiver as an ASGI app: verify OpenAI's deliveries, hand the batch events on.

Routes (mount the app anywhere; the paths are relative to it):

- ``POST /openai`` — the endpoint registered with OpenAI. A genuine, first-seen batch event is
  answered 200 and published; a replay of one already received is answered 200 too (OpenAI
  retries a delivery whose answer it missed) but not published again; a delivery that fails
  verification is answered 400 and dropped; other event types are answered 200 and ignored.
- ``GET /events?after=<cursor>&wait=<s>`` — the long-poll that triggerers and Prefect workers
  hold (:class:`~batch_ops.webhooks.EventSubscription`); answered as soon as an event arrives,
  else after ``wait`` seconds (at most 60) with no events. With ``events_token``, it needs
  ``Authorization: Bearer <token>``.
- ``GET /healthz`` — 200 with the current cursor and counts.

``on_event`` is called with each published event (e.g. to emit a Prefect event), after the
delivery is answered; an exception there is logged, never turned into a non-2xx (OpenAI would
retry, and the event is already kept).

Examples:
    >>> import base64
    >>> app = create_receiver_app(secret="whsec_" + base64.b64encode(b"k" * 32).decode())
    >>> sorted(r.path for r in app.routes)
    ['/events', '/healthz', '/openai']
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from batch_ops.errors import WebhookVerificationError
from batch_ops.webhooks.events import BatchEvent
from batch_ops.webhooks.hub import DEFAULT_KEEP, EventHub
from batch_ops.webhooks.verify import WebhookVerifier

__all__ = ["MAX_BODY", "create_receiver_app"]

log = logging.getLogger(__name__)

#: Largest delivery accepted; OpenAI's events are a few hundred bytes.
MAX_BODY = 64 * 1024
#: Longest long-poll a subscriber may ask for (proxies close idle connections after ~60 s).
MAX_WAIT = 60.0

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
    """The receiver (see the module). ``secret`` is the endpoint's ``whsec_`` secret (two while
    rotating); ``events_token`` protects ``/events``; ``keep`` is how many events are kept."""
    verifier = WebhookVerifier(*((secret,) if isinstance(secret, str) else secret))
    hub = EventHub(keep=keep)
    counts: Counter[str] = Counter()
    token = events_token.encode() if events_token else None
    pending: set[asyncio.Task[None]] = set()

    async def receive(request: Request) -> JSONResponse:
        body = await request.body()
        if len(body) > MAX_BODY:
            counts["rejected"] += 1
            return JSONResponse({"error": "body too large"}, status_code=413)
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
        counts["accepted"] += 1
        hub.publish(event)
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
            wait = min(max(float(request.query_params.get("wait", "25")), 0.0), MAX_WAIT)
        except ValueError:
            return JSONResponse({"error": "wait must be seconds"}, status_code=400)
        page = await hub.wait_after(request.query_params.get("after"), timeout=wait)
        return JSONResponse({"events": [e.to_json() for e in page.events], "cursor": page.cursor,
                             "reset": page.reset})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True, "cursor": hub.cursor, "counts": dict(counts), "time": time.time()})

    app = Starlette(routes=[
        Route("/openai", receive, methods=["POST"]),
        Route("/events", events, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
    ])
    app.state.hub = hub
    app.state.counts = counts
    return app
