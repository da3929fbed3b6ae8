"""BatchClient and AsyncBatchClient against the local server, over real HTTP on loopback.

The official ``openai`` SDK is the independent judge: it must read what we wrote, and read
the same batch we read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from batch_ops import (
    AsyncBatchClient,
    AuthenticationError,
    Batch,
    BatchClient,
    BatchStatus,
    BatchTimeoutError,
    ConfigurationError,
    InputValidationError,
    NotFoundError,
    RateLimitError,
)
from batch_ops import client as client_module
from batch_ops.identity.keys import IDEMPOTENCY_METADATA_KEY

CHAT = "/v1/chat/completions"
MakeServer = Callable[..., AbstractContextManager[str]]


def chat_requests(n: int, *, prefix: str = "q") -> list[dict[str, Any]]:
    return [
        {"custom_id": f"{prefix}-{i}", "body": {"model": "gpt-4o-mini",
                                                "messages": [{"role": "user", "content": f"question {i}"}]}}
        for i in range(n)
    ]


def write_jsonl(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def sdk(url: str, key: str = "local") -> openai.OpenAI:
    return openai.OpenAI(api_key=key, base_url=url, max_retries=10)


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retries and polls sleep for real, but at most 20 ms; the asked-for delays are recorded."""
    import time

    asked: list[float] = []
    real_sleep = time.sleep

    def short(seconds: float) -> None:
        asked.append(seconds)
        real_sleep(min(seconds, 0.02))

    monkeypatch.setattr(client_module, "_sleep", short)
    return asked


@pytest.fixture
def quiet_server(make_server: MakeServer) -> Iterator[str]:
    with make_server(request_latency=0.001) as url:
        yield url


def test_lifecycle_submit_wait_results_in_input_order(quiet_server: str) -> None:
    reqs = chat_requests(30)
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        batch = client.submit(reqs, endpoint=CHAT, metadata={"job": "t"})
        assert batch.status in (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS)
        assert batch.metadata is not None and batch.metadata["job"] == "t"
        assert IDEMPOTENCY_METADATA_KEY in batch.metadata
        seen: list[str] = []
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60, on_poll=lambda b: seen.append(b.status))
        assert done.status is BatchStatus.COMPLETED
        assert seen[-1] is BatchStatus.COMPLETED
        assert done.request_counts.model_dump() == {"total": 30, "completed": 30, "failed": 0}
        assert done.output_file_id and done.error_file_id is None
        assert done.usage is not None and done.usage.total_tokens > 0
        results = list(client.results(done))
    assert [r.custom_id for r in results] == [r["custom_id"] for r in reqs]
    assert all(r.ok for r in results)
    assert "question 7" in results[7].body["choices"][0]["message"]["content"]


def test_sdk_and_our_client_read_the_same_batch(quiet_server: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": r["custom_id"], "method": "POST", "url": CHAT, "body": r["body"]} for r in chat_requests(5)
    ])
    oracle = sdk(quiet_server)
    uploaded = oracle.files.create(file=path.open("rb"), purpose="batch")
    created = oracle.batches.create(input_file_id=uploaded.id, endpoint=CHAT, completion_window="24h",
                                    metadata={"who": "sdk"})
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        ours = client.batches.wait(created.id, poll_interval=0.05, timeout=60)
        theirs = oracle.batches.retrieve(created.id)
        assert ours.model_dump(mode="json", exclude_none=True, exclude={"usage", "errors"}) == {
            k: v for k, v in theirs.model_dump(mode="json", exclude_none=True).items()
            if k in Batch.model_fields and k not in {"usage", "errors"}
        }
        assert ours.usage is not None and theirs.usage is not None
        assert ours.usage.total_tokens == theirs.usage.total_tokens
        # Our download and the SDK's content are byte-identical.
        ours_path = client.files.download(ours.output_file_id or "", tmp_path / "out.jsonl")
        assert ours_path.read_bytes() == oracle.files.content(theirs.output_file_id or "").read()
        # And a batch we created reads back through the SDK.
        mine = client.submit(chat_requests(3, prefix="m"), endpoint=CHAT)
        assert oracle.batches.retrieve(mine.id).input_file_id == mine.input_file_id


