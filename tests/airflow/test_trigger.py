"""``OpenAIBatchTrigger`` run directly in an event loop against the local server."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from batch_ops import BatchClient
from batch_ops.airflow import OpenAIBatchHook, OpenAIBatchTrigger


def submit(url: str, n: int = 3) -> str:
    requests = [
        {"custom_id": f"t-{i}", "body": {"model": "m", "messages": [{"role": "user", "content": str(i)}]}}
        for i in range(n)
    ]
    with BatchClient(api_key="sk-setup", base_url=url) as client:
        return client.submit(requests, endpoint="/v1/chat/completions").id


async def first_event(trigger: OpenAIBatchTrigger) -> dict[str, Any]:
    events: AsyncIterator[Any] = trigger.run()
    event = await anext(events)
    await events.aclose()
    return dict(event.payload)


def test_serialize_keeps_the_absolute_deadline_and_no_secret(api_key: str) -> None:
    trigger = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id="batch_1", poll_interval=5, timeout=60)
    classpath, kwargs = trigger.serialize()
    module, name = classpath.rsplit(".", 1)
    assert getattr(importlib.import_module(module), name) is OpenAIBatchTrigger  # how the triggerer loads it
    assert abs(kwargs["deadline"] - (time.time() + 60)) < 5
    json.dumps(kwargs)  # stored in the database as JSON
    # Re-created later (a triggerer restart): the same deadline, not a fresh 60 s.
    time.sleep(0.05)
    again = OpenAIBatchTrigger(**kwargs)
    assert again.deadline == trigger.deadline and again.serialize() == (classpath, kwargs)
    assert set(kwargs) == {"conn_id", "batch_id", "poll_interval", "timeout", "deadline", "max_poll_interval",
                           "cancel_on_kill", "first_poll_spread", "cancel_on_timeout"}
    assert api_key not in repr(trigger)


async def test_terminal_event_carries_status_files_counts_and_message(server_url, use_server) -> None:
    use_server(server_url)
    batch_id = submit(server_url, n=3)
    event = await first_event(
        OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=0.1, timeout=30)
    )
    assert event["event"] == "terminal" and event["status"] == "completed"
    assert event["batch_id"] == batch_id and event["output_file_id"] and event["input_file_id"]
    assert event["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    assert "completed 3/3" in event["message"]
    assert event["batch"]["id"] == batch_id  # the task applies its policy without another request


async def test_unknown_batch_ends_at_once(server_url, use_server) -> None:
    use_server(server_url)
    started = time.monotonic()
    event = await first_event(OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id="batch_missing",
                                                 poll_interval=5, timeout=60, first_poll_spread=0))
    assert time.monotonic() - started < 2, "a permanent 404 must not be retried"
    assert event["event"] == "error" and event["status_code"] == 404
    assert event["error_type"] == "NotFoundError"


@pytest.mark.parametrize(("mode", "kinds"), [("unknown_status", {"timeout"}), ("html", {"error", "timeout"}),
                                             ("azure", {"timeout"}), ("silent", {"timeout"})])
async def test_a_hostile_server_ends_the_wait_with_an_event_never_an_exception(use_server, mode: str,
                                                                               kinds: set[str]) -> None:
    from batch_ops.server.hostile import serve_hostile

    with serve_hostile(mode) as hostile:
        use_server(hostile.url)
        started = time.monotonic()
        event = await first_event(OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id="batch_1",
                                                     poll_interval=0.2, timeout=2, first_poll_spread=0))
    assert event["event"] in kinds, event
    assert time.monotonic() - started < 4.5, "the trigger's deadline holds whatever the server does"


async def test_missing_connection_is_an_error_event(monkeypatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    event = await first_event(OpenAIBatchTrigger(conn_id="no_such_conn", batch_id="b", poll_interval=1,
                                                 first_poll_spread=0))
    assert event["event"] == "error" and "no_such_conn" in event["message"]


async def test_transient_failures_are_tolerated_until_the_server_is_back(make_server, use_server) -> None:
    with make_server(concurrency=1, request_latency=0.1) as url:
        batch_id = submit(url, n=3)
        url.kill()
        use_server(url, max_retries=0)  # every failed poll reaches the poller at once
        trigger = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=0.3,
                                     timeout=60, first_poll_spread=0)
        task = asyncio.ensure_future(first_event(trigger))
        await asyncio.sleep(0.4)
        assert not task.done(), "a refused connection is transient: keep polling"
        await asyncio.to_thread(url.restart)
        event = await asyncio.wait_for(task, 30)
    assert event["event"] == "terminal" and event["status"] == "completed"


async def test_a_long_run_of_failures_ends_the_wait(make_server, use_server) -> None:
    with make_server() as url:
        batch_id = submit(url, n=1)
        url.kill()
        use_server(url, max_retries=0)
        started = time.monotonic()
        event = await asyncio.wait_for(
            first_event(OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=0.05,
                                           timeout=60, first_poll_spread=0)),
            30,
        )
    # No HTTP response at all (the aiohttp transport reports a refused connection as a timeout).
    assert event["event"] == "error" and event["error_type"] in ("APIConnectionError", "APITimeoutError")
    assert event["status_code"] is None
    assert time.monotonic() - started < 10


async def test_deadline_is_kept_when_the_trigger_is_recreated(make_server, use_server) -> None:
    with make_server(concurrency=1, request_latency=0.5) as url:
        use_server(url)
        batch_id = submit(url, n=20)
        original = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=0.1,
                                      timeout=1.5, first_poll_spread=0)
        _, kwargs = original.serialize()
        await asyncio.sleep(0.8)  # the triggerer restarts...
        started = time.monotonic()
        event = await first_event(OpenAIBatchTrigger(**kwargs))  # ...and re-creates the trigger
        waited = time.monotonic() - started
    assert event["event"] == "timeout" and event["deadline"] == kwargs["deadline"]
    assert event["status"] == "in_progress" and "Timed out" in event["message"]
    assert waited < 1.2, f"the resumed trigger waited {waited:.2f}s: it restarted its budget"


async def test_first_polls_are_spread_over_one_interval(server_url, use_server) -> None:
    use_server(server_url)
    batch_id = submit(server_url, n=1)
    BatchClient(api_key="sk", base_url=server_url).batches.wait(batch_id, poll_interval=0.05)

    async def fired_at(trigger: OpenAIBatchTrigger) -> float:
        await first_event(trigger)
        return time.monotonic()

    started = time.monotonic()
    times = await asyncio.gather(*(
        fired_at(OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=batch_id, poll_interval=2.0))
        for _ in range(40)
    ))
    offsets = sorted(t - started for t in times)
    assert offsets[-1] - offsets[0] > 1.0, f"40 first polls within {offsets[-1] - offsets[0]:.2f}s"
    assert offsets[-1] < 3.0


async def test_polling_never_blocks_the_event_loop(make_server, use_server) -> None:
    with make_server(latency=0.2, concurrency=1, request_latency=1.0) as url:
        use_server(url)
        batch_id = submit(url, n=30)
        # The pooled client is built once per connection and event loop (it loads CA
        # certificates); what must never stall is the polling itself.
        await OpenAIBatchHook().get_async_client(shared=True)
        triggers = [
            asyncio.ensure_future(first_event(OpenAIBatchTrigger(
                conn_id="openai_batch_default", batch_id=batch_id, poll_interval=0.1, max_poll_interval=0.1,
                timeout=60,
            )))
            for _ in range(20)
        ]
        worst = 0.0
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            before = time.monotonic()
            await asyncio.sleep(0.01)
            worst = max(worst, time.monotonic() - before - 0.01)
        for task in triggers:
            task.cancel()
        await asyncio.gather(*triggers, return_exceptions=True)
    # 20 triggers x 5 polls/s, each answered after 200 ms: a blocking client would stall >= 200 ms.
    assert worst < 0.1, f"event loop stalled {worst * 1000:.0f} ms"


async def test_triggers_of_one_connection_share_one_client(server_url, use_server) -> None:
    use_server(server_url)
    hook = OpenAIBatchHook()
    assert await hook.get_async_client(shared=True) is await hook.get_async_client(shared=True)


async def test_on_kill_cancels_the_batch_only_when_asked(make_server, use_server, oracle) -> None:
    with make_server(concurrency=1, request_latency=0.5) as url:
        use_server(url)
        kept, cancelled = submit(url, n=10), submit(url, n=10)
        await OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=kept, cancel_on_kill=False).on_kill()
        await OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=cancelled, cancel_on_kill=True).on_kill()
        client = oracle(url)
        assert client.batches.retrieve(kept).status in ("validating", "in_progress")
        assert client.batches.retrieve(cancelled).status in ("cancelling", "cancelled")


async def test_a_wrong_key_fails_fast_without_showing_the_key(make_server, use_server, api_key: str) -> None:
    with make_server(api_key="sk-the-right-one") as url:
        use_server(url)  # connects with the canary key, which this server refuses
        event = await first_event(OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id="batch_x",
                                                     poll_interval=5, first_poll_spread=0))
    assert event["event"] == "error" and event["status_code"] == 401
    assert api_key not in json.dumps(event)


_FREEZE_PROBE = """
import asyncio, gc, sys
from batch_ops.airflow import OpenAIBatchTrigger

