"""The webhook receiver's Prefect side: each batch webhook becomes a Prefect event.

``batch-ops webhooks serve --prefect`` (or ``create_receiver_app(on_event=prefect_forwarder())``)
emits ``batch_ops.batch.<status>`` for resource ``openai.batch.<id>`` as each verified webhook
arrives, so deployment triggers and automations start downstream work within seconds of the
batch's end, with no task waiting anywhere. With an API key in the receiver's environment
(``OPENAI_API_KEY``), it retrieves the batch first and emits the very event ``wait_for_batch``
emits (same payload, same id: Prefect acts on it once); without one, the event carries the batch
id and status.

A batch ends once: before it emits, the forwarder asks Prefect whether the event of this ending
(its id is one per batch and status) is already stored, and emits nothing when it is. The
receiver's hub already publishes an ending once for 73 hours; this covers a receiver that
restarted meanwhile (and Prefect's automations forget the ids they acted on after 30 minutes).

Events go to the Prefect API the receiver's environment names (``PREFECT_API_URL``, or the active
profile's). Without one, Prefect's client would start a temporary server inside the receiver
(each emission stalls seconds, and the events land in a throwaway database that no automation
reads): :func:`require_prefect_api` refuses that, and ``batch-ops webhooks serve --prefect``
calls it before it listens.

Examples:
    >>> forward = prefect_forwarder(settings=None)
    >>> callable(forward)
    True
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from uuid import UUID

from prefect.events import Event
from prefect.events.clients import get_events_client

from batch_ops.errors import BatchOpsError, ConfigurationError
from batch_ops.models import Batch
from batch_ops.prefect.events import webhook_event
from batch_ops.settings import ClientSettings
from batch_ops.webhooks.events import ENDINGS_WINDOW, BatchEvent

__all__ = ["prefect_forwarder", "require_prefect_api"]

log = logging.getLogger(__name__)

#: Seconds one emission may take before it is given up (logged, not retried).
EMIT_TIMEOUT = 30.0
#: Seconds the look for an earlier announcement may take: past it the event is emitted anyway (a busy
#: Prefect database must delay the announcement by seconds, not by the whole emit budget; Prefect's own
#: de-duplication still covers the next 30 minutes).
LOOKUP_TIMEOUT = 5.0
#: How far back an announcement of the same ending is looked for: as long as endings are remembered.
STORED_LOOKBACK = timedelta(seconds=ENDINGS_WINDOW)


def require_prefect_api() -> str:
    """The Prefect API URL events will be sent to.

    Raises:
        ConfigurationError: none is set (neither ``PREFECT_API_URL`` nor the active profile).
    """
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    if not url:
        raise ConfigurationError(
            "no Prefect API to send the events to: PREFECT_API_URL is not set, and Prefect would start a "
            "temporary server inside the receiver whose events nothing reads. Set PREFECT_API_URL to your Prefect "
            "server's API (e.g. http://prefect:4200/api; for Prefect Cloud, the workspace URL and PREFECT_API_KEY), "
            "or select a profile that has one (prefect profile use NAME)")
    return str(url)


def prefect_forwarder(settings: ClientSettings | None = None) -> Callable[[BatchEvent], Awaitable[None]]:
    """An ``on_event`` callback for the receiver that emits the Prefect event (see the module).

    Args:
        settings: where to retrieve the batch from (its API key); None emits id and status only.
    """

    async def forward(event: BatchEvent) -> None:
        batch: Batch | None = None
        if settings is not None and settings.api_key is not None:
            from batch_ops.client import AsyncBatchClient

            try:
                batch = await AsyncBatchClient.shared(settings).batches.retrieve(event.batch_id)
            except BatchOpsError as exc:  # the event still goes out, with what the webhook said
                log.warning("could not retrieve batch %s for its Prefect event: %s", event.batch_id, exc)
        built = webhook_event(event, batch)
        try:
            if await asyncio.wait_for(_stored(built.id), LOOKUP_TIMEOUT):
                log.info("batch %s %s is already announced in Prefect (event %s): not emitted again",
                         event.batch_id, event.status, built.id)
                return
        except Exception as exc:  # emit anyway: Prefect's own de-duplication still covers 30 minutes
            log.warning("could not look for batch %s's Prefect event (%r); emitting it", event.batch_id, exc)
        # Sent from this task with Prefect's async events client (no background worker thread in
        # the receiver); a slow Prefect API delays only this task, and EMIT_TIMEOUT bounds it.
        try:
            await asyncio.wait_for(_emit(built), EMIT_TIMEOUT)
        except Exception as exc:  # the receiver goes on; subscribers still got the event
            log.warning("could not emit the Prefect event for batch %s: %r", event.batch_id, exc)

    return forward


async def _stored(event_id: UUID) -> bool:
    """True when Prefect already stores the event ``event_id`` (the same ending, announced before).

    The event id is one per batch ending (:func:`batch_ops.prefect.events.event_id`), and Prefect
    stores an id once, but its automations forget the ids they acted on after 30 minutes
    (``SEEN_EXPIRATION`` in ``prefect.server.events.ordering``), while OpenAI retries a delivery for
    72 hours: a receiver that restarted in between would announce the ending again, and an
    automation would act on it twice. Prefect keeps events for 7 days by default.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventIDFilter, EventOccurredFilter

    now = datetime.now(timezone.utc)
    window = EventOccurredFilter(since=now - STORED_LOOKBACK, until=now + timedelta(hours=1))
    async with get_client() as client:
        page = await client.read_events(filter=EventFilter(id=EventIDFilter(id=[event_id]), occurred=window),
                                        limit=1)
    return bool(page.events)


async def _emit(event: Event) -> None:
    async with get_events_client() as client:
        await client.emit(event)
