"""One long-poll on the webhook receiver per event loop, shared by every wait on that loop.

An Airflow triggerer runs all its triggers on one event loop; a Prefect worker runs its flows'
async tasks on a few. :meth:`EventSubscription.shared` gives each loop one subscription per
receiver, so a triggerer with 1,000 deferred batches holds one HTTP request open, not 1,000, and
a batch's event wakes exactly the waits for that batch.

What a wait gets back from :meth:`EventSubscription.sleep` (the core's ``Sleep(wake_on=...)``):

- ``"event"``: the batch's event arrived (or had arrived before the wait began: the subscription
  remembers the events it has seen, and on its first request asks for all the receiver keeps);
- ``"missed"``: the receiver restarted or the subscription fell too far behind, so an event may
  be lost: poll now;
- ``"timer"``: the time ran out (the safety poll);
- ``"unavailable"``: the receiver could not be reached for a while: poll on the ordinary
  schedule until it is back.

Examples:
    >>> import asyncio
    >>> async def main():
    ...     sub = EventSubscription.shared("http://127.0.0.1:9/events")
    ...     return sub is EventSubscription.shared("http://127.0.0.1:9/events")
    >>> asyncio.run(main())
    True
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import Literal

import httpx

from batch_ops.locks import PicklableWeakKeyDictionary
from batch_ops.webhooks.events import BatchEvent
from batch_ops.webhooks.hub import Page

__all__ = ["EventSubscription", "WakeReason", "fetch_page"]

log = logging.getLogger(__name__)

WakeReason = Literal["event", "missed", "timer", "unavailable"]

#: Events remembered per subscription (batch id -> its event), oldest forgotten first.
REMEMBER = 50_000
#: Seconds the receiver holds each long-poll.
LONG_POLL = 25.0
#: After this many seconds without a working connection, waits fall back to ordinary polling.
UNAVAILABLE_AFTER = 10.0
#: The subscription stops after this many seconds with no wait (it starts again on the next).
IDLE_STOP = 300.0

#: Live subscriptions by event loop. Picklable as an empty registry: Prefect pickles batch_ops by
#: value into work-pool bundles, and live tasks and connections must not (and cannot) travel.
_shared: PicklableWeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], EventSubscription]] = (
    PicklableWeakKeyDictionary()
)


async def fetch_page(
    client: httpx.AsyncClient, events_url: str, *, token: str | None = None, after: str | None = None,
    wait: float = LONG_POLL,
) -> Page:
    """One long-poll of a receiver's ``/events``: what came after ``after`` (waiting up to ``wait``
    seconds for it). Raises ``httpx.HTTPError`` or ``ValueError``/``KeyError``/``TypeError`` when
    the receiver cannot be reached or answers something else."""
    headers = {"authorization": f"Bearer {token}"} if token else {}
    params = {"wait": str(wait)}
    if after is not None:
        params["after"] = after
    answer = await client.get(events_url, params=params, headers=headers)
    answer.raise_for_status()
    page = answer.json()
    return Page(events=[BatchEvent.from_json(e) for e in page["events"]], cursor=str(page["cursor"]),
                reset=bool(page.get("reset")))


class EventSubscription:
    """Follow a receiver's ``/events`` (see the module).

    Args:
        events_url: the receiver's events URL, e.g. ``http://receiver:8780/events``.
        token: the receiver's ``events_token``, if it has one.
    """

    def __init__(self, events_url: str, *, token: str | None = None) -> None:
        self.events_url = events_url
        self._token = token
        self._waiters: dict[str, set[asyncio.Future[WakeReason]]] = {}
        self._seen: OrderedDict[str, BatchEvent] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._cursor: str | None = None
        self._down_since: float | None = None
        self._told_down = False
        self._idle_since = time.monotonic()
        self.received = 0

    @classmethod
    def shared(cls, events_url: str, *, token: str | None = None) -> EventSubscription:
        """The subscription of the running event loop for this receiver (made on first use)."""
        loop = asyncio.get_running_loop()
        per_loop = _shared.setdefault(loop, {})
        key = (events_url, token)
        if key not in per_loop:
            per_loop[key] = cls(events_url, token=token)
        return per_loop[key]

    @property
    def available(self) -> bool:
        """False once the receiver has been unreachable for ``UNAVAILABLE_AFTER`` seconds."""
        return self._down_since is None or time.monotonic() - self._down_since < UNAVAILABLE_AFTER

    def seen(self, batch_id: str) -> BatchEvent | None:
        """The event this subscription saw for the batch, if any."""
        return self._seen.get(batch_id)

    async def sleep(self, batch_id: str, seconds: float) -> WakeReason:
        """Sleep up to ``seconds``, ended early by the batch's event (see the module for the answers)."""
        if batch_id in self._seen:
            return "event"
        self._ensure_running()
        future: asyncio.Future[WakeReason] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(batch_id, set()).add(future)
        try:
            return await asyncio.wait_for(future, seconds)
        except asyncio.TimeoutError:
            if batch_id in self._seen:
                return "event"
            return "timer" if self.available else "unavailable"
        finally:
            waiting = self._waiters.get(batch_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[batch_id]
            self._idle_since = time.monotonic()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-ops-events")

    async def _run(self) -> None:
        pause = 0.5
        async with httpx.AsyncClient(timeout=httpx.Timeout(LONG_POLL + 15, connect=5.0)) as client:
            while self._waiters or time.monotonic() - self._idle_since < IDLE_STOP:
                try:
                    page = await fetch_page(client, self.events_url, token=self._token, after=self._cursor)
                    events, cursor, reset = page.events, page.cursor, page.reset
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    if self._down_since is None:
                        self._down_since = time.monotonic()
                    if not self.available and not self._told_down:
                        # Waits sleeping until their safety poll go back to the ordinary schedule.
                        self._told_down = True
                        log.warning("webhook events from %s unavailable (%s); waits poll on their ordinary schedule "
                                    "until it is back", self.events_url, type(exc).__name__)
                        for batch_id in list(self._waiters):
                            self._wake(batch_id, "unavailable")
                    await asyncio.sleep(pause)
                    pause = min(pause * 2, 15.0)
                    continue
                if self._down_since is not None:
                    if self._told_down:
                        log.info("webhook events from %s available again", self.events_url)
                    self._told_down = False
                    # Events may have come and gone while we were away: every wait looks once.
                    reset = True
                    self._down_since = None
                pause = 0.5
                first = self._cursor is None
                self._cursor = cursor
                for event in events:
                    self._remember(event)
                    self._wake(event.batch_id, "event")
                if reset and not first:
                    for batch_id in list(self._waiters):
                        self._wake(batch_id, "missed")

    def _remember(self, event: BatchEvent) -> None:
        self.received += 1
        self._seen[event.batch_id] = event
        self._seen.move_to_end(event.batch_id)
        while len(self._seen) > REMEMBER:
            self._seen.popitem(last=False)

    def _wake(self, batch_id: str, reason: WakeReason) -> None:
        for future in self._waiters.get(batch_id, ()):
            if not future.done():
                future.set_result(reason)

    async def aclose(self) -> None:
        """Stop following (the next wait starts again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