async def main():
    trigger = OpenAIBatchTrigger(conn_id="openai_batch_default", batch_id=sys.argv[1], poll_interval=0.1,
                                 timeout=30, first_poll_spread=0)
    async for event in trigger.run():
        return event.payload["status"]

before = gc.get_freeze_count()
status = asyncio.run(main())
print(status, before, gc.get_freeze_count())
"""


@pytest.mark.parametrize("setting", [None, "False"])
def test_the_triggerer_heap_is_frozen_once_unless_turned_off(setting, server_url, use_server, monkeypatch) -> None:
    # Full GC passes over Airflow's import-time objects stalled the loop 150-200 ms each
    # (bench_triggers.py); a process of its own, since gc.freeze() is process-wide.
    use_server(server_url)
    batch_id = submit(server_url, n=2)
    if setting is None:
        monkeypatch.delenv("AIRFLOW__BATCH_OPS__TRIGGERER_GC_FREEZE", raising=False)
    else:
        monkeypatch.setenv("AIRFLOW__BATCH_OPS__TRIGGERER_GC_FREEZE", setting)
    out = subprocess.run([sys.executable, "-c", _FREEZE_PROBE, batch_id], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    status, before, after = out.stdout.split()[-3:]
    assert status == "completed" and before == "0"
    if setting is None:
        assert int(after) > 10_000, "the import-time heap (Airflow's modules) should be frozen"
    else:
        assert after == "0"