async def test_async_client_lifecycle(quiet_server: str) -> None:
    async with AsyncBatchClient(api_key="local", base_url=quiet_server) as client:
        batch = await client.submit(chat_requests(12), endpoint=CHAT)
        polls: list[Batch] = []

        async def on_poll(b: Batch) -> None:
            polls.append(b)

        done = await client.batches.wait(batch.id, poll_interval=0.05, timeout=60, on_poll=on_poll)
        assert done.status is BatchStatus.COMPLETED and polls[-1].id == batch.id
        ids = [r.custom_id async for r in client.results(done)]
        assert ids == [f"q-{i}" for i in range(12)]
        page = await client.batches.list(limit=1)
        assert page.data[0].id == batch.id
        newest = [b.id async for b in client.batches.iter_all(limit=1)]
        assert newest[0] == batch.id and len(newest) >= 1


def test_list_pages_and_iter_all(quiet_server: str) -> None:
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        made = [client.submit(chat_requests(1, prefix=f"p{i}"), endpoint=CHAT).id for i in range(5)]
        first = client.batches.list(limit=2)
        assert first.has_more and [b.id for b in first.data] == made[::-1][:2]
        assert first.last_id == made[-2]
        second = client.batches.list(limit=2, after=first.last_id)
        assert [b.id for b in second.data] == made[::-1][2:4]
        everything = [b.id for b in client.batches.iter_all(limit=2)]
        assert everything[:5] == made[::-1]


def test_files_retrieve_download_delete(quiet_server: str, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}}
    ])
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        f = client.files.upload(path)
        assert (f.purpose, f.bytes, f.filename) == ("batch", path.stat().st_size, "r.jsonl")
        assert client.files.retrieve(f.id).id == f.id
        out = client.files.download(f.id, tmp_path / "sub" / "copy.jsonl")
        assert out.read_bytes() == path.read_bytes()
        assert not [p for p in out.parent.iterdir() if p.name.endswith(".part")]
        assert client.files.delete(f.id) is True
        with pytest.raises(NotFoundError):
            client.files.retrieve(f.id)
        with pytest.raises(NotFoundError, match=r"(?i)no such|not found"):
            client.files.download(f.id, tmp_path / "gone.jsonl")
        assert not (tmp_path / "gone.jsonl").exists()


def test_cancel_keeps_partial_work_and_accounts_for_the_rest(make_server: MakeServer) -> None:
    with make_server(request_latency=0.05) as url, BatchClient(api_key="local", base_url=url) as client:
        batch = client.submit(chat_requests(200), endpoint=CHAT)
        cancelling = client.batches.cancel(batch.id)
        assert cancelling.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
        done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
        assert done.status is BatchStatus.CANCELLED and done.cancelled_at is not None
        results = list(client.results(done))
    assert len(results) == 200
    codes = {r.error_code for r in results if not r.ok}
    assert codes <= {"batch_cancelled"}
    assert sum(r.ok for r in results) == done.request_counts.completed


def test_wait_times_out_with_the_batch_still_running(make_server: MakeServer) -> None:
    with make_server(request_latency=1.0) as url, BatchClient(api_key="local", base_url=url) as client:
        batch = client.submit(chat_requests(20), endpoint=CHAT)
        with pytest.raises(BatchTimeoutError, match="keeps running") as info:
            client.batches.wait(batch.id, poll_interval=0.05, timeout=0.3)
        assert info.value.batch is not None and not info.value.batch.is_terminal
        client.batches.cancel(batch.id)


def test_wrong_key_and_unknown_ids_fail_fast_with_the_servers_message(make_server: MakeServer) -> None:
    with make_server(api_key="sk-right") as url:
        with BatchClient(api_key="sk-wrong", base_url=url) as bad:
            with pytest.raises(AuthenticationError) as info:
                bad.batches.list()
            assert "sk-wrong" not in str(info.value) and "sk-right" not in str(info.value)
        with BatchClient(api_key="sk-right", base_url=url) as good:
            with pytest.raises(NotFoundError, match="batch_nope"):
                good.batches.retrieve("batch_nope")


def test_submit_with_a_key_is_safe_to_repeat(quiet_server: str) -> None:
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        before = len(client.files.list(purpose="batch").data)
        first = client.submit(chat_requests(3), endpoint=CHAT, idempotency_key="dag.task.run.0")
        again = client.submit(chat_requests(3), endpoint=CHAT, idempotency_key="dag.task.run.0")
        assert again.id == first.id
        assert len(client.files.list(purpose="batch").data) == before + 1  # the repeat uploaded nothing
        same = client.batches.create(input_file_id=first.input_file_id, endpoint=CHAT,
                                     idempotency_key="dag.task.run.0")
        assert same.id == first.id


# --- bad input: a clear error, and nothing uploaded -------------------------------------------


