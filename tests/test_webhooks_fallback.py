"""Waits with webhooks configured while the receiver is down (issue 22, item 9).

The promise (docs/webhooks.md, "When deliveries are lost"): a wait that starts while the receiver
cannot be reached polls on its ordinary schedule from the start; one that was sleeping until its
safety poll when the receiver stopped answering goes back to that schedule 10 s later
(``UNAVAILABLE_AFTER``). Either way it ends within a poll interval of its batch's end. All over real
HTTP: the local server, and ``batch-ops webhooks serve`` killed mid-way or a port nothing listens on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch_ops import AsyncBatchClient, Batch, ClientSettings
from batch_ops.server.background import free_port
from batch_ops.webhooks import EventSubscription

#: Outages of seconds (~60 s): run by `make drill` (drills/scenario_tests.py).
pytestmark = pytest.mark.scenario

CHAT = "/v1/chat/completions"
KEY = "sk-local-dev-7f3a"
POLL = 2.0
#: completed_at is whole seconds (up to 1 s before the real end); plus the poll's own round trip.
SLACK = 1.5


def _requests(tmp_path: Path, n: int, name: str) -> Path:
    path = tmp_path / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {
        "model": "m", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(n)))
    return path


class Timed:
    """One wait: when each of its polls answered, when it returned."""

    def __init__(self) -> None:
        self.polls: list[float] = []
        self.started = self.returned = 0.0
        self.batch: Batch | None = None

    async def run(self, client: AsyncBatchClient, batch_id: str, *, timeout: float) -> Timed:
        self.started = time.time()
        self.batch = await client.batches.wait(batch_id, poll_interval=POLL, max_poll_interval=POLL, timeout=timeout,
                                               on_poll=lambda _: self.polls.append(time.time()))
        self.returned = time.time()
        return self

    def check_polled_on_schedule(self, since: float = 0.0) -> None:
        """Polls at the poll interval (jittered 10 %) from ``since``, and the end seen within one."""
        assert self.batch is not None and self.batch.status == "completed"
        assert self.batch.completed_at is not None
        late = self.returned - self.batch.completed_at
        assert late < POLL + SLACK, f"returned {late:.1f} s after the batch ended (poll interval {POLL} s)"
        times = [t for t in self.polls if t >= since]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps and max(gaps) < POLL * 1.1 + 0.5, f"gaps between polls: {[round(g, 1) for g in gaps]}"


async def _connected(subscription: EventSubscription, limit: float = 10.0) -> None:
    """Until the subscription has reached its receiver."""
    for _ in range(int(limit / 0.05)):
        if subscription.available:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the subscription did not reach {subscription.events_url} within {limit} s")


def test_waits_that_start_while_the_receiver_is_down_poll_at_their_interval(
        make_server: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing listens at the events URL. A wait on a fresh subscription, and a wait that starts
    after the subscription has declared the receiver unavailable (before the fix: the first ended
    15.5 s in, the second slept until its deadline and timed out) both poll every 2 s and end
    within a poll interval of their batch's end. The declaration comes 10 s after the first attempt."""
    caplog.set_level(logging.WARNING, logger="batch_ops.webhooks.subscription")
    with make_server(request_latency=1.0, concurrency=2) as url:
        settings = ClientSettings(base_url=str(url), api_key=KEY, events_url=f"http://127.0.0.1:{free_port()}/events")

        async def main() -> tuple[Timed, Timed, float]:
            client = AsyncBatchClient.shared(settings)
            first = await client.submit(_requests(tmp_path, 3, "a"), endpoint=CHAT)
            a = await Timed().run(client, first.id, timeout=14)
            # The subscription's first attempt follows the first poll (the wait's first sleep).
            subscription = EventSubscription.shared(settings.events_url or "")
            while subscription.available or not caplog.records:
                assert time.time() - a.polls[0] < 13, "no 'unavailable' warning within 13 s"
                await asyncio.sleep(0.05)
            declared = caplog.records[0].created - a.polls[0]
            second = await client.submit(_requests(tmp_path, 3, "b"), endpoint=CHAT)
            b = await Timed().run(client, second.id, timeout=14)
            return a, b, declared

        a, b, declared = asyncio.run(main())
    a.check_polled_on_schedule()
    b.check_polled_on_schedule()
    assert 9.5 <= declared <= 11, f"declared unavailable {declared:.1f} s after the first attempt (docs: 10 s)"
    assert "unavailable" in caplog.records[0].getMessage()


