"""Batch webhooks end to end: the local server signs and sends them, ``batch-ops webhooks serve``
verifies them, and async waits wake on them through one shared subscription.

All over real HTTP on loopback: the receiver runs as the user runs it (the CLI, a subprocess).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from batch_ops import AsyncBatchClient, ClientSettings
from batch_ops.server.background import free_port
from batch_ops.webhooks.verify import sign

CHAT = "/v1/chat/completions"


def _body(event_id: str = "evt_test1", batch_id: str = "batch_abc") -> str:
    return json.dumps({"id": event_id, "object": "event", "created_at": int(time.time()), "type": "batch.completed",
                       "data": {"id": batch_id}})


def test_receiver_verifies_signatures_and_rejects_replays(receiver: Any, webhook_secret: str) -> None:
    body = _body()
    good = sign(webhook_secret, "evt_test1", body)
    other_secret = "whsec_" + "b3RoZXItc2VjcmV0LW9mLXRoaXJ0eS10d28tYnl0ZXM="

    def post(content: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(receiver.hook_url, content=content, headers={**headers, "content-type": "application/json"})

    assert post(body, good).status_code == 200
    tampered = post(body.replace("batch_abc", "batch_xyz"), good)
    assert tampered.status_code == 400 and tampered.json()["error"] == "signature"
    assert post(body, sign(other_secret, "evt_test1", body)).json()["error"] == "signature"
    stale = post(body, sign(webhook_secret, "evt_test1", body, at=time.time() - 600))
    assert stale.status_code == 400 and stale.json()["error"] == "timestamp"
    assert post(body, {}).json()["error"] == "headers"
    replay = post(body, good)  # OpenAI retrying a delivery whose answer it missed, or an attacker
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    assert [e["batch_id"] for e in receiver.events()] == ["batch_abc"], "handed on once"
    assert receiver.counts() == {"accepted": 1, "rejected": 4, "duplicate": 1}


async def _timed_wait(client: AsyncBatchClient, batch_id: str, **kw: Any) -> tuple[Any, float]:
    started = time.monotonic()
    batch = await client.batches.wait(batch_id, **kw)
    return batch, time.monotonic() - started


def _requests(tmp_path: Path, n: int = 4) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"custom_id": f"r{i}", "method": "POST", "url": CHAT, "body": {
        "model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(n)))
    return path


def test_waits_wake_on_the_webhook_not_the_poll(make_server: Callable[..., Any], receiver: Any,
                                                webhook_secret: str, tmp_path: Path) -> None:
    """Five batches ending one after another, each waited for with a 10-minute poll interval: each
    wait ends within 2 s of its batch's end, after two polls (the first and the final one), all
    five through one subscription."""
    with make_server(webhook_urls=[receiver.hook_url], webhook_secret=webhook_secret, request_latency=0.5,
                     concurrency=1) as url:
        settings = ClientSettings(base_url=str(url), api_key="sk-local-dev-7f3a", events_url=receiver.events_url)

        async def waited(client: AsyncBatchClient, batch_id: str) -> tuple[Any, float]:
            batch = await client.batches.wait(batch_id, poll_interval=600)
            return batch, time.time()

        async def main() -> list[tuple[Any, float]]:
            client = AsyncBatchClient.shared(settings)
            batches = [await client.submit(_requests(tmp_path, 2), endpoint=CHAT) for _ in range(5)]
            return await asyncio.gather(*(waited(client, b.id) for b in batches))

        results = asyncio.run(main())
        for batch, returned in results:
            assert batch.status == "completed"
            # completed_at is whole seconds: up to 1 s earlier than the real end.
            assert returned - batch.completed_at < 3.0, f"woke {returned - batch.completed_at:.1f} s after the end"
        assert receiver.counts()["accepted"] == 5
        calls = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()["calls"]
        assert calls["GET /v1/batches/{id}"] <= 2 * 5, calls


def test_a_lost_webhook_still_ends_the_wait_by_the_safety_poll(make_server: Callable[..., Any], receiver: Any,
                                                               webhook_secret: str, tmp_path: Path) -> None:
    with make_server(webhook_urls=[receiver.hook_url], webhook_secret=webhook_secret, webhook_drop=1.0,
                     request_latency=0.2) as url:
        settings = ClientSettings(base_url=str(url), api_key="sk-local-dev-7f3a", events_url=receiver.events_url,
                                  safety_poll_interval=3)

        async def main() -> tuple[Any, float]:
            client = AsyncBatchClient.shared(settings)
            batch = await client.submit(_requests(tmp_path), endpoint=CHAT)
            return await _timed_wait(client, batch.id, poll_interval=600)

        batch, waited = asyncio.run(main())
        assert batch.status == "completed" and 2.5 <= waited < 15, waited
        assert receiver.counts().get("accepted", 0) == 0


def test_an_unreachable_receiver_falls_back_to_ordinary_polling(make_server: Callable[..., Any],
                                                                tmp_path: Path) -> None:
    with make_server(request_latency=0.2) as url:
        settings = ClientSettings(base_url=str(url), api_key="sk-local-dev-7f3a",
                                  events_url=f"http://127.0.0.1:{free_port()}/events")

        async def main() -> tuple[Any, float]:
            client = AsyncBatchClient.shared(settings)
            batch = await client.submit(_requests(tmp_path), endpoint=CHAT)
            return await _timed_wait(client, batch.id, poll_interval=0.5)

        batch, waited = asyncio.run(main())
        assert batch.status == "completed" and waited < 30, waited


def test_a_fifth_of_the_webhooks_lost_still_ends_every_wait(make_server: Callable[..., Any], receiver: Any,
                                                            webhook_secret: str, tmp_path: Path) -> None:
    """20 batches, a fifth of their webhooks dropped (seeded): every wait ends, the woken ones within
    seconds, the others at their safety poll."""
    with make_server(webhook_urls=[receiver.hook_url], webhook_secret=webhook_secret, webhook_drop=0.2, seed=5,
                     request_latency=1.0, concurrency=20) as url:
        settings = ClientSettings(base_url=str(url), api_key="sk-local-dev-7f3a", events_url=receiver.events_url,
                                  safety_poll_interval=6)

        async def main() -> list[tuple[Any, float]]:
            client = AsyncBatchClient.shared(settings)
            waits = []
            for _ in range(20):  # each wait starts as soon as its batch exists, before it ends (1 s)
                batch = await client.submit(_requests(tmp_path, 1), endpoint=CHAT)
                waits.append(asyncio.create_task(_timed_wait(client, batch.id, poll_interval=600)))
            return await asyncio.gather(*waits)

        results = asyncio.run(main())
        health = httpx.get(str(url).removesuffix("/v1") + "/healthz").json()
    assert all(batch.status == "completed" for batch, _ in results)
    dropped = health["webhooks"].get("dropped", 0)
    assert 1 <= dropped <= 10 and health["webhooks"]["delivered"] == 20 - dropped, health["webhooks"]
    slow = [waited for _, waited in results if waited > 5]
    # The waits whose webhook was lost ended at the safety poll (6 s, jittered +-10%), no later;
    # the others within seconds of their batch's end.
    assert len(slow) == dropped and all(w < 20 for w in slow), ([round(w, 1) for _, w in results], dropped)
