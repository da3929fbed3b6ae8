"""``run_batch`` and the tasks against the local Batch API server: every way a batch can end."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from prefect import flow

from batch_ops import (
    AsyncBatchClient,
    BatchCancelledError,
    BatchExpiredError,
    BatchFailedError,
    BatchStatus,
    BatchTimeoutError,
    InputValidationError,
    RequestFailuresError,
)
from batch_ops.prefect import (
    BatchResult,
    OpenAIBatchCredentials,
    cancel_batch,
    create_batch,
    download_batch_file,
    run_batch,
    upload_batch_file,
    wait_for_batch,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENDPOINT = "/v1/chat/completions"
FIELDS = {"batch_id", "status", "input_file_id", "output_file_id", "error_file_id", "request_counts", "usage",
          "batch_ids", "chain_request_counts", "chain_usage", "estimate", "cost"}


def creds(url: str, secret: str) -> OpenAIBatchCredentials:
    return OpenAIBatchCredentials(api_key=secret, base_url=url)


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_success_from_a_file_returns_the_result_and_the_output_downloads(
    batch_server: str, secret: str, make_requests: Any, tmp_path: Path
) -> None:
    requests_file = tmp_path / "requests.jsonl"
    requests_file.write_text("".join(json.dumps({**r, "method": "POST", "url": ENDPOINT}) + "\n"
                                     for r in make_requests(5)))
    credentials = creds(batch_server, secret)

    result = await run_batch(input_path=str(requests_file), endpoint=ENDPOINT, credentials=credentials,
                             poll_interval=0.1)

    assert isinstance(result, BatchResult)
    assert set(result.model_dump()) == FIELDS
    assert result.status is BatchStatus.COMPLETED
    assert result.request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}
    assert result.output_file_id and result.error_file_id is None
    assert result.usage is not None and result.usage.total_tokens > 0
    out = await download_batch_file(result.output_file_id, tmp_path / "out.jsonl", credentials=credentials)
    assert sorted(line["custom_id"] for line in jsonl(out)) == [f"q-{i}" for i in range(5)]


async def test_partial_failure_returns_the_error_file_unless_asked_to_fail(
    faulty_server: str, secret: str, make_requests: Any
) -> None:
    credentials = creds(faulty_server, secret)

    result = await run_batch(requests=make_requests(20), endpoint=ENDPOINT, credentials=credentials,
                             poll_interval=0.1)

    assert result.status is BatchStatus.COMPLETED
    counts = result.request_counts
    assert counts.total == 20 and counts.failed > 0 and counts.completed + counts.failed == 20
    assert result.output_file_id and result.error_file_id
    with pytest.raises(RequestFailuresError, match="requests failed"):
        await run_batch(requests=make_requests(20), endpoint=ENDPOINT, credentials=credentials, poll_interval=0.1,
                        fail_on_request_failures=True)


async def test_invalid_requests_fail_before_anything_is_uploaded(
    batch_server: str, secret: str, make_requests: Any
) -> None:
    duplicate = [*make_requests(3), make_requests(1)[0]]  # line 4 repeats custom_id q-0
    async with AsyncBatchClient(api_key=secret, base_url=batch_server) as client:
        files_before = len((await client.files.list()).data)

        with pytest.raises(InputValidationError) as info:
            await run_batch(requests=duplicate, endpoint=ENDPOINT, credentials=creds(batch_server, secret))

        assert "line 4" in str(info.value) and "duplicate_custom_id" in str(info.value)
        assert len((await client.files.list()).data) == files_before


async def test_a_missing_input_file_fails_as_bad_input_naming_the_fix(batch_server: str, secret: str,
                                                                      tmp_path: Path) -> None:
    # Found by the bad-input drill: upload_batch_file raised a bare FileNotFoundError.
    with pytest.raises(InputValidationError, match="path: file_not_found") as info:
        await run_batch(input_path=tmp_path / "missing.jsonl", endpoint=ENDPOINT,
                        credentials=creds(batch_server, secret))
    assert "missing.jsonl" in str(info.value) and "fix:" in str(info.value)


async def test_a_batch_the_api_fails_raises_with_the_reason_or_returns_when_allowed(
    batch_server: str, secret: str, make_requests: Any, tmp_path: Path, events: Any
) -> None:
    # Two models in one file: the API's own validation fails the batch (our client would refuse
    # to upload it, so it goes up through the raw files endpoint).
    lines = make_requests(2)
    lines[1] = {**lines[1], "body": {**lines[1]["body"], "model": "gpt-4o"}}
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({**r, "method": "POST", "url": ENDPOINT}) + "\n" for r in lines))
    async with AsyncBatchClient(api_key=secret, base_url=batch_server) as client:
        file_id = (await client.files.upload(path)).id
    credentials = creds(batch_server, secret)

    @flow
    async def create_and_wait(fail_on: list[str] | None) -> BatchResult:
        batch = await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials)
        if fail_on is None:
            return await wait_for_batch(batch.batch_id, credentials=credentials, poll_interval=0.1)
        return await wait_for_batch(batch.batch_id, credentials=credentials, poll_interval=0.1, fail_on=fail_on)

    with pytest.raises(BatchFailedError, match="model_mismatch") as info:
        await create_and_wait(None)
    result = await create_and_wait([])
    assert result.status is BatchStatus.FAILED and result.output_file_id is None

    assert info.value.batch is not None
    [event] = await events(name="batch_ops.batch.failed", resource_id=f"openai.batch.{info.value.batch.id}")
    assert event.payload["errors"][0]["code"] == "model_mismatch" and event.payload["status"] == "failed"


async def test_expired_batch_keeps_its_partial_output(
    expiring_server: str, secret: str, make_requests: Any, events: Any
) -> None:
    credentials = creds(expiring_server, secret)

    with pytest.raises(BatchExpiredError) as info:
        await run_batch(requests=make_requests(12), endpoint=ENDPOINT, credentials=credentials, poll_interval=0.1)
    assert info.value.batch is not None and info.value.batch.output_file_id  # the id travels with the error
    assert info.value.batch.output_file_id in str(info.value)

    result = await run_batch(requests=make_requests(12), endpoint=ENDPOINT, credentials=credentials,
                             poll_interval=0.1, fail_on=["failed"])
    assert result.status is BatchStatus.EXPIRED
    assert result.output_file_id and result.error_file_id
    assert 0 < result.request_counts.completed < 12
    [event] = await events(name="batch_ops.batch.expired", resource_id=f"openai.batch.{result.batch_id}")
    assert event.payload["output_file_id"] == result.output_file_id


async def test_a_batch_cancelled_while_awaited_ends_the_flow_as_cancelled(
    slow_server: str, secret: str, make_requests: Any, events: Any
) -> None:
    credentials = creds(slow_server, secret)
    marker = {"test": f"cancelled-{time.time_ns()}"}

    async def cancel_it_on_the_api() -> None:
        # Someone cancels the batch elsewhere (the OpenAI dashboard) while the flow waits.
        async with AsyncBatchClient(api_key=secret, base_url=slow_server) as client:
            while True:
                page = await client.batches.list(limit=20)
                mine = [b for b in page.data if (b.metadata or {}).get("test") == marker["test"]]
                if mine:
                    await client.batches.cancel(mine[0].id)
                    return
                await asyncio.sleep(0.05)

    flow_run = run_batch(requests=make_requests(4), endpoint=ENDPOINT, credentials=credentials, metadata=marker,
                         poll_interval=0.1)
    outcome, _ = await asyncio.gather(flow_run, cancel_it_on_the_api(), return_exceptions=True)

    assert isinstance(outcome, BatchCancelledError)
    assert outcome.batch is not None and outcome.batch.status is BatchStatus.CANCELLED
    [event] = await events(name="batch_ops.batch.cancelled", resource_id=f"openai.batch.{outcome.batch.id}")
    assert event.payload["batch_id"] == outcome.batch.id


async def test_cancel_batch_task_then_wait_returns_the_cancelled_batch(
    slow_server: str, secret: str, make_requests: Any
) -> None:
    credentials = creds(slow_server, secret)

    @flow
    async def start_then_cancel() -> tuple[BatchResult, BatchResult]:
        file_id = await upload_batch_file(make_requests(3), endpoint=ENDPOINT, credentials=credentials)
        batch = await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials)
        requested = await cancel_batch(batch.batch_id, credentials=credentials)
        final = await wait_for_batch(batch.batch_id, credentials=credentials, poll_interval=0.1, fail_on=[])
        return requested, final

    requested, final = await start_then_cancel()

    assert requested.status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
    assert final.status is BatchStatus.CANCELLED and final.batch_id == requested.batch_id


async def test_timeout_raises_in_time_and_leaves_the_batch_running(
    make_server: Any, secret: str, make_requests: Any
) -> None:
    # A server of its own whose batch runs a minute: the shared slow server's batch (2-3 s) could end
    # between the timeout and the check under a loaded full run (seen once).
    with make_server(api_key=secret, request_latency=60.0, concurrency=256) as url:
        await _timeout_leaves_the_batch_running(creds(url, secret), url, secret, make_requests)


async def _timeout_leaves_the_batch_running(credentials: Any, url: str, secret: str, make_requests: Any) -> None:
    @flow
    async def wait_briefly() -> BatchResult:
        file_id = await upload_batch_file(make_requests(2), endpoint=ENDPOINT, credentials=credentials)
        batch = await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials)
        return await wait_for_batch(batch.batch_id, credentials=credentials, poll_interval=0.1, timeout=0.5)

    with pytest.raises(BatchTimeoutError) as info:
        await wait_briefly()

    assert info.value.batch is not None
    async with AsyncBatchClient(api_key=secret, base_url=url) as client:
        assert not (await client.batches.retrieve(info.value.batch.id)).status.is_terminal
