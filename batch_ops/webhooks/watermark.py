"""Which batch events a watcher has already acted on, kept across its restarts (a pure value).

An Airflow asset watcher turns each batch event into an asset event. It must not do so twice
(a duplicate starts a second DAG run) and should not miss one because its triggerer restarted
while the event arrived. The receiver keeps recent events in arrival order with the time it
accepted each (``received_at``), so a watcher that remembers how far it got can ask for
everything the receiver keeps and act on exactly what is new:

- an event received after the watermark is new;
- one received at most ``SKEW`` seconds before it is new unless its id is among the ids acted on
  recently (two events can share a timestamp, and a receiver's clock can step back a little);
- anything older is not;
- and whatever its time, an ending (batch id and status) the watcher announced in the last
  :data:`ENDINGS_WINDOW` seconds is not new: a batch ends once. OpenAI retries a delivery for up
  to 72 hours, and a receiver that restarted (or forgot the ending) publishes the retry again,
  with a new id and a new ``received_at``.

A watcher seen for the first time starts at the newest event the receiver keeps: it acts on
what comes next, not on the receiver's history.

Examples:
    >>> from batch_ops.webhooks.events import BatchEvent
    >>> old = BatchEvent(id="evt_1", type="batch.completed", created_at=0, batch_id="b1", received_at=100.0)
    >>> mark = Watermark.starting_at([old])
    >>> mark.is_new(old)
    False
    >>> new = BatchEvent(id="evt_2", type="batch.failed", created_at=0, batch_id="b2", received_at=100.0)
    >>> mark.is_new(new)
    True
    >>> mark.acted_on(new)
    >>> Watermark.from_json(mark.to_json()).is_new(new)
    False
    >>> mark.acted_on(new, announced=True)
    >>> late_retry = BatchEvent(id="evt_3", type="batch.failed", created_at=0, batch_id="b2", received_at=9e4)
    >>> mark.is_new(late_retry)
    False
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from batch_ops.webhooks.events import ENDINGS_WINDOW, BatchEvent

__all__ = ["ENDINGS_WINDOW", "MAX_ENDINGS", "RECENT", "SKEW", "Watermark"]

#: Seconds before the watermark within which an event is judged by its id.
SKEW = 60.0
#: Ids remembered (the newest): more than a minute of completions on any account we know of.
RECENT = 1000
#: Announced endings remembered at most (~70 bytes each in the stored JSON, ~700 KB at the bound):
#: a watcher announcing more than 10,000 batches in 72 hours forgets the oldest sooner.
MAX_ENDINGS = 10_000


def _ending(event: BatchEvent) -> str:
    return f"{event.batch_id} {event.status}"


@dataclass
class Watermark:
    """How far a watcher got: the newest ``received_at`` it acted on, the ids acted on recently, and
    the batch endings it announced (``"<batch id> <status>"`` -> ``received_at``, oldest first)."""

    received_at: float = 0.0
    recent: list[str] = field(default_factory=list)
    announced: dict[str, float] = field(default_factory=dict)

    @classmethod
    def starting_at(cls, events: Iterable[BatchEvent]) -> Watermark:
        """A new watcher's start: after every event the receiver keeps now."""
        mark = cls()
        for event in events:
            mark.acted_on(event)
        return mark

    def is_new(self, event: BatchEvent) -> bool:
        """True when the watcher has not acted on ``event`` (see the module)."""
        if _ending(event) in self.announced:
            return False
        if event.received_at > self.received_at:
            return True
        return event.received_at >= self.received_at - SKEW and event.id not in self.recent

    def acted_on(self, event: BatchEvent, *, announced: bool = False) -> None:
        """Record ``event`` as done; ``announced``: it became an asset event (its ending is remembered)."""
        self.received_at = max(self.received_at, event.received_at)
        if event.id not in self.recent:
            self.recent.append(event.id)
            del self.recent[:-RECENT]
        if announced:
            self.announced[_ending(event)] = event.received_at
        self._forget_endings()

    def _forget_endings(self) -> None:
        horizon = self.received_at - ENDINGS_WINDOW
        for ending, at in list(self.announced.items()):  # oldest first; stops at the first kept
            if at >= horizon and len(self.announced) <= MAX_ENDINGS:
                break
            del self.announced[ending]

    def to_json(self) -> dict[str, Any]:
        return {"received_at": self.received_at, "recent": list(self.recent), "announced": dict(self.announced)}

    @classmethod
    def from_json(cls, value: Any) -> Watermark | None:
        """The stored watermark, or None when there is none or it is not one of ours."""
        if not isinstance(value, dict):
            return None
        received_at, recent = value.get("received_at"), value.get("recent")
        if not isinstance(received_at, (int, float)) or not isinstance(recent, list):
            return None
        announced = value.get("announced")  # absent from watermarks stored before it existed
        endings = {str(k): float(v) for k, v in announced.items() if isinstance(v, (int, float))} \
            if isinstance(announced, dict) else {}
        mark = cls(float(received_at), [str(i) for i in recent][-RECENT:], endings)
        mark._forget_endings()
        return mark
