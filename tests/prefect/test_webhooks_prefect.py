"""Batch webhooks in Prefect: ``wait_for_batch`` wakes on the event, and the receiver's
``--prefect`` turns each webhook into a Prefect event that automations act on, once.

The receiver runs as users run it (``batch-ops webhooks serve --prefect``, a subprocess) against
the session's real Prefect server; the local Batch API server sends it real signed webhooks.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL

from batch_ops.prefect import OpenAIBatchCredentials, create_batch, upload_batch_file, wait_for_batch
from batch_ops.prefect.events import event_id
from batch_ops.server import serve_in_background
from batch_ops.server.background import free_port

SECRET = "sk-test-9f2c7d41e0b8a6c35d17-secret"  # tests/prefect/conftest.py's server key
ENDPOINT = "/v1/chat/completions"


@pytest.fixture
def server_port() -> int:
    return free_port()


@pytest.fixture
def prefect_receiver(webhook_secret: str, server_port: int) -> Iterator[str]:
    """``batch-ops webhooks serve --prefect`` pointed at the session's Prefect server, retrieving
    batches from the local server that will run on ``server_port``; its base URL."""
    port = free_port()
    env = {**os.environ, "OPENAI_WEBHOOK_SECRET": webhook_secret, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
           "OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": f"http://127.0.0.1:{server_port}/v1"}
    proc = subprocess.Popen([sys.executable, "-m", "batch_ops.cli", "webhooks", "serve", "--port", str(port),
                             "--prefect"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stdout.read()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        assert proc.stdout is not None
        output = proc.stdout.read()
        assert "Traceback" not in output and SECRET not in output, output[-3000:]


async def test_wait_for_batch_wakes_on_the_webhook_and_prefect_gets_one_event(
        prefect_receiver: str, server_port: int, webhook_secret: str, make_requests: Any, events: Any) -> None:
    from prefect.automations import Automation, DoNothing, EventTrigger

    with serve_in_background(api_key=SECRET, request_latency=1.0, concurrency=1, port=server_port,
                             webhook_urls=[f"{prefect_receiver}/openai"], webhook_secret=webhook_secret) as url:
        credentials = OpenAIBatchCredentials(api_key=SECRET, base_url=url, events_url=f"{prefect_receiver}/events")
        automation = await Automation(
            name=f"on-batch-completed-{time.time_ns()}",
            trigger=EventTrigger(expect={"batch_ops.batch.completed"}, match={"prefect.resource.id": "openai.batch.*"},
                                 posture="Reactive", threshold=1),
            actions=[DoNothing()],
        ).acreate()

        @flow
        async def one_batch() -> tuple[Any, float]:
            file_id = await upload_batch_file(make_requests(4), endpoint=ENDPOINT, credentials=credentials)
            created = await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials)
            started = time.monotonic()
            result = await wait_for_batch(created.batch_id, credentials=credentials, poll_interval=3600)
            return result, time.monotonic() - started

        result, waited = await one_batch()
        async with httpx.AsyncClient() as http:
            calls = (await http.get(str(url).removesuffix("/v1") + "/healthz")).json()["calls"]
    assert result.status == "completed"
    # Four requests of 1 s: the batch ends ~4 s after creation; a poll every hour would miss it.
    assert waited < 30, f"wait_for_batch took {waited:.1f} s"
    # At most two polls by the wait (its first, its last) and the receiver's one retrieve for the
    # Prefect event's payload.
    assert calls["GET /v1/batches/{id}"] <= 2 + 1, calls
    # Both the receiver and wait_for_batch announced the ending, with the same event id: one event.
    resource = f"openai.batch.{result.batch_id}"
    stored = await events(name="batch_ops.batch.completed", resource_id=resource, expect=2, timeout=10)
    assert [e.id for e in stored] == [event_id(result.batch_id, "completed")]
    assert stored[0].payload["output_file_id"] == result.output_file_id
    # An automation on that event fired once.
    async with get_client() as client:
        fired: list[Any] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not fired:
            page = await client.read_events(limit=50)
            fired = [e for e in page.events if e.event == "prefect.automation.triggered"
                     and e.resource.id == f"prefect.automation.{automation.id}"]
            await asyncio.sleep(0.5)
        await asyncio.sleep(2)  # a duplicate would fire now
        page = await client.read_events(limit=50)  # a new default window, which ends now
        fired = [e for e in page.events if e.event == "prefect.automation.triggered"
                 and e.resource.id == f"prefect.automation.{automation.id}"]
        assert len(fired) == 1, [e.event for e in page.events]
        await client.delete_automation(automation.id)


async def test_the_receiver_alone_announces_a_batch_nobody_waits_for(
        prefect_receiver: str, server_port: int, webhook_secret: str, make_requests: Any, events: Any) -> None:
    from batch_ops import AsyncBatchClient

    with serve_in_background(api_key=SECRET, request_latency=0.2, port=server_port,
                             webhook_urls=[f"{prefect_receiver}/openai"], webhook_secret=webhook_secret) as url:
        credentials = OpenAIBatchCredentials(api_key=SECRET, base_url=url)
        # A batch nobody waits for (created outside Prefect): only the receiver can announce it.
        async with AsyncBatchClient(settings=credentials.get_settings()) as plain:
            unwatched = await plain.submit(make_requests(2), endpoint=ENDPOINT)
        # Read while the server runs: it sends the webhook when the batch ends, ~2 s from now.
        alone = await events(name="batch_ops.batch.completed", resource_id=f"openai.batch.{unwatched.id}")
    # The receiver retrieved the batch (OPENAI_API_KEY): the full payload, as wait_for_batch sends it.
    assert [e.id for e in alone] == [event_id(unwatched.id, "completed")] and alone[0].payload["output_file_id"]
