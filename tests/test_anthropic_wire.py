"""The local server speaks Anthropic's Message Batches API; the official ``anthropic`` SDK is the judge.

Every call of ``client.messages.batches`` (create, retrieve, list with both cursors, cancel, delete,
results), sync and async, runs end to end against ``batch-ops serve``, and what comes back is read
by the SDK's own types. The same faults as OpenAI's wire apply: failed requests come back
``errored``, an expiry ``expired``, a cancel ``canceled``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import anthropic
import httpx
import pytest

MakeServer = Callable[..., AbstractContextManager[Any]]
KEY = "sk-ant-local"


def _root(url: str) -> str:
    return url.removesuffix("/v1")


def _sdk(url: str, *, retries: int = 0) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key=KEY, base_url=_root(url), max_retries=retries, timeout=30)


def _requests(n: int, *, prefix: str = "q", models: tuple[str, ...] = ("claude-a", "claude-b")) -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}",
             "params": {"model": models[i % len(models)], "max_tokens": 64, "system": "answer",
                        "messages": [{"role": "user", "content": f"question {i}"}]}} for i in range(n)]


def _ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 20.0) -> Any:
    end = time.monotonic() + timeout
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < end, f"{batch_id} did not end: {batch}"
        time.sleep(0.1)


def test_sdk_runs_every_batch_call(make_server: MakeServer) -> None:
    with make_server(api_key=KEY) as url:
        client = _sdk(url)
        created = client.messages.batches.create(requests=_requests(5))  # type: ignore[arg-type]
        assert created.id.startswith("msgbatch_") and created.type == "message_batch"
        assert created.processing_status == "in_progress" and created.results_url is None
        assert created.request_counts.processing == 5 and created.request_counts.succeeded == 0
        assert created.expires_at.timestamp() - created.created_at.timestamp() == pytest.approx(86400, abs=2)
        batch = _ended(client, created.id)
        assert batch.request_counts.succeeded == 5 and batch.request_counts.processing == 0
        assert batch.results_url and batch.ended_at is not None and batch.cancel_initiated_at is None
        results = {r.custom_id: r for r in client.messages.batches.results(created.id)}
        assert set(results) == {f"q-{i}" for i in range(5)}
        first = results["q-1"].result
        assert first.type == "succeeded"
        assert first.message.content[0].text == "question 1"  # type: ignore[union-attr]
        assert first.message.model == "claude-b" and first.message.usage.output_tokens > 0
        # Newest first; both cursors; the auto-pager follows last_id.
        more = [client.messages.batches.create(requests=_requests(1, prefix=f"b{i}")).id  # type: ignore[arg-type]
                for i in range(3)]
        page = client.messages.batches.list(limit=2)
        assert [b.id for b in page.data] == [more[2], more[1]] and page.has_more
        assert page.last_id == more[1]
        assert [b.id for b in client.messages.batches.list(limit=20)] == [*reversed(more), created.id]
        older = client.messages.batches.list(limit=2, after_id=more[1])
        assert [b.id for b in older.data] == [more[0], created.id] and not older.has_more
        newer = client.messages.batches.list(limit=1, before_id=more[0])
        assert [b.id for b in newer.data] == [more[1]] and newer.has_more
        _ended(client, more[2])
        deleted = client.messages.batches.delete(created.id)
        assert deleted.id == created.id and deleted.type == "message_batch_deleted"
        with pytest.raises(anthropic.NotFoundError):
            client.messages.batches.retrieve(created.id)


def test_cancel_then_delete(make_server: MakeServer) -> None:
    with make_server(api_key=KEY, concurrency=1, request_latency=0.05, cancel_delay=0.3) as url:
        client = _sdk(url)
        created = client.messages.batches.create(requests=_requests(40))  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
            client.messages.batches.delete(created.id)
        cancelling = client.messages.batches.cancel(created.id)
        assert cancelling.processing_status == "canceling" and cancelling.cancel_initiated_at is not None
        assert cancelling.request_counts.processing == 40 and cancelling.request_counts.canceled == 0
        batch = _ended(client, created.id)
        counts = batch.request_counts
        assert counts.canceled > 0 and counts.succeeded + counts.canceled == 40
        kinds = [r.result.type for r in client.messages.batches.results(created.id)]
        assert kinds.count("canceled") == counts.canceled and kinds.count("succeeded") == counts.succeeded
        assert client.messages.batches.delete(created.id).type == "message_batch_deleted"


def test_faults_errored_and_expired(make_server: MakeServer) -> None:
    with make_server(api_key=KEY, fail_requests=0.5, seed=3) as url:
        client = _sdk(url)
        batch = _ended(client, client.messages.batches.create(requests=_requests(20)).id)  # type: ignore[arg-type]
        counts = batch.request_counts
        assert counts.errored > 0 and counts.succeeded > 0 and counts.succeeded + counts.errored == 20
        errored = [r.result for r in client.messages.batches.results(batch.id) if r.result.type == "errored"]
        assert len(errored) == counts.errored
        assert errored[0].error.error.type == "api_error"  # type: ignore[union-attr]
    with make_server(api_key=KEY, expire_after=0.5, concurrency=1, request_latency=0.2) as url:
        client = _sdk(url)
        batch = _ended(client, client.messages.batches.create(requests=_requests(20)).id)  # type: ignore[arg-type]
        assert batch.request_counts.expired > 0
        kinds = [r.result.type for r in client.messages.batches.results(batch.id)]
        assert kinds.count("expired") == batch.request_counts.expired


def test_async_sdk(make_server: MakeServer) -> None:
    async def run(url: str) -> None:
        client = anthropic.AsyncAnthropic(api_key=KEY, base_url=_root(url), max_retries=0, timeout=30)
        created = await client.messages.batches.create(requests=_requests(3))  # type: ignore[arg-type]
        for _ in range(200):
            if (await client.messages.batches.retrieve(created.id)).processing_status == "ended":
                break
            await asyncio.sleep(0.1)
        ids = [b.id async for b in client.messages.batches.list(limit=1)]
        assert ids == [created.id]
        results = [r async for r in await client.messages.batches.results(created.id)]
        assert sorted(r.custom_id for r in results) == ["q-0", "q-1", "q-2"]
        assert (await client.messages.batches.delete(created.id)).id == created.id
        await client.close()

    with make_server(api_key=KEY) as url:
        asyncio.run(run(url))


@pytest.mark.parametrize(("requests", "message"), [
    ([{"custom_id": "a:b", "params": {}}], "requests.0.custom_id: String should match pattern"),
    ([{"custom_id": "x" * 65, "params": {}}], "requests.0.custom_id"),
    (_requests(1) + _requests(1), "requests.1.custom_id: Duplicate custom_id"),
    ([{"custom_id": "a", "params": {"model": "m", "messages": [{"role": "user", "content": "x"}]}}],
     "max_tokens"),
    ([], "at least 1 item"),
])
def test_create_refused_like_anthropic(server_url: str, requests: list[Any], message: str) -> None:
    answer = httpx.post(f"{server_url}/messages/batches", json={"requests": requests},
                        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"})
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]


def test_auth_and_version(make_server: MakeServer) -> None:
    with make_server(api_key=KEY) as url:
        base = f"{url}/messages/batches"
        no_key = httpx.get(base, headers={"anthropic-version": "2023-06-01"})
        assert no_key.status_code == 401 and no_key.json()["error"]["type"] == "authentication_error"
        wrong = httpx.get(base, headers={"x-api-key": "nope", "anthropic-version": "2023-06-01"})
        assert wrong.status_code == 401 and "nope" not in wrong.text
        no_version = httpx.get(base, headers={"x-api-key": KEY})
        assert no_version.status_code == 400 and "anthropic-version" in no_version.json()["error"]["message"]
        assert httpx.get(base, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}).status_code == 200
        # OpenAI's list does not show Anthropic's batches.
        _sdk(url).messages.batches.create(requests=_requests(1))  # type: ignore[arg-type]
        openai_list = httpx.get(f"{url}/batches", headers={"Authorization": f"Bearer {KEY}"})
        assert openai_list.json()["data"] == []


def test_big_body_streamed(server_url: str) -> None:
    # 20,000 requests (~3.5 MB): read as a stream, checked request by request.
    answer = httpx.post(f"{server_url}/messages/batches", json={"requests": _requests(20_000)},
                        headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["request_counts"]["processing"] == 20_000


def test_body_over_256_mb_refused_before_it_is_read(server_url: str) -> None:
    host, port = server_url.removeprefix("http://").removesuffix("/v1").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v1/messages/batches HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n"
                     b"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                     b"content-length: 300000000\r\n\r\n{\"requests\": [")
        answer = b""
        while b"request_too_large" not in answer and (chunk := sock.recv(65536)):  # headers and body may split
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413") and b"request_too_large" in answer


def test_refused_batch_and_overloaded_create(make_server: MakeServer) -> None:
    with make_server(api_key=KEY, token_limit_failures=1, create_failures=1) as url:
        client = _sdk(url)
        with pytest.raises(anthropic.APIStatusError) as caught:  # --create-failures: 529, nothing created
            client.messages.batches.create(requests=_requests(2))  # type: ignore[arg-type]
        assert caught.value.status_code == 529 and not client.messages.batches.list().data
        # --token-limit-failures: the whole batch refused: it ends with every request errored.
        batch = _ended(client, client.messages.batches.create(requests=_requests(3)).id)  # type: ignore[arg-type]
        assert batch.request_counts.errored == 3 and batch.request_counts.succeeded == 0
        kinds = {r.result.error.error.type for r in client.messages.batches.results(batch.id)}  # type: ignore[union-attr]
        assert kinds == {"rate_limit_error"}
