"""The Prefect orphan sweep (``sweep_orphan_batches``) against a real Prefect server and flow runs.

Runs are made the way Prefect makes them: a flow that created a batch with ``submit_batch`` and
returned (Completed) leaves an orphan; a ``run_batch``-like subflow whose process died stays
``Running`` under a parent that a user then cancelled (``Cancelling`` forever: nothing is left
to finish the cancel) — the case the ``on_cancellation`` hook never sees. A run still going, a
run Prefect does not know, and a batch made outside Prefect keep their batches.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL
from prefect.states import Cancelling, Running

from batch_ops import AsyncBatchClient, Batch
from batch_ops.prefect import OpenAIBatchCredentials, submit_batch
from batch_ops.prefect.orphans import sweep_orphan_batches
from batch_ops.server import ServerURL, serve_in_background

from .conftest import SECRET, chat_requests

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture(scope="module")
def busy_server() -> Iterator[ServerURL]:
    """Every request takes 10 minutes: no batch finishes while the tests run."""
    with serve_in_background(api_key=SECRET, request_latency=600) as url:
        yield url


@flow(name="orphan-maker")
async def orphan_maker(credentials: OpenAIBatchCredentials) -> str:
    result = await submit_batch(chat_requests(2), endpoint="/v1/chat/completions", credentials=credentials)
    return result.batch_id


@flow(name="stand-in")
def stand_in() -> None:
    """Only its name is used: flow runs are created for it with the states under test."""


@task(name="stand-in-task")
def stand_in_task() -> None:
    """The task run that links a subflow run to its parent."""


async def _batch(client: AsyncBatchClient, owner: str | None) -> Batch:
    metadata = {"prefect_flow_run_id": owner} if owner else None
    return await client.submit(chat_requests(1), endpoint="/v1/chat/completions", metadata=metadata)


async def test_sweep_cancels_batches_of_ended_runs_only(busy_server: ServerURL) -> None:
    credentials = OpenAIBatchCredentials(api_key=SECRET, base_url=busy_server)
    ended_batch = await orphan_maker(credentials)  # its flow run completed: the batch is an orphan
    async with get_client() as prefect:
        parent = await prefect.create_flow_run(stand_in, state=Running())
        link = await prefect.create_task_run(stand_in_task, flow_run_id=parent.id, dynamic_key="0")
        child = await prefect.create_flow_run(stand_in, parent_task_run_id=link.id, state=Running())
        await prefect.set_flow_run_state(parent.id, Cancelling(), force=True)  # cancelled, never finished
        going = await prefect.create_flow_run(stand_in, state=Running())
    async with AsyncBatchClient(api_key=SECRET, base_url=busy_server) as client:
        under_cancelled_parent = await _batch(client, str(child.id))
        still_going = await _batch(client, str(going.id))
        unknown = await _batch(client, str(uuid.uuid4()))
        unowned = await _batch(client, None)
        report: dict[str, Any] = await sweep_orphan_batches(credentials=credentials, min_age=0)
        status = {b.id: b.status.value async for b in client.batches.iter_all()}
    verdicts = {b["batch_id"]: b["verdict"] for b in report["batches"]}
    assert verdicts[ended_batch] == verdicts[under_cancelled_parent.id] == "orphan", report
    assert verdicts[still_going.id] == "kept" and verdicts[unknown.id] == "unknown"
    assert verdicts[unowned.id] == "unowned"
    assert status[ended_batch] in ("cancelling", "cancelled")
    assert status[under_cancelled_parent.id] in ("cancelling", "cancelled")
    assert status[still_going.id] == status[unknown.id] == status[unowned.id] == "in_progress"
    assert SECRET not in str(report)


async def test_report_only_cancels_nothing(busy_server: ServerURL) -> None:
    credentials = OpenAIBatchCredentials(api_key=SECRET, base_url=busy_server)
    ended_batch = await orphan_maker(credentials)
    report = await sweep_orphan_batches(credentials=credentials, min_age=0, cancel=False)
    mine = next(b for b in report["batches"] if b["batch_id"] == ended_batch)
    assert mine["verdict"] == "orphan" and not mine["cancelled"]
    async with AsyncBatchClient(api_key=SECRET, base_url=busy_server) as client:
        assert (await client.batches.retrieve(ended_batch)).status.value == "in_progress"


async def test_cli_sweeps_with_prefect(busy_server: ServerURL) -> None:
    """``batch-ops orphans --prefect --cancel``: the maintenance command, as a cron job would run it."""
    credentials = OpenAIBatchCredentials(api_key=SECRET, base_url=busy_server)
    ended_batch = await orphan_maker(credentials)
    async with get_client() as prefect:
        going = await prefect.create_flow_run(stand_in, state=Running())
    async with AsyncBatchClient(api_key=SECRET, base_url=busy_server) as client:
        still_going = await _batch(client, str(going.id))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    env.update({"OPENAI_API_KEY": SECRET, "OPENAI_BASE_URL": busy_server,
                "PREFECT_API_URL": str(PREFECT_API_URL.value())})
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "batch_ops.cli", "orphans", "--prefect", "--cancel", "--min-age", "0",
                         "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    verdicts = {b["batch_id"]: (b["verdict"], b["cancelled"]) for b in json.loads(done.stdout)["batches"]}
    assert verdicts[ended_batch] == ("orphan", True) and verdicts[still_going.id] == ("kept", False)
    assert SECRET not in done.stdout + done.stderr
    plain = await asyncio.to_thread(  # without --prefect nobody is asked: nothing is an orphan, nothing cancelled
        subprocess.run, [sys.executable, "-m", "batch_ops.cli", "orphans", "--cancel", "--min-age", "0", "--json"],
        env=env, capture_output=True, text=True, timeout=120)
    counts = json.loads(plain.stdout)["counts"]
    assert counts["orphan"] == counts["cancelled"] == 0 and counts["unknown"] >= 1, counts
