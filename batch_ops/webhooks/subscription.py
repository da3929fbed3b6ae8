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
- ``"unavailable"``: the subscription is not working (not connected yet, or the receiver
  unreachable for ``UNAVAILABLE_AFTER`` seconds), and the wait's ordinary pause ran out.

While the subscription is not working, a sleep lasts at most the wait's ordinary pause
(``polling``), counted from its start: a wait that starts while the receiver cannot be reached (or
before the subscription has reached it) polls on its ordinary schedule from the start, and one that
was sleeping when the receiver stopped answering goes back to that schedule ``UNAVAILABLE_AFTER``
seconds later (so a receiver that restarts in a few seconds does not make every wait poll at once).

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
import logging
import time
import weakref
from collections import OrderedDict
from typing import Literal

import httpx

from batch_ops.polling import Reconnect
from batch_ops.process_state import STATE
from batch_ops.webhooks.events import BatchEvent
from batch_ops.webhooks.hub import Page

__all__ = ["EventSubscription", "WakeReason", "fetch_page"]

log = logging.getLogger(__name__)

WakeReason = Literal["event", "missed", "timer", "unavailable"]

#: Events remembered per subscription (batch id -> its event), oldest forgotten first.
REMEMBER = 50_000
#: Seconds the receiver holds each long-poll.
LONG_POLL = 25.0
#: After this many seconds without reaching the receiver, waits fall back to ordinary polling
#: (docs/webhooks.md; tests/test_webhooks_fallback.py measures it). Counted from the start of the
#: attempt that could not connect, or from the moment the connection broke.
UNAVAILABLE_AFTER = 10.0
#: The subscription stops after this many seconds with no wait (it starts again on the next).
IDLE_STOP = 300.0

