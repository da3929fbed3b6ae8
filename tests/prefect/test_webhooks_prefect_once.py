"""A batch ends once in Prefect too: OpenAI's late retry, after the receiver restarted, is not emitted again.

Prefect stores an event id once, but its automations forget the ids they acted on after 30 minutes
and OpenAI retries for 72 hours; so the receiver's ``--prefect`` looks for the ending's event
before it emits. Real processes: ``batch-ops webhooks serve --prefect`` against the session's
Prefect server, stopped and started again, with signed deliveries over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
from prefect.settings import PREFECT_API_URL

from batch_ops.prefect.events import event_id
from batch_ops.server.background import free_port
from batch_ops.webhooks.verify import sign


@contextlib.contextmanager
def prefect_receiver(secret: str, output: list[str]) -> Iterator[str]:
    """``batch-ops webhooks serve --prefect`` (no OpenAI key: events carry id and status); what it
    wrote is appended to ``output`` when it stops."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY")}
    env.update({"OPENAI_WEBHOOK_SECRET": secret, "PREFECT_API_URL": str(PREFECT_API_URL.value()),
                "PREFECT_LOGGING_LEVEL": "INFO"})
    proc = subprocess.Popen([sys.executable, "-c", _RUN, str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on" in line, line + proc.stdout.read()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        output.append(proc.communicate(timeout=15)[0])


#: The CLI, with batch_ops's INFO log lines shown (the command itself logs warnings only).
_RUN = """
import logging, sys
logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s %(message)s")
logging.getLogger("batch_ops").setLevel(logging.INFO)
from batch_ops.cli import main
sys.exit(main(["webhooks", "serve", "--port", sys.argv[1], "--prefect"]))
"""


def accepted(base: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/healthz").json()["counts"].get("accepted"):
            return True
        time.sleep(0.1)
    return False


def deliver(base: str, secret: str, evt: str, batch_id: str) -> dict[str, Any]:
    body = json.dumps({"id": evt, "object": "event", "created_at": int(time.time()), "type": "batch.completed",
                       "data": {"id": batch_id}})
    answer = httpx.post(f"{base}/openai", content=body, headers=sign(secret, evt, body), timeout=30)
    answer.raise_for_status()
    return dict(answer.json())


async def test_a_late_retry_after_a_receiver_restart_is_not_emitted_again(webhook_secret: str, events: Any) -> None:
    batch_id = f"batch_once_{time.time_ns()}"
    resource = f"openai.batch.{batch_id}"
    first: list[str] = []
    with prefect_receiver(webhook_secret, first) as base:
        assert await asyncio.to_thread(deliver, base, webhook_secret, "evt_once", batch_id) == {"ok": True}
        stored = await events(name="batch_ops.batch.completed", resource_id=resource, expect=1, timeout=30)
        assert [e.id for e in stored] == [event_id(batch_id, "completed")]
    # Restarted, the receiver has forgotten the ending; OpenAI retries the delivery (signed anew).
    second: list[str] = []
    with prefect_receiver(webhook_secret, second) as base:
        assert await asyncio.to_thread(deliver, base, webhook_secret, "evt_once", batch_id) == {"ok": True}
        assert await asyncio.to_thread(accepted, base)  # published: a new receiver has not seen it
        await asyncio.sleep(3)  # the forwarder runs after the answer
    assert "already announced in Prefect" not in first[0], first[0][-2000:]
    assert f"batch {batch_id} completed is already announced in Prefect" in second[0], second[0][-3000:]
    assert "Traceback" not in first[0] + second[0]
    assert len(await events(name="batch_ops.batch.completed", resource_id=resource, expect=2, timeout=3)) == 1
