"""Prefect events for batches that reached an end, so automations can start downstream work.

Event names are ``batch_ops.batch.completed``, ``.failed``, ``.expired`` and ``.cancelled``; the
resource id is ``openai.batch.<batch id>``. The payload is the task-result contract
(``Batch.summary()``) plus the endpoint, the duration and the batch metadata, so an automation
can pass ``{{ event.payload.output_file_id }}`` to the deployment it starts. Each metadata pair is
also a resource label (``openai.batch.metadata.pipeline``), so a trigger can ``match`` on it.

:func:`batch_event` decides everything and is pure; :func:`emit_batch_event` only sends.

Examples:
    >>> from batch_ops.models import Batch
    >>> b = Batch(id="batch_1", endpoint="/v1/embeddings", input_file_id="file-in", status="completed",
    ...           output_file_id="file-out", created_at=100, completed_at=160,
    ...           request_counts={"total": 2, "completed": 2, "failed": 0}, metadata={"pipeline": "eval"})
    >>> e = batch_event(b)
    >>> e.resource["openai.batch.metadata.pipeline"]
    'eval'
    >>> e.event, e.resource["prefect.resource.id"], e.payload["output_file_id"], e.payload["duration_seconds"]
    ('batch_ops.batch.completed', 'openai.batch.batch_1', 'file-out', 60)
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prefect.events import Event, emit_event

from batch_ops.models import Batch

if TYPE_CHECKING:
    from batch_ops.webhooks.events import BatchEvent as WebhookEvent

__all__ = ["EVENT_PREFIX", "METADATA_LABEL", "RESOURCE_PREFIX", "BatchEvent", "batch_duration", "batch_event",
           "emit_batch_event", "event_id", "webhook_event"]

#: Namespace of the event ids (uuid5): one id per batch and ending, whoever emits it.
_ID_NAMESPACE = uuid.UUID("5f0c3a52-6e1b-4d8e-9b7a-2f4c1d9e8a61")

EVENT_PREFIX = "batch_ops.batch"
RESOURCE_PREFIX = "openai.batch."
#: Each metadata pair of the batch is a resource label ``openai.batch.metadata.<key>``.
METADATA_LABEL = "openai.batch.metadata."
#: How many validation errors of a failed batch travel in the payload (the rest are on the batch).
_MAX_ERRORS = 5


@dataclass(frozen=True)
class BatchEvent:
    """What :func:`prefect.events.emit_event` is given for one batch.

    Examples:
        >>> BatchEvent(event="batch_ops.batch.completed", resource={"prefect.resource.id": "openai.batch.b1"}).payload
        {}
    """

    event: str
    resource: dict[str, str]
    payload: dict[str, Any] = field(default_factory=dict)


def batch_duration(batch: Batch) -> int | None:
    """Seconds from creation to the terminal timestamp, or None while the batch runs."""
    end = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at
    if end is None or not batch.status.is_terminal:
        return None
    return max(end - batch.created_at, 0)


def batch_event(batch: Batch) -> BatchEvent | None:
    """The event a batch deserves, or None when it has not reached an end yet."""
    if not batch.status.is_terminal:
        return None
    status = batch.status.value
    resource = {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{batch.id}",
        "prefect.resource.name": batch.id,
        "openai.batch.status": status,
        "openai.batch.endpoint": batch.endpoint or "",
        # Labels, so that a trigger can match on them: "whenever a batch of pipeline X completes".
        **{f"{METADATA_LABEL}{k}": str(v) for k, v in (batch.metadata or {}).items()},
    }
    errors = [
        {"code": e.code, "line": e.line, "message": e.message}
        for e in (batch.errors.data if batch.errors is not None else [])[:_MAX_ERRORS]
    ]
    payload: dict[str, Any] = {
        **batch.summary(),
        "endpoint": batch.endpoint,
        "duration_seconds": batch_duration(batch),
        "metadata": dict(batch.metadata or {}),
    }
    if errors:
        payload["errors"] = errors
    return BatchEvent(event=f"{EVENT_PREFIX}.{status}", resource=resource, payload=payload)


def event_id(batch_id: str, status: str) -> uuid.UUID:
    """The id of the event for ``batch_id`` ending ``status``: the same for every emitter.

    ``wait_for_batch`` and the webhook receiver may both announce the same ending; Prefect keeps
    one event per id and its automations act on an id once, so a deployment triggered by
    ``batch_ops.batch.completed`` runs once per batch, not once per announcer.

    Examples:
        >>> event_id("batch_1", "completed") == event_id("batch_1", "completed") != event_id("batch_1", "failed")
        True
    """
    return uuid.uuid5(_ID_NAMESPACE, f"{RESOURCE_PREFIX}{batch_id}.{status}")


def emit_batch_event(batch: Batch) -> Event | None:
    """Emit the batch's event (none for a running batch); returns what Prefect sent, if anything.

    Prefect attaches the current flow run and task run as related resources.
    """
    built = batch_event(batch)
    if built is None:
        return None
    return emit_event(event=built.event, resource=built.resource, payload=built.payload,
                      id=event_id(batch.id, batch.status.value))


def webhook_event(event: WebhookEvent, batch: Batch | None = None) -> Event:
    """The Prefect event for a batch webhook (the receiver's ``--prefect``).

    With ``batch`` (the receiver retrieved it), the event is exactly the one ``wait_for_batch``
    emits, payload and id included; without, it carries the batch id and status only.
    """
    built = batch_event(batch) if batch is not None else None
    if built is not None:
        assert batch is not None
        return Event(event=built.event, resource=built.resource, payload=built.payload,
                     id=event_id(batch.id, batch.status.value))
    resource = {
        "prefect.resource.id": f"{RESOURCE_PREFIX}{event.batch_id}",
        "prefect.resource.name": event.batch_id,
        "openai.batch.status": event.status,
    }
    payload = {"batch_id": event.batch_id, "status": event.status, "webhook_event_id": event.id}
    return Event(event=f"{EVENT_PREFIX}.{event.status}", resource=resource, payload=payload,
                 id=event_id(event.batch_id, event.status))
