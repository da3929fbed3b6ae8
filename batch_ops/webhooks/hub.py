"""The receiver's memory of recent batch events, which waiters anywhere read by long-polling.

Events reach waiters on other machines this way: the receiver (one small process wherever OpenAI
can reach it) keeps the last events in order, each with a sequence number; every triggerer or
Prefect worker holds one long-poll on it (``GET /events?after=<cursor>``) and is answered the
moment an event arrives. Nothing else is needed (no broker, no shared disk), and a subscriber
that falls behind or reconnects asks for what came after its cursor.

The cursor is ``<epoch>:<seq>``; the epoch changes when the receiver restarts. A cursor from
another epoch, or older than the oldest event kept, gets ``reset: true``: events may have been
missed, so the subscriber wakes its waiters to poll once (the safety net).

Examples:
    >>> hub = EventHub(epoch="e1", keep=2)
    >>> for i in range(3):
    ...     _ = hub.publish(BatchEvent(id=f"evt_{i}", type="batch.completed", created_at=0, batch_id=f"b{i}"))
    >>> page = hub.after("e1:0")
    >>> [e.batch_id for e in page.events], page.cursor, page.reset
    (['b1', 'b2'], 'e1:3', True)
    >>> hub.after(page.cursor).events
    []
"""

from __future__ import annotations

import asyncio
import secrets
from collections import deque
from dataclasses import dataclass

from batch_ops.webhooks.events import BatchEvent

__all__ = ["DEFAULT_KEEP", "EventHub", "Page"]

#: Events kept by default: a day of a busy account's batches, about 2 MB.
DEFAULT_KEEP = 10_000


@dataclass(frozen=True)
class Page:
    """What a subscriber gets: the events after its cursor, the next cursor, and whether it missed some."""

    events: list[BatchEvent]
    cursor: str
    reset: bool = False


class EventHub:
    """The last ``keep`` events in arrival order; long-poll readers are woken on each new one."""

    def __init__(self, *, epoch: str | None = None, keep: int = DEFAULT_KEEP) -> None:
        self.epoch = epoch or secrets.token_hex(6)
        self._events: deque[tuple[int, BatchEvent]] = deque(maxlen=keep)
        self._seq = 0
        self._changed: asyncio.Condition | None = None

    @property
    def cursor(self) -> str:
        """The cursor of "now": a subscriber starting here gets only what comes next."""
        return f"{self.epoch}:{self._seq}"

    def publish(self, event: BatchEvent) -> int:
        """Add an event; returns its sequence number. Call from the event loop that serves readers."""
        self._seq += 1
        self._events.append((self._seq, event))
        if self._changed is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return self._seq

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def after(self, cursor: str | None) -> Page:
        """The events after ``cursor`` (all kept events when None or unknown: ``reset``)."""
        epoch, _, seq_text = (cursor or "").partition(":")
        seq = int(seq_text) if epoch == self.epoch and seq_text.isdigit() else -1
        oldest = self._events[0][0] if self._events else self._seq + 1
        reset = cursor is not None and (seq < 0 or seq + 1 < oldest)
        events = [e for s, e in self._events if s > seq]
        return Page(events=events, cursor=self.cursor, reset=reset)

    async def wait_after(self, cursor: str | None, *, timeout: float) -> Page:
        """Like :meth:`after`, but waits up to ``timeout`` seconds for an event when there is none."""
        page = self.after(cursor)
        if page.events or page.reset:
            return page
        if self._changed is None:
            self._changed = asyncio.Condition()
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.after(cursor).events != []), timeout)
            except asyncio.TimeoutError:
                pass
        return self.after(cursor)