def test_a_receiver_killed_mid_wait(make_server: Callable[..., Any], receiver: Any, tmp_path: Path) -> None:
    """The receiver is killed (SIGKILL) while a wait sleeps until its safety poll (1800 s). That wait
    goes back to polling 10 s after the kill, not earlier and not later, and sees its batch's end
    within a poll interval; a wait that starts after the kill polls at its interval from the start."""
    with make_server(request_latency=1.0, concurrency=2) as url:
        settings = ClientSettings(base_url=str(url), api_key=KEY, events_url=receiver.events_url)

        async def main() -> tuple[Timed, Timed, float]:
            client = AsyncBatchClient.shared(settings)
            # Two requests at a time: ~13 s for this one, sharing with the other from the kill on.
            long = await client.submit(_requests(tmp_path, 22, "long"), endpoint=CHAT)
            sleeping = asyncio.create_task(Timed().run(client, long.id, timeout=30))
            subscription = EventSubscription.shared(receiver.events_url)
            await _connected(subscription)  # the wait now sleeps until its safety poll
            await asyncio.sleep(0.5)
            receiver.proc.kill()
            await asyncio.to_thread(receiver.proc.wait)
            killed = time.time()
            short = await client.submit(_requests(tmp_path, 4, "short"), endpoint=CHAT)
            started_after = await Timed().run(client, short.id, timeout=25)
            return await sleeping, started_after, killed

        sleeping, started_after, killed = asyncio.run(main())
    after_kill = [t - killed for t in sleeping.polls if t > killed]
    assert after_kill and 9.5 <= after_kill[0] <= 11, f"polls after the kill at {[round(t, 1) for t in after_kill]} s"
    sleeping.check_polled_on_schedule(since=killed)
    started_after.check_polled_on_schedule()



class Forwarder:
    """A TCP forwarder on loopback in front of the receiver (an ingress, a proxy): ``cut()`` drops
    its connections and closes its port, ``start()`` opens it again."""

    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._forward, "127.0.0.1", self.port)

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()
        await self._server.wait_closed()

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@pytest.mark.parametrize("outage", ["receiver restarted", "path cut"])
def test_an_outage_of_seconds_costs_each_wait_one_poll(outage: str, make_server: Callable[..., Any], receiver: Any,
                                                       webhook_secret: str, tmp_path: Path) -> None:
    """For 2 s the subscription cannot reach the receiver: the receiver is killed and started again on
    its port (a new epoch), or the path to it is cut (an ingress restarting; the receiver keeps its
    events). A wait sleeping until its safety poll polls once when the subscription is back (events
    may have been missed) and sleeps on: it never goes over to its ordinary schedule, which an
    outage of 10 s would bring."""
    port = int(receiver.base.rsplit(":", 1)[1])
    forwarder = Forwarder(port)
    with make_server(request_latency=1.0, concurrency=1) as url:
        events_url = f"http://127.0.0.1:{forwarder.port}/events"
        settings = ClientSettings(base_url=str(url), api_key=KEY, events_url=events_url)

        async def main() -> tuple[Timed, float]:
            await forwarder.start()
            client = AsyncBatchClient.shared(settings)
            batch = await client.submit(_requests(tmp_path, 60, "long"), endpoint=CHAT)  # runs a minute
            timed = Timed()
            wait = asyncio.create_task(timed.run(client, batch.id, timeout=60))
            subscription = EventSubscription.shared(events_url)
            await _connected(subscription)
            await asyncio.sleep(0.5)
            again = None
            if outage == "path cut":
                await forwarder.cut()
            else:
                receiver.proc.kill()
                await asyncio.to_thread(receiver.proc.wait)
            started = time.time()
            await asyncio.sleep(2)
            if outage == "path cut":
                await forwarder.start()
            else:
                again = await asyncio.to_thread(
                    subprocess.Popen, [sys.executable, "-m", "batch_ops.cli", "webhooks", "serve", "--port", str(port)],
                    env={**os.environ, "OPENAI_WEBHOOK_SECRET": webhook_secret},
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                await asyncio.sleep(12.5 - (time.time() - started))  # past the 10 s an outage would take
            finally:
                wait.cancel()
                await asyncio.wait((wait,))
                await forwarder.cut()
                if again is not None:
                    again.terminate()
                    await asyncio.to_thread(again.wait, 10)
            return timed, started

        timed, started = asyncio.run(main())
    after = [round(t - started, 1) for t in timed.polls if t > started]
    assert len(after) == 1 and 2 < after[0] < 8, f"polls after the outage began, at {after} s"
