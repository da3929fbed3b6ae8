"""``OpenAIBatchTrigger``: wait for a batch in the triggerer without blocking its event loop.

Every trigger of a triggerer shares one pooled async client per connection
(``AsyncBatchClient.shared``): the event loop is never blocked by HTTP, and the connection
lookup itself is asynchronous. The wait is core's: ``client.batches.wait`` drives
:class:`~batch_ops.BatchPoller` (poll interval with back-off, an absolute wall-clock deadline,
a bounded run of consecutive transient failures, permanent 4xx ending the wait at once).
The trigger only spreads its first poll, maps the outcome to one event, and cancels the batch
when a user kills the task (Airflow >= 3.3 calls ``on_kill``).

Events are dicts with ``event`` (``terminal``, ``timeout`` or ``error``), ``batch_id``,
``status``, the file ids, ``request_counts``, ``usage``, ``message`` and, when a batch was seen,
``batch`` (its JSON, so the task can apply its failure policy without another request).
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from batch_ops.aio import within
from batch_ops.client import AsyncBatchClient
from batch_ops.errors import APIStatusError, BatchOpsError, BatchTimeoutError
from batch_ops.models import Batch
from batch_ops.outcomes import describe
from batch_ops.settings import ClientSettings

__all__ = [
    "EVENT_KINDS",
    "OpenAIBatchTrigger",
    "batch_event",
    "connection_settings",
    "error_event",
    "shared_client",
    "timeout_event",
]

#: The values of an event's ``event`` key.
EVENT_KINDS = frozenset({"terminal", "timeout", "error"})
#: Seconds ``on_kill`` may wait for the task's state (the supervisor answered in ~7 s on a busy
#: 2-core machine with SQLite), and then for the cancel request; unknown state means cancel.
STATE_TIMEOUT = 10.0
CANCEL_TIMEOUT = 15.0
#: Cancels started by on_kill; referenced so they are not garbage-collected half-way.
_KILL_TASKS: set[asyncio.Future[None]] = set()
#: Validation errors kept in an event: the list can be long, and events live in the database.
_MAX_EVENT_ERRORS = 20


def _batch_payload(batch: Batch) -> dict[str, Any]:
    data = batch.model_dump(mode="json", exclude={"metadata"})
    errors = data.get("errors")
    if isinstance(errors, dict) and isinstance(errors.get("data"), list):
        errors["data"] = errors["data"][:_MAX_EVENT_ERRORS]
    return data


def _base_payload(kind: str, batch_id: str, batch: Batch | None, message: str) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "event": kind,
        "batch_id": batch_id,
        "status": None,
        "input_file_id": None,
        "output_file_id": None,
        "error_file_id": None,
        "request_counts": None,
        "usage": None,
        "message": message,
        "batch": None,
    }
    if batch is not None:
        payload.update(batch.summary())
        payload["batch"] = _batch_payload(batch)
    return payload


def batch_event(batch: Batch) -> dict[str, Any]:
    """The payload for a batch that reached a terminal status.

    Examples:
        >>> b = Batch(id="b1", endpoint="/v1/embeddings", input_file_id="f", status="expired", created_at=0,
        ...           output_file_id="file-out", request_counts={"total": 4, "completed": 3})
        >>> e = batch_event(b)
        >>> e["event"], e["status"], e["output_file_id"], e["message"]
        ('terminal', 'expired', 'file-out', 'Batch b1 is expired 3/4')
    """
    return _base_payload("terminal", batch.id, batch, f"Batch {batch.id} is {describe(batch)}")


def timeout_event(
    batch_id: str, *, deadline: float | None, last: Batch | None, error: BatchTimeoutError | None = None,
    cancel_on_timeout: bool | None = None,
) -> dict[str, Any]:
    """The payload for a wait that reached its deadline: core's ``error`` (worded once, with what
    ``cancel_on_timeout`` did, under ``cancel``), and whether the trigger was asked to cancel
    (``cancel_on_timeout``; None: a trigger deferred before it could be asked)."""
    state = f", last seen {describe(last)}" if last is not None else ""
    message = str(error) if error is not None else f"Timed out waiting for batch {batch_id}{state}"
    payload = _base_payload("timeout", batch_id, last, message)
    payload["deadline"] = deadline
    payload["cancel"] = error.details.get("cancel") if error is not None else None
    payload["cancel_on_timeout"] = cancel_on_timeout
    return payload


def error_event(batch_id: str, exc: BaseException) -> dict[str, Any]:
    """The payload for a wait that cannot go on: a permanent error, or too many failed polls."""
    payload = _base_payload("error", batch_id, None, f"{type(exc).__name__}: {exc}")
    payload["error_type"] = type(exc).__name__
    payload["status_code"] = exc.status_code if isinstance(exc, APIStatusError) else None
    return payload


_transport_imported = False
#: The import under way, per event loop: the triggers that start together wait for the same one.
_transport_imports: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future[None]] = (
    weakref.WeakKeyDictionary()
)


def _import_transport() -> None:
    try:
        import aiohttp  # noqa: F401
    except ImportError:  # core falls back to httpx's own transport
        pass


async def _preload_transport() -> None:
    """Import the async transport core picks (aiohttp) in a worker thread, once per process.

    The import takes ~0.25 s and more on a busy machine (aiohttp builds SSL contexts when it is
    imported); done on the event loop, it would stall every other trigger of the triggerer. The
    triggers that start together share one import: each sending its own to the thread pool cost a
    thousand thread hand-offs (a fifth of a second of CPU) when a triggerer started 1,000 triggers.
    """
    global _transport_imported
    if _transport_imported:
        return
    loop = asyncio.get_running_loop()
    importing = _transport_imports.get(loop)
    if importing is None:
        importing = _transport_imports[loop] = asyncio.ensure_future(asyncio.to_thread(_import_transport))
    await asyncio.shield(importing)
    _transport_imported = True


_heap_frozen = False


def _freeze_import_heap() -> None:
    """Once per triggerer process: take the objects alive now out of the cyclic GC's reach.

    What is alive when the first trigger has its client is almost all import-time state:
    Airflow's modules, classes and functions (~160k objects in the benchmark's process, more in a
    real triggerer), none of which will ever be garbage. Every full collection re-scans them
    all, and a thousand triggers polling allocate fast enough for two or three full collections
    every 8 s, each stalling the loop for 150-200 ms on this machine (measured: the largest
    lags in ``bench_triggers.py`` line up with them). ``gc.freeze()`` is what Airflow itself
    does in its DAG processor and LocalExecutor; objects created later are collected as usual.
    Turn it off with ``[batch_ops] triggerer_gc_freeze = False``
    (``AIRFLOW__BATCH_OPS__TRIGGERER_GC_FREEZE=False``).
    """
    global _heap_frozen
    if _heap_frozen:
        return
    _heap_frozen = True
    try:
        try:
            from airflow.sdk.configuration import conf
        except ImportError:  # Airflow < 3.2: the core configuration
            from airflow.configuration import conf  # type: ignore[no-redef]

        enabled = conf.getboolean("batch_ops", "triggerer_gc_freeze", fallback=True)
    except Exception:  # an unreadable setting must not stop the wait: keep the default
        enabled = True
    if enabled:
        gc.freeze()


#: Seconds a connection lookup is reused by triggers starting in the same event loop.
SETTINGS_TTL = 30.0
_Lookup = tuple[float, "asyncio.Future[ClientSettings]"]
_settings_cache: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Lookup]] = weakref.WeakKeyDictionary()


async def connection_settings(conn_id: str) -> ClientSettings:
    """The connection's client settings, looked up once for all triggers starting together.

    A restarted triggerer starts a thousand triggers within one poll interval; one lookup per
    connection (through the supervisor, in Airflow 3) serves them all. Entries live
    ``SETTINGS_TTL`` seconds, so an edited connection reaches triggers that start later; a
    failed lookup is not kept.
    """
    from batch_ops.airflow.hooks import OpenAIBatchHook

    loop = asyncio.get_running_loop()
    cache = _settings_cache.setdefault(loop, {})
    now = time.monotonic()
    entry = cache.get(conn_id)
    if entry is None or now - entry[0] > SETTINGS_TTL or (entry[1].done() and entry[1].exception() is not None):
        future = asyncio.ensure_future(OpenAIBatchHook(conn_id=conn_id).aget_settings())
        entry = cache[conn_id] = (now, future)
    return await asyncio.shield(entry[1])


async def shared_client(conn_id: str) -> AsyncBatchClient:
    """The pooled async client of a connection in this triggerer's event loop (shared by all triggers).

    The connection lookup is shared by triggers starting together, the transport is imported off the
    loop, and the first call freezes the import-time heap (see ``_freeze_import_heap``).
    """
    settings = await connection_settings(conn_id)
    await _preload_transport()
    client = AsyncBatchClient.shared(settings)
    _freeze_import_heap()
    return client


def _seconds(value: timedelta | float | None) -> float | None:
    if value is None:
        return None
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


class OpenAIBatchTrigger(BaseTrigger):
    """Poll one batch until it is terminal, its deadline passes, or polling cannot go on.

    Args:
        conn_id: the ``openaibatch`` (or ``openai``) connection; looked up in the triggerer.
        batch_id: the batch to wait for.
        poll_interval: seconds between polls while the batch makes progress.
        timeout: seconds to wait from construction; turned into an absolute ``deadline``.
        deadline: absolute epoch seconds; wins over ``timeout`` (a re-created trigger keeps
            the budget of the original one, in whatever process it resumes).
        max_poll_interval: back-off ceiling while nothing changes (core's default: 4x poll_interval).
        cancel_on_kill: cancel the batch when a user kills the deferred task (Airflow >= 3.3).
        cancel_on_timeout: cancel the batch when the deadline passes (core's wait does it, and its
            timeout event says so). None: not asked (a trigger serialized by an earlier batch_ops);
            the task then decides when it resumes.
        first_poll_spread: the first poll happens after a random delay in ``[0, spread)``
            (default: one poll interval), so a restarted triggerer does not send all its
            polls in the same instant.

    Examples:
        >>> t = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id="batch_1", poll_interval=30,
        ...                        deadline=1_900_000_000.0)
        >>> t.serialize()[0]
        'batch_ops.airflow.triggers.OpenAIBatchTrigger'
        >>> t.serialize()[1]["deadline"]
        1900000000.0
    """

    def __init__(
        self,
        *,
        conn_id: str,
        batch_id: str,
        poll_interval: float = 60.0,
        timeout: timedelta | float | None = None,
        deadline: float | None = None,
        max_poll_interval: float | None = None,
        cancel_on_kill: bool = True,
        first_poll_spread: float | None = None,
        cancel_on_timeout: bool | None = None,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.conn_id = conn_id
        self.batch_id = batch_id
        self.poll_interval = float(poll_interval)
        self.timeout = _seconds(timeout)
        if deadline is None and self.timeout is not None:
            # Fixed once, here: the serialized trigger carries the wall-clock deadline.
            deadline = time.time() + self.timeout
        self.deadline = deadline
        self.max_poll_interval = max_poll_interval
        self.cancel_on_kill = cancel_on_kill
        self.first_poll_spread = first_poll_spread
        self.cancel_on_timeout = cancel_on_timeout

    def serialize(self) -> tuple[str, dict[str, Any]]:
        # The connection id only: the key is looked up again where the trigger runs.
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "conn_id": self.conn_id,
                "batch_id": self.batch_id,
                "poll_interval": self.poll_interval,
                "timeout": self.timeout,
                "deadline": self.deadline,
                "max_poll_interval": self.max_poll_interval,
                "cancel_on_kill": self.cancel_on_kill,
                "first_poll_spread": self.first_poll_spread,
                "cancel_on_timeout": self.cancel_on_timeout,
            },
        )

    async def _client(self) -> AsyncBatchClient:
        return await shared_client(self.conn_id)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        # The connection lookup is shared by the triggers that start together (connection_settings).
        try:
            client = await self._client()
        except Exception as exc:  # connection missing or unusable: nothing to retry here
            yield TriggerEvent(error_event(self.batch_id, exc))
            return
        events = client.settings.events_url is not None
        self.log.debug("Waiting for batch %s (%s)", self.batch_id,
                       "woken by webhooks" if events else f"poll every {self.poll_interval}s")
        try:
            batch = await client.batches.wait(
                self.batch_id,
                poll_interval=self.poll_interval,
                max_poll_interval=self.max_poll_interval,
                timeout=None,
                deadline=self.deadline,
                on_poll=self._on_poll,
                # The first poll is spread over one interval, so a restarted triggerer does not
                # send all its polls at once; the batch's webhook event ends that pause early.
                first_poll_spread=self.poll_interval if self.first_poll_spread is None else self.first_poll_spread,
                cancel_on_timeout=bool(self.cancel_on_timeout),
            )
        except BatchTimeoutError as exc:
            yield TriggerEvent(timeout_event(self.batch_id, deadline=self.deadline, last=exc.batch, error=exc,
                                             cancel_on_timeout=self.cancel_on_timeout))
            return
        except BatchOpsError as exc:
            # Core ended the wait: a permanent 4xx at once, transient failures once past the poller's bound.
            self.log.warning("Stopped polling batch %s: %s", self.batch_id, exc)
            yield TriggerEvent(error_event(self.batch_id, exc))
            return
        yield TriggerEvent(batch_event(batch))

    def _on_poll(self, batch: Batch) -> None:
        # One line per status change, not per poll: a triggerer may run a thousand of these.
        if batch.status.value != getattr(self, "_last_status", None):
            self._last_status = batch.status.value
            self.log.info("Batch %s: %s", batch.id, describe(batch))

    async def on_kill(self) -> None:
        """Cancel the batch when a user kills the deferred task (Airflow >= 3.3 calls this).

        Airflow calls it when the task stopped being deferred by a user's action (mark
        failed/success, clear), not on triggerer restarts or completion. A trigger taken over by
        another triggerer (its own one missed heartbeats) is stopped the same way, so the task's
        state is checked first: still ``deferred`` means the wait goes on elsewhere, and the batch
        is left alone. Bounded by ``STATE_TIMEOUT`` + ``CANCEL_TIMEOUT``; failures are logged, not raised.
        """
        if not self.cancel_on_kill:
            self.log.info("Task killed; batch %s keeps running (cancel_on_kill=False)", self.batch_id)
            return
        self.log.info("Task killed; cancelling batch %s (cancel_on_kill=True)", self.batch_id)
        # Airflow 3.3 repeats the cancellation at every sync with its supervisor (about every
        # second) until the trigger is gone, which would interrupt a slower cancel half-way:
        # do the work in a task of its own, shielded, and keep a reference to it.
        task = asyncio.ensure_future(self._cancel_batch())
        _KILL_TASKS.add(task)
        task.add_done_callback(_KILL_TASKS.discard)
        await asyncio.shield(task)

    async def _cancel_batch(self) -> None:
        try:
            state = await self._task_state()
            if state == "deferred":
                self.log.info("Trigger stopped but its task is still deferred; batch %s keeps running",
                              self.batch_id)
                return
            client = await self._client()
            batch = await within(client.batches.cancel(self.batch_id), CANCEL_TIMEOUT)
        except Exception as exc:
            self.log.warning("Task killed; cancelling batch %s failed: %s", self.batch_id, exc)
            return
        self.log.info("Task killed (task now %s); batch %s is %s", state, self.batch_id, batch.status.value)

    async def _task_state(self) -> str | None:
        """The task instance's current state, or None when it cannot be known here."""
        ti = self.task_instance
        if ti is None:
            return None
        try:
            from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance

            # A synchronous call to the supervisor: run it in a worker thread, never on the loop.
            states = await within(
                asyncio.to_thread(
                    RuntimeTaskInstance.get_task_states,
                    dag_id=ti.dag_id, task_ids=[ti.task_id], run_ids=[ti.run_id], map_index=ti.map_index
                ),
                STATE_TIMEOUT,
            )
        except Exception as exc:
            self.log.info("Could not read the state of task %s (%s); cancelling anyway", ti.task_id, exc)
            return None
        key = ti.task_id if (ti.map_index is None or ti.map_index < 0) else f"{ti.task_id}_{ti.map_index}"
        state = (states.get(ti.run_id) or {}).get(key)
        return None if state is None else str(getattr(state, "value", state))
