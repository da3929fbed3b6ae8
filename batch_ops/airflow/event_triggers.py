"""``OpenAIBatchEventTrigger``: batch webhooks as Airflow asset events (event-driven scheduling).

Put it in an ``AssetWatcher`` and a DAG scheduled on that asset runs whenever a batch you tagged
ends: one DAG submits with ``wait_for_completion=False``, another processes the results, and no
task waits anywhere (``dags/eval_submit.py`` and ``dags/eval_process.py`` are such a pair).

The trigger follows the webhook receiver's ``/events`` (the connection's ``events_url``),
retrieves each ended batch once to read its metadata, and yields one event per matching batch.
Airflow stores the event's payload in the asset event's ``extra["payload"]``: the batch's
status, file ids, request counts, usage and metadata, as ``OpenAIBatchOperator`` returns them.

Across triggerer restarts it neither repeats nor (as long as the receiver still keeps them)
misses events: it keeps a :class:`~batch_ops.webhooks.watermark.Watermark` in the asset's state
store (Airflow >= 3.3, a watcher of one asset). A batch ends once: an ending it announced is not
announced again for 73 hours, even when a receiver that restarted publishes OpenAI's late retry
of it anew. Elsewhere it starts from the newest event each
time it starts, and events that arrive while no triggerer runs it are not turned into asset events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import httpx
from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from batch_ops.airflow.triggers import batch_event, connection_settings, shared_client
from batch_ops.errors import ConfigurationError
from batch_ops.models import Batch
from batch_ops.polling import Reconnect
from batch_ops.webhooks.events import BATCH_EVENT_TYPES, BatchEvent
from batch_ops.webhooks.subscription import LONG_POLL, fetch_page
from batch_ops.webhooks.watermark import Watermark

__all__ = ["STATE_KEY", "OpenAIBatchEventTrigger", "asset_payload"]

#: The key of the trigger's watermark in the asset's state store.
STATE_KEY = "batch_ops.watermark"
#: The statuses a batch webhook can report.
STATUSES = frozenset(BATCH_EVENT_TYPES.values())


def asset_payload(batch: Batch, event: BatchEvent) -> dict[str, Any]:
    """What an asset event carries: the operator's result for the batch, its metadata and the event.

    Examples:
        >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="completed", created_at=0,
        ...           output_file_id="file-out", metadata={"pipeline": "eval"})
        >>> e = BatchEvent(id="evt_1", type="batch.completed", created_at=0, batch_id="b1", received_at=5.0)
        >>> p = asset_payload(b, e)
        >>> p["batch_id"], p["status"], p["output_file_id"], p["metadata"], p["event_id"]
        ('b1', 'completed', 'file-out', {'pipeline': 'eval'}, 'evt_1')
    """
    return {**batch_event(batch), "metadata": dict(batch.metadata or {}), "event_id": event.id,
            "received_at": event.received_at}


class OpenAIBatchEventTrigger(BaseEventTrigger):
    """Yield an event each time a batch matching ``metadata`` ends in one of ``statuses``.

    Args:
        conn_id: the ``openaibatch`` connection; its ``events_url`` (and ``events_token``) name
            the receiver, its key retrieves the batch.
        statuses: the statuses that count (``completed``, ``failed``, ``expired``, ``cancelled``).
        metadata: pairs the batch's metadata must contain, e.g. ``{"pipeline": "nightly_eval"}``
            (``OpenAIBatchOperator(metadata=...)`` sets them). Empty: every batch.
        events_url: the receiver's events URL, when not the connection's.

    Examples:
        >>> t = OpenAIBatchEventTrigger(conn_id="openai_batch_default", metadata={"pipeline": "eval"})
        >>> t.serialize()[1]["statuses"], t.serialize()[1]["metadata"]
        (['completed'], {'pipeline': 'eval'})
        >>> OpenAIBatchEventTrigger(statuses=["done"])
        Traceback (most recent call last):
        ...
        ValueError: statuses: 'done' is not a batch webhook status; use some of cancelled, completed, expired, failed
    """

    def __init__(
        self,
        *,
        conn_id: str = "openai_batch_default",
        statuses: Iterable[str] = ("completed",),
        metadata: Mapping[str, str] | None = None,
        events_url: str | None = None,
    ) -> None:
        super().__init__()
        self.statuses = sorted(set(statuses))
        for status in self.statuses:
            if status not in STATUSES:
                raise ValueError(f"statuses: {status!r} is not a batch webhook status; use some of "
                                 f"{', '.join(sorted(STATUSES))}")
        if not self.statuses:
            raise ValueError("statuses is empty: name at least one of " + ", ".join(sorted(STATUSES)))
        self.conn_id = conn_id
        self.metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
        self.events_url = events_url

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"conn_id": self.conn_id, "statuses": self.statuses, "metadata": self.metadata,
             "events_url": self.events_url},
        )

    def matches(self, batch: Batch) -> bool:
        """True when ``batch`` is one this trigger announces."""
        have = batch.metadata or {}
        return batch.status.value in self.statuses and all(have.get(k) == v for k, v in self.metadata.items())

    async def run(self) -> AsyncIterator[TriggerEvent]:
        settings = await connection_settings(self.conn_id)
        url = self.events_url or settings.events_url
        if not url:
            raise ConfigurationError(
                f"connection {self.conn_id!r} has no events_url: set its extra events_url to the webhook "
                "receiver's events URL (e.g. http://receiver:8780/events), or pass events_url=")
        client = await shared_client(self.conn_id)
        token = settings.events_token.get_secret_value() if settings.events_token else None
        stored = await self._load()
        mark = stored
        cursor: str | None = None
        pause, down_since = Reconnect(), None  # core's schedule for reaching the receiver again
        async with httpx.AsyncClient(timeout=httpx.Timeout(LONG_POLL + 15, connect=5.0)) as http:
            while True:
                try:
                    # The first request asks for every event the receiver keeps, at once.
                    page = await fetch_page(http, url, token=token, after=cursor,
                                            wait=0 if cursor is None else LONG_POLL)
                except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
                    if down_since is None:
                        down_since = time.monotonic()
                        self.log.warning("Batch events from %s unavailable (%s); retrying", url, type(exc).__name__)
                    await asyncio.sleep(pause.failed())
                    continue
                pause.answered()
                if down_since is not None:
                    self.log.info("Batch events from %s available again", url)
                    down_since = None
                if mark is None:  # seen for the first time: start after what the receiver keeps now
                    mark = Watermark.starting_at(page.events)
                    await self._save(mark)
                    self.log.info("Watching batch events from %s for %s batches with metadata %s (from now on)",
                                  url, "/".join(self.statuses), self.metadata)
                elif cursor is None:
                    self.log.info("Watching batch events from %s for %s batches with metadata %s (resuming)",
                                  url, "/".join(self.statuses), self.metadata)
                cursor = page.cursor
                for event in page.events:
                    if not mark.is_new(event):
                        continue
                    announced = False
                    if event.status in self.statuses:
                        # The event names the batch only; its metadata decides whether it is ours.
                        # A failure here raises: the triggerer restarts the watcher, which resumes
                        # from the stored watermark, so the event is not lost.
                        batch = await client.batches.retrieve(event.batch_id)
                        if self.matches(batch):
                            self.log.info("Batch %s %s (event %s)", batch.id, batch.status.value, event.id)
                            yield TriggerEvent(asset_payload(batch, event))
                            announced = True
                    # The watermark remembers an announced ending, so that a later event for it (OpenAI's
                    # retry, published anew by a receiver that restarted) is not announced again.
                    mark.acted_on(event, announced=announced)
                    await self._save(mark)

    async def _load(self) -> Watermark | None:
        store = getattr(self, "asset_state_store", None)  # Airflow >= 3.3 sets it
        if store is None:
            return None
        try:
            return Watermark.from_json(await store.aget(STATE_KEY))
        except ValueError:  # watched by several assets: no single place to keep it
            self.asset_state_store = None
            return None
        except Exception as exc:  # the store is Airflow's: go on without it
            self.log.warning("Could not read the watermark from the asset state store (%s); starting from now", exc)
            return None

    async def _save(self, mark: Watermark) -> None:
        store = getattr(self, "asset_state_store", None)
        if store is None:
            return
        try:
            await store.aset(STATE_KEY, mark.to_json())
        except Exception as exc:  # keep watching; a restart may repeat an event
            self.log.warning("Could not save the watermark in the asset state store: %s", exc)
