"""``run_batch`` reports the chain it submitted to, and Prefect waits honour ``cancel_on_timeout``
(issue 23, items 1 and 2).

* A key used for requests A, then B, then A again: the third ``run_batch`` re-attaches to A's
  chain, and must report A's attempts — it looked the key's *newest* chain up after the wait
  (B's), found its batch missing there and fell back to a chain of one batch.
* ``wait_for_batch(cancel_on_timeout=True)`` and ``run_batch(cancel_on_timeout=True)``: the timeout
  cancels the batch (core's wait does it), as the Airflow operator's always did.
"""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow

from batch_ops import AsyncBatchClient, BatchStatus, BatchTimeoutError
from batch_ops.prefect import (
    BatchResult,
    OpenAIBatchCredentials,
    create_batch,
    run_batch,
    upload_batch_file,
    wait_for_batch,
)
from batch_ops.server import serve_in_background

pytestmark = pytest.mark.asyncio(loop_scope="session")

ENDPOINT = "/v1/chat/completions"


async def test_run_batch_reports_the_chain_of_its_own_requests_after_a_b_a(secret: str, make_requests: Any) -> None:
    # The server's first batch fails (token_limit_exceeded): A's chain gets two attempts.
    with serve_in_background(api_key=secret, token_limit_failures=1, request_latency=0.01) as url:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=str(url))
        run = {"endpoint": ENDPOINT, "credentials": credentials, "poll_interval": 0.1, "idempotency_key": "k-a-b-a"}
        a, b = make_requests(3, prefix="a"), make_requests(3, prefix="b")
        first = await run_batch.with_options(retries=1, retry_delay_seconds=0)(requests=a, **run)
        other = await run_batch(requests=b, **run)
        again = await run_batch(requests=a, **run)

    assert len(first.batch_ids) == 2 and first.status is BatchStatus.COMPLETED
    assert other.batch_ids == [other.batch_id] and other.batch_id not in first.batch_ids
    assert again.batch_id == first.batch_id, "the third run did not re-attach to A's chain"
    assert again.batch_ids == first.batch_ids, f"the third run reported another chain: {again.batch_ids}"
    assert again.chain_request_counts is not None and again.chain_request_counts.completed == 3


async def test_wait_for_batch_cancels_the_batch_at_its_timeout_when_asked(secret: str, make_requests: Any) -> None:
    with serve_in_background(api_key=secret, request_latency=60.0, concurrency=256) as url:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=str(url))

        @flow
        async def wait_briefly() -> BatchResult:
            file_id = await upload_batch_file(make_requests(2), endpoint=ENDPOINT, credentials=credentials)
            batch = await create_batch(file_id, endpoint=ENDPOINT, credentials=credentials)
            return await wait_for_batch(batch.batch_id, credentials=credentials, poll_interval=0.1, timeout=0.5,
                                        cancel_on_timeout=True)

        with pytest.raises(BatchTimeoutError, match="cancel requested") as info:
            await wait_briefly()
        assert info.value.batch is not None
        async with AsyncBatchClient(api_key=secret, base_url=url) as client:
            status = (await client.batches.retrieve(info.value.batch.id)).status

    assert status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)


async def test_run_batch_cancels_the_batch_at_its_timeout_when_asked(secret: str, make_requests: Any) -> None:
    with serve_in_background(api_key=secret, request_latency=60.0, concurrency=256) as url:
        credentials = OpenAIBatchCredentials(api_key=secret, base_url=str(url))
        with pytest.raises(BatchTimeoutError, match="cancel requested") as info:
            await run_batch(requests=make_requests(2), endpoint=ENDPOINT, credentials=credentials, poll_interval=0.1,
                            timeout=0.5, cancel_on_timeout=True)
        assert info.value.batch is not None
        async with AsyncBatchClient(api_key=secret, base_url=url) as client:
            status = (await client.batches.retrieve(info.value.batch.id)).status

    assert status in (BatchStatus.CANCELLING, BatchStatus.CANCELLED)
