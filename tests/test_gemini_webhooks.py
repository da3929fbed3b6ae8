"""Gemini's batch webhooks: the local server sends ``batch.succeeded`` / ``batch.failed`` / ``batch.expired``
for Gemini batches (signed as Standard Webhooks, as Gemini signs its static webhooks), ``batch-ops
webhooks serve`` verifies them at ``/gemini``, and a wait on a Gemini batch wakes on its event."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx

from batch_ops import AsyncBatchClient, ClientSettings
from batch_ops.server.background import serve_in_background

KEY = "gemini-local-key"


def _requests(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"key": f"k{i}", "request": {
        "contents": [{"role": "user", "parts": [{"text": f"q{i}"}]}]}}) + "\n" for i in range(n)))
    return path


def test_a_gemini_wait_wakes_on_its_webhook(receiver: Any, webhook_secret: str, tmp_path: Path) -> None:
    hook = f"{receiver.base}/gemini"
    with serve_in_background(api_key=KEY, webhook_urls=[hook], webhook_secret=webhook_secret, request_latency=1.0,
                             token_limit_failures=1) as url:
        settings = ClientSettings(api_key=KEY, provider="gemini", base_url=str(url).removesuffix("/v1") + "/v1beta",
                                  events_url=receiver.events_url)

        async def main() -> tuple[Any, Any, float]:
            client = AsyncBatchClient.shared(settings)
            failed = await client.submit(_requests(tmp_path / "a.jsonl", 2), endpoint="gemini-2.5-flash")
            ok = await client.submit(_requests(tmp_path / "b.jsonl", 2), endpoint="gemini-2.5-flash")
            started = time.monotonic()
            # A 10-minute poll interval: only the webhook can end these waits in seconds.
            try:
                one, two = await asyncio.wait_for(asyncio.gather(client.batches.wait(failed.id, poll_interval=600),
                                                                 client.batches.wait(ok.id, poll_interval=600)), 20)
            except asyncio.TimeoutError:
                raise AssertionError("the waits did not wake on the webhooks within 20 s") from None
            return one, two, time.monotonic() - started

        failed, ok, took = asyncio.run(main())
        assert failed.status.value == "failed" and ok.status.value == "completed"
        assert took < 15, f"the waits took {took:.1f} s: they polled instead of waking on the webhooks"
        events = {e["batch_id"]: e["type"] for e in receiver.events()}
        assert events == {failed.id: "batch.failed", ok.id: "batch.succeeded"}
        assert receiver.counts().get("rejected", 0) == 0
        polls = httpx.get(f"{str(url).removesuffix('/v1')}/healthz").json()["calls"]
        assert polls.get("GET /v1beta/batches/{id}", 0) <= 4, polls  # a first and a final look per wait