#: Where the live subscriptions are kept, by event loop (see batch_ops.process_state: live tasks and
#: connections never travel in a pickled bundle).
_SLOT = "webhooks.subscriptions"


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
        # Events flow: an answer came, and the receiver has not been unreachable for
        # UNAVAILABLE_AFTER seconds since. False until the first answer.
        self._up = False
        self._down_since: float | None = None  # monotonic: since when the receiver is not reached
        self._outages = 0  # outages so far (a sleep knows whether it began in the current one)
        self._down_timer: asyncio.TimerHandle | None = None
        self._last_error = ""
        self._told_down = False
        # Resolved (and replaced) when the state changes (up or not, an outage begins or ends):
        # sleeping waits then move their end.
        self._changed: asyncio.Future[None] | None = None
        self._idle_since = time.monotonic()
        self.received = 0

    @classmethod
    def shared(cls, events_url: str, *, token: str | None = None) -> EventSubscription:
        """The subscription of the running event loop for this receiver (made on first use)."""
        loop = asyncio.get_running_loop()
        shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str | None], EventSubscription]]
        shared = STATE.slot(_SLOT, weakref.WeakKeyDictionary)
        per_loop = shared.setdefault(loop, {})
        key = (events_url, token)
        if key not in per_loop:
            per_loop[key] = cls(events_url, token=token)
        return per_loop[key]

    @property
    def available(self) -> bool:
        """True while events flow: the receiver answered, and has not been unreachable for
        ``UNAVAILABLE_AFTER`` seconds since. False before the first answer."""
        return self._up

    def seen(self, batch_id: str) -> BatchEvent | None:
        """The event this subscription saw for the batch, if any."""
        return self._seen.get(batch_id)

    async def sleep(self, batch_id: str, seconds: float, *, polling: float | None = None) -> WakeReason:
        """Sleep up to ``seconds``, ended early by the batch's event (see the module for the answers).

        ``polling``: the wait's ordinary pause. While the subscription is not working the sleep
        lasts at most that long from its start; when the subscription goes down or comes back
        during the sleep, the end moves accordingly.
        """
        if batch_id in self._seen:
            return "event"
        self._ensure_running()
        loop = asyncio.get_running_loop()
        started = loop.time()
        future: asyncio.Future[WakeReason] = loop.create_future()
        self._waiters.setdefault(batch_id, set()).add(future)
        began_in = self._outages if self._down_since is not None else None
        try:
            while True:
                length = seconds if self._trusted(began_in) or polling is None else min(seconds, polling)
                left = started + length - loop.time()
                if left <= 0:
                    break
                # asyncio.wait, not wait_for: before Python 3.12 wait_for returns a result that
                # arrives in the same loop iteration as a cancellation, and the cancelled wait
                # would go on. asyncio.wait lets the cancellation through, always.
                await asyncio.wait((future, self._state_change()), timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if future.done():
                    return future.result()
                # The time ran out, or the subscription went down or came back: look again.
        finally:
            waiting = self._waiters.get(batch_id)
            if waiting is not None:
                waiting.discard(future)
                if not waiting:
                    del self._waiters[batch_id]
            self._idle_since = time.monotonic()
        if batch_id in self._seen:
            return "event"
        return "timer" if self._trusted(began_in) else "unavailable"

    def _trusted(self, began_in: int | None) -> bool:
        """Whether a sleep may last until its safety poll: events flow, and the receiver is being
        reached, or the outage began after the sleep did (it then has ``UNAVAILABLE_AFTER`` seconds
        of grace). ``began_in``: the outage the sleep began in, if any."""
        return self._up and (self._down_since is None or began_in != self._outages)

    def _state_change(self) -> asyncio.Future[None]:
        """A future resolved at the next change of state (always a pending one)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        return self._changed

    def _notify_change(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _set_up(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            self._notify_change()

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="batch-ops-events")

    async def _run(self) -> None:
        pause = Reconnect()
        answered = False  # the last request was answered
        try:
            async with httpx.AsyncClient(timeout=httpx.Timeout(LONG_POLL + 15, connect=5.0)) as client:
                while self._waiters or time.monotonic() - self._idle_since < IDLE_STOP:
                    # A long-poll only after an answer: the first request (and the first after a
                    # failure) is answered at once, so the waits learn in milliseconds, not after a
                    # long-poll, that events flow (again) and a quick restart never counts as an outage.
                    wait = LONG_POLL if answered else 0.0
                    attempt = time.monotonic()
                    try:
                        page = await fetch_page(client, self.events_url, token=self._token, after=self._cursor,
                                                wait=wait)
                    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                        answered = False
                        self._unreached(exc, attempt=attempt, wait=wait)
                        await asyncio.sleep(pause.failed())
                        continue
                    answered = True
                    pause.answered()
                    # Events may have come and gone while we could not reach the receiver: every
                    # wait looks once.
                    recovered = self._reached()
                    first = self._cursor is None
                    self._cursor = page.cursor
                    for event in page.events:
                        self._remember(event)
                        self._wake(event.batch_id, "event")
                    if (page.reset or recovered) and not first:
                        for batch_id in list(self._waiters):
                            self._wake(batch_id, "missed")
        finally:
            # Stopped (idle, cancelled, or broken): nothing follows the receiver any more.
            if self._down_timer is not None:
                self._down_timer.cancel()
                self._down_timer = None
            self._down_since = None
            self._set_up(False)

    def _unreached(self, exc: BaseException, *, attempt: float, wait: float) -> None:
        """An attempt failed: start counting the outage (once), and declare it when it has lasted."""
        self._last_error = type(exc).__name__
        if self._down_since is not None:
            return
        now = time.monotonic()
        # Unreachable since: the start of an attempt that could not connect; else when the
        # connection broke (or, for a long-poll that never answered, when its answer was due).
        connect = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
        self._down_since = attempt if connect else min(now, attempt + wait)
        self._outages += 1
        self._notify_change()
        delay = max(self._down_since + UNAVAILABLE_AFTER - now, 0.0)
        # A timer, not the next failure: retries back off (up to 15 s apart) and a connect can
        # hang for seconds, but the waits must go back to polling on time.
        self._down_timer = asyncio.get_running_loop().call_later(delay, self._declare_down)

    def _declare_down(self) -> None:
        self._down_timer = None
        if self._down_since is None:
            return
        if not self._told_down:
            self._told_down = True
            log.warning("webhook events from %s unavailable (%s); waits poll on their ordinary schedule "
                        "until it is back", self.events_url, self._last_error)
        self._set_up(False)

    def _reached(self) -> bool:
        """An answer came; returns whether the receiver had been unreachable before it."""
        recovered = self._down_since is not None
        if self._down_timer is not None:
            self._down_timer.cancel()
            self._down_timer = None
        if self._told_down:
            log.info("webhook events from %s available again", self.events_url)
            self._told_down = False
        self._down_since = None
        if recovered:
            self._notify_change()
        self._set_up(True)
        return recovered

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
            # asyncio.wait, not `await task` under suppress(CancelledError): that would also
            # swallow a cancellation of the caller itself.
            await asyncio.wait((self._task,))
            if not self._task.cancelled():
                self._task.exception()  # seen: asyncio would log it as never retrieved
