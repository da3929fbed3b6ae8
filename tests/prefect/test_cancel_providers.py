"""Cancelling a flow run cancels its batch on Anthropic's and Gemini's batch APIs too.

The ``on_cancellation`` hook (:func:`batch_ops.prefect.flows.cancel_flow_run_batches`) found a run's
batches by the owner its metadata names; an Anthropic batch has no metadata and a Gemini batch only
our key, so a cancelled ``run_batch`` subflow left its batch running on both (the served e2e run in
tests/prefect/test_deployments.py: "no unfinished batch of this run", the batch still in progress).
The hook now also cancels the batches the run submitted in this process, which is where Prefect
runs a subflow's hooks; and, for a ``run_batch`` flow run of its own (a deployment of it, whose hook
the runner runs in its own process after killing the run's), the batches of the run's key, which
every provider can find (Gemini's display name, Anthropic's key ledger). The providers' own SDKs
say whether the cancel reached the batch.
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

from batch_ops import BatchClient
from batch_ops.identity import RunIdentity
from batch_ops.prefect import OpenAIBatchCredentials, run_batch, submit_batch
from batch_ops.prefect.flows import cancel_flow_run_batches

pytestmark = pytest.mark.asyncio(loop_scope="session")

MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}


REQUESTS = [{"custom_id": f"q-{i}", "max_tokens": 8, "messages": [{"role": "user", "content": f"q {i}"}]}
            for i in range(30)]


def _credentials(provider: str, url: Any, tmp_path: Path) -> OpenAIBatchCredentials:
    return OpenAIBatchCredentials(
        provider=provider, model=MODELS[provider], api_key=f"{provider}-key",
        base_url=str(url).removesuffix("/v1") + "/v1beta" if provider == "gemini" else str(url),
        key_ledger=str(tmp_path / "ledger") if provider == "anthropic" else None)


async def _cancelled(wire_oracle: Any, provider: str, url: Any, batch_id: str) -> str:
    """The batch's status once a cancel shows (Gemini has no "cancelling" state: the batch shows RUNNING
    until its request in flight ends), or after 15 s."""
    deadline = time.monotonic() + 15
    while True:
        ((after, status),) = await asyncio.to_thread(wire_oracle.batches, provider, str(url))
        assert after == batch_id
        if wire_oracle.cancel_seen(provider, status) or time.monotonic() > deadline:
            return str(status)
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("provider", list(MODELS))
async def test_the_hook_cancels_a_batch_that_cannot_name_its_flow_run(
        provider: str, make_server: Any, wire_oracle: Any, tmp_path: Path) -> None:
    with make_server(concurrency=1, request_latency=1.0) as url:
        credentials = _credentials(provider, url, tmp_path)
        requests = REQUESTS

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

        status = await _cancelled(wire_oracle, provider, url, batch_id)
        assert wire_oracle.cancel_seen(provider, status), status

        # Another run's hook leaves it alone (nothing of that run was submitted here).
        other = FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), parameters={}, created=datetime.now(timezone.utc))
        await cancel_flow_run_batches(run_batch, other, Cancelling())


@pytest.mark.parametrize("provider", list(MODELS))
async def test_the_hook_of_a_run_batch_deployment_finds_its_batch_from_another_process(
        provider: str, make_server: Any, wire_oracle: Any, tmp_path: Path) -> None:
    """A served ``run_batch`` deployment's run is cancelled by its runner: the run's process is killed and
    the hook runs in the runner's, which never saw the batch. It finds it by the run's key (what
    ``run_batch`` keys a run of its own on) through the saved block the run was given."""
    with make_server(concurrency=1, request_latency=1.0) as url:
        credentials = _credentials(provider, url, tmp_path)
        block_id = await credentials.save(f"cancel-{provider}", overwrite=True)
        run_id = uuid.uuid4()
        key = RunIdentity.prefect_flow(flow_run_id=run_id).key

        def submit() -> str:  # as the killed run's process did, before it was killed
            with BatchClient(settings=credentials.get_settings()) as client:
                return client.submit(REQUESTS, idempotency_key=key).id

        batch_id = await asyncio.to_thread(submit)
        ref = {"$ref": {"block_document_id": str(block_id)}}
        flow_run = FlowRun(id=run_id, flow_id=uuid.uuid4(), created=datetime.now(timezone.utc),
                           parameters={"requests": REQUESTS, "credentials": ref})
        await cancel_flow_run_batches(run_batch, flow_run, Cancelling())
        status = await _cancelled(wire_oracle, provider, url, batch_id)
        assert wire_oracle.cancel_seen(provider, status), status
