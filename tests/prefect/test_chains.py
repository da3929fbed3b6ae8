"""Prefect retries after a bad outcome: a flow-run retry makes the next attempt of the chain, and a
parent flow run retried after a crash finds the batches of the subflow runs it lost.

"Paid" is the successful requests of every batch a private server holds (read with the official
``openai`` SDK); it must equal the requests needed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
from prefect.context import FlowRunContext

from batch_ops import BatchStatus
from batch_ops.prefect import BatchResult, OpenAIBatchCredentials, run_batch
from batch_ops.server import serve_in_background

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENDPOINT = "/v1/chat/completions"


def _batches(url: str, secret: str) -> list[Any]:
    with openai.OpenAI(api_key=secret, base_url=str(url), max_retries=3) as sdk:
        # Oldest first: pages come newest first, and creation times have whole seconds.
        return sorted(reversed(list(sdk.batches.list(limit=100))), key=lambda b: b.created_at)


def _paid(url: str, secret: str) -> int:
    return sum(b.request_counts.completed for b in _batches(url, secret))


async def test_a_flow_run_retry_after_an_expired_batch_pays_only_for_the_rest(
    secret: str, make_requests: Any
) -> None:
    # 2 requests at a time, 0.3 s each, a 1.2 s window: each attempt answers ~6 before it expires.
    with serve_in_background(api_key=secret, request_latency=0.3, concurrency=2, expire_after=1.2) as url:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=str(url))
        retrying = run_batch.with_options(retries=6, retry_delay_seconds=0)
        state = await retrying(requests=make_requests(14), endpoint=ENDPOINT, credentials=credentials,
                               poll_interval=0.1, return_state=True)
        result: BatchResult = await state.aresult()
        batches = await asyncio.to_thread(_batches, url, secret)
        paid = await asyncio.to_thread(_paid, url, secret)

    assert result.status is BatchStatus.COMPLETED
    assert len(batches) >= 2 and result.batch_ids == [b.id for b in batches]
    assert batches[0].status == "expired" and batches[0].request_counts.total == 14
    assert all(b.request_counts.total < 14 for b in batches[1:]), "a retry carried a request that had succeeded"
    assert paid == 14
    assert result.chain_request_counts is not None and result.chain_request_counts.completed == 14


async def test_a_flow_run_retry_after_a_failed_batch_sends_its_input_file_again(
    secret: str, make_requests: Any
) -> None:
    with serve_in_background(api_key=secret, token_limit_failures=1, request_latency=0.01) as url:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=str(url))
        retrying = run_batch.with_options(retries=1, retry_delay_seconds=0)
        result = await retrying(requests=make_requests(5), endpoint=ENDPOINT, credentials=credentials,
                                poll_interval=0.1)
        first, second = await asyncio.to_thread(_batches, url, secret)
        with openai.OpenAI(api_key=secret, base_url=str(url)) as sdk:
            uploads = [f for f in sdk.files.list() if f.purpose == "batch"]

    assert first.status == "failed" and first.errors.data[0].code == "token_limit_exceeded"
    assert second.status == "completed" and result.batch_ids == [first.id, second.id]
    assert second.input_file_id == first.input_file_id and len(uploads) == 1, "nothing ran: nothing uploaded again"


@flow(name="fan-out-retried", retries=1, retry_delay_seconds=0)
async def fan_out(credentials: OpenAIBatchCredentials, n: int, requests: list[dict[str, Any]]) -> list[BatchResult]:
    """``n`` run_batch subflows. In the parent's first run they give up waiting after 1 s (their
    batches run on), so the parent fails and is retried; Prefect then makes *new* subflow runs."""
    ctx = FlowRunContext.get()
    first = ctx is not None and ctx.flow_run is not None and ctx.flow_run.run_count == 1
    outcomes = await asyncio.gather(*(
        run_batch(requests=[{**r, "custom_id": f"{i}-{r['custom_id']}"} for r in requests], endpoint=ENDPOINT,
                  credentials=credentials, poll_interval=0.2, metadata={"part": str(i)},
                  timeout=1.0 if first else None)
        for i in range(n)), return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return list(outcomes)


@pytest.mark.scenario  # ~75 s: `make drill`, beside drill 8c
async def test_a_retried_parent_flow_run_finds_the_batches_of_its_lost_subflow_runs(
    secret: str, make_requests: Any
) -> None:
    # Each batch takes ~4 s, longer than the first run's subflows wait: the parent fails with all of
    # them running; its retry's new subflow runs must attach to those batches, not pay again.
    with serve_in_background(api_key=secret, request_latency=4.0, concurrency=64) as url:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=str(url))
        state = await fan_out(credentials, 4, make_requests(3), return_state=True)
        results = await state.aresult()
        async with get_client() as client:
            subflow_runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])))
        batches = await asyncio.to_thread(_batches, url, secret)
        paid = await asyncio.to_thread(_paid, url, secret)

    assert len(subflow_runs) == 8, "the retried parent ran new subflow runs (4 lost, 4 new)"
    assert len(batches) == 4, f"the retried parent paid again: {len(batches)} batches for 4 subflows"
    assert sorted(r.batch_id for r in results) == sorted(b.id for b in batches)
    assert all(r.status is BatchStatus.COMPLETED for r in results)
    assert paid == 12
