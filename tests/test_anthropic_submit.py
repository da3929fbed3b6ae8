"""Anthropic through our own client: the dialect, the inline create (no file store) and the money rules.

Against the local server's ``/v1/messages/batches`` (whose wire the ``anthropic`` SDK judges in
test_anthropic_wire.py): bad input is refused before any create; a retry after a failed or an
expired batch carries only the requests without a success; results come back in OpenAI's line
shape with Anthropic's line under ``raw``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest

from batch_ops import AsyncBatchClient, BatchClient, ClientSettings, Source, SubmitSpec
from batch_ops.errors import BatchOpsError, InputValidationError
from batch_ops.models import BatchStatus

MakeServer = Callable[..., AbstractContextManager[Any]]
MESSAGES = "/v1/messages"


def requests(n: int, *, prefix: str = "q") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}-{i}", "params": {"model": f"claude-{i % 2}", "max_tokens": 32,
                                                        "messages": [{"role": "user", "content": f"say {i}"}]}}
            for i in range(n)]


def settings(url: str, tmp_path: Path, **more: Any) -> ClientSettings:
    return ClientSettings(api_key="sk-ant-test", base_url=url, provider="anthropic",
                          key_ledger=str(tmp_path / "ledger"), backoff_initial=0.05, backoff_max=0.2, **more)


def server_batches(url: str) -> list[dict[str, Any]]:
    """Every Anthropic batch the server holds, newest first (straight from the wire)."""
    page = httpx.get(f"{url}/messages/batches", params={"limit": 1000},
                     headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).json()
    return list(page["data"])


def creates(url: str) -> int:
    return int(httpx.get(url.removesuffix("/v1") + "/healthz").json()["calls"].get("POST /v1/messages/batches", 0))


def test_dialect_over_the_wire(server_url: str, tmp_path: Path) -> None:
    with BatchClient(settings=settings(server_url, tmp_path)) as client:
        sub = client.submit_spec(requests(4), SubmitSpec(endpoint=MESSAGES))
        assert sub.created and sub.carried == 4 and sub.batch.id.startswith("msgbatch_")
        assert sub.batch.status is BatchStatus.IN_PROGRESS and sub.batch.request_counts.total == 4
        assert client.batches.retrieve(sub.batch.id).id == sub.batch.id
        assert sub.batch.id in [b.id for b in client.batches.list(limit=100).data]
        done = client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=30)
        assert done.status is BatchStatus.COMPLETED and done.request_counts.completed == 4
        assert done.completed_at is not None and done.created_at > 0
        results = {r.custom_id: r for r in client.results(done)}
        assert set(results) == {"q-0", "q-1", "q-2", "q-3"}
        line = results["q-3"]
        assert line.ok and line.body["content"][0]["text"] == "say 3" and line.body["model"] == "claude-1"
        assert line.raw is not None and line.raw["result"]["type"] == "succeeded"


def test_async_client(server_url: str, tmp_path: Path) -> None:
    async def run() -> None:
        client = AsyncBatchClient(settings=settings(server_url, tmp_path))
        try:
            sub = await client.submit_spec(requests(3), SubmitSpec(endpoint=MESSAGES, idempotency_key="async-1"))
            done = await client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=30)
            assert done.status is BatchStatus.COMPLETED
            assert sorted([r.custom_id async for r in client.results(done)]) == ["q-0", "q-1", "q-2"]
            again = await client.submit_spec(requests(3), SubmitSpec(endpoint=MESSAGES, idempotency_key="async-1"))
            assert not again.created and again.batch.id == sub.batch.id
        finally:
            await client.close()

    asyncio.run(run())


def test_cancel(make_server: MakeServer, tmp_path: Path) -> None:
    with make_server(concurrency=1, request_latency=0.05) as url, BatchClient(settings=settings(url, tmp_path)) as c:
        sub = c.submit_spec(requests(40), SubmitSpec(endpoint=MESSAGES))
        assert c.batches.cancel(sub.batch.id).status is BatchStatus.CANCELLING
        ended = c.batches.wait(sub.batch.id, poll_interval=0.1, timeout=30)
        assert ended.status is BatchStatus.CANCELLED and ended.cancelling_at is not None
        errors = [r for r in c.results(ended) if not r.ok]
        assert errors and all(r.error_code == "batch_cancelled" for r in errors)


@pytest.mark.parametrize(("lines", "rule"), [
    ([{"custom_id": "has:colon", "params": {"model": "m", "max_tokens": 1, "messages": []}}], "invalid_custom_id"),
    ([{"custom_id": "x" * 65, "params": {"model": "m", "max_tokens": 1, "messages": []}}], "invalid_custom_id"),
    (requests(1) + requests(1), "duplicate_custom_id"),
    ([{"custom_id": "a", "body": {"model": "m"}}], "missing_body"),
])
def test_bad_input_refused_before_any_create(server_url: str, tmp_path: Path, lines: list[Any], rule: str) -> None:
    before = creates(server_url)
    with BatchClient(settings=settings(server_url, tmp_path)) as client:
        with pytest.raises(InputValidationError) as caught:
            client.submit_spec(lines, SubmitSpec(endpoint=MESSAGES, idempotency_key="bad-input"))
    assert rule in [p.rule for p in caught.value.problems]
    assert creates(server_url) == before


def test_parameters_and_sources_refused(server_url: str, tmp_path: Path) -> None:
    with BatchClient(settings=settings(server_url, tmp_path)) as client:
        with pytest.raises(InputValidationError, match="endpoint='/v1/messages'"):
            client.submit_spec(requests(1), SubmitSpec(endpoint="/v1/chat/completions"))
        with pytest.raises(InputValidationError, match="keep no uploaded files"):
            client.submit_spec(Source(file_id="file-abc"), SubmitSpec(endpoint=MESSAGES))


def test_default_base_url_is_the_providers() -> None:
    assert ClientSettings(api_key="k", provider="anthropic").base_url == "https://api.anthropic.com/v1"
    assert ClientSettings(api_key="k").base_url == "https://api.openai.com/v1"


def _paid(url: str) -> tuple[int, int]:
    """(requests carried by every batch, successes across them) as the server counts them."""
    batches = server_batches(url)
    carried = sum(sum(b["request_counts"].values()) for b in batches)
    return carried, sum(b["request_counts"]["succeeded"] for b in batches)


def test_retry_after_expired_pays_only_for_what_did_not_succeed(make_server: MakeServer, tmp_path: Path) -> None:
    spec = SubmitSpec.of(endpoint=MESSAGES, idempotency_key="expiring", fail_on=["expired", "failed"])
    with make_server(expire_after=1.0, concurrency=1, request_latency=0.15) as url, \
            BatchClient(settings=settings(url, tmp_path)) as client:
        carried = []
        for _ in range(8):
            sub = client.submit_spec(requests(12), spec)
            if sub.satisfied or not sub.created:
                break
            carried.append(sub.carried)
            client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=30)
        assert carried[0] == 12 and len(carried) >= 2 and carried == sorted(carried, reverse=True)
        sent, succeeded = _paid(url)
        assert succeeded == 12 and sent == sum(carried)  # every request succeeded once, never twice
        final = client.submit_spec(requests(12), spec)
        joined = {r.custom_id: r for r in client.results(final.chain)}
        assert len(joined) == 12 and all(r.ok for r in joined.values())
        chain = client.batches.chain("expiring")  # from the key ledger: no batch carries the key
        assert chain.batch_ids == final.chain.batch_ids and len(chain.attempts) == len(carried)


def test_retry_after_failed_carries_every_request_again(make_server: MakeServer, tmp_path: Path) -> None:
    data = tmp_path / "server"
    spec = SubmitSpec.of(endpoint=MESSAGES, idempotency_key="failing", fail_on=["failed"])
    with make_server(data_dir=str(data), fail_requests=1.0) as url, \
            BatchClient(settings=settings(url, tmp_path)) as client:
        first = client.submit_spec(requests(5), spec)
        assert client.batches.wait(first.batch.id, poll_interval=0.1, timeout=30).status is BatchStatus.FAILED
    with make_server(data_dir=str(data), fail_requests=0.4, seed=5) as url, \
            BatchClient(settings=settings(url, tmp_path)) as client:
        second = client.submit_spec(requests(5), spec)
        assert second.created and second.carried == 5 and second.step.number == 1
        ended = client.batches.wait(second.batch.id, poll_interval=0.1, timeout=30)
        assert 0 < ended.request_counts.completed < 5  # some errored: a partial success
        third = client.submit_spec(requests(5), SubmitSpec.of(endpoint=MESSAGES, idempotency_key="failing",
                                                              fail_on=["failed"], fail_on_request_failures=True))
        assert third.created and third.carried == 5 - ended.request_counts.completed
        done = client.batches.wait(third.batch.id, poll_interval=0.1, timeout=30)
        _, succeeded = _paid(url)
        assert succeeded == ended.request_counts.completed + done.request_counts.completed
        assert not set(r.custom_id for r in client.results(ended) if r.ok) & \
            set(r.custom_id for r in client.results(done) if r.ok)


def test_lost_answers_are_found_not_resent(make_server: MakeServer, tmp_path: Path,
                                           caplog: pytest.LogCaptureFixture) -> None:
    # Calls are dropped at random, half of them after the server did the work (the answer is lost): a
    # create whose answer is lost is found by the ledger's rule (its size, its time, claimed by no key),
    # never sent again.
    with make_server(drop=0.35, seed=11) as url, \
            BatchClient(settings=settings(url, tmp_path, max_retries=20)) as client:
        made = [client.submit_spec(requests(2 + i, prefix=f"r{i}"), SubmitSpec(endpoint=MESSAGES,
                                   idempotency_key=f"lossy-{i}")).batch.id for i in range(8)]
        posts = creates(url)
        data_dir = Path(url.data_dir)
        url.stop()
        with sqlite3.connect(data_dir / "state.sqlite3") as db:  # the server's own record, read after it stopped
            on_server = sorted(r[0] for r in db.execute("SELECT id FROM batches WHERE id LIKE 'msgbatch%'"))
    assert on_server == sorted(set(made))  # one batch per submit
    lost = [r for r in caplog.records if "POST /messages/batches failed" in r.getMessage()]
    assert lost and posts <= 8 + len(lost)  # creates failed on the wire; none made a second batch
    records = [json.loads(p.read_text()) for p in (tmp_path / "ledger").glob("*.json")]
    assert sorted(e["batch_id"] for r in records for e in r["attempts"].values()) == sorted(made)


def test_airflow_connection_without_host_takes_the_providers_root(monkeypatch: pytest.MonkeyPatch) -> None:
    from batch_ops.airflow import OpenAIBatchHook

    monkeypatch.setenv("AIRFLOW_CONN_CLAUDE", json.dumps({
        "conn_type": "openaibatch", "host": "", "password": "sk-ant-1",
        "extra": {"provider": "anthropic", "key_ledger": "s3://bucket/ledger"}}))
    found = OpenAIBatchHook(conn_id="claude").get_settings()
    assert found.base_url == "https://api.anthropic.com/v1" and found.key_ledger == "s3://bucket/ledger"
    assert found.dialect.name == "anthropic"


def test_a_refused_create_leaves_no_intent(make_server: MakeServer, tmp_path: Path) -> None:
    with make_server(api_key="sk-ant-right") as url, BatchClient(settings=settings(url, tmp_path)) as client:
        with pytest.raises(BatchOpsError, match=r"401|invalid x-api-key"):
            client.submit_spec(requests(2), SubmitSpec(endpoint=MESSAGES, idempotency_key="refused"))
    records = [json.loads(p.read_text()) for p in (tmp_path / "ledger").glob("*.json")]
    assert all(not r["attempts"] for r in records)  # the intent was dropped: nothing can be lost


def test_the_key_goes_to_a_results_url_only_on_the_apis_origin(tmp_path: Path) -> None:
    from batch_ops.dialects import ANTHROPIC

    with BatchClient(settings=settings("https://api.anthropic.com/v1", tmp_path)) as client:
        own = ANTHROPIC.download_file("https://api.anthropic.com/v1/messages/batches/b/results", tmp_path / "a")
        foreign = ANTHROPIC.download_file("https://storage.example/b/results?sig=1", tmp_path / "b")
        assert client._driver.headers(own)["x-api-key"] == "sk-ant-test"
        assert "x-api-key" not in client._driver.headers(foreign)
        assert client._driver.headers(foreign)["anthropic-version"] == "2023-06-01"


def test_a_recorded_batch_deleted_since_is_said_not_paid_again(server_url: str, tmp_path: Path) -> None:
    with BatchClient(settings=settings(server_url, tmp_path)) as client:
        sub = client.submit_spec(requests(2), SubmitSpec(endpoint=MESSAGES, idempotency_key="deleted-later"))
        client.batches.wait(sub.batch.id, poll_interval=0.1, timeout=30)
        httpx.delete(f"{server_url}/messages/batches/{sub.batch.id}",
                     headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}).raise_for_status()
        before = creates(server_url)
        with pytest.raises(BatchOpsError, match="no longer has") as caught:
            client.submit_spec(requests(2), SubmitSpec(endpoint=MESSAGES, idempotency_key="deleted-later"))
        assert sub.batch.id in str(caught.value) and creates(server_url) == before
