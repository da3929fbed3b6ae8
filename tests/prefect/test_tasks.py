"""The tasks composed in flows: many batches awaited at once, sync flows, retries that do not bill twice."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext

from batch_ops import AsyncBatchClient, BatchStatus
from batch_ops.prefect import (
    BatchResult,
    OpenAIBatchCredentials,
    create_batch,
    run_batch,
    upload_batch_file,
    wait_for_batch,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENDPOINT = "/v1/chat/completions"


@flow
async def batches_in_one_flow(n: int, credentials: OpenAIBatchCredentials, requests: list[dict[str, Any]]
                              ) -> tuple[list[BatchResult], float]:
    """Submit n batches, then await them all at once; returns the results and the seconds from the
    creates to the last batch's end (a create includes its reconcile look, ~1 s)."""
    file_ids = await asyncio.gather(*(upload_batch_file(requests, endpoint=ENDPOINT, credentials=credentials)
                                      for _ in range(n)))
    started = time.monotonic()
    created = await asyncio.gather(*(create_batch(f, endpoint=ENDPOINT, credentials=credentials) for f in file_ids))
    results = await asyncio.gather(*(wait_for_batch(b.batch_id, credentials=credentials, poll_interval=0.1,
                                                    max_poll_interval=0.25) for b in created))
    return list(results), time.monotonic() - started


async def test_ten_batches_awaited_in_one_flow_take_about_the_time_of_one(
    slow_server: str, secret: str, make_requests: Any
) -> None:
    # Each batch takes ~2 s on the server (request_latency=2, all requests in parallel): awaiting
    # ten one after the other would take ~20 s, awaiting them concurrently ~2 s.
    credentials = OpenAIBatchCredentials(api_key=secret, base_url=slow_server)
    requests = make_requests(2)

    t0 = time.monotonic()
    one, one_wait = await batches_in_one_flow(1, credentials, requests)
    one_total = time.monotonic() - t0
    t0 = time.monotonic()
    ten, ten_wait = await batches_in_one_flow(10, credentials, requests)
    ten_total = time.monotonic() - t0

    print(f"\n1 batch: flow {one_total:.2f} s (awaiting {one_wait:.2f} s); "
          f"10 batches: flow {ten_total:.2f} s (awaiting {ten_wait:.2f} s)")
    assert [r.status for r in one + ten] == [BatchStatus.COMPLETED] * 11
    assert len({r.batch_id for r in ten}) == 10
    assert one_wait >= 1.5  # the batch really took its ~2 s
    assert ten_wait < 2 * one_wait, "ten waits should overlap, not queue"
    assert ten_total < 3 * one_total


async def _batches_of_flow_run(url: str, secret: str, flow_run_id: str) -> list[Any]:
    async with AsyncBatchClient(api_key=secret, base_url=url) as client:
        return [b async for b in client.batches.iter_all()
                if (b.metadata or {}).get("prefect_flow_run_id") == flow_run_id]


async def test_a_retried_create_batch_task_reattaches_instead_of_creating_a_second_batch(
    batch_server: str, secret: str, make_requests: Any, drop_proxy: Any
) -> None:
    async with drop_proxy(batch_server, drop_creates=1).running() as proxy:
        # No client-side retries: the lost response fails the task attempt, and Prefect retries the task.
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=proxy.url, max_retries=0)

        @flow
        async def create_with_task_retries() -> tuple[BatchResult, str]:
            file_id = await upload_batch_file(make_requests(2), endpoint=ENDPOINT, credentials=credentials)
            retrying = create_batch.with_options(retries=1, retry_delay_seconds=0)
            batch = await retrying(file_id, endpoint=ENDPOINT, credentials=credentials)
            ctx = FlowRunContext.get()
            assert ctx is not None and ctx.flow_run is not None
            return batch, str(ctx.flow_run.id)

        batch, flow_run_id = await create_with_task_retries()

    assert proxy.creates_seen == 1  # the retry found the batch; it did not POST again
    assert [b.id for b in await _batches_of_flow_run(batch_server, secret, flow_run_id)] == [batch.batch_id]
    async with get_client() as client:
        task_runs = await client.read_task_runs()
    create_runs = [t for t in task_runs if t.flow_run_id and str(t.flow_run_id) == flow_run_id
                   and t.name.startswith("create_batch")]
    assert [t.run_count for t in create_runs] == [2]


async def test_a_retried_run_batch_flow_run_reattaches_without_a_second_upload(
    batch_server: str, secret: str, make_requests: Any, drop_proxy: Any
) -> None:
    async with AsyncBatchClient(api_key=secret, base_url=batch_server) as client:
        inputs_before = {f.id for f in (await client.files.list()).data if f.purpose == "batch"}
    async with drop_proxy(batch_server, drop_creates=1).running() as proxy:
        # The first attempt creates the batch but never hears back; the flow run is retried.
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=proxy.url, max_retries=0)
        retrying = run_batch.with_options(retries=1, retry_delay_seconds=0)

        state = await retrying(requests=make_requests(3), endpoint=ENDPOINT, credentials=credentials,
                               poll_interval=0.1, return_state=True)
        result = await state.aresult()

    assert result.status is BatchStatus.COMPLETED
    assert proxy.creates_seen == 1
    flow_run_id = str(state.state_details.flow_run_id)
    assert [b.id for b in await _batches_of_flow_run(batch_server, secret, flow_run_id)] == [result.batch_id]
    async with AsyncBatchClient(api_key=secret, base_url=batch_server) as client:
        inputs_after = {f.id for f in (await client.files.list()).data if f.purpose == "batch"}
    assert inputs_after - inputs_before == {result.input_file_id}  # the retry found the batch before uploading
    async with get_client() as client:
        assert (await client.read_flow_run(state.state_details.flow_run_id)).run_count == 2


async def test_a_lost_create_response_with_client_retries_creates_one_batch(
    batch_server: str, secret: str, make_requests: Any, drop_proxy: Any
) -> None:
    async with drop_proxy(batch_server, drop_creates=1).running() as proxy:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=proxy.url)  # the client retries itself

        @flow
        async def create_once() -> BatchResult:
            file_id = await upload_batch_file(make_requests(2), endpoint=ENDPOINT, credentials=credentials)
            return await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials)

        await create_once()

    assert proxy.creates_seen == 1
