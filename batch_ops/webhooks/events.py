"""Batch webhook events as OpenAI sends them, parsed into one small value.

OpenAI's body names the event and the batch, nothing else::

    {"id": "evt_...", "object": "event", "created_at": 1719168000, "type": "batch.completed",
     "data": {"id": "batch_..."}}

A waiter woken by an event retrieves the batch for its details (counts, file ids), so the event
only has to be right about *which* batch ended and *how*.

Examples:
    >>> e = parse_event(b'{"id": "evt_1", "object": "event", "created_at": 5, "type": "batch.expired",'
    ...                 b' "data": {"id": "batch_9"}}')
    >>> e.batch_id, e.status, e.terminal
    ('batch_9', 'expired', True)
    >>> parse_event(b'{"id": "evt_2", "type": "response.completed", "data": {"id": "resp_1"}}') is None
    True
    >>> parse_event(b'{"id": "evt_3", "type": "batch.failed", "created_at": 1e999, "data": {"id": "b"}}')
    Traceback (most recent call last):
    ...
    batch_ops.errors.WebhookVerificationError: the webhook body is not an event: OverflowError: ...infinity...
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from batch_ops.errors import WebhookVerificationError

__all__ = ["BATCH_EVENT_TYPES", "ENDINGS_WINDOW", "BatchEvent", "parse_event"]

#: Seconds a batch's ending is remembered wherever endings are told apart from repeats (the hub, the
#: watermark, the Prefect announcement lookup): OpenAI retries a delivery for up to 72 hours; one hour more.
ENDINGS_WINDOW = 73 * 3600.0

#: The batch events OpenAI sends, and the status each one reports.
BATCH_EVENT_TYPES = {
    "batch.completed": "completed",
    "batch.failed": "failed",
    "batch.expired": "expired",
    "batch.cancelled": "cancelled",
}


@dataclass(frozen=True)
class BatchEvent:
    """One batch event: its id (the de-duplication key), type, when OpenAI created it, the batch.

    Attributes:
        id: the event id (``evt_...``), also the ``webhook-id`` header of every delivery of it.
        type: ``batch.completed``, ``batch.failed``, ``batch.expired`` or ``batch.cancelled``.
        created_at: epoch seconds, from the event.
        batch_id: the batch that ended.
        received_at: epoch seconds at which the receiver accepted it (0 until then).
    """

    id: str
    type: str
    created_at: int
    batch_id: str
    received_at: float = 0.0

    @property
    def status(self) -> str:
        """The status the batch ended in (``completed``, ``failed``, ``expired``, ``cancelled``)."""
        return BATCH_EVENT_TYPES[self.type]

    @property
    def terminal(self) -> bool:
        return True  # every batch event OpenAI sends today reports an ending

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BatchEvent:
        return cls(id=str(data["id"]), type=str(data["type"]), created_at=int(data["created_at"]),
                   batch_id=str(data["batch_id"]), received_at=float(data.get("received_at", 0.0)))


def parse_event(body: bytes | str, *, received_at: float = 0.0) -> BatchEvent | None:
    """The batch event in a (verified) body; None for events of other kinds (``response.*``, ...).

    Raises:
        WebhookVerificationError: the body is not an event (``reason="malformed"``).
    """
    try:
        data = json.loads(body)
        kind = data["type"]
        if kind not in BATCH_EVENT_TYPES:
            return None
        # int() of 1e999 (inf) raises OverflowError, of NaN ValueError: both a malformed event.
        return BatchEvent(id=str(data["id"]), type=kind, created_at=int(data.get("created_at") or 0),
                          batch_id=str(data["data"]["id"]), received_at=received_at)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        # UnicodeDecodeError is a ValueError; RecursionError: a body of thousands of nested brackets.
        raise WebhookVerificationError(f"the webhook body is not an event: {type(exc).__name__}: {exc}"[:300],
                                       reason="malformed") from None