def _bad_file(tmp: Path, case: str) -> Path:
    good = {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}}
    lines = {
        "malformed": ['{"custom_id": "a", "method": "POST",'],
        "duplicate": [json.dumps(good), json.dumps(good)],
        "url_mismatch": [json.dumps({**good, "url": "/v1/embeddings"})],
    }[case]
    path = tmp / f"{case}.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("case", "needle"),
    [("malformed", "line 1: invalid_json_line"), ("duplicate", "line 2: duplicate_custom_id"),
     ("url_mismatch", "line 1: url_mismatch")],
)
def test_bad_files_upload_nothing(quiet_server: str, tmp_path: Path, case: str, needle: str) -> None:
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        before = len(client.files.list().data)
        with pytest.raises(InputValidationError, match=needle) as info:
            client.submit(_bad_file(tmp_path, case), endpoint=CHAT)
        assert "fix:" in str(info.value)
        assert len(client.files.list().data) == before


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"endpoint": "/v1/chat"}, "unsupported endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "17 metadata pairs"),
        ({"metadata": {"k" * 65: "v"}}, "65 characters"),
        ({"metadata": {"k": "v" * 513}}, "513 characters"),
        ({"output_expires_after": {"anchor": "created_at", "seconds": 100}}, "3600"),
    ],
)
def test_bad_parameters_upload_nothing(quiet_server: str, kwargs: dict[str, Any], needle: str) -> None:
    params: dict[str, Any] = {"endpoint": CHAT, **kwargs}
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        before = len(client.files.list().data)
        with pytest.raises(InputValidationError, match=needle):
            client.submit(chat_requests(2), **params)
        assert len(client.files.list().data) == before


def test_a_missing_request_file_is_bad_input_and_uploads_nothing(quiet_server: str, tmp_path: Path) -> None:
    # Found by the bad-input drill: submit() let a bare FileNotFoundError out of the error tree, so
    # the Airflow operator retried it and the message named no fix.
    with BatchClient(api_key="local", base_url=quiet_server) as client:
        before = len(client.files.list().data)
        with pytest.raises(InputValidationError, match="path: file_not_found") as info:
            client.submit(tmp_path / "missing.jsonl", endpoint=CHAT)
        assert "missing.jsonl" in str(info.value) and "fix:" in str(info.value)
        assert len(client.files.list().data) == before


@pytest.mark.parametrize("client_cls", [BatchClient, AsyncBatchClient])
def test_a_malformed_base_url_is_a_configuration_error(client_cls: Any) -> None:
    # Found by the bad-input drill: pydantic's ValidationError escaped the error tree (and its text
    # echoes input values). An override of given settings was not validated at all.
    from batch_ops import ClientSettings

    with pytest.raises(ConfigurationError, match=r"base_url.*must start with http"):
        client_cls(api_key="sk-local", base_url="ftp://127.0.0.1/v1")
    with pytest.raises(ConfigurationError, match=r"base_url.*must start with http"):
        client_cls(settings=ClientSettings(api_key="sk-local"), base_url="ftp://127.0.0.1/v1")


def test_a_shared_client_is_closed_when_its_event_loop_ends() -> None:
    # Found by the Airflow faults drill: `airflow dags test` runs each trigger in an event loop of its
    # own, and every loop's shared client was left open ("Unclosed client session" at exit).
    import asyncio

    from batch_ops import ClientSettings

    settings = ClientSettings(api_key="sk-local", base_url="http://127.0.0.1:9/v1")

    async def borrow() -> AsyncBatchClient:
        client = AsyncBatchClient.shared(settings)
        assert AsyncBatchClient.shared(settings) is client  # one per loop and settings
        return client

    first, second = asyncio.run(borrow()), asyncio.run(borrow())
    assert first is not second
    assert first._http.is_closed and second._http.is_closed


def test_no_api_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_API_KEY"):
        BatchClient(base_url="http://127.0.0.1:9/v1")


@pytest.mark.parametrize("limit", [0, 101])
def test_list_limit_is_checked_before_any_request(limit: int) -> None:
    # Port 9 (discard) is closed here: a request would fail with a connection error instead.
    with BatchClient(api_key="k", base_url="http://127.0.0.1:9/v1") as client:
        with pytest.raises(InputValidationError, match="limit"):
            client.batches.list(limit=limit)


# --- retries: faults injected by the server, exactly one batch created ------------------------


