"""``OpenAIBatchEventTrigger`` (the asset watcher) run directly in an event loop, as the triggerer
runs it, against the local server sending real signed webhooks to ``batch-ops webhooks serve``.

The full path (scheduler, triggerer, the example DAG pair) is in ``test_e2e.py``; here are the
decisions: which events become asset events, and what a restart repeats or misses.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from batch_ops import BatchClient
from batch_ops.airflow import OpenAIBatchEventTrigger
from batch_ops.errors import ConfigurationError
from batch_ops.server.background import free_port
from batch_ops.webhooks.verify import sign

REQUESTS = [{"custom_id": f"r{i}", "body": {"model": "m", "input": f"x{i}"}} for i in range(2)]


class StateStore:
    """Airflow's asset state store as a trigger sees it (``aget``/``aset``), values kept as JSON."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    async def aget(self, key: str, default: Any = None) -> Any:
        return json.loads(self.values[key]) if key in self.values else default

    async def aset(self, key: str, value: Any) -> None:
        self.values[key] = json.dumps(value)


class Watcher:
    """A running trigger whose events land in a queue (as the triggerer consumes them)."""

    def __init__(self, trigger: OpenAIBatchEventTrigger) -> None:
        self.trigger = trigger
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.get_running_loop().create_task(self._consume())

    async def _consume(self) -> None:
        events: AsyncIterator[Any] = self.trigger.run()
        async for event in events:
            await self.events.put(dict(event.payload))

    async def next(self, timeout: float = 15.0) -> dict[str, Any]:
        get = asyncio.ensure_future(self.events.get())
        done, _ = await asyncio.wait({get, self.task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if get not in done:
            get.cancel()
            if self.task.done():
                self.task.result()  # the trigger's own error, if it failed
            pytest.fail(f"no asset event within {timeout} s")
        return get.result()

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
def webhook_server(make_server: Callable[..., AbstractContextManager[str]], receiver: Any,
                   webhook_secret: str, use_server: Callable[..., None]) -> Iterator[str]:
    with make_server(request_latency=0.2, concurrency=2, webhook_urls=[receiver.hook_url],
                     webhook_secret=webhook_secret) as url:
        use_server(url, events_url=receiver.events_url)
        yield url


async def ended(url: str, receiver: Any, pipeline: str, *, cancel: bool = False) -> str:
    """A batch tagged ``pipeline`` that has ended and whose event the receiver holds."""
    def run() -> str:
        with BatchClient(api_key="sk-setup", base_url=url) as client:
            batch = client.submit(REQUESTS, endpoint="/v1/embeddings", metadata={"pipeline": pipeline})
            if cancel:
                client.batches.cancel(batch.id)
            deadline = time.monotonic() + 20
            while batch.id not in {e["batch_id"] for e in receiver.events()}:
                assert time.monotonic() < deadline, f"no webhook for {batch.id}"
                time.sleep(0.05)
            return batch.id
    return await asyncio.to_thread(run)


async def test_each_matching_batch_becomes_one_asset_event_across_restarts(
        webhook_server: str, receiver: Any) -> None:
    store = StateStore()

    def watcher() -> Watcher:
        trigger = OpenAIBatchEventTrigger(statuses=["completed"], metadata={"pipeline": "eval"})
        trigger.asset_state_store = store  # what the triggerer sets for a watcher of one asset
        return Watcher(trigger)

    history = await ended(webhook_server, receiver, "eval")  # ended before any watcher existed
    first = watcher()
    await asyncio.sleep(1.0)  # the watcher has read what the receiver keeps
    other = await ended(webhook_server, receiver, "other")
    cancelled = await ended(webhook_server, receiver, "eval", cancel=True)
    wanted = await ended(webhook_server, receiver, "eval")
    event = await first.next()
    # The receiver keeps events in arrival order: by the time `wanted` came, the others were judged.
    assert event["batch_id"] == wanted, (history, other, cancelled, event)
    assert event["status"] == "completed" and event["output_file_id"] and event["metadata"]["pipeline"] == "eval"
    assert event["request_counts"]["completed"] == len(REQUESTS) and event["event_id"].startswith("evt_")
    assert first.events.empty()

    # The triggerer restarts (or hands the watcher to another one); a batch ends meanwhile.
    await first.stop()
    during = await ended(webhook_server, receiver, "eval")
    second = watcher()
    event = await second.next()
    assert event["batch_id"] == during, "the event that came while no watcher ran was lost or another repeated"
    after = await ended(webhook_server, receiver, "eval")
    assert (await second.next())["batch_id"] == after
    await asyncio.sleep(0.5)
    assert second.events.empty(), "an event was announced twice"
    await second.stop()


async def test_without_a_state_store_a_watcher_starts_from_now(webhook_server: str, receiver: Any) -> None:
    """Airflow < 3.3, or a watcher shared by several assets: nothing is repeated after a restart;
    what ended while no watcher ran is not announced (docs/webhooks.md says so)."""
    before = await ended(webhook_server, receiver, "eval")
    w = Watcher(OpenAIBatchEventTrigger(metadata={"pipeline": "eval"}))
    await asyncio.sleep(1.0)
    after = await ended(webhook_server, receiver, "eval")
    assert (await w.next())["batch_id"] == after != before
    await w.stop()


async def test_a_connection_without_events_url_says_what_to_set(server_url: str, use_server: Any) -> None:
    use_server(server_url)
    with pytest.raises(ConfigurationError, match="no events_url: set its extra events_url"):
        await anext(OpenAIBatchEventTrigger().run())


def test_statuses_are_checked_when_the_dag_is_parsed() -> None:
    with pytest.raises(ValueError, match="'complete' is not a batch webhook status"):
        OpenAIBatchEventTrigger(statuses=["complete"])
    kwargs = OpenAIBatchEventTrigger(statuses=["failed", "completed"], metadata={"pipeline": "eval"}).serialize()[1]
    assert OpenAIBatchEventTrigger(**kwargs).serialize()[1] == kwargs  # as the triggerer re-creates it
    json.dumps(kwargs)


# A batch ends once: OpenAI retries a delivery for up to 72 hours, and a receiver that restarted has
# forgotten the first one and publishes the retry anew (new received_at). The watermark must still
# know that this batch's ending was announced.


@contextlib.contextmanager
def receiver_on(port: int, secret: str) -> Iterator[str]:
    env = {**os.environ, "OPENAI_WEBHOOK_SECRET": secret}
    proc = subprocess.Popen([sys.executable, "-m", "batch_ops.cli", "webhooks", "serve", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stdout.read()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def deliver(base: str, secret: str, event_id: str, batch_id: str) -> dict[str, Any]:
    """OpenAI's delivery of ``batch.completed`` for ``batch_id`` (a retry is signed anew, same id)."""
    body = json.dumps({"id": event_id, "object": "event", "created_at": int(time.time()),
                       "type": "batch.completed", "data": {"id": batch_id}})
    answer = httpx.post(f"{base}/openai", content=body, headers=sign(secret, event_id, body))
    answer.raise_for_status()
    return dict(answer.json())


def completed_batch(url: str) -> str:
    with BatchClient(api_key="sk-setup", base_url=url) as client:
        batch = client.submit(REQUESTS, endpoint="/v1/embeddings", metadata={"pipeline": "eval"})
        return client.batches.wait(batch.id, poll_interval=0.2, timeout=60).id


async def test_a_retry_published_again_after_a_receiver_restart_makes_no_second_asset_event(
        make_server: Callable[..., AbstractContextManager[str]], use_server: Callable[..., None],
        webhook_secret: str) -> None:
    port = free_port()
    with make_server(request_latency=0.05) as url:
        first_batch, second_batch = [await asyncio.to_thread(completed_batch, url) for _ in range(2)]
        use_server(url, events_url=f"http://127.0.0.1:{port}/events")
        store = StateStore()
        trigger = OpenAIBatchEventTrigger(statuses=["completed"], metadata={"pipeline": "eval"})
        trigger.asset_state_store = store
        with receiver_on(port, webhook_secret) as base:
            watcher = Watcher(trigger)
            await asyncio.sleep(1.0)  # the watcher has started from what the receiver keeps (nothing)
            assert (await asyncio.to_thread(deliver, base, webhook_secret, "evt_1", first_batch)) == {"ok": True}
            assert (await watcher.next())["batch_id"] == first_batch
        # The receiver restarts; OpenAI, which never saw the 200, retries evt_1 hours later. The new
        # receiver has never seen it: it publishes it. Then another batch ends.
        with receiver_on(port, webhook_secret) as base:
            assert (await asyncio.to_thread(deliver, base, webhook_secret, "evt_1", first_batch)) == {"ok": True}
            await asyncio.to_thread(deliver, base, webhook_secret, "evt_2", second_batch)
            # Events are judged in order: the next asset event is the second batch, not the first again.
            assert (await watcher.next(timeout=30))["batch_id"] == second_batch
            await asyncio.sleep(0.5)
            assert watcher.events.empty()
            await watcher.stop()
    mark = json.loads(store.values["batch_ops.watermark"])
    assert sorted(mark["announced"]) == sorted([f"{first_batch} completed", f"{second_batch} completed"])
