"""Cancelling a flow run cancels its batch on Anthropic's and Gemini's batch APIs too.

The ``on_cancellation`` hook (:func:`batch_ops.prefect.flows.cancel_flow_run_batches`) found a run's
batches by the owner its metadata names; an Anthropic batch has no metadata and a Gemini batch only
our key, so a cancelled ``run_batch`` subflow left its batch running on both (the served e2e run in
tests/prefect/test_deployments.py: "no unfinished batch of this run", the batch still in progress).
The hook now also cancels the batches the run submitted in this process, which is where Prefect
runs a subflow's hooks. The providers' own SDKs say whether the cancel reached the batch.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from prefect import flow
from prefect.client.schemas.objects import FlowRun
from prefect.context import FlowRunContext
from prefect.states import Cancelling

from batch_ops.prefect import OpenAIBatchCredentials, run_batch, submit_batch
from batch_ops.prefect.flows import cancel_flow_run_batches

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}


@pytest.mark.parametrize("provider", list(MODELS))
async def test_the_hook_cancels_a_batch_that_cannot_name_its_flow_run(
        provider: str, make_server: Any, wire_oracle: Any, tmp_path: Path) -> None:
    with make_server(concurrency=1, request_latency=1.0) as url:
        credentials = OpenAIBatchCredentials(
            provider=provider, model=MODELS[provider], api_key=f"{provider}-key",
            base_url=str(url).removesuffix("/v1") + "/v1beta" if provider == "gemini" else str(url),
            key_ledger=str(tmp_path / "ledger") if provider == "anthropic" else None)
        requests = [{"custom_id": f"q-{i}", "max_tokens": 8, "messages": [{"role": "user", "content": f"q {i}"}]}
                    for i in range(30)]

        @flow(name=f"submits-on-{provider}")
        async def submits() -> str:
            await submit_batch(requests, credentials=credentials)
            context = FlowRunContext.get()
            assert context is not None and context.flow_run is not None
            return str(context.flow_run.id)

        run_id = await submits()
        ((batch_id, status),) = await asyncio.to_thread(wire_oracle.batches, provider, str(url))
        assert not wire_oracle.cancel_seen(provider, status)

        # The hook as Prefect calls it for a cancelled subflow, in the process that submitted the batch.
        flow_run = FlowRun(id=uuid.UUID(run_id), flow_id=uuid.uuid4(), parameters={},
                           created=datetime.now(timezone.utc))
        await cancel_flow_run_batches(run_batch, flow_run, Cancelling())

        # Gemini has no "cancelling" state: the batch shows RUNNING until its request in flight ends.
        deadline = time.monotonic() + 15
        while True:
            ((after, status),) = await asyncio.to_thread(wire_oracle.batches, provider, str(url))
            if wire_oracle.cancel_seen(provider, status) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert after == batch_id and wire_oracle.cancel_seen(provider, status), status

        # Another run's hook leaves it alone (nothing of that run was submitted here).
        other = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), parameters={}, created=datetime.now(timezone.utc))
        await cancel_flow_run_batches(run_batch, other, Cancelling())
