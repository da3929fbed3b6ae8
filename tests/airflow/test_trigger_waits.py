"""``OpenAIBatchTrigger`` waits with webhooks and under cancellation (issue 22, items 9, 11, 20),
run directly in an event loop as the triggerer runs them, against the local server over HTTP."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from batch_ops import BatchClient
from batch_ops.airflow import OpenAIBatchTrigger
from batch_ops.server.background import free_port

CHAT = "/v1/chat/completions"


def submit(url: str, n: int) -> str:
    requests = [{"custom_id": f"t-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}}
                for i in range(n)]
    with BatchClient(api_key="sk-setup", base_url=url) as client:
        return client.submit(requests, endpoint=CHAT).id


async def first_event(trigger: OpenAIBatchTrigger) -> dict[str, Any]:
    events: AsyncIterator[Any] = trigger.run()
    event = await anext(events)
    await events.aclose()
    return dict(event.payload)


async def test_a_trigger_deferred_while_the_receiver_is_down_polls_at_its_interval(
        make_server: Callable[..., Any], use_server: Callable[..., None]) -> None:
    """The connection names a receiver that is down when the task defers: the trigger polls every
    2 s and fires within a poll interval of the batch's end (before: it slept until the
    subscription gave up on the receiver, 15.5 s in)."""
    with make_server(request_latency=1.0, concurrency=1) as url:
        use_server(url, events_url=f"http://127.0.0.1:{free_port()}/events")
        batch_id = submit(url, n=4)
        trigger = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=2,
                                     max_poll_interval=2, timeout=30)
        event = await first_event(trigger)
        fired = time.time()
    assert event["event"] == "terminal" and event["status"] == "completed", event["message"]
    # completed_at is whole seconds (up to 1 s early); plus a round trip.
    late = fired - event["batch"]["completed_at"]
    assert late < 2 + 1.5, f"the trigger fired {late:.1f} s after the batch ended (poll interval 2 s)"


async def test_an_openai_type_connection_wakes_the_trigger_on_the_webhook(
        make_server: Callable[..., Any], use_server: Callable[..., None], receiver: Any, webhook_secret: str) -> None:
    """``events_url`` in the extra of the official provider's ``openai`` connection type is honoured
    (before: dropped, and the trigger slept out its first-poll spread of up to 10 hours)."""
    with make_server(request_latency=0.5, concurrency=1, webhook_urls=[receiver.hook_url],
                     webhook_secret=webhook_secret) as url:
        use_server(url, conn_type="openai", events_url=receiver.events_url)
        batch_id = submit(url, n=4)
        trigger = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=36000)
        started = time.monotonic()
        event = await asyncio.wait_for(first_event(trigger), 60)
        took = time.monotonic() - started
        async with httpx.AsyncClient() as http:
            calls = (await http.get(str(url).removesuffix("/v1") + "/healthz")).json()["calls"]
    assert event["event"] == "terminal" and event["status"] == "completed", event["message"]
    assert took < 30, f"the trigger fired after {took:.0f} s"
    assert receiver.counts()["accepted"] == 1
    assert calls.get("GET /v1/batches/{id}", 0) <= 2, calls  # the webhook woke it, not a poll


async def test_triggers_cancelled_at_once_all_end(make_server: Callable[..., Any],
                                                  use_server: Callable[..., None]) -> None:
    """300 triggers on one loop, polling every 0.05 s, cancelled together (triggers moving to another
    triggerer, tasks cleared), three rounds: every one ends within 1 s. ``benchmarks/bench_cancel.py``
    runs 1,000 for 20 rounds."""
    with make_server(request_latency=3600, concurrency=1, latency=0.01) as url:
        use_server(url)
        batch_ids = [submit(url, n=1) for _ in range(5)]
        survivors = []
        for _ in range(3):
            triggers = [OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_ids[i % 5],
                                           poll_interval=0.05, max_poll_interval=0.05, timeout=600)
                        for i in range(300)]
            tasks = [asyncio.create_task(first_event(t)) for t in triggers]
            await asyncio.sleep(random.uniform(0.5, 1.0))
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            survivors.append(len(pending))
            for _ in range(50):  # leave nothing running for the next round
                if not pending:
                    break
                for task in pending:
                    task.cancel()
                _, pending = await asyncio.wait(pending, timeout=0.1)
    assert survivors == [0, 0, 0], f"triggers still running 1 s after their cancellation, per round: {survivors}"
