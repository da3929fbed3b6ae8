"""A cancelled wait ends: no await of the async driver or the events subscription swallows a
cancellation (issue 22, item 20).

Before Python 3.12, ``asyncio.wait_for`` returns the inner result when it arrives in the same loop
iteration as the caller's cancellation, and drops the cancellation: the wait goes on polling. The
first two tests make that moment happen every time (a reply, an event, released in the same
iteration as the cancel); the last cancels many waits at once against the local server, as a
triggerer does when triggers move. ``benchmarks/bench_cancel.py`` is the 1,000-wait, many-round
version.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from batch_ops import AsyncBatchClient, ClientSettings
from batch_ops.server.background import free_port
from batch_ops.webhooks import EventSubscription

CHAT = "/v1/chat/completions"
KEY = "sk-local-dev-7f3a"


def _requests(tmp_path: Path, n: int = 1) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {
        "model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(n)))
    return path


class _HeldReplies(httpx.AsyncBaseTransport):
    """Real HTTP to the local server, but each answer waits, read in full, until the test lets it go."""

    def __init__(self) -> None:
        self._real = httpx.AsyncHTTPTransport()
        self.held: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._real.handle_async_request(request)
        body = await response.aread()
        await response.aclose()
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.held.put(gate)
        await gate
        return httpx.Response(response.status_code, content=body, request=request,
                              headers={"content-type": response.headers.get("content-type", "application/json")})

    async def aclose(self) -> None:
        await self._real.aclose()


async def _outcome(task: asyncio.Task[Any], *, running: str) -> str:
    """What became of a cancelled task 1 s later: "cancelled", "returned ...", or ``running``."""
    await asyncio.wait((task,), timeout=1.0)
    if not task.done():
        return running
    return "cancelled" if task.cancelled() else f"returned {task.result()!r}"


async def _stop(task: asyncio.Task[Any], transport: _HeldReplies | None = None) -> None:
    """Cleanup after a failed check: cancel (again) until the task is gone, letting held replies go."""
    for _ in range(50):
        if task.done():
            return
        task.cancel()
        while transport is not None and not transport.held.empty():
            gate = transport.held.get_nowait()
            if not gate.done():
                gate.set_result(None)
        await asyncio.wait((task,), timeout=0.1)


async def test_a_cancel_that_arrives_with_the_reply_ends_the_wait(make_server: Callable[..., Any],
                                                                  tmp_path: Path) -> None:
    """The reply to a poll completes in the same loop iteration as the wait is cancelled: the wait
    ends, cancelled, instead of taking the reply and polling on (Python 3.10 and 3.11 before the fix:
    every time)."""
    with make_server(request_latency=3600, concurrency=1) as url:  # the batch stays in progress
        async with AsyncBatchClient(base_url=str(url), api_key=KEY) as plain:
            batch = await plain.submit(_requests(tmp_path), endpoint=CHAT)
        transport = _HeldReplies()
        async with httpx.AsyncClient(transport=transport) as http, \
                AsyncBatchClient(base_url=str(url), api_key=KEY, http_client=http) as client:
            for attempt in range(3):  # the first poll, and polls after a sleep
                wait = asyncio.create_task(client.batches.wait(batch.id, poll_interval=0.01, timeout=60))
                for _ in range(attempt):  # let some polls through first
                    (await asyncio.wait_for(transport.held.get(), 10)).set_result(None)
                gate = await asyncio.wait_for(transport.held.get(), 10)
                gate.set_result(None)  # the reply is complete in the next iteration...
                wait.cancel()          # ...and so is the cancellation
                outcome = await _outcome(wait, running="polling on")
                await _stop(wait, transport)
                assert outcome == "cancelled", f"attempt {attempt}: 1 s after its cancellation the wait was {outcome}"


async def test_a_cancel_that_arrives_with_the_batch_event_ends_the_sleep() -> None:
    """The batch's webhook event wakes a sleeping wait in the same loop iteration as it is cancelled:
    the sleep ends cancelled, not with ``"event"`` (after which the wait would poll on)."""
    subscription = EventSubscription(f"http://127.0.0.1:{free_port()}/events")
    try:
        for reason in ("event", "missed"):
            sleep = asyncio.create_task(subscription.sleep("batch_1", 60))
            await asyncio.sleep(0.05)  # it is sleeping
            subscription._wake("batch_1", reason)  # what the subscription does when the event comes
            sleep.cancel()
            outcome = await _outcome(sleep, running="sleeping on")
            await _stop(sleep)
            assert outcome == "cancelled", f"{reason}: 1 s after its cancellation the sleep was {outcome}"
    finally:
        await subscription.aclose()


async def test_many_waits_cancelled_at_once_all_end_within_a_second(make_server: Callable[..., Any],
                                                                    tmp_path: Path) -> None:
    """300 waits with a deadline on one loop, short polls against the local server, cancelled in the
    same instant, four rounds: every one ends within 1 s (before the fix, most rounds left some
    polling on Python 3.10 and 3.11)."""
    rounds, waits = 4, 300
    with make_server(request_latency=3600, concurrency=1, latency=0.01) as url:
        settings = ClientSettings(base_url=str(url), api_key=KEY)
        client = AsyncBatchClient.shared(settings)
        batch_ids = [(await client.submit(_requests(tmp_path), endpoint=CHAT)).id for _ in range(5)]
        survivors = []
        for _ in range(rounds):
            tasks = [asyncio.create_task(client.batches.wait(
                batch_ids[i % len(batch_ids)], poll_interval=0.05, max_poll_interval=0.05,
                deadline=time.time() + 600, first_delay=random.uniform(0, 0.05))) for i in range(waits)]
            await asyncio.sleep(random.uniform(0.5, 1.0))
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=1.0)
            survivors.append(len(pending))
            for task in pending:
                await _stop(task)
        assert not any(t.done() and not t.cancelled() for t in tasks), "a wait ended otherwise than cancelled"
    assert survivors == [0] * rounds, f"waits still running 1 s after their cancellation, per round: {survivors}"