@pytest.mark.parametrize("fault", [{"http_429": 0.4}, {"http_500": 0.4}, {"drop": 0.4}])
def test_retries_through_faults_create_exactly_one_batch(
    make_server: MakeServer, no_sleep: list[float], fault: dict[str, float]
) -> None:
    with make_server(request_latency=0.001, seed=3, **fault) as url:
        with BatchClient(api_key="local", base_url=url) as client:
            batch = client.submit(chat_requests(10), endpoint=CHAT)
            done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
            results = list(client.results(done))
        assert done.status is BatchStatus.COMPLETED
        assert len(results) == 10 and all(r.ok for r in results)
        assert no_sleep, "the faults should have caused at least one retry"
        batches = list(sdk(url).batches.list(limit=100))
        assert [b.id for b in batches] == [batch.id]


def test_retry_after_is_honoured(make_server: MakeServer, no_sleep: list[float]) -> None:
    with make_server(http_429=1.0, retry_after=0.2) as url:
        with BatchClient(api_key="local", base_url=url) as client, pytest.raises(RateLimitError):
            client.batches.list()
    assert no_sleep and all(abs(s - 0.2) < 1e-9 for s in no_sleep)
    assert len(no_sleep) == client.retry_policy.max_retries


def test_lost_create_responses_never_bill_a_second_batch(make_server: MakeServer, no_sleep: list[float],
                                                         tmp_path: Path) -> None:
    """Half of the injected drops lose the response *after* the server created the batch: the
    client must find that batch by its idempotency key instead of creating another."""
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}}])
    with make_server(drop=0.5, seed=21) as url:
        with BatchClient(api_key="local", base_url=url) as client:
            file_id = client.files.upload(path).id
            created = [client.batches.create(input_file_id=file_id, endpoint=CHAT).id for _ in range(12)]
        on_server = [b.id for b in sdk(url).batches.list(limit=100)]
    assert len(set(created)) == 12
    assert sorted(on_server) == sorted(created)


@pytest.fixture
def no_async_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    real = client_module._async_sleep

    async def short(seconds: float) -> None:
        await real(min(seconds, 0.02))

    monkeypatch.setattr(client_module, "_async_sleep", short)


async def test_lost_create_responses_never_bill_twice_with_the_async_transport(
    make_server: MakeServer, no_async_sleep: None, tmp_path: Path
) -> None:
    """The aiohttp transport reports a connection dropped after the request as ConnectTimeout;
    it must still count as "may have been created" and be looked up before any re-send."""
    path = write_jsonl(tmp_path / "in.jsonl", [
        {"custom_id": "a", "method": "POST", "url": CHAT, "body": {"model": "m", "messages": []}}])
    with make_server(drop=0.5, seed=21) as url:
        async with AsyncBatchClient(api_key="local", base_url=url) as client:
            file_id = (await client.files.upload(path)).id
            created = [(await client.batches.create(input_file_id=file_id, endpoint=CHAT)).id for _ in range(12)]
        on_server = [b.id for b in sdk(url).batches.list(limit=100)]
    assert len(set(created)) == 12
    assert sorted(on_server) == sorted(created)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_gzip_answers_are_decoded_downloads_included(kind: str, make_server: MakeServer, tmp_path: Path) -> None:
    """A server (or proxy) may gzip any answer; a download must still hold the file's bytes."""

    async def run_async(url: str) -> tuple[Batch, Path, list[Any]]:
        async with AsyncBatchClient(api_key="local", base_url=url) as aclient:
            batch = await aclient.submit(chat_requests(20), endpoint=CHAT)
            done = await aclient.batches.wait(batch.id, poll_interval=0.05, timeout=60)
            path = await aclient.files.download(done.output_file_id or "", tmp_path / "out.jsonl")
            return done, path, [r async for r in aclient.results(done)]

    with make_server(gzip=True) as url:
        oracle = sdk(url)
        if kind == "sync":
            with BatchClient(api_key="local", base_url=url) as client:
                batch = client.submit(chat_requests(20), endpoint=CHAT)
                done = client.batches.wait(batch.id, poll_interval=0.05, timeout=60)
                path = client.files.download(done.output_file_id or "", tmp_path / "out.jsonl")
                results = list(client.results(done))
        else:
            done, path, results = asyncio.run(run_async(url))
        # The server did compress (the file is well over gzip's 500-byte threshold) ...
        raw = httpx.get(f"{url}/files/{done.output_file_id}/content", headers={"Accept-Encoding": "gzip"})
        assert raw.headers["content-encoding"] == "gzip"
        # ... and what we saved is what the SDK reads.
        assert path.read_bytes() == oracle.files.content(done.output_file_id or "").read()
    assert [r.custom_id for r in results] == [f"q-{i}" for i in range(20)]
    assert all(r.ok for r in results)
