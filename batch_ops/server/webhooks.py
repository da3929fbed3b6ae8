"""The local server's webhooks: a signed event for each batch that ends, sent like OpenAI sends them.

The transaction that ends a batch writes the event to the outbox (``Store``), one row per
endpoint; :class:`WebhookSender` delivers the rows. Each delivery is a ``POST`` of the event's JSON
with the three Standard Webhooks headers: ``webhook-id`` (the event id, the same on every retry:
the receiver's de-duplication key), ``webhook-timestamp`` (this attempt's time) and
``webhook-signature`` (``v1,<base64 HMAC-SHA256 of "id.timestamp.body">`` under the ``whsec_``
secret; signed by the ``standardwebhooks`` library). A 2xx answer settles the row; anything else
(an error status, no answer, a refused connection) schedules another attempt with exponential
back-off, for up to 72 hours, as OpenAI does. A ``kill -9`` loses nothing: pending rows are sent
when the server starts again.

Faults for tests and drills: ``webhook_drop`` never delivers a share of events, ``webhook_delay``
holds every delivery back.

Examples:
    >>> check_secret("whsec_" + "c2VjcmV0LWJ5dGVzLWZvci10ZXN0cw==")
    >>> check_secret("secret")
    Traceback (most recent call last):
    ...
    ValueError: webhook_secret must be a whsec_... secret (base64 after the prefix), as OpenAI gives it
    >>> [round(backoff(n), 1) for n in (1, 2, 3, 12)]
    [1.0, 2.0, 4.0, 600.0]
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import random
import time
from datetime import datetime, timezone

import httpx

from batch_ops.server.store import OutboxRow, Store

__all__ = ["RETRY_FOR", "WebhookSender", "backoff", "check_secret"]

log = logging.getLogger(__name__)

#: How long an event keeps being retried before it is abandoned (OpenAI: 72 hours).
RETRY_FOR = 72 * 3600.0
#: Seconds one delivery may take before it counts as failed.
DELIVERY_TIMEOUT = 10.0
#: Deliveries in flight at once.
PARALLEL = 16


def check_secret(secret: str) -> None:
    """Refuse a secret that is not ``whsec_`` + base64, before anything is signed with it."""
    body = secret.removeprefix("whsec_")
    try:
        ok = secret.startswith("whsec_") and bool(base64.b64decode(body + "==", validate=False))
    except (binascii.Error, ValueError):
        ok = False
    if not ok:
        raise ValueError("webhook_secret must be a whsec_... secret (base64 after the prefix), as OpenAI gives it")


def backoff(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones: 1, 2, 4, ... at most 10 minutes."""
    return float(min(2.0 ** (attempts - 1), 600.0))


class WebhookSender:
    """Deliver the outbox: started and stopped with the server's lifespan.

    Args:
        store: where the events wait (``Store(webhook_urls=...)``).
        secret: the ``whsec_`` signing secret.
        drop: share of events never delivered (a fault).
        delay: seconds added before each delivery (a fault).
        seed: makes the drop choices repeatable.
    """

    def __init__(self, *, store: Store, secret: str, drop: float = 0.0, delay: float = 0.0,
                 seed: int | None = None) -> None:
        from standardwebhooks.webhooks import Webhook

        self.store = store
        self._signer = Webhook(secret)
        self.drop = drop
        self.delay = delay
        self._rng = random.Random(seed)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        # No proxy from the environment: events go straight to the endpoints named.
        self._client = httpx.AsyncClient(timeout=DELIVERY_TIMEOUT, trust_env=False)
        self._task = asyncio.create_task(self._run(), name="webhook-sender")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            await self._client.aclose()

    def poke(self) -> None:
        """A batch just ended: look at the outbox now rather than at the next tick."""
        self._wake.set()

    async def _run(self) -> None:
        limit = asyncio.Semaphore(PARALLEL)
        in_flight: set[int] = set()
        tasks: set[asyncio.Task[None]] = set()
        while True:
            now = time.time()
            for row in self.store.due_webhooks(now=now, limit=PARALLEL * 4):
                if row.seq in in_flight:
                    continue
                in_flight.add(row.seq)
                task = asyncio.create_task(self._deliver(row, limit, in_flight))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            due = self.store.next_webhook_at()
            # The outbox is polled at least every 0.1 s: a batch ends in the processor, which does
            # not know about this task; 0.1 s keeps a wake-up well under the 2 s the waiters need.
            pause = 0.1 if due is None else min(max(due - time.time(), 0.01), 0.1)
            self._wake.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), pause)

    async def _deliver(self, row: OutboxRow, limit: asyncio.Semaphore, in_flight: set[int]) -> None:
        try:
            async with limit:
                await self._attempt(row)
        except Exception:  # never let one delivery stop the sender
            log.exception("webhook %s to %s: delivery crashed; retried later", row.event_id, row.url)
            self.store.settle_webhook(row.seq, state="pending", error="crashed", next_at=time.time() + 5)
        finally:
            in_flight.discard(row.seq)

    async def _attempt(self, row: OutboxRow) -> None:
        if row.attempts == 0 and self.drop and self._rng.random() < self.drop:
            log.warning("webhook %s to %s: dropped (webhook_drop fault)", row.event_id, row.url)
            self.store.settle_webhook(row.seq, state="dropped", error="dropped by the webhook_drop fault")
            return
        if self.delay:
            await asyncio.sleep(self.delay)
        assert self._client is not None
        now = datetime.now(tz=timezone.utc)
        headers = {
            "content-type": "application/json",
            "user-agent": "batch-ops-local-server/webhooks",
            "webhook-id": row.event_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(row.event_id, now, row.body),
        }
        error: str | None
        try:
            answer = await self._client.post(row.url, content=row.body.encode(), headers=headers)
            error = None if answer.is_success else f"HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if error is None:
            self.store.settle_webhook(row.seq, state="delivered")
            return
        attempts = row.attempts + 1
        if time.time() - row.created > RETRY_FOR:
            log.warning("webhook %s to %s: abandoned after %d attempts (%s)", row.event_id, row.url, attempts, error)
            self.store.settle_webhook(row.seq, state="abandoned", error=error)
            return
        wait = backoff(attempts)
        log.info("webhook %s to %s: attempt %d failed (%s); next in %.0f s", row.event_id, row.url, attempts,
                 error, wait)
        self.store.settle_webhook(row.seq, state="pending", error=error, next_at=time.time() + wait)
