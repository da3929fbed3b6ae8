"""The receiver's memory of recent batch events, which waiters anywhere read by long-polling.

Events reach waiters on other machines this way: the receiver (one small process wherever OpenAI
can reach it) keeps the last events in order, each with a sequence number; every triggerer or
Prefect worker holds one long-poll on it (``GET /events?after=<cursor>``) and is answered the
moment an event arrives. Nothing else is needed (no broker, no shared disk), and a subscriber
that falls behind or reconnects asks for what came after its cursor.

The cursor is ``<epoch>:<seq>``; the epoch changes when the receiver restarts. A cursor from
another epoch, or older than the oldest event kept, gets ``reset: true``: events may have been
missed, so the subscriber wakes its waiters to poll once (the safety net). A cursor that is not
of that shape (``<epoch>:²``, a sequence of thousands of digits) is refused with ``ValueError``.

A batch ends once, so the hub publishes each ending (batch id and terminal status) once, however
often it is delivered: OpenAI retries a delivery for up to 72 hours, long after the verifier has
forgotten its id (10 minutes). It remembers the endings of the last :data:`ENDINGS_WINDOW` seconds,
at most :data:`MAX_ENDINGS` of them (oldest forgotten first), about 17 MB at the bound.

Examples:
    >>> hub = EventHub(epoch="e1", keep=2)
    >>> for i in range(3):
    ...     _ = hub.publish(BatchEvent(id=f"evt_{i}", type="batch.completed", created_at=0, batch_id=f"b{i}"))
    >>> page = hub.after("e1:0")
    >>> [e.batch_id for e in page.events], page.cursor, page.reset
    (['b1', 'b2'], 'e1:3', True)
    >>> hub.after(page.cursor).events
    []
    >>> hub.publish(BatchEvent(id="evt_9", type="batch.completed", created_at=0, batch_id="b2")) is None
    True
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from batch_ops.webhooks.events import ENDINGS_WINDOW, BatchEvent

__all__ = ["DEFAULT_KEEP", "ENDINGS_WINDOW", "MAX_ENDINGS", "EventHub", "Page", "parse_cursor"]

#: Events kept by default: a day of a busy account's batches, about 2 MB.
DEFAULT_KEEP = 10_000
#: Endings remembered at most (~170 bytes each, ~17 MB): 3x the 72 hours of a busy account (10,000
#: endings a day); an account ending more than ~33,000 batches a day forgets the oldest sooner.
MAX_ENDINGS = 100_000
#: Digits a cursor's sequence may have (a receiver would need 10^18 events to outgrow it).
_MAX_SEQ_DIGITS = 18


def parse_cursor(cursor: str) -> tuple[str, int]:
    """``(epoch, seq)`` of a cursor ``<epoch>:<seq>``.

    Raises:
        ValueError: the cursor is not of that shape (only ASCII digits, at most 18, after the colon).

    Examples:
        >>> parse_cursor("3f2a9c:12")
        ('3f2a9c', 12)
        >>> parse_cursor("3f2a9c:\u00b2")
        Traceback (most recent call last):
        ...
        ValueError: a cursor is <epoch>:<sequence number>, as /events returns it
    """
    epoch, sep, seq_text = cursor.partition(":")
    # str.isdigit() accepts "²" and other digits int() refuses; int() refuses more than 4,300 digits.
    if not (sep and seq_text.isascii() and seq_text.isdigit() and len(seq_text) <= _MAX_SEQ_DIGITS):
        raise ValueError("a cursor is <epoch>:<sequence number>, as /events returns it")
    return epoch, int(seq_text)


@dataclass(frozen=True)
class Page:
    """What a subscriber gets: the events after its cursor, the next cursor, and whether it missed some."""

    events: list[BatchEvent]
    cursor: str
    reset: bool = False


class EventHub:
    """The last ``keep`` events in arrival order; long-poll readers are woken on each new one."""

    def __init__(self, *, epoch: str | None = None, keep: int = DEFAULT_KEEP, max_endings: int = MAX_ENDINGS,
                 endings_window: float = ENDINGS_WINDOW) -> None:
        self.epoch = epoch or secrets.token_hex(6)
        self._events: deque[tuple[int, BatchEvent]] = deque(maxlen=keep)
        self._seq = 0
        self._changed: asyncio.Condition | None = None
        # hash((batch id, status)) -> when it was published, oldest first. A hash, not the strings:
        # a third of the memory, and a collision (~1e-9 at the bound) would only leave one wait
        # to its safety poll.
        self._endings: OrderedDict[int, float] = OrderedDict()
        self._max_endings = max_endings
        self._endings_window = endings_window

    @property
    def cursor(self) -> str:
        """The cursor of "now": a subscriber starting here gets only what comes next."""
        return f"{self.epoch}:{self._seq}"

    def publish(self, event: BatchEvent, *, now: float | None = None) -> int | None:
        """Add an event; returns its sequence number, or None when this batch's ending was already
        published (see the module). Call from the event loop that serves readers."""
        if not self._first_ending(event, time.time() if now is None else now):
            return None
        self._seq += 1
        self._events.append((self._seq, event))
        if self._changed is not None:
            asyncio.get_running_loop().create_task(self._notify())
        return self._seq

    def _first_ending(self, event: BatchEvent, now: float) -> bool:
        while self._endings:
            oldest, at = next(iter(self._endings.items()))
            if now - at <= self._endings_window and len(self._endings) < self._max_endings:
                break
            del self._endings[oldest]
        key = hash((event.batch_id, event.status))
        if key in self._endings:
            return False
        self._endings[key] = now
        return True

    async def _notify(self) -> None:
        assert self._changed is not None
        async with self._changed:
            self._changed.notify_all()

    def after(self, cursor: str | None) -> Page:
        """The events after ``cursor`` (all kept events when None or of another epoch: ``reset``).

        Raises:
            ValueError: ``cursor`` is not a cursor (:func:`parse_cursor`).
        """
        seq = -1
        if cursor is not None:
            epoch, number = parse_cursor(cursor)
            seq = number if epoch == self.epoch else -1
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
